"""`jpip dicom-ref IN OUT.dcm --url BASE`: the JPIP-referenced DICOM object of a served file.

What an archive hands a viewer instead of the pixels (PS3.5 8.4.1, A.6, A.11): the dataset
without Pixel Data, under the transfer syntax DICOM JPIP Referenced (1.2.840.10008.1.2.4.94), or
DICOM JPIP HTJ2K Referenced (.204) when the frames are HTJ2K, with Pixel Data Provider URL
(0028,7FE0) set to the JPIP URL of the target: `BASE?target=NAME`. A viewer appends its window
(`&fsiz=200,200`) and, for frame N of a multi-frame object, `&stream=N` (this server serves a
DICOM file's frame N as codestream N).

- IN a DICOM file served by this server (JPEG 2000 or HTJ2K frames): its dataset is kept
  whole (same SOP Instance UID: a JPIP-referenced object is the same instance under another
  transfer syntax), minus Pixel Data and its offset tables.
- IN a JPEG 2000 file (.jp2, .j2k, .jph...) with one codestream: a new Secondary Capture
  instance whose Image Pixel attributes come from the codestream (SIZ, COD) and whose patient
  and study attributes are empty (Type 2). A file with several codestreams is refused: JPIP
  numbers them from 0, while DICOM's frame N is stream N.

Photometric Interpretation is limited to MONOCHROME1/2, YBR_ICT and YBR_RCT under the JPIP
syntaxes (A.6, A.11): RGB or YBR_FULL frames (no component transform in the codestream) and
palette colour are refused with a pointer to `jpip prepare`, which writes YBR_RCT / YBR_ICT.

The output is a Part 10 file (pydicom needs the file meta to know the transfer syntax), to be
sent to a viewer; PS3.5 10.8 says the JPIP syntaxes are not for media storage.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid

from codestream.boxes import read_layout
from codestream.errors import CodestreamError
from codestream.parse import parse_codestream, tile_coding
from dicom.errors import DicomError
from dicom.frames import frame_table, locate_codestream
from dicom.part10 import HTJ2K_SYNTAXES, PIXEL_DATA_PROVIDER_URL, is_part10_file, read_header

from .dicom_write import drop_group_lengths
from .outputs import check_output, write_error

JPIP_REFERENCED = "1.2.840.10008.1.2.4.94"
JPIP_HTJ2K_REFERENCED = "1.2.840.10008.1.2.4.204"
JPIP_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "YBR_ICT", "YBR_RCT")  # PS3.5 A.6, A.11
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# Type 2 attributes of the Secondary Capture IOD's mandatory modules, written empty.
EMPTY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
               "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
               "SeriesNumber", "InstanceNumber", "PatientOrientation")
HT_CAPABILITY = 0x4000  # Rsiz bit 14: the codestream uses Part 15 (HTJ2K) capabilities


class DicomRefError(ValueError):
    """IN cannot be referenced; the message says why and what to do."""


@dataclass
class DicomRefReport:
    input: str
    output: str
    url: str
    transfer_syntax: str
    sop_instance_uid: str
    frames: int
    rows: int
    columns: int
    photometric_interpretation: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.output}",
                 f"  syntax     {self.transfer_syntax}",
                 f"  url        {self.url}",
                 f"  image      {self.frames} frame(s) of {self.columns}x{self.rows}, "
                 f"{self.photometric_interpretation}"]
        if self.frames > 1:
            lines.append(f"  frame N    {self.url}&stream=N (N = 1..{self.frames})")
        lines += [f"  note       {n}" for n in self.notes]
        return "\n".join(lines)


def provider_url(base: str, target: str | None) -> str:
    """The Pixel Data Provider URL: BASE when it already names its target (`target=`), else
    BASE?target=NAME. Only http(s), and no view-window or session fields (the viewer adds
    those)."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DicomRefError(f"--url {base}: give the JPIP endpoint as http(s)://HOST:PORT/jpip "
                            "(PS3.5 8.4.1: HTTP or HTTPS only)")
    fields = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
    others = [f for f in fields if f != "target"]
    if others:
        raise DicomRefError(f"--url {base}: only target= may be in the URL (a viewer appends "
                            f"its own {', '.join(others)})")
    if "target" in fields:
        if target is not None:
            raise DicomRefError("--target and a target= in --url: give one of them")
        return base
    if target is None:
        raise DicomRefError("no target name: give --target NAME (or --root)")
    sep = "&" if parts.query else "?"
    return f"{base}{sep}target={quote(target, safe='/')}"


