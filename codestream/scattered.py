"""Codestreams whose bytes are several runs of a file (a DICOM frame split over fragments).

The index is built over a transient contiguous copy of the codestream (one codestream's bytes,
dropped once indexed), then every offset in it is translated to a FILE offset, so serving reads
the file in place as for any other codestream:

- header ranges that cross a run boundary become several ranges (a header bin joins them);
- a packet inside one run is a plain offset shift (the respond hot path slices the file);
- the few packets whose bytes cross a boundary are marked SPLIT and described by the file
  pieces that hold them (`CodestreamIndex.split_spans`); nothing of the file is copied into the
  index. A codestream in one run needs no copy and no translation at all.
"""
from __future__ import annotations

import numpy as np

from .errors import CodestreamError
from .index import SPLIT, CodestreamIndex, index_codestream

# A scattered codestream is copied while it is indexed: refuse absurd sizes up front.
MAX_SCATTERED_BYTES = 1 << 31


def run_starts(runs: np.ndarray) -> np.ndarray:
    """Offset of each run in the concatenation of the runs."""
    starts = np.zeros(len(runs), np.int64)
    if len(runs) > 1:
        np.cumsum(runs[:-1, 1], out=starts[1:])
    return starts


def select_runs(runs: np.ndarray, start: int, length: int) -> np.ndarray:
    """The file runs holding bytes [start, start + length) of the concatenation of `runs`."""
    runs = np.asarray(runs, np.int64).reshape(-1, 2)
    vstart = run_starts(runs)
    total = int(runs[:, 1].sum()) if len(runs) else 0
    if start < 0 or length < 0 or start + length > total:
        raise CodestreamError(-1, f"bytes {start}..{start + length} are outside the "
                              f"{total} bytes of the runs")
    out = []
    k = int(np.searchsorted(vstart, start, side="right")) - 1
    pos, end = start, start + length
    while pos < end:
        off, n = int(runs[k, 0]), int(runs[k, 1])
        skip = pos - int(vstart[k])
        take = min(n - skip, end - pos)
        if take > 0:
            out.append((off + skip, take))
            pos += take
        k += 1
    return np.asarray(out, np.int64).reshape(-1, 2)


def read_runs(buf, runs: np.ndarray, start: int = 0, length: int | None = None) -> bytes:
    """Bytes [start, start + length) of the concatenation of the file runs (a copy)."""
    runs = np.asarray(runs, np.int64).reshape(-1, 2)
    if length is None:
        length = int(runs[:, 1].sum()) - start
    return b"".join(bytes(buf[o:o + n]) for o, n in select_runs(runs, start, length).tolist())


def index_runs(buf, runs: np.ndarray, start: int, length: int, *,
               use_plt: bool = True) -> CodestreamIndex:
    """Indexes the codestream at bytes [start, start + length) of the concatenation of the
    file runs `runs` ((n, 2) file offset, length), with file offsets throughout."""
    own = select_runs(runs, start, length)
    if len(own) == 1:
        off, n = own[0].tolist()
        return index_codestream(buf, off, n, use_plt=use_plt)
    if length > MAX_SCATTERED_BYTES:
        raise CodestreamError(int(own[0, 0]), f"a codestream of {length} bytes in {len(own)} "
                              "pieces is more than we index", unsupported=True)
    copy = read_runs(buf, own)
    try:
        ix = index_codestream(copy, 0, length, use_plt=use_plt)
    except CodestreamError as e:
        # Name the file offset, not the offset in the transient copy.
        where = to_file_offset(own, e.offset) if 0 <= e.offset < length else e.offset
        raise CodestreamError(where, e.reason, unsupported=e.unsupported) from None
    return to_file(ix, own)


def to_file_offset(runs: np.ndarray, v: int) -> int:
    vstart = run_starts(runs)
    k = max(int(np.searchsorted(vstart, v, side="right")) - 1, 0)
    return int(runs[k, 0] + v - vstart[k])


def _split_ranges(runs: np.ndarray, vstart: np.ndarray, off: int, n: int) -> list[tuple[int, int]]:
    """File ranges holding bytes [off, off + n) of the codestream."""
    out = []
    k = int(np.searchsorted(vstart, off, side="right")) - 1
    end = off + n
    while off < end:
        run_end = int(vstart[k] + runs[k, 1])
        take = min(run_end, end) - off
        if take > 0:  # (an empty run holds nothing)
            out.append((int(runs[k, 0] + off - vstart[k]), take))
            off += take
        k += 1
    return out


def to_file(ix: CodestreamIndex, runs: np.ndarray) -> CodestreamIndex:
    """The index `ix` of a codestream held at offset 0 of a contiguous copy, with its offsets
    moved to the file runs `runs` that really hold it (the tile-part table stays relative to
    the codestream's start)."""
    vstart = run_starts(runs)
    main = [r for o, n in ix.main_header_ranges.tolist() for r in _split_ranges(runs, vstart, o, n)]
    tiles = [(t, *r) for t, o, n in ix.tile_header_ranges.tolist()
             for r in _split_ranges(runs, vstart, o, n)]

    pk = dict(ix.packets)
    off, length = pk["offset"], pk["length"]
    first = np.maximum(np.searchsorted(vstart, off, side="right") - 1, 0)
    last = np.maximum(np.searchsorted(vstart, off + np.maximum(length, 1) - 1, side="right") - 1,
                      0)
    split = np.flatnonzero((length > 0) & (first != last))
    new_off = off + (runs[first, 0] - vstart[first])
    spans = []
    if len(split):
        poff, plen = pk["packed_offset"].copy(), pk["packed_length"].copy()
        new_len = length.copy()
        for k in split.tolist():
            po, pn = int(poff[k]), int(plen[k])
            if po >= 0 and pn:
                spans.append((k, -1 - po, pn))  # its packed header first, as in its bin
            for where, n in _split_ranges(runs, vstart, int(off[k]), int(length[k])):
                spans.append((k, where, n))
            poff[k] = SPLIT
            plen[k] = pn + int(length[k])
            new_len[k] = 0
        pk["packed_offset"], pk["packed_length"], pk["length"] = poff, plen, new_len
    pk["offset"] = new_off
    return CodestreamIndex(
        offset=int(runs[0, 0]), length=ix.length, siz=ix.siz, layers=ix.layers,
        tile_mct=ix.tile_mct,
        main_header_ranges=np.asarray(main, np.int64).reshape(-1, 2),
        tile_header_ranges=np.asarray(tiles, np.int64).reshape(-1, 3),
        tiles_present=ix.tiles_present, tile_parts=ix.tile_parts, tcr=ix.tcr,
        precincts=ix.precincts, packets=pk,
        packed_headers=ix.packed_headers, source=ix.source, markers=ix.markers,
        progression=ix.progression, cod_scod=ix.cod_scod, tile_data_bytes=ix.tile_data_bytes,
        padding_bytes=ix.padding_bytes, runs=np.asarray(runs, np.int64).reshape(-1, 2),
        split_spans=np.asarray(spans, np.int64).reshape(-1, 3) if spans else None)
