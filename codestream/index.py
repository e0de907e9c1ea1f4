"""The precinct index of a codestream: where every packet of every precinct is, as numpy arrays.

Packets are located from PLT marker segments when they are present and add up exactly to the
tile data; otherwise by decoding packet headers (packets.py), with headers taken from PPM/PPT
when the file packs them there.

Decoding every packet header of a large file without PLT takes seconds (a 16384² RGB image in
64² precincts has 2.1M packets). When the resolution is the outermost loop of a tile's
progression (RLCP, RPCL, no POC), the packets of its lowest resolutions come first: an index
can then be built for the lowest `resolutions` only (`index_codestream(..., resolutions=n)`),
decoding that prefix of each tile and skipping the rest of it (tile-part lengths say where the
next tile starts). Such an index says so (`resolutions_indexed`); serving a window that needs
more resolutions first indexes further (`codestream.source.Source.index_codestreams`).

The geometry and packet order of all tiles are worked out at once (numpy, tiles that share
their coding parameters together), so a file of many tiny tiles costs what its packets cost,
not a Python pass over each tile's structures.
"""
from __future__ import annotations

import logging
import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .allocation import result_column
from .errors import CodestreamError
from .geometry import (
    ResolutionRows,
    precinct_band_grid_rows,
    precinct_band_grids,
    precinct_id,
    resolution_grids,
    resolution_rows,
    tile_bounds,
    tile_component_bounds,
)
from .markers import Cod, CodingStyle, PocEntry, Siz
from .native import native_decoder
from .packets import MAX_LBLOCK, MAX_PASSES, MAX_ZERO_BITPLANES, BitReader, PrecinctState
from .parse import CodestreamLayout, TileHeaders, parse_codestream, tile_coding
from .progression import packet_sequence, precincts_of_rows

log = logging.getLogger(__name__)

# Bounds on what a header may claim beyond the data present (see _Builder._claim and
# index_codestream): rows of the precinct and resolution tables, and tiles without tile-parts.
ROW_MARGIN = 1 << 16
PAUSE_EVERY = (1 << 12) - 1  # `pause` is called once per 4096 packet headers decoded
ABSENT_TILE_FACTOR = 4
ABSENT_TILE_MARGIN = 1024
# The C decoder keeps precinct state in plain arrays: a tag tree of more nodes, or more live
# state in a tile, makes it hand the tile to Python (whose large trees are sparse).
NATIVE_MAX_NODES = 1 << 22
NATIVE_MAX_BYTES = 1 << 30
# Tiles of fewer packets are decoded in Python: the C call's set-up (the code-block grids of
# the tile's precincts, worked out with numpy) costs more than it saves there (a file of
# 62,500 one-pixel tiles).
NATIVE_MIN_PACKETS = 64

# Columns of the per (tile, component, resolution) table.
TCR_FIELDS = ("t", "c", "r", "levels", "x0", "y0", "x1", "y1", "ppx", "ppy", "npw", "nph",
              "prec_base", "s_base", "reversible")
PRECINCT_FIELDS = ("id", "t", "c", "r", "p", "x0", "y0", "x1", "y1", "gx0", "gy0", "gx1", "gy1",
                   "pkt_start", "pkt_count", "bin_length")
PACKET_FIELDS = ("precinct", "layer", "offset", "length", "header_length", "packed_offset",
                 "packed_length", "sop", "bin_end")
# packed_offset of a packet whose bytes cross a boundary between the file runs that hold a
# scattered codestream (a DICOM frame split over fragments, see scattered.py): its bytes are the
# rows of `CodestreamIndex.split_spans` for that packet, its `length` is 0 and its
# `packed_length` is its whole size (so servers take the assembled path, never one file run).
SPLIT = -2
# Columns of the tile-part table (`CodestreamIndex.tile_parts`), offsets relative to the
# codestream's first byte (SOC): where the SOT marker is, where the tile-part header ends (just
# after SOD) and where its data ends; `packed` is 1 for a tile whose packet headers are packed
# in PPM/PPT marker segments.
TILE_PART_FIELDS = ("tile", "tpsot", "tnsot", "sot", "header_end", "data_end", "packed")
# The packet columns located tile by tile (then put in (precinct, layer) order).
LOCATED_FIELDS = ("offset", "length", "header_length", "packed_offset", "packed_length")
PACKET_DTYPES = {"precinct": np.int32, "layer": np.int32, "offset": np.int64, "length": np.int64,
                 "header_length": np.int32, "packed_offset": np.int64, "packed_length": np.int32,
                 "sop": np.uint8, "bin_end": np.int64}


@dataclass
class CodestreamIndex:
    """Everything needed to serve one codestream, held in numpy arrays (structure of arrays)."""

    offset: int
    length: int
    siz: Siz
    layers: np.ndarray           # per tile: number of quality layers
    tile_mct: np.ndarray         # per tile: MCT flag of the tile's COD
    main_header_ranges: np.ndarray   # (n, 2) offset, length
    tile_header_ranges: np.ndarray   # (n, 3) tile, offset, length (in order per tile)
    tiles_present: np.ndarray    # per tile: 1 if it has tile-parts
    tile_parts: np.ndarray       # (n, 7) TILE_PART_FIELDS per tile-part, in file order
    tcr: dict[str, np.ndarray]
    precincts: dict[str, np.ndarray]
    packets: dict[str, np.ndarray]
    packed_headers: bytes        # PPM/PPT packet headers, referenced by packed_offset
    source: str                  # "plt", "headers" or "mixed": how packets were located
    markers: tuple[str, ...]
    progression: int
    cod_scod: int
    tile_data_bytes: int         # bytes of packet data in tile-parts (for accounting)
    padding_bytes: int = 0       # bytes after a tile's last packet (encoder padding)
    # A codestream whose bytes are not one run of the file (fragments of a DICOM frame):
    # (n, 2) file offset, length of the runs that hold it, in order; None: the one run
    # [offset, offset + length). All offsets in the index are file offsets either way.
    runs: np.ndarray | None = None
    # (m, 3) packet row, where, length: the pieces of the packets marked SPLIT, in order;
    # `where` >= 0 is a file offset, < 0 a run of packed_headers starting at -1 - where.
    split_spans: np.ndarray | None = None
    # The packets of the lowest `resolutions_indexed` resolutions of every tile are located,
    # those above are not (their precincts show no packets yet); None: every packet is.
    resolutions_indexed: int | None = None

    @property
    def num_tiles(self) -> int:
        return self.siz.num_tiles

    @property
    def num_components(self) -> int:
        return self.siz.num_components

    @cached_property
    def max_layers(self) -> int:
        return int(self.layers.max()) if len(self.layers) else 0

    @property
    def max_discard(self) -> int:
        """The most resolution levels a request may discard: the fewest decomposition levels
        of any tile-component (COD/COC may differ per component), since a decoder cannot drop
        more levels than a tile-component has (OpenJPEG refuses to)."""
        return int(self.tcr["levels"].min()) if len(self.tcr["levels"]) else 0


