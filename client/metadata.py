"""The box tree a client holds: JP2-family boxes read back from metadata-bins (15444-9 A.3.6).

Metadata-bin 0 holds the target's top-level boxes; a placeholder box (`phld`) stands for a box
whose contents are in another metadata-bin (for a superbox: its sub-boxes, themselves boxes or
placeholders) or for a codestream (delivered in image data-bins). `box_tree` follows the
placeholders through the bins held; `box_bytes` reassembles a box exactly as the file holds
it (its original header and contents), once every bin it needs is held whole.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from codestream.boxes import SUPERBOXES
from codestream.errors import CodestreamError
from codestream.metabins import PHLD_CODESTREAM, PHLD_CONTENTS, parse_placeholder

__all__ = ["MetaBox", "box_bytes", "box_tree", "find_boxes", "walk_tree"]

MAX_DEPTH = 16  # placeholders nested deeper than this are not followed (a loop, or hostile)


@dataclass
class MetaBox:
    """One box of the tree: its original header, where it is, and what is known of it."""

    box_type: bytes
    header: bytes                 # the original box header (from the bin or the placeholder)
    length: int                   # total length, header included (0: to the end of its container)
    bin_id: int                   # the metadata-bin holding the box, or its placeholder
    contents_bin: int | None = None   # the bin holding its contents (placeholder, Flags 1)
    codestream: int | None = None     # the codestream it stands for (placeholder, Flags 4)
    children: list[MetaBox] | None = None  # sub-boxes, when a superbox's contents are held
    contents: bytes | None = None  # contents of a box held whole (not a superbox's)
    complete: bool = False         # every byte of the box is held
    path: str = ""                 # e.g. "/asoc[0]/xml [1]"

    @property
    def type_name(self) -> str:
        return self.box_type.decode("latin-1")


@dataclass(frozen=True, slots=True)
class _Held:
    data: bytes
    complete: bool


def _held(bins: Mapping) -> dict[int, _Held]:
    """Accepts {bin id: DataBin} (client.bincache) or {bin id: bytes} (whole bins)."""
    out = {}
    for k, b in bins.items():
        if isinstance(b, bytes | bytearray | memoryview):
            out[int(k)] = _Held(bytes(b), True)
        else:
            out[int(k)] = _Held(bytes(b.data), bool(b.complete))
    return out


def box_tree(bins: Mapping) -> list[MetaBox]:
    """The top-level boxes found in metadata-bin 0 and, through placeholders, the bins below.

    `bins` maps bin ids to what is held (client.bincache.DataBin, or bytes for whole bins)."""
    held = _held(bins)
    return _parse_bin(held, 0, "", 0, set())


def _parse_bin(held: dict[int, _Held], bin_id: int, prefix: str, depth: int,
               seen: set[int]) -> list[MetaBox] | None:
    got = held.get(bin_id)
    if got is None or bin_id in seen or depth > MAX_DEPTH:
        return None
    return _parse_boxes(held, got.data, 0, len(got.data), bin_id, prefix, depth,
                        seen | {bin_id})


def _parse_boxes(held, data: bytes, start: int, end: int, bin_id: int, prefix: str,
                 depth: int, seen: set[int]) -> list[MetaBox]:
    out: list[MetaBox] = []
    counts: dict[bytes, int] = {}
    pos = start
    while pos + 8 <= end:
        lbox, tbox = struct.unpack_from(">I4s", data, pos)
        hlen = 8
        if lbox == 1:
            if pos + 16 > end:
                break
            (lbox,) = struct.unpack_from(">Q", data, pos + 8)
            hlen = 16
        length = lbox if lbox else end - pos
        if length < hlen:
            break
        if pos + length > end:
            # Cut by the end of what is held: only its header is known.
            if tbox != b"phld":
                n = counts.get(tbox, 0)
                counts[tbox] = n + 1
                out.append(MetaBox(tbox, bytes(data[pos:pos + hlen]), lbox, bin_id,
                                   path=f"{prefix}/{tbox.decode('latin-1')}[{n}]"))
            break
        body = data[pos + hlen:pos + length]
        if tbox == b"phld":
            box = _from_placeholder(held, body, bin_id, prefix, counts, depth, seen)
        else:
            n = counts.get(tbox, 0)
            counts[tbox] = n + 1
            box = MetaBox(tbox, bytes(data[pos:pos + hlen]), lbox, bin_id,
                          path=f"{prefix}/{tbox.decode('latin-1')}[{n}]")
            if tbox in SUPERBOXES:
                box.children = _parse_boxes(held, data, pos + hlen, pos + length, bin_id,
                                            box.path, depth + 1, seen)
                box.complete = all(c.complete for c in box.children)
            else:
                box.contents = bytes(body)
                box.complete = True
        if box is not None:
            out.append(box)
        pos += length
    return out


def _from_placeholder(held, body: bytes, bin_id: int, prefix: str, counts: dict,
                      depth: int, seen: set[int]) -> MetaBox | None:
    try:
        ph = parse_placeholder(body)
    except CodestreamError:
        return None  # not a placeholder we can read: left out of the tree
    n = counts.get(ph.box_type, 0)
    counts[ph.box_type] = n + 1
    box = MetaBox(ph.box_type, ph.orig_header, ph.box_length, bin_id,
                  path=f"{prefix}/{ph.box_type.decode('latin-1')}[{n}]")
    if ph.flags & PHLD_CODESTREAM:
        box.codestream = ph.codestream
        return box
    if not ph.flags & PHLD_CONTENTS:
        return box
    box.contents_bin = ph.orig_id
    got = held.get(ph.orig_id)
    if got is None:
        return box
    if ph.box_type in SUPERBOXES:
        box.children = _parse_bin(held, ph.orig_id, box.path, depth + 1, seen)
        box.complete = (box.children is not None and got.complete
                        and all(c.complete for c in box.children))
    else:
        box.contents = got.data
        box.complete = got.complete and (
            ph.box_length == 0 or len(got.data) == ph.box_length - ph.header_length)
    return box


def walk_tree(boxes: list[MetaBox] | None) -> Iterator[MetaBox]:
    """Every box of the tree, depth first in file order."""
    for box in boxes or ():
        yield box
        yield from walk_tree(box.children)


def find_boxes(boxes: list[MetaBox], box_type: bytes) -> list[MetaBox]:
    return [b for b in walk_tree(boxes) if b.box_type == box_type]


def box_bytes(box: MetaBox) -> bytes | None:
    """The box as the file holds it (header and contents), or None when a part is missing
    or it is a codestream (whose bytes come from image data-bins)."""
    if box.codestream is not None or not box.complete:
        return None
    if box.children is not None:
        parts = [box_bytes(c) for c in box.children]
        if any(p is None for p in parts):
            return None
        return box.header + b"".join(parts)
    if box.contents is None:
        return None
    return box.header + box.contents