def target_name(path: Path, root: str | os.PathLike[str] | None) -> str:
    """The name under which the server serves `path`: relative to the server's root, or the
    file name."""
    if root is None:
        return path.name
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        raise DicomRefError(f"{path} is not under the root {root}") from None


def _check_photometric(pi: str, what: str) -> None:
    if pi not in JPIP_PHOTOMETRIC:
        raise DicomRefError(f"{what} has Photometric Interpretation {pi}, which the JPIP "
                            f"transfer syntaxes do not allow ({', '.join(JPIP_PHOTOMETRIC)}; "
                            "PS3.5 A.6): re-encode it with `jpip prepare IN.dcm OUT.dcm` "
                            "(colour becomes YBR_RCT/YBR_ICT)")


# --------------------------------------------------------------------------- DICOM input
def _from_dicom(path: Path) -> tuple[Dataset, str, list[str]]:
    """The referencing dataset of a served DICOM file, its syntax, and notes."""
    try:
        header = read_header(path)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            table = frame_table(mm, header.items_offset, header.number_of_frames,
                                extended_offsets=header.extended_offsets,
                                extended_lengths=header.extended_lengths)
            start, length = locate_codestream(mm, table.frame_runs(0))
            first = _frame_bytes(mm, table.frame_runs(0), start, length)
    except DicomError as e:
        raise DicomRefError(f"{path}: not served: {e.reason}") from None
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for tag in [t for t in ds.keys() if t >> 16 == 0x7FE0]:
        del ds[tag]
    drop_group_lengths(ds)  # group 0028 gains the provider URL
    pi = str(ds.get("PhotometricInterpretation", ""))
    _check_photometric(pi, str(path))
    notes = []
    siz = parse_codestream(first, 0, len(first)).siz
    if (ds.get("Rows"), ds.get("Columns")) != (siz.height, siz.width):
        notes.append(f"Rows/Columns ({ds.get('Rows')}x{ds.get('Columns')}) differ from frame "
                     f"1's codestream ({siz.height}x{siz.width}), which wins (PS3.5 8.2.4)")
    syntax = JPIP_HTJ2K_REFERENCED if header.transfer_syntax in HTJ2K_SYNTAXES \
        else JPIP_REFERENCED
    return ds, syntax, notes


def _frame_bytes(mm, runs, start: int, length: int) -> bytes:
    from codestream.scattered import read_runs

    return bytes(read_runs(mm, runs, start, length))


