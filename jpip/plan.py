"""Which precincts a view-window needs, and in what order their bytes go out.

A precinct is relevant when one of its code-blocks holds a coefficient that the inverse wavelet
transform uses for a sample inside the window. Going down from the window's resolution, the
needed sample range [a, b) at resolution n widens by the reach of the synthesis filters (a
low-pass coefficient reaches 1 sample for 5/3 and 3 for 9/7, a high-pass one 2 and 4) and
splits into the low-pass range (the next resolution's samples) and the high-pass range (the
HL/LH/HH coefficients at this level), by the parity of the absolute coordinate. The loop is over
tile-component-resolutions; precincts are taken as rectangles of the precinct grid, never one
by one.

Per request the planner does integer arithmetic per resolution and one slice per rectangle:
each axis's ranges are followed down on their own (they are independent) in plain ints, against
a tile-component's grids kept on the index (`_Grids`, made once per file and tile-component),
and a rectangle's rows are a slice of the file's row numbers. Tiles wholly inside a window are
planned at once, vectorised over tile-components.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from codestream.geometry import tile_bounds
from codestream.index import TILE_PART_FIELDS, CodestreamIndex
from codestream.intmath import ceil_div

from .window import ViewWindow


@dataclass(frozen=True)
class Plan:
    """The bins of one codestream a window needs."""

    codestream: int
    tiles: np.ndarray      # tile indexes whose header bins are needed (sorted)
    rows: np.ndarray       # precinct rows (into the index arrays), in delivery-independent order
    layers: int
    ends: np.ndarray | None = None  # per row, the bin length up to `layers` (None: not known)


@dataclass(frozen=True, slots=True)
class _TileComponent:
    """What the planner reads of one tile-component's precinct grids, per resolution 0 up, as
    plain ints (it reads single values, which numpy makes slow)."""

    levels: int
    reversible: bool
    # Per resolution and axis: its extent [x0, x1), and its precinct grid as the exponent of
    # a cell in the coordinates the planner finds there (band coordinates above resolution 0,
    # where a cell holds 2**(ppx - 1) coefficients of each band), the index of its first cell
    # and the count of cells.
    x: tuple[tuple[int, int, int, int, int], ...]
    y: tuple[tuple[int, int, int, int, int], ...]
    npw: tuple[int, ...]
    prec_base: tuple[int, ...]  # the index row of each resolution's first precinct
    # A small number per distinct geometry: tile-components alike (all components of an image
    # without subsampling, say) need the same precincts, shifted.
    shape: int


class _Grids:
    """A file's precinct grids as the planner reads them, kept on its index: per
    tile-component (t * num_components + c) the tcr row of its resolution 0 (-1: none) and the
    arrays of the vectorised steps, made at once; each tile-component's `_TileComponent` made
    the first time a window's border crosses it (a window's work stays sized by the window,
    even on the first request to a file of many tiles)."""

    def __init__(self, ix: CodestreamIndex) -> None:
        tcr, siz = ix.tcr, ix.siz
        self.num_components = nc = siz.num_components
        self.tcr = tcr
        self.dx = [comp.dx for comp in siz.components]
        self.dy = [comp.dy for comp in siz.components]
        r0 = np.flatnonzero(tcr["r"] == 0)
        self.first_row = np.full(siz.num_tiles * nc, -1, np.int64)
        self.first_row[tcr["t"][r0] * nc + tcr["c"][r0]] = r0
        self.prec_end = tcr["prec_base"] + tcr["npw"] * tcr["nph"]
        # Every precinct row, for the rows of a rectangle of one grid as a slice of it.
        self.all_rows = np.arange(len(ix.precincts["id"]), dtype=np.int64)
        self.all_rows.flags.writeable = False
        self._made: dict[int, _TileComponent | None] = {}
        self._shapes: dict[tuple, int] = {}

    def tile_component(self, tc: int) -> _TileComponent | None:
        """Tile-component `tc` (t * num_components + c); None when the index has none."""
        try:
            return self._made[tc]
        except KeyError:
            pass
        first = int(self.first_row[tc])
        made = None
        if first >= 0:
            tcr = self.tcr
            levels, reversible = int(tcr["levels"][first]), bool(tcr["reversible"][first])
            rows = slice(first, first + levels + 1)
            cols = {k: tuple(tcr[k][rows].tolist()) for k in (
                "r", "x0", "y0", "x1", "y1", "ppx", "ppy", "npw", "nph", "prec_base")}
            c = int(tcr["c"][first])
            axes = [tuple((lo, hi, pp - (r > 0), lo >> pp, n) for lo, hi, pp, n, r in zip(
                        cols[f"{a}0"], cols[f"{a}1"], cols[f"pp{a}"], cols[count], cols["r"],
                        strict=True))
                    for a, count in (("x", "npw"), ("y", "nph"))]
            shape = (self.dx[c], self.dy[c], levels, reversible, *axes)
            made = _TileComponent(levels, reversible, axes[0], axes[1], cols["npw"],
                                  cols["prec_base"],
                                  self._shapes.setdefault(shape, len(self._shapes)))
        self._made[tc] = made
        return made


def _grids(ix: CodestreamIndex) -> _Grids:
    grids = getattr(ix, "_plan_grids", None)
    if grids is None:
        grids = ix._plan_grids = _Grids(ix)  # cached on the index: computed once per file
    return grids


def _span(lo: int, hi: int, shift: int, origin: int, count: int) -> tuple[int, int]:
    """The precinct cells [c0, c1) of a grid of `count` cells of 2**shift that meet [lo, hi)."""
    if hi <= lo:
        return 0, 0
    # (-(-hi >> shift): the ceiling of hi / 2**shift, inline: this runs per resolution.)
    c0, c1 = (lo >> shift) - origin, -(-hi >> shift) - origin
    return (c0 if c0 > 0 else 0), (c1 if c1 < count else count)


def _rect_rows(all_rows: np.ndarray, base: int, npw: int, px0: int, py0: int, px1: int,
               py1: int) -> np.ndarray:
    """The rows of cells [px0, px1) x [py0, py1) of the grid whose rows start at `base` (a
    grid `npw` cells wide), in raster order: slices of the file's row numbers."""
    start, h = base + py0 * npw, py1 - py0
    if h == 1 or px1 - px0 == npw:  # consecutive rows: one slice, no copy
        return all_rows[start + px0:start + (h - 1) * npw + px1]
    return all_rows[start:start + h * npw].reshape(h, npw)[:, px0:px1].ravel()


