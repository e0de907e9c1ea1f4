"""Tile data-bins (15444-9 A.3.3), the image data of JPT-streams: a tile's tile-parts in order.

The tile data-bin of tile t is every tile-part of t, by increasing TPsot, each whole: its SOT
marker segment, its tile-part header, SOD and its packets. The bytes are the file's, except:

- SOT is written afresh with Psot the tile-part's real length and TNsot as the file has it
  (Psot 0, "up to the end of the codestream", is only right for the last tile-part of a file);
- a tile whose packet headers are packed in PPM or PPT marker segments is re-expressed with
  each packet's header in front of its body (after its SOP marker segment, when it has one;
  PPT and PLT left out): the main header data-bin carries no PPM (packet headers belong with
  the packets in JPP-streams, and the main header bin is one bin for both stream types).

A client rebuilds a codestream from the main header data-bin and the tile-parts of the tile
data-bins it holds (codestream.rebuild.rebuild_from_tiles). The layout of the bins is computed
once per index (`tile_bins`, kept on the index): per tile its tile-parts in TPsot order, where
each ends in the bin, and which tile-part holds each packet.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .index import SPLIT, TILE_PART_FIELDS, CodestreamIndex
from .markers import SOD, SOP, SOT
from .scattered import run_starts

__all__ = ["TileBins", "sot_segment", "tile_bins"]

_COL = {name: i for i, name in enumerate(TILE_PART_FIELDS)}
SOT_LENGTH = 12  # SOT marker segment: marker, Lsot, Isot, Psot, TPsot, TNsot
SOP_LENGTH = 6   # SOP marker segment: marker, Lsop, Nsop
_SOD = struct.pack(">H", SOD)


def sot_segment(tile: int, psot: int, tpsot: int, tnsot: int) -> bytes:
    return struct.pack(">HHHIBB", SOT, 10, tile, psot, tpsot, tnsot)


@dataclass(frozen=True)
class TileBins:
    """The tile data-bins of one codestream.

    Tile-parts are numbered by their position in `rows` (rows of `ix.tile_parts` sorted by
    tile, then TPsot): tile t's are positions `first[t]` .. `first[t+1]-1`, and part position q
    spans bytes [start[q], end[q]) of its tile's bin. `packet_part[k]` is the part position
    holding packet k (index row), -1 for none; `packets_before[q]` counts the packets of q's
    tile in its earlier tile-parts. For re-expressed parts, `part_packets[bounds[q]:bounds[q+1]]`
    are q's packets in their order in the codestream (None when no part is re-expressed).
    """

    rows: np.ndarray
    first: np.ndarray
    start: np.ndarray
    end: np.ndarray
    tile: np.ndarray         # per part position: its tile
    packed: np.ndarray       # per part position: re-expressed with inline packet headers
    bin_length: np.ndarray   # per tile
    packet_part: np.ndarray
    packets_before: np.ndarray
    part_packets: np.ndarray | None = None
    bounds: np.ndarray | None = None

    def parts_of(self, t: int) -> range:
        return range(int(self.first[t]), int(self.first[t + 1]))


def tile_bins(ix: CodestreamIndex) -> TileBins:
    """The tile data-bin layout of an index (computed once, then kept on the index)."""
    found = getattr(ix, "_tile_bins", None)
    if found is None:
        found = _layout(ix)
        ix._tile_bins = found
    return found


def relative_offsets(ix: CodestreamIndex, file_offsets: np.ndarray) -> np.ndarray:
    """Offsets in the codestream (0 = its SOC) of bytes at the given file offsets."""
    file_offsets = np.asarray(file_offsets, np.int64)
    if ix.runs is None:
        return file_offsets - ix.offset
    runs = ix.runs
    order = np.argsort(runs[:, 0], kind="stable")
    k = order[np.maximum(np.searchsorted(runs[order, 0], file_offsets, side="right") - 1, 0)]
    return run_starts(runs)[k] + file_offsets - runs[k, 0]


def _layout(ix: CodestreamIndex) -> TileBins:
    tp = ix.tile_parts
    ntiles = ix.num_tiles
    rows = np.lexsort((tp[:, _COL["tpsot"]], tp[:, _COL["tile"]])) if len(tp) else \
        np.zeros(0, np.int64)
    tp_sorted = tp[rows]
    tiles = tp_sorted[:, _COL["tile"]] if len(tp) else np.zeros(0, np.int64)
    counts = np.bincount(tiles, minlength=ntiles)
    first = np.zeros(ntiles + 1, np.int64)
    np.cumsum(counts, out=first[1:])
    packed = tp_sorted[:, _COL["packed"]].astype(bool) if len(tp) else np.zeros(0, bool)
    nparts = len(rows)

    # Which part holds each packet: the last part (in the order of the codestream) whose
    # data starts at or before the packet's body.
    pk = ix.packets
    npk = len(pk["offset"])
    packet_part = np.full(npk, -1, np.int32)
    if nparts and npk:
        by_pos = np.argsort(tp_sorted[:, _COL["header_end"]], kind="stable")
        data_starts = tp_sorted[by_pos, _COL["header_end"]]
        rel = relative_offsets(ix, pk["offset"])
        at = np.searchsorted(data_starts, rel, side="right") - 1
        ok = at >= 0
        packet_part[ok] = by_pos[at[ok]]

    # Bytes each part takes in its bin.
    sizes = (tp_sorted[:, _COL["data_end"]] - tp_sorted[:, _COL["sot"]]).astype(np.int64)
    if packed.any():
        sizes = _packed_sizes(ix, tp_sorted, packed, packet_part, sizes)
    start = _before_in_tile(sizes, first, counts)
    end = start + sizes
    bin_length = np.zeros(ntiles, np.int64)
    nz = counts > 0
    bin_length[nz] = end[first[1:][nz] - 1]
    per_part = np.bincount(packet_part[packet_part >= 0], minlength=nparts).astype(np.int64)
    part_packets = bounds = None
    if packed.any():
        # Packed headers are in codestream order: sorting by them orders each part's packets.
        order = np.lexsort((_packed_offsets(ix), packet_part))
        part_packets = order[packet_part[order] >= 0]
        bounds = np.zeros(nparts + 1, np.int64)
        np.cumsum(per_part, out=bounds[1:])
    return TileBins(rows, first, start, end, tiles.astype(np.int64), packed, bin_length,
                    packet_part, _before_in_tile(per_part, first, counts), part_packets, bounds)


def _packed_offsets(ix: CodestreamIndex) -> np.ndarray:
    """Where each packet's packed header is in `ix.packed_headers`, also for packets split
    across file runs (SPLIT: their first span is the header, see codestream.scattered)."""
    key = ix.packets["packed_offset"].astype(np.int64)
    spans = ix.split_spans
    if spans is not None and len(spans):
        ks, first = np.unique(spans[:, 0], return_index=True)
        where = spans[first, 1]
        header = where < 0
        key[ks[header]] = -1 - where[header]
    return key


def _before_in_tile(values: np.ndarray, first: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per part position, the sum of `values` over the earlier parts of its tile."""
    if len(values) == 0:
        return np.zeros(0, np.int64)
    csum = np.cumsum(values) - values  # over all earlier parts
    starts = first[:-1][counts > 0]
    return csum - np.repeat(csum[starts], counts[counts > 0])