# --------------------------------------------------------------------------- JPEG 2000 input
def _from_jpeg2000(path: Path) -> tuple[Dataset, str, list[str]]:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            layout = read_layout(mm)
            if len(layout.codestreams) != 1:
                raise DicomRefError(
                    f"{path} holds {len(layout.codestreams)} codestreams, numbered from 0 by "
                    "JPIP, while a DICOM viewer asks frame N as stream=N: reference a file "
                    "with one codestream, or a DICOM multi-frame object")
            off, ln = layout.codestreams[0]
            cs = parse_codestream(mm, off, ln)
    except (CodestreamError, ValueError) as e:
        if isinstance(e, DicomRefError):
            raise
        raise DicomRefError(f"{path}: not a JPEG 2000 file this server serves: {e}") from None
    siz = cs.siz
    cod, styles = tile_coding(cs, min(cs.tiles) if cs.tiles else 0)
    comps = siz.components
    if len({(c.precision, c.signed, c.dx, c.dy) for c in comps}) != 1:
        raise DicomRefError(f"{path}: components differ in precision, sign or subsampling, "
                            "which DICOM's Image Pixel attributes cannot describe")
    if len(comps) == 1:
        pi = "MONOCHROME2"
    elif len(comps) == 3 and cod.mct == 1:
        pi = "YBR_RCT" if styles[0].reversible else "YBR_ICT"
    elif len(comps) == 3:
        pi = "RGB"
    else:
        raise DicomRefError(f"{path}: {len(comps)} components (DICOM images have 1 or 3)")
    _check_photometric(pi, f"{path} (3 components without a component transform)")
    prec = comps[0].precision
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    for kw in EMPTY_TYPE2:
        setattr(ds, kw, "")
    ds.ImageComments = f"JPIP-referenced image of {path.name}"
    ds.SamplesPerPixel = len(comps)
    ds.PhotometricInterpretation = pi
    if len(comps) > 1:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = siz.height, siz.width
    ds.BitsAllocated = 8 * -(-prec // 8)
    ds.BitsStored = prec
    ds.HighBit = prec - 1
    ds.PixelRepresentation = int(comps[0].signed)
    notes = ["patient and study attributes are empty (Type 2): fill them in before sending"]
    if not styles[0].reversible:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_15444_15" if _is_ht(siz, styles) \
            else "ISO_15444_1"
    syntax = JPIP_HTJ2K_REFERENCED if _is_ht(siz, styles) else JPIP_REFERENCED
    return ds, syntax, notes


def _is_ht(siz, styles) -> bool:
    return bool(siz.rsiz & HT_CAPABILITY) or any(st.is_ht for st in styles)


# --------------------------------------------------------------------------- the command
def dicom_ref(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], *,
              url: str, target: str | None = None,
              root: str | os.PathLike[str] | None = None) -> DicomRefReport:
    """Writes the JPIP-referenced object of IN (see the module docstring)."""
    inp, out = Path(input_path), Path(output_path)
    if not inp.is_file():
        raise DicomRefError(f"{inp}: no such file")
    check_output(out)
    if "target=" not in urlsplit(url).query and target is None:
        target = target_name(inp, root)
    link = provider_url(url, target)
    if is_part10_file(inp):
        ds, syntax, notes = _from_dicom(inp)
    else:
        ds, syntax, notes = _from_jpeg2000(inp)
    ds.add_new(PIXEL_DATA_PROVIDER_URL, "UR", link)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(syntax)
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, out)
    except OSError as e:
        raise write_error(out, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return DicomRefReport(str(inp), str(out), link, f"{UID(syntax).name or syntax} ({syntax})",
                          str(ds.SOPInstanceUID), frames, int(ds.Rows), int(ds.Columns),
                          str(ds.PhotometricInterpretation), notes)


def add_dicomref_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `jpip dicom-ref IN OUT.dcm --url BASE [...]`."""
    parser.add_argument("input", help="a served DICOM file (JPEG 2000 / HTJ2K frames) or "
                                      "JPEG 2000 file")
    parser.add_argument("output", help="the JPIP-referenced DICOM object to write")
    parser.add_argument("--url", required=True, metavar="BASE",
                        help="the server's JPIP endpoint, e.g. http://HOST:8080/jpip (or a "
                             "URL that already holds target=)")
    parser.add_argument("--target", metavar="NAME",
                        help="the target's name on the server (default: IN relative to "
                             "--root, or IN's file name)")
    parser.add_argument("--root", metavar="DIR", help="the server's --root, to name IN by its "
                                                      "path under it")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_dicomref(args: argparse.Namespace) -> int:
    try:
        report = dicom_ref(args.input, args.output, url=args.url, target=args.target,
                           root=args.root)
    except (ValueError, OSError) as e:
        print(f"jpip dicom-ref: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(report)) if args.json else report.summary())
    return 0
