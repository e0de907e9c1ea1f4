"""Encapsulated Pixel Data (PS3.5 A.4): the items, which fragments make each frame, and where
each frame's codestream is inside its fragments.

Only item headers are read (8 bytes each), from a memory map: the fragment data stay in the
file. Frames are found, in this order of trust:

1. the Extended Offset Table (7FE0,0001), when present;
2. the Basic Offset Table (the first item), when it is not empty;
3. without a table: one fragment per frame when the counts match, all fragments for a single
   frame, or else a new frame at each fragment that starts a codestream (SOC + SIZ) or a JP2
   file, since a fragment never holds data of two frames (A.4).

A table is checked against the fragments (every offset must be an item's first byte, in
increasing order, one per frame); a table that does not fit them is ignored with a warning and
the frames are found as if there were none.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import numpy as np

from codestream.boxes import JP2_SIGNATURE, read_box_header
from codestream.errors import CodestreamError
from codestream.scattered import read_runs

from .errors import DicomError

log = logging.getLogger(__name__)

ITEM = (0xFFFE, 0xE000)
SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
MAX_ITEMS = 50_000_000   # far beyond any real object; bounds the arrays a hostile file claims
SOC_SIZ = b"\xff\x4f\xff\x51"
EOC = b"\xff\xd9"


@dataclass(frozen=True)
class FrameTable:
    """Where each frame's bytes are: fragment data runs (file offset, length), in order;
    frame f (0-based) is runs[starts[f]:starts[f + 1]]."""

    runs: np.ndarray     # (n, 2) int64
    starts: np.ndarray   # (frames + 1,) int64

    @property
    def number_of_frames(self) -> int:
        return len(self.starts) - 1

    def frame_runs(self, f: int) -> np.ndarray:
        return self.runs[int(self.starts[f]):int(self.starts[f + 1])]

    def fragments_per_frame(self) -> np.ndarray:
        return np.diff(self.starts)


def walk_items(buf, pos: int) -> tuple[np.ndarray, np.ndarray]:
    """(item tag offsets, item value lengths) of the items from `pos` to the sequence
    delimiter; DicomError for anything else (a truncated or corrupt item list)."""
    end = len(buf)
    offsets, lengths = [], []
    unpack = struct.Struct("<HHI").unpack_from
    while True:
        if pos + 8 > end:
            raise DicomError(f"truncated: the Pixel Data items end at byte {end} without a "
                             "sequence delimiter")
        group, element, length = unpack(buf, pos)
        if (group, element) == SEQUENCE_DELIMITER:
            break
        if (group, element) != ITEM:
            raise DicomError(f"expected a Pixel Data item at byte {pos}, found "
                             f"({group:04X},{element:04X})")
        if length == 0xFFFFFFFF:
            raise DicomError(f"Pixel Data item at byte {pos} has an undefined length")
        if pos + 8 + length > end:
            raise DicomError(f"truncated: the Pixel Data item at byte {pos} claims {length} "
                             f"bytes, the file ends {end - pos - 8} bytes after its header")
        offsets.append(pos)
        lengths.append(length)
        if len(offsets) > MAX_ITEMS:
            raise DicomError(f"more than {MAX_ITEMS} Pixel Data items")
        pos += 8 + length
    if not offsets:
        raise DicomError("encapsulated Pixel Data without items (not even a Basic Offset Table)")
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


def frame_table(buf, items_offset: int, frames: int, *, extended_offsets: np.ndarray | None = None,
                extended_lengths: np.ndarray | None = None) -> FrameTable:
    """Groups the fragments of the encapsulated Pixel Data starting at `items_offset` into
    `frames` frames."""
    tags, lengths = walk_items(buf, items_offset)
    bot_offset, bot_length = int(tags[0]), int(lengths[0])
    frag_tags, frag_lengths = tags[1:], lengths[1:]
    if len(frag_tags) == 0:
        raise DicomError("encapsulated Pixel Data without fragments")
    runs = np.stack([frag_tags + 8, frag_lengths], axis=1)
    # Offsets in both tables count from the first fragment's item tag.
    rel = frag_tags - frag_tags[0]

    problems = []
    if extended_offsets is not None:
        firsts = _table_starts(extended_offsets, rel, frames, "Extended Offset Table", problems)
        if firsts is not None and extended_lengths is not None and len(extended_lengths) == frames:
            one_each = np.diff(np.append(firsts, len(rel))) == 1
            if not (one_each.all() and (extended_lengths <= frag_lengths[firsts]).all()):
                problems.append("Extended Offset Table lengths do not match its fragments")
                firsts = None
        if firsts is not None:
            return FrameTable(runs, np.append(firsts, len(rel)).astype(np.int64))
    if bot_length:
        if bot_length % 4:
            problems.append(f"the Basic Offset Table is {bot_length} bytes, not a multiple of 4")
        else:
            bot = np.frombuffer(bytes(buf[bot_offset + 8:bot_offset + 8 + bot_length]), "<u4")
            firsts = _table_starts(_unwrap32(bot), rel, frames, "Basic Offset Table", problems)
            if firsts is not None:
                return FrameTable(runs, np.append(firsts, len(rel)).astype(np.int64))
    starts = _starts_without_table(buf, runs, frames)
    if starts is None:
        why = f" ({'; '.join(problems)})" if problems else ""
        raise DicomError(f"cannot tell which of the {len(rel)} fragments belong to which of the "
                         f"{frames} frames{why}")
    for p in problems:
        log.warning("DICOM Pixel Data: %s; frames found from the fragments instead", p)
    return FrameTable(runs, starts)


def _unwrap32(values: np.ndarray) -> np.ndarray:
    """32-bit Basic Offset Table values, unwrapped past 4 GiB (they must increase)."""
    v = values.astype(np.int64)
    if len(v) > 1:
        wraps = np.concatenate(([0], np.cumsum(np.diff(v) < 0)))
        v = v + (wraps << 32)
    return v


def _table_starts(offsets: np.ndarray, rel: np.ndarray, frames: int, name: str,
                  problems: list[str]) -> np.ndarray | None:
    """Fragment index of each frame's first fragment per an offset table, or None (with the
    reason in `problems`) when the table does not fit the fragments."""
    offsets = np.asarray(offsets, np.int64)
    if len(offsets) != frames:
        problems.append(f"the {name} has {len(offsets)} entries for {frames} frames")
        return None
    if offsets[0] != 0 or (len(offsets) > 1 and not (np.diff(offsets) > 0).all()):
        problems.append(f"the {name} does not start at 0 and increase")
        return None
    firsts = np.searchsorted(rel, offsets)
    if (firsts >= len(rel)).any() or not (rel[np.minimum(firsts, len(rel) - 1)] == offsets).all():
        problems.append(f"an entry of the {name} is not the start of a fragment")
        return None
    return firsts.astype(np.int64)


def _starts_without_table(buf, runs: np.ndarray, frames: int) -> np.ndarray | None:
    n = len(runs)
    if frames == 1:
        return np.asarray([0, n], np.int64)
    if n == frames:
        return np.arange(n + 1, dtype=np.int64)
    if n < frames:
        return None
    starts = [k for k, (off, length) in enumerate(runs.tolist()) if _starts_codestream(buf, off,
                                                                                         length)]
    if len(starts) != frames or starts[0] != 0:
        return None
    return np.asarray(starts + [n], np.int64)


def _starts_codestream(buf, off: int, length: int) -> bool:
    """A fragment that begins a frame: SOC + SIZ with a plausible Lsiz, or a JP2 signature."""
    head = bytes(buf[off:off + min(length, 12)])
    if head[:4] == SOC_SIZ and len(head) >= 6:
        lsiz = head[4] << 8 | head[5]
        return lsiz >= 41 and (lsiz - 38) % 3 == 0
    return head == JP2_SIGNATURE


def locate_codestream(buf, runs: np.ndarray) -> tuple[int, int]:
    """(start, length) of the codestream in a frame's bytes (the concatenation of `runs`):
    the frame itself, or the first jp2c box of a JP2 file stored as the frame, without the
    trailing pad byte that makes a fragment's length even."""
    total = int(runs[:, 1].sum())
    head = read_runs(buf, runs, 0, min(total, 12))
    if head[:2] == SOC_SIZ[:2]:
        start, length = 0, total
    elif head == JP2_SIGNATURE:
        start, length = _jp2c(buf, runs, total)
    else:
        raise DicomError("the frame starts with neither a JPEG 2000 codestream (SOC) nor a JP2 "
                         f"signature (first bytes {head[:8].hex(' ')})")
    tail = read_runs(buf, runs, start + max(length - 3, 0), min(length, 3))
    if len(tail) == 3 and tail[2] == 0 and tail[:2] == EOC:
        length -= 1  # the pad after EOC (PS3.5 8.2: odd lengths are padded with one 00h)
    return start, length


def _jp2c(buf, runs: np.ndarray, total: int) -> tuple[int, int]:
    """Content range of the first contiguous codestream box of a JP2 file held by a frame."""
    pos = 0
    while pos < total:
        rest = total - pos
        hdr = read_runs(buf, runs, pos, min(rest, 16))
        if rest < 8 and not hdr.strip(b"\0"):
            break  # the pad after the last box
        try:
            box = read_box_header(hdr, 0, rest)
        except CodestreamError as e:
            raise DicomError(f"JP2 file in the frame: at its byte {pos}: {e.reason}") from None
        if box.box_type == b"jp2c":
            return pos + box.header_length, box.content_length
        pos += box.length
    raise DicomError("JP2 file in the frame without a codestream (jp2c) box")
