"""DICOM Part 10 files: recognising them, their transfer syntax, and where the pixels are.

pydicom parses the dataset up to the Pixel Data element and stops there
(`stop_before_pixels`), so the pixel data are never read here; large values before them are
deferred (not read either). What the server serves is decided by the transfer syntax:

- JPEG 2000 Part 1 (.90/.91) and HTJ2K (.201/.202/.203): each frame is one codestream;
- the Part 2 multi-component syntaxes (.92/.93): the frames are components of ONE codestream
  (PS3.5 A.4.4), not codestreams of their own: refused, as are
- the JPIP-referenced syntaxes (.94/.95/.204/.205): no pixel data, only a URL to them, and
- everything else (uncompressed, JPEG, JPEG-LS, RLE, deflate, MPEG...): `jpip prepare` can
  re-encode those.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from .errors import BAD_FILE, NOT_SERVED, DicomError

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
SNIFF_LENGTH = PREAMBLE_LENGTH + len(MAGIC)
# The names that say "DICOM" (PS3.10 sets none; archives also name files by UID or not at all,
# so the content, `is_part10`, decides what is served: these names only spare a listing a read).
NAMED_SUFFIXES = (".dcm", ".dicom")

JPEG2000_SYNTAXES = {
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless Only",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless Only",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}
PART2_SYNTAXES = {"1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"}
JPIP_REFERENCED_SYNTAXES = {"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95",
                            "1.2.840.10008.1.2.4.204", "1.2.840.10008.1.2.4.205"}
HTJ2K_SYNTAXES = {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                  "1.2.840.10008.1.2.4.203"}

PIXEL_DATA = 0x7FE00010
EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
PIXEL_DATA_PROVIDER_URL = 0x00287FE0
NUMBER_OF_FRAMES = 0x00280008
UNDEFINED_LENGTH = 0xFFFFFFFF
# Values larger than this are not read while parsing the dataset (they are not needed to serve;
# the DICOM JSON leaves them out as bulk data).
DEFER_SIZE = 64 * 1024
PREPARE_HINT = "re-encode it with `jpip prepare IN.dcm OUT.dcm`"


def is_part10(head: bytes) -> bool:
    """A DICOM Part 10 file: a 128-byte preamble (any content) and then 'DICM'."""
    return len(head) >= SNIFF_LENGTH and head[PREAMBLE_LENGTH:SNIFF_LENGTH] == MAGIC


def is_part10_file(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return is_part10(f.read(SNIFF_LENGTH))
    except OSError:
        return False


def syntax_name(uid: str) -> str:
    name = JPEG2000_SYNTAXES.get(uid) or UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


@dataclass(frozen=True)
class DicomHeader:
    """What a served DICOM file says before its pixels."""

    dataset: Dataset               # everything before Pixel Data (large values deferred)
    transfer_syntax: str
    number_of_frames: int
    pixel_data_offset: int         # file offset of the (7FE0,0010) tag
    items_offset: int              # file offset of the first item (the Basic Offset Table)
    extended_offsets: np.ndarray | None   # (7FE0,0001), uint64 per frame
    extended_lengths: np.ndarray | None   # (7FE0,0002), uint64 per frame

    @property
    def is_htj2k(self) -> bool:
        return self.transfer_syntax in HTJ2K_SYNTAXES


def read_dataset(path: str | Path, *, defer_size: int | None = DEFER_SIZE) -> Dataset:
    """The dataset of a Part 10 file without its pixel data (any transfer syntax)."""
    with open(path, "rb") as f:
        if not is_part10(f.read(SNIFF_LENGTH)):
            raise DicomError("not a DICOM Part 10 file (no 'DICM' after a 128-byte preamble)")
        f.seek(0)
        return _dcmread(f, defer_size)


def _dcmread(f, defer_size: int | None) -> Dataset:
    try:
        return pydicom.dcmread(f, stop_before_pixels=True, defer_size=defer_size)
    except Exception as e:  # pydicom's errors for bad input are of many types
        raise DicomError(f"cannot read the DICOM dataset: {type(e).__name__}: {e}") from None


def check_transfer_syntax(uid: str, dataset: Dataset | None = None) -> None:
    """Raises DicomError (415) unless frames under `uid` are JPEG 2000 codestreams we serve."""
    if uid in JPEG2000_SYNTAXES:
        return
    if uid in PART2_SYNTAXES:
        raise DicomError(f"transfer syntax {syntax_name(uid)} is JPEG 2000 Part 2 "
                         "multi-component: its frames are components of one codestream, which "
                         f"this server does not serve; {PREPARE_HINT}", NOT_SERVED)
    if uid in JPIP_REFERENCED_SYNTAXES:
        url = ""
        value = _value(dataset, PIXEL_DATA_PROVIDER_URL, quiet=True) if dataset else None
        if value:
            url = f": its Pixel Data Provider URL is {value}"
        raise DicomError(f"transfer syntax {syntax_name(uid)}: a JPIP-referenced object holds "
                         f"no pixel data to serve{url}", NOT_SERVED)
    raise DicomError(f"transfer syntax {syntax_name(uid)} is not JPEG 2000 or HTJ2K; "
                     f"{PREPARE_HINT} (add --htj2k for HTJ2K)", NOT_SERVED)


def read_header(path: str | Path) -> DicomHeader:
    """Parses a Part 10 file up to its encapsulated Pixel Data; DicomError if it is not one we
    serve (415: transfer syntax) or is corrupt (422)."""
    with open(path, "rb") as f:
        if not is_part10(f.read(SNIFF_LENGTH)):
            raise DicomError("not a DICOM Part 10 file (no 'DICM' after a 128-byte preamble)")
        f.seek(0)
        try:
            meta = pydicom.filereader.read_file_meta_info(path)
            uid = str(meta.get("TransferSyntaxUID", "") or "")
        except Exception as e:  # as above: any parse failure is the file's fault
            raise DicomError(f"cannot read the DICOM file meta information: {e}") from None
        if not uid:
            raise DicomError("the file meta information has no Transfer Syntax UID")
        if uid not in JPEG2000_SYNTAXES:
            ds = None
            if uid in JPIP_REFERENCED_SYNTAXES:
                try:
                    ds = _dcmread(f, DEFER_SIZE)
                except DicomError:
                    ds = None  # deflated (.95/.205) or bad: the message goes without the URL
            check_transfer_syntax(uid, ds)
        ds = _dcmread(f, DEFER_SIZE)
        pos = f.tell()  # pydicom rewinds to the start of the element it stopped at
        f.seek(0, 2)
        size = f.tell()
        f.seek(pos)
        head = f.read(12)
    frames = number_of_frames(ds)
    if len(head) < 12:
        raise DicomError("no Pixel Data: the dataset ends before (7FE0,0010) (truncated?)")
    group, element = struct.unpack_from("<HH", head)
    tag = group << 16 | element
    if tag != PIXEL_DATA:
        raise DicomError(f"no encapsulated Pixel Data: found ({group:04X},{element:04X}) where "
                         "the pixels should start")
    vr = head[4:6]
    (length,) = struct.unpack_from("<I", head, 8)
    if vr not in (b"OB", b"OW", b"UN"):
        raise DicomError(f"Pixel Data has VR {vr!r}; an encapsulated one is OB")
    if length != UNDEFINED_LENGTH:
        raise DicomError(f"Pixel Data has a defined length ({length}) under {syntax_name(uid)}: "
                         "compressed frames must be encapsulated (undefined length)")
    eot = _uint64s(ds, EXTENDED_OFFSET_TABLE)
    eot_lengths = _uint64s(ds, EXTENDED_OFFSET_TABLE_LENGTHS)
    if pos + 12 > size:
        raise DicomError("truncated: Pixel Data element without items")
    return DicomHeader(ds, uid, frames, pos, pos + 12, eot, eot_lengths)


def _value(ds: Dataset, tag: int, *, quiet: bool = False):
    """An element's value, or None when absent. pydicom converts values when they are first
    read, so a damaged element fails here: DicomError (None when `quiet`)."""
    try:
        return ds[tag].value if tag in ds else None
    except Exception as e:  # any conversion failure is the file's fault
        if quiet:
            return None
        raise DicomError(f"cannot read ({tag >> 16:04X},{tag & 0xFFFF:04X}): "
                         f"{type(e).__name__}: {e}") from None


def number_of_frames(ds: Dataset) -> int:
    value = _value(ds, NUMBER_OF_FRAMES)
    if value is None:
        return 1
    try:
        n = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise DicomError(f"Number of Frames {value!r} is not a number") from None
    if n < 1:
        raise DicomError(f"Number of Frames is {n}")
    return n


def _uint64s(ds: Dataset, tag: int) -> np.ndarray | None:
    value = _value(ds, tag)
    if value is None or len(value) == 0:
        return None
    if len(value) % 8:
        raise DicomError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is {len(value)} bytes, not a "
                         "whole number of 64-bit values", BAD_FILE)
    return np.frombuffer(bytes(value), "<u8").astype(np.int64)