def _joined(chunks: list, dtype: type) -> np.ndarray:
    """Arrays (or array.array buffers) of `dtype` one after the other, as one array."""
    arrays = [np.frombuffer(c, dtype) if isinstance(c, array) else c for c in chunks if len(c)]
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype)


def _cut(chunks: list, n: int) -> None:
    """Keeps the first `n` items of a list of chunks (arrays or array.arrays)."""
    for i, c in enumerate(chunks):
        if n <= len(c):
            if isinstance(c, array):
                del c[n:]
            else:
                chunks[i] = c[:n]
            del chunks[i + 1:]
            return
        n -= len(c)


def _vbas_values(data: np.ndarray) -> np.ndarray | None:
    """The Iplt values of concatenated PLT bodies (7 bits a byte, high bit = more bytes), or
    None when the last value is cut off."""
    if len(data) == 0:
        return np.zeros(0, np.int64)
    last = (data & 0x80) == 0  # the last byte of each value
    if not last[-1]:
        return None
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if int((ends - starts).max()) > 8:  # over 56 bits: no packet is that long
        return None
    # Each byte contributes its 7 bits shifted by 7 x (bytes after it in its value).
    owner = np.repeat(np.arange(len(ends)), ends - starts + 1)
    shift = 7 * (ends[owner] - np.arange(len(data)))
    return np.add.reduceat((data & 0x7F).astype(np.int64) << shift, starts)


def _plt_lengths(buf, th: TileHeaders) -> list[np.ndarray] | None:
    """Packet lengths per tile-part from PLT, or None when the PLT does not decode or does not
    say which packets each tile-part holds."""
    by_part: dict[int, list[tuple[int, object]]] = {}
    for part_no, z, seg in th.plt:
        by_part.setdefault(part_no, []).append((z, seg))
    out: list[np.ndarray] = []
    for part_no in range(len(th.parts)):
        segs = sorted(by_part.get(part_no, []), key=lambda zs: zs[0])
        data = np.concatenate([np.frombuffer(buf, np.uint8, seg.end - seg.body_offset - 1,
                                             seg.body_offset + 1) for _, seg in segs]
                              or [np.zeros(0, np.uint8)])
        lengths = _vbas_values(data)
        if lengths is None:
            return None  # the last length is cut off: the PLT cannot be trusted
        # Kakadu reserves PLT space with zero entries at the end.
        nonzero = np.flatnonzero(lengths)
        out.append(lengths[:nonzero[-1] + 1] if len(nonzero) else lengths[:0])
    if all(part_no in by_part for part_no in range(len(th.parts))):
        return out
    # Grok writes the lengths of all the tile's packets in the PLT of its first tile-part
    # and none in the others: split them where the tile-parts' data ends.
    return _split_by_tile_parts(np.concatenate(out), th)


def _split_by_tile_parts(lengths: np.ndarray, th: TileHeaders) -> list[np.ndarray] | None:
    """A tile's packet lengths as the runs that fill each of its tile-parts exactly, or None
    when they do not (the PLT then describes something else)."""
    ends = np.cumsum(lengths)
    cuts = np.cumsum([part.data_end - part.header_end for part in th.parts])
    counts = np.searchsorted(ends, cuts, side="right")  # packets ending by each cut
    reached = np.where(counts > 0, ends[np.maximum(counts - 1, 0)] if len(ends) else 0, 0)
    if not np.array_equal(reached, cuts) or int(counts[-1]) != len(lengths):
        return None
    return np.split(lengths, counts[:-1])


def _ppm_chunks(buf, layout: CodestreamLayout) -> dict[int, bytes]:
    """PPM packet-header bytes per tile-part (keyed by SOT offset)."""
    if not layout.ppm:
        return {}
    stream = b"".join(bytes(buf[seg.body_offset + 1:seg.end]) for _, seg in layout.ppm)
    # Where each PPM segment's data starts in `stream`, to name the segment an error is in.
    starts = np.cumsum([0] + [seg.end - seg.body_offset - 1 for _, seg in layout.ppm])

    def segment_at(pos: int) -> int:
        k = min(int(np.searchsorted(starts, pos, side="right")) - 1, len(layout.ppm) - 1)
        return layout.ppm[k][1].offset

    chunks: dict[int, bytes] = {}
    pos = 0
    for part in layout.tile_parts:
        if pos + 4 > len(stream):
            raise CodestreamError(layout.ppm[-1][1].offset,
                                  "PPM: fewer Nppm chunks than tile-parts")
        (n,) = struct.unpack_from(">I", stream, pos)
        if pos + 4 + n > len(stream):
            raise CodestreamError(segment_at(pos), f"PPM: Nppm {n} runs past the PPM data")
        chunks[part.sot_offset] = stream[pos + 4:pos + 4 + n]
        pos += 4 + n
    return chunks


def _after_eph(buf, pos: int, end: int, t: int, where: int | None = None) -> int:
    """The position after the EPH marker that must end a packet header when COD announces EPH
    markers (T.800 A.8.2); a header without one is corrupt (and OpenJPEG refuses it). `where`
    is the file offset to name when `buf` is not the file (packed headers)."""
    if pos + 2 > end or buf[pos] != 0xFF or buf[pos + 1] != 0x92:
        raise CodestreamError(pos if where is None else where, f"tile {t}: packet header not "
                              "followed by EPH (COD announces EPH markers)")
    return pos + 2


# Packets a batch of tiles may hold while their order is worked out (bounds the memory of the
# sort keys; a tile is never split).
BATCH_PACKETS = 1 << 18