def _band_rows(all_rows: np.ndarray, base: int, npw: int, xs: tuple[int, int, int, int],
               ys: tuple[int, int, int, int]) -> np.ndarray | None:
    """The rows of the precincts of a resolution above 0 (its rows start at `base`, `npw`
    across) whose cells meet its HL, LH and HH bands' needed coefficients: xs = the cells
    across of the low-pass range then of the high-pass range, ys likewise (None: none). Mostly
    the high ranges' cells hold the low ones' (precincts are far larger than the filters'
    reach): then one rectangle, else the union of the bands' rectangles."""
    lx0, lx1, hx0, hx1 = xs
    ly0, ly1, hy0, hy1 = ys
    if hx1 > hx0 and hy1 > hy0 and (lx1 <= lx0 or hx0 <= lx0 and lx1 <= hx1) and (
            ly1 <= ly0 or hy0 <= ly0 and ly1 <= hy1):
        return _rect_rows(all_rows, base, npw, hx0, hy0, hx1, hy1)  # HH holds HL and LH
    rects = [_rect_rows(all_rows, base, npw, a0, b0, a1, b1)
             for (a0, a1), (b0, b1) in (((hx0, hx1), (ly0, ly1)), ((lx0, lx1), (hy0, hy1)),
                                        ((hx0, hx1), (hy0, hy1)))
             if a1 > a0 and b1 > b0]
    if len(rects) > 1:
        return np.unique(np.concatenate(rects))  # rectangles that may overlap
    return rects[0] if rects else None


