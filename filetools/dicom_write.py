"""Writing a DICOM Part 10 file whose encapsulated Pixel Data arrives one frame at a time.

pydicom's `encapsulate` wants every frame in memory at once; here the frames are written as they
come (one fragment per frame, PS3.5 A.4), so a large multi-frame object costs one frame of
memory. The offset table is reserved before the frames and filled in once their sizes are known:

- the Basic Offset Table (first item), one uint32 per frame, for objects below 4 GiB;
- or the Extended Offset Table (7FE0,0001) with its lengths (7FE0,0002), uint64, placed before
  Pixel Data as the tag order wants, with an empty Basic Offset Table (PS3.5 A.4: the BOT must
  be empty when the EOT is present). Its lengths are the item lengths, pad included, as pydicom
  writes them.

Elements that follow Pixel Data in the dataset (tags above 7FE0,0010) are written after it.
The file is written beside the output and renamed into place, so a server never sees half of it.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset

from .outputs import write_error

PIXEL_DATA = 0x7FE00010
EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
ENCAPSULATED_TOTAL_LENGTH = 0x7FE00003
BASIC_TABLE_LIMIT = 1 << 32            # BOT offsets are uint32
ITEM_TAG = struct.pack("<HH", 0xFFFE, 0xE000)
SEQUENCE_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


@dataclass
class EncapsulatedLayout:
    """What was written: the offset table used and each frame's item."""

    offset_table: str            # "basic" or "extended"
    frames: int
    item_offsets: list[int]      # from the first fragment's item tag (the tables' origin)
    item_lengths: list[int]      # item value lengths (pad included)
    pixel_data_offset: int       # file offset of the (7FE0,0010) tag
    bytes: int                   # file size


def drop_group_lengths(ds: Dataset) -> None:
    """Removes (gggg,0000) group lengths (retired outside the file meta): attributes change
    here, so the lengths written by the source would be wrong."""
    for tag in [t for t in ds.keys() if t & 0xFFFF == 0 and t >> 16 != 0x0002]:
        del ds[tag]


def _element_header(tag: int, vr: bytes, length: int) -> bytes:
    """Explicit VR Little Endian header of an OB/OV-like element (32-bit length)."""
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, length)


def _split(dataset: Dataset) -> tuple[Dataset, Dataset]:
    """(elements before Pixel Data, elements after it); Pixel Data and the offset tables are
    left out (written here)."""
    head, tail = Dataset(), Dataset()
    head.file_meta = dataset.file_meta
    skip = {PIXEL_DATA, EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS,
            ENCAPSULATED_TOTAL_LENGTH}
    for tag in dataset.keys():
        if tag in skip:
            continue
        # Reading the element here loads a deferred value (read from the source file).
        (head if tag < EXTENDED_OFFSET_TABLE else tail)[tag] = dataset[tag]
    return head, tail


def write_encapsulated(path: str | os.PathLike[str], dataset: Dataset,
                       frames: Iterable[bytes], number_of_frames: int, *,
                       extended: bool = False) -> EncapsulatedLayout:
    """Writes `dataset` (with its file_meta, whose Transfer Syntax UID is an encapsulated one)
    and `frames` (each one frame's compressed bytes, in order) as a Part 10 file."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    head, tail = _split(dataset)
    n = number_of_frames
    try:
        with open(tmp, "w+b") as f:
            head.save_as(f, enforce_file_format=True)
            eot_at = None
            if extended:
                f.write(_element_header(EXTENDED_OFFSET_TABLE, b"OV", 8 * n))
                eot_at = f.tell()
                f.write(bytes(8 * n))
                f.write(_element_header(EXTENDED_OFFSET_TABLE_LENGTHS, b"OV", 8 * n))
                f.write(bytes(8 * n))
            pixel_at = f.tell()
            f.write(_element_header(PIXEL_DATA, b"OB", 0xFFFFFFFF))
            bot_length = 0 if extended else 4 * n
            f.write(ITEM_TAG + struct.pack("<I", bot_length))
            bot_at = f.tell()
            f.write(bytes(bot_length))
            origin = f.tell()
            offsets, lengths = [], []
            for data in frames:
                if len(offsets) == n:
                    raise ValueError(f"more frames than the {n} announced")
                pad = b"\0" if len(data) % 2 else b""  # PS3.5 8.2: items have even lengths
                offsets.append(f.tell() - origin)
                lengths.append(len(data) + len(pad))
                f.write(ITEM_TAG + struct.pack("<I", len(data) + len(pad)))
                f.write(data)
                f.write(pad)
            if len(offsets) != n:
                raise ValueError(f"{len(offsets)} frames written, {n} announced")
            f.write(SEQUENCE_DELIMITER)
            if len(tail):
                fp = DicomFileLike(f)
                fp.is_little_endian, fp.is_implicit_VR = True, False
                write_dataset(fp, tail)
            size = f.tell()
            if extended:
                f.seek(eot_at)
                f.write(struct.pack(f"<{n}Q", *offsets))
                f.seek(eot_at + 8 * n + 12)
                f.write(struct.pack(f"<{n}Q", *lengths))
            else:
                if offsets[-1] >= BASIC_TABLE_LIMIT:
                    raise ValueError("the frames pass 4 GiB, beyond a Basic Offset Table: "
                                     "write the Extended Offset Table (--offset-table extended)")
                f.seek(bot_at)
                f.write(struct.pack(f"<{n}I", *offsets))
        os.replace(tmp, out)
    except OSError as e:
        raise write_error(out, e) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return EncapsulatedLayout("extended" if extended else "basic", n, offsets, lengths,
                              pixel_at, size)