def tile_pocs(layout: CodestreamLayout, t: int) -> list:
    """The progression changes that order tile t's packets.

    T.800 (A.6.6, Table A.2): a tile-part POC overrides the main header's for its tile; that
    is what conforming encoders mean, and how the tile's packets are read here. One exception:
    Grok's encoder (before its fix for issue #435, e.g. Grok 10 in Debian) repeats the main
    header's list in every tile's first tile-part, with the same volumes and wrong
    progressions (all LRCP). Its packets follow the main list, and OpenJPEG, which appends tile
    entries to the main ones, decodes such files. A tile list whose volumes are the main
    list's, entry by entry, is read as that copy: the main list orders the tile."""
    main, own = layout.main.pocs, layout.tiles[t].markers.pocs
    if not own or (main and [_volume(p) for p in own] == [_volume(p) for p in main]):
        return main
    return own


def _volume(poc: PocEntry) -> tuple[int, int, int, int, int]:
    """What a POC entry covers, without its progression."""
    return poc.rs, poc.cs, poc.lye, poc.re, poc.ce


@dataclass
class _CodingGroup:
    """Tiles that share their coding parameters (COD, per-component styles, POC): their
    geometry and packet order are worked out together."""

    tiles: np.ndarray
    cod: Cod
    styles: list[CodingStyle]
    pocs: list


def _coding_groups(layout: CodestreamLayout) -> list[_CodingGroup]:
    """The main header's coding for every tile whose headers change nothing, one group per tile
    whose headers carry its own COD, COC or POC."""
    siz = layout.siz
    own = sorted(t for t, th in layout.tiles.items()
                 if th.markers.cod is not None or th.markers.cocs or th.markers.pocs)
    plain = np.setdiff1d(np.arange(siz.num_tiles, dtype=np.int64), own, assume_unique=True)
    groups = []
    if len(plain):
        cod, styles = tile_coding(layout, int(plain[0]))
        groups.append(_CodingGroup(plain, cod, styles, layout.main.pocs))
    for t in own:
        cod, styles = tile_coding(layout, t)
        groups.append(_CodingGroup(np.asarray([t], np.int64), cod, styles,
                                   tile_pocs(layout, t)))
    return groups


def _precinct_axis(r0: np.ndarray, r1: np.ndarray, pp: np.ndarray, n: np.ndarray,
                   d: np.ndarray, shift: np.ndarray, tc0: np.ndarray, tc1: np.ndarray
                   ) -> tuple[np.ndarray, ...]:
    """Along one axis, per resolution row (its bounds r0, r1, precinct exponent pp, n precincts
    along the axis, the component's subsampling d, levels above it `shift`, the
    tile-component's bounds tc0, tc1): (where each row's entries start, then per precinct
    column (or row) of each resolution row: its start and end in the resolution, and on the
    reference grid, clipped to the tile-component's footprint)."""
    base = np.cumsum(n) - n
    row = np.repeat(np.arange(len(n)), n)
    k = np.arange(len(row), dtype=np.int64) - base[row]
    r0, r1, pp = r0[row], r1[row], pp[row]
    lo = np.maximum(((r0 >> pp) + k) << pp, r0)
    hi = np.minimum(((r0 >> pp) + k + 1) << pp, r1)
    d, s = d[row], d[row] << shift[row]
    return base, lo, hi, np.maximum(lo * s, tc0[row] * d), np.minimum(hi * s, tc1[row] * d)