def _axis_cells(axis: tuple[tuple[int, int, int, int, int], ...], top: int, a: int, b: int,
                reach_low: int, reach_high: int) -> list[tuple[int, ...]]:
    """On one axis of a tile-component (`_TileComponent.x` or `.y`), going down from
    the window's samples [a, b) at resolution `top`: per resolution n = top, ..., 1 the cells
    (low0, low1, high0, high1) that its needed low-pass and high-pass coefficients fall in,
    then (c0, c1) at resolution 0. It stops after a resolution whose low-pass range is empty
    (nothing below it is needed). One axis at a time: the two are independent."""
    out: list[tuple[int, ...]] = []
    for n in range(top, 0, -1):
        x0, x1, e, o, count = axis[n]
        # Low-pass coefficient k sits at 2k (k in [ceil(lo/2), ceil(hi/2))), high-pass k at
        # 2k+1 (k in [lo>>1, hi>>1)); both ranges are clipped to the resolution (boundary
        # extension mirrors inside, never further than the reach). (Conditional expressions,
        # not max/min: this is the planner's inner loop and they cost a tenth.)
        lo, hi = a - reach_low, b + reach_low
        la, lb = -(-(lo if lo > x0 else x0) >> 1), -(-(hi if hi < x1 else x1) >> 1)
        lo, hi = a - reach_high, b + reach_high
        ha, hb = (lo if lo > x0 else x0) >> 1, (hi if hi < x1 else x1) >> 1
        out.append(_span(la, lb, e, o, count) + _span(ha, hb, e, o, count))
        a, b = la, lb
        if b <= a:
            return out
    # Resolution 0: the LL band, in the resolution's own coordinates.
    _, _, e, o, count = axis[0]
    out.append(_span(a, b, e, o, count))
    return out


PLANS_KEPT = 64  # per index: the windows asked again (a viewer's repeats, other viewers' same)


def plan_window(ix: CodestreamIndex, window: ViewWindow) -> Plan:
    """The bins one codestream's window needs (plans are immutable: recent ones are kept)."""
    key = (window.codestream, window.discard, window.region, window.comps, window.layers)
    kept = getattr(ix, "_plans", None)
    if kept is None:
        kept = ix._plans = OrderedDict()
    plan = kept.get(key)
    if plan is not None:
        kept.move_to_end(key)
        return plan
    plan = _plan_window(ix, window)
    for a in (plan.rows, plan.tiles, plan.ends):
        a.flags.writeable = False
    kept[key] = plan
    if len(kept) > PLANS_KEPT:
        kept.popitem(last=False)
    return plan


def planned_ends(ix: CodestreamIndex, rows: np.ndarray, layers: int) -> np.ndarray:
    """Per precinct row, the length of its bin up to `layers` quality layers (0: nothing)."""
    if layers <= 0 or len(rows) == 0 or len(ix.packets["bin_end"]) == 0:
        return np.zeros(len(rows), np.int64)
    if layers >= ix.max_layers:
        return _whole_bins(ix)[rows]
    return _bin_ends(ix, rows, layers)


def _bin_ends(ix: CodestreamIndex, rows: np.ndarray | slice, layers: int) -> np.ndarray:
    pr = ix.precincts
    starts, counts = pr["pkt_start"][rows], pr["pkt_count"][rows]
    last = starts + np.minimum(counts, layers) - 1
    return np.where(counts > 0, ix.packets["bin_end"][np.maximum(last, 0)], 0)


def _whole_bins(ix: CodestreamIndex) -> np.ndarray:
    """Per precinct row, the length of its whole bin (every layer): what a window at full
    quality, the usual one, needs of each precinct it plans. The index holds it (the end of
    its last packet, as _bin_ends would find it)."""
    return ix.precincts["bin_length"]


