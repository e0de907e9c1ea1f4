"""DICOM Part 10 files built at test time from corpus codestreams (pydicom writes the dataset;
the encapsulated Pixel Data items are laid out here, so fragments can split a frame anywhere).

`build_dicom(path, frames, ...)`: `frames` is a list of frames, each the list of its fragments'
bytes (one fragment per frame unless a test splits it). Odd fragments get the 00h pad of
PS3.5 8.2; `table` picks the Basic Offset Table ("bot"), an empty BOT ("none") or the
Extended Offset Table ("eot").
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from codestream.boxes import read_layout
from codestream.parse import parse_codestream

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_GREY = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC


def codestream_of(data: bytes) -> bytes:
    """The raw codestream of a .j2k or the first jp2c of a .jp2."""
    off, n = read_layout(data).codestreams[0]
    return data[off:off + n]


def _item(data: bytes) -> bytes:
    pad = b"\0" if len(data) % 2 else b""
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(data) + len(pad)) + data + pad


def encapsulate(frames: list[list[bytes]], table: str = "bot") -> tuple[bytes, bytes | None,
                                                                         bytes | None]:
    """(Pixel Data value, Extended Offset Table, its lengths) for frames of fragments."""
    body = bytearray()
    offsets, lengths = [], []
    for fragments in frames:
        offsets.append(len(body))
        start = len(body)
        for frag in fragments:
            body += _item(frag)
        lengths.append(len(body) - start - 8 * len(fragments))
    bot = struct.pack(f"<{len(offsets)}I", *offsets) if table == "bot" else b""
    value = _item(bot) + bytes(body)
    if table == "eot":
        return (value, struct.pack(f"<{len(offsets)}Q", *offsets),
                struct.pack(f"<{len(lengths)}Q", *lengths))
    return value, None, None


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given (even) offsets."""
    edges = [0, *sorted(cuts), len(data)]
    assert all(c % 2 == 0 for c in cuts), "fragments other than the last must be even"
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]


def build_dicom(path: Path, frames: list[list[bytes]], *, transfer_syntax: str = JPEG2000,
                table: str = "bot", extra: dict | None = None) -> Dataset:
    """Writes a DICOM Part 10 file holding `frames` (each a list of fragment bytes, which
    joined are a codestream or a JP2 file); returns the dataset written (no pixel data)."""
    first = b"".join(frames[0])
    siz = parse_codestream(codestream_of(first), 0, len(codestream_of(first))).siz
    comp = siz.components[0]
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE if len(frames) == 1 else MULTIFRAME_GREY
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Frames"
    ds.PatientID = "JPIP-TEST"
    ds.Modality = "OT"
    ds.ImageComments = "built by tests/data/dicom.py"
    ds.Rows, ds.Columns = siz.height, siz.width
    ds.SamplesPerPixel = siz.num_components
    ds.PhotometricInterpretation = "MONOCHROME2" if siz.num_components == 1 else "RGB"
    if siz.num_components > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if comp.precision <= 8 else 16
    ds.BitsStored = comp.precision
    ds.HighBit = comp.precision - 1
    ds.PixelRepresentation = int(comp.signed)
    ds.NumberOfFrames = len(frames)
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.PixelSpacing = [0.5, 0.25]
    if extra:
        for k, v in extra.items():
            setattr(ds, k, v)
    value, eot, eot_lengths = encapsulate(frames, table)
    if eot is not None:
        ds.ExtendedOffsetTable = eot
        ds.ExtendedOffsetTableLengths = eot_lengths
    ds.PixelData = value
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    out = ds.copy()
    del out.PixelData
    return out