def _packed_sizes(ix: CodestreamIndex, tp_sorted: np.ndarray, packed: np.ndarray,
                  packet_part: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Sizes of re-expressed parts: SOT, the header segments but PLT/PPT, SOD, and every
    packet's SOP, header and body."""
    nparts = len(tp_sorted)
    pk = ix.packets
    whole = (pk["packed_length"] + pk["length"] + SOP_LENGTH * pk["sop"]).astype(np.int64)
    ok = packet_part >= 0
    packet_bytes = np.bincount(packet_part[ok], weights=whole[ok], minlength=nparts)
    header_bytes = np.zeros(nparts, np.int64)
    th = ix.tile_header_ranges
    if len(th):
        rel = relative_offsets(ix, th[:, 1])
        by_pos = np.argsort(tp_sorted[:, _COL["sot"]], kind="stable")
        at = by_pos[np.searchsorted(tp_sorted[by_pos, _COL["sot"]], rel, side="right") - 1]
        header_bytes = np.bincount(at, weights=th[:, 2], minlength=nparts).astype(np.int64)
    rebuilt = SOT_LENGTH + header_bytes + len(_SOD) + packet_bytes.astype(np.int64)
    return np.where(packed, rebuilt, sizes)


def tile_part_pieces(source, cs: int, bins: TileBins, q: int, a: int, b: int,
                     ix: CodestreamIndex | None = None) -> list:
    """Bytes [a, b) of part position q (offsets within the part) as buffers; `ix`: the index
    `bins` were made from (default: the source's current one)."""
    if ix is None:
        ix = source.codestreams[cs]
    row = ix.tile_parts[bins.rows[q]]
    t, tpsot, tnsot = int(row[_COL["tile"]]), int(row[_COL["tpsot"]]), int(row[_COL["tnsot"]])
    size = int(bins.end[q] - bins.start[q])
    sot = sot_segment(t, size, tpsot, tnsot)
    if not bins.packed[q]:
        out = []
        if a < SOT_LENGTH:
            out.append(sot[a:min(b, SOT_LENGTH)])
        s = int(row[_COL["sot"]])
        lo, hi = s + max(a, SOT_LENGTH), s + b
        if hi > lo:
            out.extend(source.codestream_pieces(cs, lo, hi))
        return out
    return _cut(_packed_part(source, ix, bins, q, sot, row), a, b)


def _packed_part(source, ix: CodestreamIndex, bins: TileBins, q: int, sot: bytes,
                 row) -> list:
    """The pieces of a re-expressed part: SOT, header segments but PLT/PPT, SOD, packets."""
    out: list = [sot]
    th = ix.tile_header_ranges  # (the tile-part header segments but PLT and PPT)
    t = int(row[_COL["tile"]])
    lo, hi = int(row[_COL["sot"]]), int(row[_COL["header_end"]])
    if len(th):
        mine = th[th[:, 0] == t]
        rel = relative_offsets(ix, mine[:, 1])
        for (_, off, n), r in zip(mine.tolist(), rel.tolist(), strict=True):
            if lo <= r < hi:
                out.append(source.view[off:off + n])
    out.append(_SOD)
    ks = bins.part_packets[int(bins.bounds[q]):int(bins.bounds[q + 1])]
    pk = ix.packets
    # Nsop counts the tile's packets from 0: those of its earlier tile-parts come first.
    for n, k in enumerate(ks.tolist(), start=int(bins.packets_before[q])):
        if pk["sop"][k]:
            out.append(struct.pack(">HHH", SOP, 4, n & 0xFFFF))
        po = int(pk["packed_offset"][k])
        if po == SPLIT:
            out.extend(source._split_pieces(ix, k, 0, int(pk["packed_length"][k])))
            continue
        if po >= 0:
            out.append(ix.packed_headers[po:po + int(pk["packed_length"][k])])
        off = int(pk["offset"][k])
        out.append(source.view[off:off + int(pk["length"][k])])
    return out


def _cut(pieces: list, a: int, b: int) -> list:
    out, pos = [], 0
    for p in pieces:
        n = len(p)
        s, e = max(a, pos), min(b, pos + n)
        if s < e:
            out.append(p[s - pos:e - pos])
        pos += n
        if pos >= b:
            break
    return out