def bin_runs(ix: CodestreamIndex) -> np.ndarray:
    """Per precinct row: True when its whole bin is one run of the file (its packets follow
    each other with nothing between, no packed headers, no SOP markers, no split packets), so
    any byte range of the bin is a slice of the file. Computed once per index."""
    runs = getattr(ix, "_bin_runs", None)
    if runs is None:
        runs = _contiguous_bins(ix)
        if runs is None:
            runs = _runs_by_packets(ix)
        runs.flags.writeable = False
        ix._bin_runs = runs  # cached on the index, like its tcr table
    return runs


def _runs_by_packets(ix: CodestreamIndex) -> np.ndarray:
    """bin_runs of any index, packet by packet (vectorised)."""
    pk = ix.packets
    nprec = len(ix.precincts["id"])
    owner = pk["precinct"]
    # packed_offset is -1 for a packet whose header is in the file with its body (>= 0:
    # packed in PPM/PPT; SPLIT: across file runs).
    own_bytes = (pk["packed_offset"] == -1) & (pk["packed_length"] == 0)
    bad = np.bincount(owner[~own_bytes], minlength=nprec)
    if len(owner) > 1:
        same = owner[1:] == owner[:-1]
        gap = pk["offset"][1:] != pk["offset"][:-1] + pk["length"][:-1]
        bad += np.bincount(owner[:-1][same & gap], minlength=nprec)
    return bad == 0


_PACKED = TILE_PART_FIELDS.index("packed")


def _contiguous_bins(ix: CodestreamIndex) -> np.ndarray | None:
    """bin_runs of a codestream in one run of the file whose packets all hold their own bytes
    (no PPM/PPT, no split packets), from each precinct's first and last packet: a bin's
    packets follow each other in the file, layer after layer, so they leave no gap exactly
    when they span the bin's length (a pass over the precincts instead of one over every
    packet with its temporaries: 2.1M packets cost 40 ms on a cold server's first request).
    None for the other codestreams."""
    pk, pr = ix.packets, ix.precincts
    # Packed headers are flagged per tile-part: no packet column is read to know there are none.
    packed = ix.tile_parts[:, _PACKED].any() if len(ix.tile_parts) else False
    if ix.runs is not None or ix.split_spans is not None or len(ix.packed_headers) or packed:
        return None
    count, offset, length = pr["pkt_count"], pk["offset"], pk["length"]
    some = count > 0
    if not some.any():
        return np.ones(len(count), bool)
    first = np.where(some, pr["pkt_start"], 0)
    last = np.where(some, pr["pkt_start"] + count - 1, 0)
    span = offset[last] + length[last] - offset[first]
    return ~some | (span == pr["bin_length"])


def resolutions_needed(ix: CodestreamIndex, window: ViewWindow) -> int:
    """How many of the lowest resolutions a window reaches in some tile-component (0 for an
    empty window): what an index built for its lowest resolutions must hold to serve it."""
    if window.empty or len(ix.tcr["levels"]) == 0:
        return 0
    return max(int(ix.tcr["levels"].max()) - window.discard, 0) + 1