class _Builder:
    """Builds the index of one codestream: the geometry of every tile at once (numpy, tiles
    sharing their coding parameters together), then the packets of each tile that has data,
    located from PLT or by decoding packet headers, in codestream order; the packets are put
    in (precinct, layer) order at the end."""

    def __init__(self, buf, layout: CodestreamLayout, *, use_plt: bool, verify_plt: bool,
                 resolutions: int | None = None,
                 pause: Callable[[], None] | None = None) -> None:
        self.buf = buf
        self.pause = pause
        self.decoded = 0  # packet headers decoded (pause is called every PAUSE_EVERY + 1)
        self.resolutions = resolutions
        # Per tile: only its packets below `resolutions` are located (see _prefix_tiles).
        self.partial = np.zeros(layout.siz.num_tiles, bool)
        self.layout = layout
        self.use_plt = use_plt
        self.verify_plt = verify_plt
        self.siz = layout.siz
        self.packed = bytearray()
        self.sources: set[str] = set()
        self.ppm = _ppm_chunks(buf, layout)
        self.data_bytes = 0
        self.padding_bytes = 0
        self.packed_tiles: set[int] = set()
        self.row_budget = ROW_MARGIN + (layout.end - layout.offset)
        # Located packets in codestream order, tile after tile: per column, a list of chunks
        # joined once by _finish: numpy arrays (a tile's, from C or PLT) and array.arrays that
        # the Python decoder grows packet by packet, over as many tiles as it decodes in a row.
        self.located: dict[str, list] = {k: [] for k in LOCATED_FIELDS}
        self.located_sop: list = []
        self._growing: tuple[array, ...] | None = None  # the last array.array chunks
        self.native = native_decoder()  # read once: a file may have 60,000+ small tiles
        self.located_count = np.zeros(self.siz.num_tiles, np.int64)  # per tile

    # --- geometry -------------------------------------------------------------------------
    def _claim(self, groups: list[_CodingGroup]) -> None:
        """Refuses (as malformed, not unsupported) a header that claims more precinct and
        resolution rows than the file could hold: every precinct of a complete codestream has
        at least one packet of at least one byte, so the rows stay below the codestream's
        length (plus a margin). Counted before anything is allocated per row, so memory and
        time follow the file, not what its header claims."""
        per_tile = np.zeros(self.siz.num_tiles, np.int64)
        for g in groups:
            per_tile[g.tiles] = sum(s.levels + 1 for s in g.styles)
        self._refuse_past_budget(per_tile.astype(np.float64))

    def _refuse_past_budget(self, rows_per_tile: np.ndarray) -> None:
        claimed = np.cumsum(rows_per_tile)
        if len(claimed) and claimed[-1] > self.row_budget:
            t = int(np.argmax(claimed > self.row_budget))
            raise CodestreamError(self.layout.offset, f"the header claims more precincts (over "
                                  f"{int(claimed[t])} by tile {t}) than the codestream's "
                                  f"{self.layout.end - self.layout.offset} bytes can hold")

    def _geometry(self, groups: list[_CodingGroup]) -> ResolutionRows:
        """The resolution rows of every tile-component, in (tile, component, resolution)
        order, after checking the precincts they claim fit the file."""
        self._claim(groups)
        parts = [resolution_rows(self.siz, g.tiles, g.styles) for g in groups]
        if len(parts) == 1:
            rows = parts[0]
        else:
            cat = {f: np.concatenate([getattr(p, f) for p in parts])
                   for f in ResolutionRows.__slots__}
            order = np.argsort(cat["t"], kind="stable")
            rows = ResolutionRows(**{f: v[order] for f, v in cat.items()})
        # Precincts plus one per resolution row, tile by tile (floats: a claimed count may
        # not fit in 64 bits).
        claimed = rows.npw.astype(np.float64) * rows.nph + 1
        self._refuse_past_budget(np.bincount(rows.t, weights=claimed,
                                             minlength=self.siz.num_tiles))
        return rows

    def _tcr_and_precincts(self, rows: ResolutionRows, reversible: np.ndarray
                           ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        siz = self.siz
        counts = rows.npw * rows.nph
        prec_base = np.cumsum(counts) - counts
        # s counts a tile-component's precincts from resolution 0 up (Eq. A-1).
        first = np.ones(len(rows), bool)
        first[1:] = (rows.t[1:] != rows.t[:-1]) | (rows.c[1:] != rows.c[:-1])
        comp_base = np.maximum.accumulate(np.where(first, prec_base, 0))
        s_base = prec_base - comp_base
        tcr = {"t": rows.t, "c": rows.c, "r": rows.r, "levels": rows.levels, "x0": rows.x0,
               "y0": rows.y0, "x1": rows.x1, "y1": rows.y1, "ppx": rows.ppx, "ppy": rows.ppy,
               "npw": rows.npw, "nph": rows.nph, "prec_base": prec_base, "s_base": s_base,
               "reversible": reversible}
        tcr = {k: np.ascontiguousarray(v, np.int64) for k, v in tcr.items()}
        total = int(counts.sum())
        grp = np.repeat(np.arange(len(rows)), counts)
        self.tcr, self.tcr_of_precinct = tcr, grp  # for the code-block grids (_precinct_grids)
        p = np.arange(total, dtype=np.int64) - np.repeat(prec_base, counts)
        npw = rows.npw[grp]
        px, py = p % npw, p // npw
        # A precinct's bounds across depend on its column alone, and down on its row: worked
        # out per column and per row of each resolution row, then gathered per precinct.
        shift = rows.levels - rows.r
        dx = np.asarray([cm.dx for cm in siz.components], np.int64)[rows.c]
        dy = np.asarray([cm.dy for cm in siz.components], np.int64)[rows.c]
        xs = _precinct_axis(rows.x0, rows.x1, rows.ppx, rows.npw, dx, shift, rows.tcx0,
                            rows.tcx1)
        ys = _precinct_axis(rows.y0, rows.y1, rows.ppy, rows.nph, dy, shift, rows.tcy0,
                            rows.tcy1)
        xi = xs[0][grp] + px
        yi = ys[0][grp] + py
        del px, py
        precincts = {
            "id": precinct_id(rows.t[grp], rows.c[grp], s_base[grp] + p, siz.num_components,
                              siz.num_tiles),
            "t": rows.t.astype(np.int32)[grp], "c": rows.c.astype(np.int32)[grp],
            "r": rows.r.astype(np.int32)[grp], "p": p,
            "x0": xs[1][xi], "y0": ys[1][yi], "x1": xs[2][xi], "y1": ys[2][yi],
            # On the reference grid, clipped to the tile-component's footprint.
            "gx0": xs[3][xi], "gy0": ys[3][yi], "gx1": xs[4][xi], "gy1": ys[4][yi],
        }
        return tcr, precincts

    # --- packet order -----------------------------------------------------------------------
    def _sequences(self, groups: list[_CodingGroup], rows: ResolutionRows,
                   prec_base: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The packets of every tile that has tile-parts, in codestream order, tile after tile:
        (precinct rows, layers, where each tile's packets start: num_tiles + 1 bounds). Tiles
        of a group are ordered in batches of at most BATCH_PACKETS packets (a tile whole)."""
        siz = self.siz
        present = np.zeros(siz.num_tiles, bool)
        present[list(self.layout.tiles)] = True
        counts = rows.npw * rows.nph
        row_start = np.searchsorted(rows.t, np.arange(siz.num_tiles + 1))
        csum = np.concatenate(([0], np.cumsum(counts)))
        per_tile = csum[row_start[1:]] - csum[row_start[:-1]]  # precincts of each tile
        tx0, ty0, _, _ = tile_bounds(siz, rows.t)
        subsampling = [(cm.dx, cm.dy) for cm in siz.components]
        packets = np.zeros(siz.num_tiles, np.int64)  # of each tile
        prefix = self._prefix_tiles(groups)
        if prefix.any():
            # Those tiles' sequences are of their lowest resolutions alone (resolution
            # outermost: the prefix of the whole sequence, a POC-like restriction).
            above = rows.r >= self.resolutions
            held = np.bincount(rows.t[above], weights=counts[above], minlength=siz.num_tiles)
            self.partial = prefix & (held > 0)
            left_out = self.partial[rows.t] & above
        else:
            left_out = None
        seq_rows: list[np.ndarray] = []
        seq_layers: list[np.ndarray] = []
        seq_tiles: list[np.ndarray] = []
        for g in groups:
            tiles = g.tiles[present[g.tiles]]
            weights = np.cumsum(per_tile[tiles] * g.cod.layers)
            start = 0
            while start < len(tiles):
                base = weights[start - 1] if start else 0
                stop = max(start + 1, int(np.searchsorted(weights, base + BATCH_PACKETS,
                                                          side="right")))
                batch = tiles[start:stop]
                start = stop
                lo, hi = row_start[batch], row_start[batch + 1]
                sel = np.repeat(lo - np.cumsum(hi - lo) + (hi - lo), hi - lo) + \
                    np.arange(int((hi - lo).sum()))
                if left_out is not None:
                    sel = sel[~left_out[sel]]
                sub = ResolutionRows(**{f: getattr(rows, f)[sel]
                                        for f in ResolutionRows.__slots__})
                prec = precincts_of_rows(sub, subsampling, (tx0[sel], ty0[sel]))
                if not len(prec.comp):
                    continue
                global_rows = np.repeat(prec_base[sel], counts[sel]) + prec.index
                seq, layer = packet_sequence(prec, g.cod.layers, g.cod.progression, g.pocs)
                if np.array_equal(global_rows, np.arange(len(global_rows))):
                    seq_rows.append(seq)  # rows from 0, all of them (one tile): as they are
                else:
                    seq_rows.append(global_rows[seq])
                seq_layers.append(layer.astype(np.int32))
                del layer
                if len(groups) > 1:
                    seq_tiles.append(prec.tile[seq])
                # Packets of each tile: of each precinct, summed by tile (no per-packet array).
                per_precinct = np.bincount(seq, minlength=len(prec.tile))
                packets += np.bincount(prec.tile, weights=per_precinct,
                                       minlength=siz.num_tiles).astype(np.int64)
                del seq
        if not seq_rows:
            e = np.zeros(0, np.int64)
            return e, e.astype(np.int32), np.zeros(siz.num_tiles + 1, np.int64)
        if len(seq_rows) == 1:  # one batch (a single large tile): not copied
            rows_all, layers_all = seq_rows.pop(), seq_layers.pop()
        else:
            rows_all, layers_all = np.concatenate(seq_rows), np.concatenate(seq_layers)
        if len(groups) > 1:
            order = np.argsort(np.concatenate(seq_tiles), kind="stable")  # tile after tile
            rows_all, layers_all = rows_all[order], layers_all[order]
        bounds = np.zeros(siz.num_tiles + 1, np.int64)
        np.cumsum(packets, out=bounds[1:])
        return rows_all, layers_all, bounds

    def _prefix_tiles(self, groups: list[_CodingGroup]) -> np.ndarray:
        """Per tile: True when only its lowest `resolutions` resolutions are to be located:
        they come first in its sequence (RLCP, RPCL without POC) and its packets are found by
        decoding headers (PLT locates a whole tile at once)."""
        prefix = np.zeros(self.siz.num_tiles, bool)
        if self.resolutions is None:
            return prefix
        for g in groups:
            if not g.pocs and g.cod.progression in (1, 2):
                prefix[g.tiles] = True
        for t, th in self.layout.tiles.items():
            packed = bool(th.ppt) or bool(self.ppm)
            if self.use_plt and th.plt and not packed:
                prefix[t] = False
        return prefix

    # --- locating packets -----------------------------------------------------------------
    def _locate_tile(self, t: int, cod: Cod, styles: list[CodingStyle], seq_p: np.ndarray,
                     seq_l: np.ndarray) -> None:
        th = self.layout.tiles[t]
        tile_bytes = sum(part.data_end - part.header_end for part in th.parts)
        self.data_bytes += tile_bytes
        # With packed headers (PPM/PPT) the headers must be decoded anyway to split the packed
        # stream packet by packet, and decoding them also gives the body lengths PLT would.
        packed = bool(th.ppt) or bool(self.ppm)
        if packed:
            self.packed_tiles.add(t)
        if tile_bytes == 0 and not packed:
            # Every packet is at least one byte (its header) unless headers are packed
            # elsewhere: tile-parts without a byte of data are cut or corrupt.
            raise CodestreamError(th.parts[0].sot_offset, f"tile {t}: its tile-parts hold no "
                                  "packet data")
        plt = _plt_lengths(self.buf, th) if (self.use_plt and th.plt and not packed) else None
        located = None
        if plt is not None:
            located = self._locate_with_plt(th, plt, len(seq_p), cod)
            if located is None:
                log.warning("tile %d: PLT does not match the tile data; decoding packet headers", t)
            elif self.verify_plt:
                mark = sum(len(c) for c in self.located_sop)
                self._decode_headers(t, th, cod, styles, seq_p, seq_l)
                decoded = [_joined(self.located[k], np.int64)[mark:].copy()
                           for k in ("offset", "length")]
                for col in (*self.located.values(), self.located_sop):
                    _cut(col, mark)
                self._growing = None  # _cut may have dropped or cut the last chunks
                if not (np.array_equal(decoded[0], located[0])
                        and np.array_equal(decoded[1], located[1])):
                    raise CodestreamError(th.parts[0].sot_offset,
                                          f"tile {t}: PLT lengths disagree with packet headers")
        if located is None:
            n = self._decode_headers(t, th, cod, styles, seq_p, seq_l,
                                     partial=bool(self.partial[t]))
            self.sources.add("headers")
        else:
            self.sources.add("plt")
            n = len(located[0])
            self._add_located(*located)
        # A cut tile loses a suffix of its packets: the first n of its sequence are located.
        self.located_count[t] = n

    def _add_located(self, *columns: np.ndarray) -> None:
        """Appends located packets: LOCATED_FIELDS' columns, then the SOP flags."""
        for name, values in zip(LOCATED_FIELDS, columns[:-1], strict=True):
            self.located[name].append(np.asarray(values, np.int64))
        self.located_sop.append(np.asarray(columns[-1], np.uint8))
        self._growing = None

    def _growing_located(self) -> tuple[array, ...]:
        """The array.arrays the Python decoder appends located packets to (LOCATED_FIELDS',
        then the SOP flags): the last chunks, or new ones after a numpy chunk."""
        if self._growing is None:
            for name in LOCATED_FIELDS:
                self.located[name].append(array("q"))
            self.located_sop.append(array("B"))
            self._growing = (*(self.located[k][-1] for k in LOCATED_FIELDS),
                             self.located_sop[-1])
        return self._growing

    def _locate_with_plt(self, th: TileHeaders, plt: list[np.ndarray], npackets: int, cod: Cod):
        """Packet offsets and lengths from PLT, if they tile each tile-part's data exactly."""
        if sum(len(x) for x in plt) > npackets:
            return None
        offsets, lengths = [], []
        for part, part_lengths in zip(th.parts, plt, strict=True):
            ends = part.header_end + np.cumsum(part_lengths)
            if len(ends) and int(ends[-1]) != part.data_end or not len(ends) and \
                    part.data_end != part.header_end:
                return None
            lengths.append(part_lengths)
            offsets.append(ends - part_lengths)
        offsets = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        sops = np.zeros(len(offsets), np.uint8)
        if cod.sop and len(offsets):
            # A packet may start with an SOP marker segment (6 bytes): found by looking.
            big = lengths >= 6
            at = offsets[big]
            file = np.frombuffer(self.buf, np.uint8)
            sops[big] = (file[at] == 0xFF) & (file[at + 1] == 0x91)
            offsets = offsets + 6 * sops
            lengths = lengths - 6 * sops
        n = len(offsets)
        minus = np.full(n, -1, np.int64)
        return offsets, lengths, minus, minus, np.zeros(n, np.int64), sops

    def _precinct_grids(self, t: int, seq_p: np.ndarray, styles: list[CodingStyle]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The precincts a tile's packet sequence visits, numbered 0..m-1 in row order:
        (the sequence in those numbers, their code-block grids per band (m, 3, 2), their
        code-block styles), worked out at once rather than per precinct."""
        if not len(seq_p):
            return seq_p, np.zeros((0, 3, 2), np.int32), np.zeros(0, np.uint8)
        lo = int(seq_p.min())
        seen = np.zeros(int(seq_p.max()) - lo + 1, bool)
        seen[seq_p - lo] = True
        used = np.flatnonzero(seen)
        if len(used) == len(seen):  # every row in [lo, hi] (the usual case): no renumbering
            local = seq_p - lo if lo else seq_p
        else:
            number = np.cumsum(seen) - 1  # row - lo -> its number among the used rows
            local = number[seq_p - lo]
        rows = used + lo
        c = self.prec_c[rows]
        # The resolution rows these precincts are in: runs of them (rows ascend).
        tcr = self.tcr_of_precinct[rows]
        first = np.flatnonzero(np.concatenate(([True], tcr[1:] != tcr[:-1])))
        g = tcr[first]
        which = np.repeat(np.arange(len(g)), np.diff(np.append(first, len(tcr))))
        siz = self.siz
        bounds = np.asarray([tile_component_bounds(siz, t, k)
                             for k in range(len(siz.components))], np.int64)
        tab = self.tcr
        g_c = tab["c"][g]
        tc = tuple(bounds[g_c].T)  # (tcx0, tcy0, tcx1, tcy1) of each row's component
        cb_w = np.asarray([s.cb_w for s in styles], np.int64)[g_c]
        cb_h = np.asarray([s.cb_h for s in styles], np.int64)[g_c]
        grids = precinct_band_grid_rows(tc, tab["levels"][g], tab["r"][g], tab["x0"][g],
                                        tab["y0"][g], tab["ppx"][g], tab["ppy"][g],
                                        tab["npw"][g], tab["nph"][g], cb_w, cb_h, which,
                                        self.prec_p[rows])
        cb_style = np.asarray([s.cb_style for s in styles], np.uint8)[c]
        return local, grids, cb_style

    def _decode_headers(self, t: int, th: TileHeaders, cod: Cod, styles: list[CodingStyle],
                        seq_p: np.ndarray, seq_l: np.ndarray, partial: bool = False) -> int:
        """Locates the tile's packets by decoding their headers, appending them to the located
        arrays; returns how many were located (a cut tile loses its last ones). `partial`: the
        sequence is a prefix of the tile's (the tile's data goes on after it)."""
        buf = self.buf
        packed_stream = None
        if th.ppt:
            order = sorted(th.ppt, key=lambda zs: zs[0])
            packed_stream = b"".join(bytes(buf[s.body_offset + 1:s.end]) for _, s in order)
        elif self.ppm:
            packed_stream = b"".join(self.ppm[p.sot_offset] for p in th.parts)
        packed_base = len(self.packed)
        if packed_stream is not None:
            self.packed += packed_stream
        native = self.native
        done = None
        if native is not None and len(seq_p) >= NATIVE_MIN_PACKETS:
            local, grids, cb_style = self._precinct_grids(t, seq_p, styles)
            done = self._decode_in_c(native, t, th, cod, local, seq_l, grids, cb_style,
                                     packed_stream, packed_base)
        if done is None:
            done = self._decode_in_python(t, th, cod, styles, seq_p, seq_l, packed_stream,
                                          packed_base)
        count, pos, end, part_no = done
        self.decoded += count
        parts = th.parts
        if not partial and (pos < end or part_no + 1 < len(parts)):
            left = end - pos + sum(p.data_end - p.header_end for p in parts[part_no + 1:])
            if left > 0 and count < len(seq_p):
                raise CodestreamError(pos, f"tile {t}: {left} bytes of tile data after its last "
                                      "packet")
            # Some encoders pad the last tile-part (e.g. zero bytes before a missing EOC).
            self.padding_bytes += max(left, 0)
        return count

    def _decode_in_c(self, native, t: int, th: TileHeaders, cod: Cod, local: np.ndarray,
                     seq_l: np.ndarray, grids: np.ndarray, cb_style: np.ndarray,
                     packed_stream: bytes | None, packed_base: int
                     ) -> tuple[int, int, int, int] | None:
        """_decode_in_python's work by codestream._headers in one call: (count, pos, end,
        part_no), or None when a precinct's code-block grid is too large for the C decoder's
        plain arrays (then Python decodes the tile)."""
        n = len(local)
        offsets, lengths, hlens, poffs = (np.empty(n, np.int64) for _ in range(4))
        sops = np.empty(n, np.uint8)
        parts = np.asarray([(p.header_end, p.data_end, p.sot_offset) for p in th.parts],
                           np.int64)
        limits = (MAX_ZERO_BITPLANES, MAX_PASSES, MAX_LBLOCK, NATIVE_MAX_NODES, NATIVE_MAX_BYTES)
        out = native.decode_tile(self.buf, parts, packed_stream,
                                 np.ascontiguousarray(local, np.int64),
                                 np.ascontiguousarray(seq_l, np.int32), grids, cb_style,
                                 cod.layers - 1, bool(cod.sop), bool(cod.eph), t, self.pause,
                                 self.decoded, limits, offsets, lengths, hlens, poffs, sops)
        if out is None:
            return None
        count, pos, end, part_no, error = out
        if error is not None:
            raise CodestreamError(*error)
        if packed_stream is None:  # packed_offset -1: not packed
            packed = poffs[:count], np.zeros(count, np.int64)
        else:  # positions in this tile's packed headers, appended at packed_base
            packed = poffs[:count] + packed_base, hlens[:count]
        self._add_located(offsets[:count], lengths[:count], hlens[:count], *packed, sops[:count])
        return count, pos, end, part_no

    def _decode_in_python(self, t: int, th: TileHeaders, cod: Cod, styles: list[CodingStyle],
                          seq_p: np.ndarray, seq_l: np.ndarray, packed_stream: bytes | None,
                          packed_base: int) -> tuple[int, int, int, int]:
        """The reference decoder (packets.py), packet by packet: headers in the tile-parts or
        in `packed_stream` (PPM/PPT). Returns (count, pos, end, part_no): how many packets
        were located and where the tile's data was left."""
        buf = self.buf
        hpos = 0
        states: dict[int, PrecinctState] = {}  # precincts with packets still to come
        grids: dict[int, list] = {}  # component -> its resolution grids in this tile
        last_layer = cod.layers - 1
        offsets, lengths, hlens, poffs, plens, sops = self._growing_located()
        parts = th.parts
        part_no = 0
        pos, end = parts[0].header_end, parts[0].data_end
        eph = cod.eph
        rows, layers = seq_p.tolist(), seq_l.tolist()
        count = 0
        pause, decoded = self.pause, self.decoded
        for row, layer in zip(rows, layers, strict=True):
            if pause is not None and not (decoded + count) & PAUSE_EVERY:
                pause()
            while pos >= end and part_no + 1 < len(parts):
                part_no += 1
                pos, end = parts[part_no].header_end, parts[part_no].data_end
            if pos >= end and packed_stream is None:
                break  # the tile's data ends here: later packets are absent
            if packed_stream is not None and hpos >= len(packed_stream):
                break
            sop = 0
            if cod.sop and pos + 6 <= end and buf[pos] == 0xFF and buf[pos + 1] == 0x91:
                sop = 1
                pos += 6
            count += 1
            sops.append(sop)
            if packed_stream is None:
                if pos < end and buf[pos] < 0x80:
                    # An empty packet: one zero bit, padded to the byte (and EPH): it changes
                    # no precinct state, so none is made for it.
                    hend = _after_eph(buf, pos + 1, end, t) if eph else pos + 1
                    body = 0
                else:
                    state = states.get(row) or self._state(states, grids, t, row, styles)
                    bits = BitReader(buf, pos, end)
                    body = state.read_header(bits, layer)
                    hend = bits.align()
                    if eph:
                        hend = _after_eph(buf, hend, end, t)
                    if hend + body > end:
                        raise CodestreamError(pos, f"tile {t}: packet body runs past the "
                                              "tile-part")
                hlen = hend - pos
                offsets.append(pos)
                lengths.append(hlen + body)
                hlens.append(hlen)
                poffs.append(-1)
                plens.append(0)
                pos = hend + body
            else:
                state = states.get(row) or self._state(states, grids, t, row, styles)
                bits = BitReader(packed_stream, hpos, len(packed_stream))
                body = state.read_header(bits, layer)
                hend = bits.align()
                if eph:
                    hend = _after_eph(packed_stream, hend, len(packed_stream), t,
                                      parts[part_no].sot_offset)
                if pos + body > end:
                    raise CodestreamError(pos, f"tile {t}: packet body runs past the tile-part")
                offsets.append(pos)
                lengths.append(body)
                hlens.append(hend - hpos)
                poffs.append(packed_base + hpos)
                plens.append(hend - hpos)
                hpos = hend
                pos += body
            if layer == last_layer:
                states.pop(row, None)  # the precinct's last packet: its state is not needed
        return count, pos, end, part_no

    def _state(self, states: dict[int, PrecinctState], grids: dict[int, list], t: int, row: int,
               styles: list[CodingStyle]) -> PrecinctState:
        """The header-decoding state of a precinct, made on its first non-empty packet."""
        c, r, p = int(self.prec_c[row]), int(self.prec_r[row]), int(self.prec_p[row])
        comp_grids = grids.get(c)
        if comp_grids is None:
            comp_grids = grids[c] = resolution_grids(self.siz, t, c, styles[c])
        bands = precinct_band_grids(self.siz, t, c, styles[c], comp_grids[r], p)
        state = states[row] = PrecinctState(bands, styles[c].cb_style)
        return state

    # --- the index ------------------------------------------------------------------------
    def build(self) -> CodestreamIndex:
        layout, siz = self.layout, self.siz
        groups = _coding_groups(layout)
        rows = self._geometry(groups)
        reversible = np.zeros(len(rows), np.int64)
        layers = np.zeros(siz.num_tiles, np.int32)
        mct = np.zeros(siz.num_tiles, np.uint8)
        coding: dict[int, _CodingGroup] = {}
        row_group = np.zeros(siz.num_tiles, np.int64)
        for k, g in enumerate(groups):
            layers[g.tiles] = g.cod.layers
            mct[g.tiles] = g.cod.mct
            row_group[g.tiles] = k
        for k, g in enumerate(groups):
            in_group = row_group[rows.t] == k
            rev = np.asarray([int(s.reversible) for s in g.styles], np.int64)
            reversible[in_group] = rev[rows.c[in_group]]
        for t in layout.tiles:
            coding[t] = groups[int(row_group[t])]
        tcr, precincts = self._tcr_and_precincts(rows, reversible)
        self.prec_c, self.prec_r, self.prec_p = precincts["c"], precincts["r"], precincts["p"]
        seq_rows, seq_layers, bounds = self._sequences(groups, rows, tcr["prec_base"])
        for t in sorted(layout.tiles):
            a, b = int(bounds[t]), int(bounds[t + 1])
            if b > a:
                g = coding[t]
                self._locate_tile(t, g.cod, g.styles, seq_rows[a:b], seq_layers[a:b])
        # The located packets: the first located_count of each tile's, in tile order (all of
        # them, the usual case: the sequences as they are, not a copy).
        n = self.located_count
        if not np.array_equal(n, np.diff(bounds)):
            at = np.repeat(bounds[:-1] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
            seq_rows, seq_layers = seq_rows[at], seq_layers[at]
            del at
        # Handed over in a dict that _finish empties: each array is freed once used.
        order = {"precinct": seq_rows, "layer": seq_layers}
        del seq_rows, seq_layers
        return self._finish(tcr, precincts, layers, mct, order)

    def _finish(self, tcr: dict[str, np.ndarray], precincts: dict[str, np.ndarray],
                layers: np.ndarray, mct: np.ndarray,
                order: dict[str, np.ndarray]) -> CodestreamIndex:
        """The index, from the located packets (`order`: their precinct rows and layers, in
        the order they were located; emptied here).

        Each input is dropped as soon as its column is in place, so the job's peak memory
        stays near the index's own size: fresh pages are a large part of indexing's cost (a
        child process that indexes 2.1M packets pays for every page it has not had before)."""
        layout = self.layout
        nprec = len(precincts["id"])
        # Packets go in (precinct, layer) order. Every precinct has a prefix of its layers (a
        # cut tile loses a suffix of its sequence), so a packet's place is its precinct's
        # first slot plus its layer: a scatter, no sort.
        local = order["precinct"]
        npk = len(local)
        counts = np.bincount(local, minlength=nprec).astype(np.int32)
        starts = np.zeros(nprec, np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        dest = starts[local]
        dest += order.pop("layer")
        del local
        order.clear()
        # The precinct and layer of each slot follow from the precincts' packet counts, and
        # without packed headers every packet has packed_offset -1 and packed_length 0:
        # written in order, not scattered (each scatter of 2.1M packets costs 10-20 ms).
        pk = {"precinct": result_column(npk, np.int32), "layer": result_column(npk, np.int32)}
        pk["precinct"][:] = np.repeat(np.arange(nprec, dtype=np.int32), counts)
        slot = np.arange(npk, dtype=np.int64)
        slot -= np.repeat(starts, counts)
        pk["layer"][:] = slot
        del slot
        unpacked = not self.packed_tiles and not self.ppm
        for name in LOCATED_FIELDS:
            chunks = self.located.pop(name)
            column = result_column(npk, PACKET_DTYPES[name])
            if unpacked and name == "packed_offset":
                column.fill(-1)
            elif unpacked and name == "packed_length":
                column.fill(0)
            else:
                values = _joined(chunks, np.int64)
                column[dest] = values
                del values
            del chunks
            pk[name] = column
        column = result_column(npk, np.uint8)
        column[dest] = _joined(self.located_sop, np.uint8)
        self.located_sop = []
        pk["sop"] = column
        self._growing = None
        del dest
        # Where each packet ends in its precinct's bin: the running end over all packets,
        # less that of the packets of the precincts before (in place: no temporaries).
        ends = np.add(pk["length"], pk["packed_length"], out=result_column(npk, np.int64))
        np.cumsum(ends, out=ends)
        nz = counts > 0
        first, last = starts[nz], starts[nz] + counts[nz] - 1
        before = ends[first] - (pk["length"][first] + pk["packed_length"][first])
        ends -= np.repeat(before, counts[nz])
        pk["bin_end"] = ends
        bin_length = np.zeros(nprec, np.int64)
        bin_length[nz] = ends[last]
        precincts["pkt_start"] = starts
        precincts["pkt_count"] = counts
        precincts["bin_length"] = bin_length
        th_rows = []
        for t in sorted(layout.tiles):
            for part in layout.tiles[t].parts:
                for seg in part.header_segments:
                    if seg.code not in (0xFF58, 0xFF61):  # PLT, PPT
                        th_rows.append((t, seg.offset, seg.length))
        present = np.zeros(self.siz.num_tiles, np.uint8)
        present[list(layout.tiles)] = 1
        base = layout.offset
        parts = np.asarray([(p.tile, p.index, self.buf[p.sot_offset + 11], p.sot_offset - base,
                             p.header_end - base, p.data_end - base,
                             int(p.tile in self.packed_tiles or bool(self.ppm)))
                            for p in layout.tile_parts], np.int64).reshape(-1, 7)
        src = "mixed" if len(self.sources) > 1 else (next(iter(self.sources)) if self.sources
                                                       else "none")
        return CodestreamIndex(
            offset=layout.offset, length=layout.end - layout.offset, siz=self.siz,
            layers=layers, tile_mct=mct,
            main_header_ranges=np.asarray(layout.main_bin_ranges, np.int64).reshape(-1, 2),
            tile_header_ranges=np.asarray(th_rows, np.int64).reshape(-1, 3),
            tiles_present=present, tile_parts=parts, tcr=tcr, precincts=precincts, packets=pk,
            packed_headers=bytes(self.packed), source=src,
            markers=tuple(sorted(layout.markers_seen)), progression=layout.main.cod.progression,
            cod_scod=layout.main.cod.scod, tile_data_bytes=self.data_bytes,
            padding_bytes=self.padding_bytes,
            resolutions_indexed=self.resolutions if self.partial.any() else None)


def index_codestream(buf, offset: int, length: int, *, use_plt: bool = True,
                     verify_plt: bool = False, resolutions: int | None = None,
                     pause: Callable[[], None] | None = None) -> CodestreamIndex:
    """Indexes the codestream at buf[offset:offset+length]; with `resolutions`, only the
    packets of that many lowest resolutions where the rest can be skipped (see the module
    docstring). `pause` is called every few thousand packet headers decoded (background
    work yields there)."""
    layout = parse_codestream(buf, offset, length)
    siz = layout.siz
    # Every tile of a complete codestream has a tile-part. A few missing ones (a cut file) are
    # served as empty tiles; a header claiming far more tiles than the file holds is refused
    # (as malformed) before anything is done per claimed tile.
    if siz.num_tiles > ABSENT_TILE_FACTOR * len(layout.tiles) + ABSENT_TILE_MARGIN:
        raise CodestreamError(offset, f"SIZ claims {siz.num_tiles} tiles but only "
                              f"{len(layout.tiles)} have tile-parts")
    if siz.num_tiles * siz.num_components > 4_000_000:
        raise CodestreamError(offset, f"{siz.num_tiles} tiles x {siz.num_components} components is "
                              "more than we serve", unsupported=True)
    return _Builder(buf, layout, use_plt=use_plt, verify_plt=verify_plt,
                    resolutions=resolutions, pause=pause).build()