def build_uncompressed(path: Path, frames: int = 2) -> None:
    """A small uncompressed (Explicit VR Little Endian) multi-frame object."""
    ds = Dataset()
    ds.SOPClassUID = MULTIFRAME_GREY
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = 8, 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.NumberOfFrames = frames
    ds.PixelData = np.arange(64 * frames, dtype="<u2").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def build_jpip_referenced(path: Path, url: str, transfer_syntax: str = "1.2.840.10008.1.2.4.94"
                          ) -> None:
    """A JPIP-referenced object: no Pixel Data, a Pixel Data Provider URL (0028,7FE0)."""
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = 512, 512
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelDataProviderURL = url
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def pixel_items_offset(data: bytes) -> int:
    """Offset of the first item (the Basic Offset Table) of the encapsulated Pixel Data."""
    at = data.rindex(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    return at + 12


def build_explicit_length(path: Path, codestream: bytes) -> None:
    """Pixel Data with a defined length under a JPEG 2000 syntax (not encapsulated)."""
    build_dicom(path, [[codestream]])
    data = bytearray(path.read_bytes())
    at = pixel_items_offset(bytes(data)) - 4
    data[at:at + 4] = struct.pack("<I", len(data) - at - 4)
    path.write_bytes(bytes(data))


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_TRUE_COLOR = "1.2.840.10008.5.1.4.1.1.7.4"


def ct_volume(frames: int, rows: int = 96, columns: int = 128, seed: int = 7) -> np.ndarray:
    """A CT-like signed 12-bit volume (air, a body ellipse, bone, noise): frames x rows x cols."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    body = ((x - columns / 2) / (columns * 0.42)) ** 2 + ((y - rows / 2) / (rows * 0.4)) ** 2 < 1
    out = np.empty((frames, rows, columns), np.int16)
    for f in range(frames):
        bone = ((x - columns / 2 - 10 * np.sin(f)) / 9) ** 2 + ((y - rows / 2) / 7) ** 2 < 1
        img = np.where(body, 40, -1000) + np.where(bone, 1200 + 20 * f, 0)
        out[f] = np.clip(img + rng.normal(0, 12, img.shape), -2048, 2047).astype(np.int16)
    return out


def rgb_frames(frames: int, rows: int = 80, columns: int = 100, seed: int = 3) -> np.ndarray:
    """8-bit RGB frames (gradients and a coloured square): frames x rows x cols x 3."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    out = np.empty((frames, rows, columns, 3), np.uint8)
    for f in range(frames):
        out[f, ..., 0] = (x * 255 // max(1, columns - 1) + 9 * f) % 256
        out[f, ..., 1] = y * 255 // max(1, rows - 1)
        out[f, ..., 2] = 128
        out[f, 20 + f:40 + f, 30:60] = (200, 30, 90)
        out[f] = np.clip(out[f].astype(int) + rng.integers(-3, 4, out[f].shape), 0, 255)
    return out


def build_native(path: Path, pixels: np.ndarray, *, photometric: str | None = None,
                 bits_stored: int | None = None, transfer_syntax: str = ExplicitVRLittleEndian,
                 planar: int = 0, extra: dict | None = None) -> Dataset:
    """An uncompressed multi-frame object holding `pixels` (frames x rows x cols [x 3]); returns
    the dataset written (with its pixel data)."""
    frames, rows, columns = pixels.shape[:3]
    spp = 1 if pixels.ndim == 3 else pixels.shape[3]
    ds = Dataset()
    if spp == 1 and pixels.dtype.itemsize == 2:
        ds.SOPClassUID = CT_IMAGE_STORAGE if frames == 1 else MULTIFRAME_GREY
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelSpacing = [0.7, 0.7]
        ds.ImagePositionPatient = [-50.0, -40.0, 12.5]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = "1.25"
    else:
        ds.SOPClassUID = MULTIFRAME_TRUE_COLOR if spp == 3 else SECONDARY_CAPTURE
        ds.Modality = "OT"
        ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Prepare"
    ds.PatientID = "JPIP-PREPARE"
    ds.StudyDate = "20260101"
    ds.ImageComments = "built by tests/data/dicom.py build_native"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = photometric or ("MONOCHROME2" if spp == 1 else "RGB")
    if spp > 1:
        ds.PlanarConfiguration = planar
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.NumberOfFrames = frames
    if extra:
        for k, v in extra.items():
            setattr(ds, k, v)
    data = pixels
    if spp > 1 and planar == 1:
        data = np.moveaxis(pixels, 3, 1)
    ds.PixelData = np.ascontiguousarray(data).astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return ds


def frame_codestreams(path: Path) -> list[bytes]:
    """Each frame's codestream of a JPEG 2000 / HTJ2K DICOM file, found as the server finds
    them (offset tables, fragments, JP2 wrappers and pads)."""
    import mmap

    from codestream.scattered import read_runs
    from dicom.frames import frame_table, locate_codestream
    from dicom.part10 import read_header

    header = read_header(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        table = frame_table(mm, header.items_offset, header.number_of_frames,
                            extended_offsets=header.extended_offsets,
                            extended_lengths=header.extended_lengths)
        out = []
        for i in range(table.number_of_frames):
            runs = table.frame_runs(i)
            start, length = locate_codestream(mm, runs)
            out.append(bytes(read_runs(mm, runs, start, length)))
    return out