def _plan_window(ix: CodestreamIndex, window: ViewWindow) -> Plan:
    have = ix.resolutions_indexed
    if have is not None and resolutions_needed(ix, window) > have:
        # The server indexes what a window needs before planning it (server.frame_indexing):
        # planning from a shorter index would leave precincts out.
        raise RuntimeError(f"window needs {resolutions_needed(ix, window)} resolutions, the "
                           f"index holds {have}")
    if window.empty:
        return Plan(window.codestream, np.zeros(0, np.int64), np.zeros(0, np.int64), 0,
                    np.zeros(0, np.int64))
    siz = ix.siz
    X0, Y0, X1, Y1 = window.region
    d = window.discard
    grids = _grids(ix)
    # Tiles the region touches.
    tiles_x = siz.tiles_x
    p0 = max((X0 - siz.xtosiz) // siz.xtsiz, 0)
    p1 = min(ceil_div(X1 - siz.xtosiz, siz.xtsiz), tiles_x)
    q0 = max((Y0 - siz.ytosiz) // siz.ytsiz, 0)
    q1 = min(ceil_div(Y1 - siz.ytosiz, siz.ytsiz), siz.tiles_y)
    if q1 - q0 == 1:
        tiles = np.arange(q0 * tiles_x + p0, q0 * tiles_x + p1, dtype=np.int64)
    else:
        tiles = (np.arange(q0, q1, dtype=np.int64)[:, None] * tiles_x
                 + np.arange(p0, p1, dtype=np.int64)[None, :]).ravel()
    covered = None
    walk = tiles.tolist()
    if len(walk) >= INTERIOR_TILES:
        # Tiles wholly inside the region need every precinct up to the window's resolution
        # that holds a code-block: chosen at once; only the tiles on the border are walked.
        tx0, ty0, tx1, ty1 = tile_bounds(siz, tiles)
        inside = (tx0 >= X0) & (ty0 >= Y0) & (tx1 <= X1) & (ty1 <= Y1)
        if int(inside.sum()) >= INTERIOR_TILES:
            covered = _covered_rows(ix, grids, tiles[inside], window.comps, d)
            walk = tiles[~inside].tolist()
    parts: list[np.ndarray] = []
    nc = grids.num_components
    for t in walk:
        tx0, ty0, tx1, ty1 = siz.tile_bounds(t)
        rx0, ry0, rx1, ry1 = max(X0, tx0), max(Y0, ty0), min(X1, tx1), min(Y1, ty1)
        if rx1 <= rx0 or ry1 <= ry0:
            continue
        done: dict[int, tuple[int, np.ndarray]] = {}  # shape -> (its first row, its rows)
        for c in window.comps:
            tc = grids.tile_component(t * nc + c)
            if tc is None:
                continue
            if tc.shape in done:  # the same precincts as an earlier component's, shifted
                other, theirs = done[tc.shape]
                parts.append(theirs + (tc.prec_base[0] - other))
                continue
            comp = siz.components[c]
            mine = _tile_component_rows(grids.all_rows, tc, comp.dx, comp.dy, d,
                                        (rx0, ry0, rx1, ry1))
            done[tc.shape] = (tc.prec_base[0], mine)
            parts.append(mine)
    # Tiles, components and resolutions in the order of their rows: the rows ascend.
    rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if covered is not None:
        # Interior and border tiles hold disjoint precincts: one sort joins them.
        rows = np.sort(np.concatenate((covered, rows)))
    return Plan(window.codestream, tiles, rows, window.layers,
                planned_ends(ix, rows, window.layers))


INTERIOR_TILES = 16  # from this many tiles wholly inside a window on, they are planned at once


def _covered_rows(ix: CodestreamIndex, grids: _Grids, tiles: np.ndarray, comps: tuple[int, ...],
                  d: int) -> np.ndarray:
    """The precinct rows of tiles wholly inside the window (components `comps`, `d` levels
    discarded): what `_tile_component_rows` picks for a tile-component whose every sample is
    in the region. Its ranges are then whole resolutions at every level, so a precinct up to
    the window's resolution is picked when it holds a code-block: at resolution 0 always, above
    when its cell meets the extent of a band whose range the others' cross it (HL, LH, HH).
    A tile-component's resolutions 0 to its top are one run of rows: one per tile-component."""
    tc = (tiles[:, None] * grids.num_components + np.asarray(comps, np.int64)[None, :]).ravel()
    first = grids.first_row[tc]
    first = first[first >= 0]
    starts = grids.tcr["prec_base"][first]
    # (Resolution 0 at least, as `_tile_component_rows` takes when d exceeds the levels.)
    counts = grids.prec_end[first + np.maximum(grids.tcr["levels"][first] - d, 0)] - starts
    rows = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
    return rows[_with_code_blocks(ix)[rows]]


def _with_code_blocks(ix: CodestreamIndex) -> np.ndarray:
    """Per precinct row: it holds a code-block of some band (kept on the index)."""
    held = getattr(ix, "_with_code_blocks", None)
    if held is not None:
        return held
    tcr, pr = ix.tcr, ix.precincts
    row = np.repeat(np.arange(len(tcr["t"])), tcr["npw"] * tcr["nph"])
    r = tcr["r"][row]
    x0, y0, x1, y1 = (tcr[k][row] for k in ("x0", "y0", "x1", "y1"))
    ppx, ppy = tcr["ppx"][row], tcr["ppy"][row]
    p = pr["p"]
    npw = tcr["npw"][row]
    px, py = p % npw, p // npw
    bx, by = np.maximum(ppx - 1, 0), np.maximum(ppy - 1, 0)  # band-grid exponents (r > 0)
    cx, cy = (x0 >> ppx) + px, (y0 >> ppy) + py               # the cell, in band units

    def meets(cell, lo, hi, e):
        """The cell's band range [cell << e, (cell + 1) << e) meets [lo, hi)."""
        return (hi > lo) & (cell >= lo >> e) & (cell < ceil_div(hi, np.int64(1) << e))

    hx, lx = meets(cx, x0 >> 1, x1 >> 1, bx), meets(cx, ceil_div(x0, 2), ceil_div(x1, 2), bx)
    hy, ly = meets(cy, y0 >> 1, y1 >> 1, by), meets(cy, ceil_div(y0, 2), ceil_div(y1, 2), by)
    held = (r == 0) | (hx & ly) | (lx & hy) | (hx & hy)
    ix._with_code_blocks = held
    return held


def _tile_component_rows(all_rows: np.ndarray, tc: _TileComponent, dx: int, dy: int, d: int,
                         region: tuple[int, int, int, int]) -> np.ndarray:
    """The precinct rows one tile-component needs for the part `region` of the window in its
    tile, going down from the window's resolution."""
    nl = tc.levels
    top = max(nl - d, 0)
    # How far (in interleaved samples) a low-pass / high-pass coefficient reaches through the
    # synthesis filters: 5/3 has 3 and 5 taps, 9/7 has 7 and 9.
    reach_low, reach_high = (1, 2) if tc.reversible else (3, 4)
    sx, sy = dx << min(d, nl), dy << min(d, nl)
    rx0, ry0, rx1, ry1 = region
    x0, x1 = tc.x[top][:2]
    y0, y1 = tc.y[top][:2]
    a, b = max(ceil_div(rx0, sx), x0), min(ceil_div(rx1, sx), x1)
    c0, c1 = max(ceil_div(ry0, sy), y0), min(ceil_div(ry1, sy), y1)
    if b <= a or c1 <= c0:
        return all_rows[:0]
    xs = _axis_cells(tc.x, top, a, b, reach_low, reach_high)
    ys = _axis_cells(tc.y, top, c0, c1, reach_low, reach_high)
    found: list[np.ndarray] = []  # per resolution, from the top down
    for i in range(min(len(xs), len(ys))):
        n = top - i
        if n:
            rows = _band_rows(all_rows, tc.prec_base[n], tc.npw[n], xs[i], ys[i])
            if rows is not None:
                found.append(rows)
        else:
            (px0, px1), (py0, py1) = xs[i], ys[i]
            if px1 > px0 and py1 > py0:
                found.append(_rect_rows(all_rows, tc.prec_base[0], tc.npw[0], px0, py0, px1,
                                        py1))
    if len(found) == 1:
        return found[0]
    return np.concatenate(found[::-1]) if found else all_rows[:0]
