"""JP2 family box walk (ISO 15444-1 Annex I, 15444-2 Annex M): top-level boxes and codestreams.

Only box headers are read; box contents stay in the file. A raw codestream (starting with SOC)
has no boxes and is codestream 0 at offset 0.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import CodestreamError

JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
SOC_SIZ = b"\xff\x4f\xff\x51"
# Superboxes whose children we list (for metadata bins and codestream discovery).
SUPERBOXES = {b"jp2h", b"res ", b"uinf", b"asoc", b"jpch", b"jplh", b"cgrp", b"ftbl", b"comp",
              b"drep", b"page", b"jp2x"}


@dataclass(frozen=True, slots=True)
class Box:
    """One box: where it starts, how long its header is, and its total length (header included)."""

    box_type: bytes
    offset: int
    header_length: int
    length: int

    @property
    def content_offset(self) -> int:
        return self.offset + self.header_length

    @property
    def content_length(self) -> int:
        return self.length - self.header_length

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def type_name(self) -> str:
        return self.box_type.decode("latin-1")


def read_box_header(buf: memoryview | bytes, pos: int, end: int) -> Box:
    """Reads the box header at `pos`; the box must end at or before `end`."""
    if end - pos < 8:
        raise CodestreamError(pos, "truncated box header")
    lbox, tbox = struct.unpack_from(">I4s", buf, pos)
    header = 8
    if lbox == 1:  # 64-bit XLBox follows
        if end - pos < 16:
            raise CodestreamError(pos, "truncated XLBox")
        (lbox,) = struct.unpack_from(">Q", buf, pos + 8)
        header = 16
    elif lbox == 0:  # box runs to the end of its container (the file, for top-level boxes)
        lbox = end - pos
    if lbox < header:
        raise CodestreamError(pos, f"box {tbox!r} length {lbox} shorter than its header")
    if pos + lbox > end:
        raise CodestreamError(pos, f"box {tbox!r} length {lbox} runs past the end ({end})")
    return Box(bytes(tbox), pos, header, lbox)


def walk_boxes(buf: memoryview | bytes, start: int, end: int, *, max_boxes: int = 1_000_000
               ) -> list[Box]:
    """Lists the boxes in [start, end), one level."""
    boxes: list[Box] = []
    pos = start
    while pos < end:
        box = read_box_header(buf, pos, end)
        boxes.append(box)
        if len(boxes) > max_boxes:
            raise CodestreamError(pos, "too many boxes")
        pos = box.end
    return boxes


@dataclass(frozen=True, slots=True)
class FileLayout:
    """What a file is: a raw codestream or a JP2-family file with boxes and codestreams."""

    is_jp2: bool
    top_boxes: tuple[Box, ...]
    codestreams: tuple[tuple[int, int], ...]  # (offset, length) of each contiguous codestream
    brand: bytes = b""


def _codestream_boxes(buf: memoryview | bytes, boxes: list[Box], depth: int = 0) -> list[Box]:
    """jp2c boxes in file order, also inside superboxes (e.g. JPX codestream headers)."""
    found: list[Box] = []
    for box in boxes:
        if box.box_type == b"jp2c":
            found.append(box)
        elif box.box_type in SUPERBOXES and depth < 8:
            kids = walk_boxes(buf, box.content_offset, box.end)
            found.extend(_codestream_boxes(buf, kids, depth + 1))
    return found


def _is_box_type(box_type: bytes) -> bool:
    return all(0x20 <= c <= 0x7E for c in box_type)


def _top_boxes(buf: memoryview | bytes, size: int) -> list[Box]:
    """The top-level boxes. Bytes after the last box that do not form a box (a DICOM
    fragment's zero pad, junk some writers append) are ignored once a whole codestream box
    was seen, as OpenJPEG does; a cut codestream box is still an error."""
    boxes: list[Box] = []
    pos = 0
    have_codestream = False
    while pos < size:
        try:
            box = read_box_header(buf, pos, size)
        except CodestreamError:
            cut_type = bytes(buf[pos + 4:pos + 8])
            if have_codestream and cut_type != b"jp2c":
                break
            raise
        if have_codestream and not _is_box_type(box.box_type):
            break
        boxes.append(box)
        have_codestream = have_codestream or box.box_type == b"jp2c"
        pos = box.end
    return boxes


def read_layout(buf: memoryview | bytes) -> FileLayout:
    """Identifies the file type and finds its codestreams."""
    size = len(buf)
    if bytes(buf[:4]) == SOC_SIZ:
        return FileLayout(False, (), ((0, size),))
    if bytes(buf[:12]) != JP2_SIGNATURE:
        raise CodestreamError(0, "neither a JPEG 2000 codestream (SOC) nor a JP2 file "
                              "(signature box)", not_jpeg2000=True)
    boxes = _top_boxes(buf, size)
    brand = b""
    if len(boxes) > 1 and boxes[1].box_type == b"ftyp" and boxes[1].content_length >= 4:
        brand = bytes(buf[boxes[1].content_offset:boxes[1].content_offset + 4])
    for box in boxes:
        if box.box_type == b"ftbl":
            raise CodestreamError(box.offset, "fragmented codestreams (ftbl boxes) are not served",
                                  unsupported=True)
    streams = _codestream_boxes(buf, boxes)
    if not streams:
        raise CodestreamError(0, "JP2 file without a contiguous codestream (jp2c) box")
    return FileLayout(True, tuple(boxes), tuple((b.content_offset, b.content_length)
                                                for b in streams), brand)
