"""DICOM Part 10 files as JPIP targets: each frame of a JPEG 2000 / HTJ2K encapsulated Pixel
Data is one codestream, served in place.

- `part10`: recognising a Part 10 file, its transfer syntax (what is served, what is refused
  and why), its dataset up to the pixels (pydicom, `stop_before_pixels`);
- `frames`: the Pixel Data items and which fragments make each frame (offset tables checked
  against the items), and where a frame's codestream is (raw, or in a JP2 file; pad dropped);
- `source`: `DicomSource`, a `codestream.source.Source` whose frames are indexed lazily
  (frame N is JPIP codestream N: `first_codestream` = 1);
- `json_model`: the dataset as DICOM JSON (PS3.18 Annex F) for `GET /dicom-json`.

Nothing here reads a frame's bytes except to index it; the file tools (`jpip prepare`,
`jpip dicom-ref`, `jpip inspect`) reuse `part10.read_header`/`read_dataset` and
`frames.frame_table`/`locate_codestream`.
"""
