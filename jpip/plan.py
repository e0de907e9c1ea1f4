"""Which precincts a view-window needs, and in what order their bytes go out.

A precinct is relevant when one of its code-blocks holds a coefficient that the inverse wavelet
transform uses for a sample inside the window. Going down from the window's resolution, the
needed sample range [a, b) at resolution n widens by the reach of the synthesis filters (a
low-pass coefficient reaches 1 sample for 5/3 and 3 for 9/7, a high-pass one 2 and 4) and
splits into the low-pass range (the next resolution's samples) and the high-pass range (the
HL/LH/HH coefficients at this level), by the parity of the absolute coordinate. The loop is over
tile-component-resolutions; precincts are taken as rectangles of the precinct grid, never one
by one.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from codestream.geometry import tile_bounds
from codestream.index import CodestreamIndex
from codestream.intmath import ceil_div as _cdiv

from .window import ViewWindow


@dataclass(frozen=True)
class Plan:
    """The bins of one codestream a window needs."""

    codestream: int
    tiles: np.ndarray      # tile indexes whose header bins are needed (sorted)
    rows: np.ndarray       # precinct rows (into the index arrays), in delivery-independent order
    layers: int
    ends: np.ndarray | None = None  # per row, the bin length up to `layers` (None: not known)


class _TcrTable:
    """Per (tile, component) the rows of the tcr table, looked up once per index."""

    def __init__(self, ix: CodestreamIndex) -> None:
        # Plain lists: the planner reads single values, which numpy makes slow.
        self.tcr = {k: v.tolist() for k, v in ix.tcr.items()}
        self.first: dict[tuple[int, int], int] = {}
        # Tile-components with the same geometry (all components of an image without
        # subsampling, say) need the same precincts: one shape key per (tile, component).
        self.shape: dict[tuple[int, int], int] = {}  # a small number per distinct geometry
        shape_ids: dict[tuple, int] = {}
        t, c, r = self.tcr["t"], self.tcr["c"], self.tcr["r"]
        geometry = [self.tcr[k] for k in ("x0", "y0", "x1", "y1", "ppx", "ppy", "npw", "nph",
                                          "levels", "reversible")]
        # Per tcr row, what the planner reads of it, as one tuple (one lookup per row).
        self.geo = list(zip(*(self.tcr[k] for k in ("x0", "y0", "x1", "y1", "ppx", "ppy",
                                                    "npw", "nph", "prec_base")), strict=True))
        dx = [comp.dx for comp in ix.siz.components]
        dy = [comp.dy for comp in ix.siz.components]
        for i, r_i in enumerate(r):
            if r_i == 0:
                key = (t[i], c[i])
                self.first[key] = i
                last = i + self.tcr["levels"][i]
                shape = (dx[c[i]], dy[c[i]]) + tuple(tuple(col[i:last + 1]) for col in geometry)
                self.shape[key] = shape_ids.setdefault(shape, len(shape_ids))


def _table(ix: CodestreamIndex) -> _TcrTable:
    tab = getattr(ix, "_tcr_table", None)
    if tab is None:
        tab = _TcrTable(ix)
        ix._tcr_table = tab  # cached on the index: computed once per file
    return tab


# A rectangle of one precinct grid: (first row of the grid, grid width, px0, py0, px1, py1).
Cells = tuple[int, int, int, int, int, int]


def _span(lo: int, hi: int, shift: int, origin: int, count: int) -> tuple[int, int]:
    """The precinct cells [c0, c1) of a grid of `count` cells of 2**shift that meet [lo, hi)."""
    if hi <= lo:
        return 0, 0
    c0, c1 = (lo >> shift) - origin, -(-hi >> shift) - origin
    return (c0 if c0 > 0 else 0), (c1 if c1 < count else count)


def _band_cells(g: tuple, xs: tuple[tuple[int, int], tuple[int, int]],
                ys: tuple[tuple[int, int], tuple[int, int]], out: list[Cells]) -> bool:
    """Adds to `out` the precinct cells of a resolution above 0 (tcr geometry `g`) that meet
    its HL, LH and HH bands' ranges: xs = (low, high) x-ranges and ys likewise, in band
    coordinates. Mostly the high ranges' cells hold the low ones' (precincts are far larger
    than the filters' reach): then one rectangle. Returns True when rectangles that may
    overlap were added (rows to deduplicate)."""
    x0, y0, _, _, ppx, ppy, npw, nph, base = g
    if npw == 0 or nph == 0:
        return False
    ox, oy = x0 >> ppx, y0 >> ppy
    (lx0, lx1), (hx0, hx1) = (_span(a, b, ppx - 1, ox, npw) for a, b in xs)
    (ly0, ly1), (hy0, hy1) = (_span(a, b, ppy - 1, oy, nph) for a, b in ys)
    high_x, high_y = hx1 > hx0, hy1 > hy0
    low_x, low_y = lx1 > lx0, ly1 > ly0
    if high_x and high_y and (not low_x or hx0 <= lx0 and lx1 <= hx1) and (
            not low_y or hy0 <= ly0 and ly1 <= hy1):
        out.append((base, npw, hx0, hy0, hx1, hy1))  # HH holds HL and LH
        return False
    added = 0
    for (a0, a1), (b0, b1) in (((hx0, hx1), (ly0, ly1)), ((lx0, lx1), (hy0, hy1)),
                               ((hx0, hx1), (hy0, hy1))):
        if a1 > a0 and b1 > b0:
            out.append((base, npw, a0, b0, a1, b1))
            added += 1
    return added > 1


def _cell_rows(cells: list[Cells], dedupe: bool) -> np.ndarray:
    """The precinct rows of every rectangle, sorted (one vectorised step for all of them)."""
    if not cells:
        return np.zeros(0, np.int64)
    cells.sort()
    c = np.array(cells, np.int64)
    base, npw, px0, py0, px1, py1 = c.T
    w, h = px1 - px0, py1 - py0
    counts = w * h
    total = int(counts.sum())
    which = np.repeat(np.arange(len(c)), counts)
    k = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    wk = w[which]
    rows = base[which] + (py0[which] + k // wk) * npw[which] + px0[which] + k % wk
    # Rectangles of different grids occupy disjoint, ordered row ranges; within one grid the
    # rows of a rectangle ascend. Only overlapping rectangles of one grid need np.unique.
    return np.unique(rows) if dedupe else rows


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
    plan = Plan(plan.codestream, plan.tiles, plan.rows, plan.layers,
                planned_ends(ix, plan.rows, plan.layers))
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
    pr = ix.precincts
    starts, counts = pr["pkt_start"][rows], pr["pkt_count"][rows]
    last = starts + np.minimum(counts, layers) - 1
    return np.where(counts > 0, ix.packets["bin_end"][np.maximum(last, 0)], 0)


def bin_runs(ix: CodestreamIndex) -> np.ndarray:
    """Per precinct row: True when its whole bin is one run of the file (its packets follow
    each other with nothing between, no packed headers, no SOP markers, no split packets), so
    any byte range of the bin is a slice of the file. Computed once per index."""
    runs = getattr(ix, "_bin_runs", None)
    if runs is None:
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
        runs = ix._bin_runs = bad == 0  # cached on the index, like its tcr table
        runs.flags.writeable = False
    return runs


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
        return Plan(window.codestream, np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    siz = ix.siz
    X0, Y0, X1, Y1 = window.region
    d = window.discard
    # Tiles the region touches.
    p0 = max((X0 - siz.xtosiz) // siz.xtsiz, 0)
    p1 = min(_cdiv(X1 - siz.xtosiz, siz.xtsiz), siz.tiles_x)
    q0 = max((Y0 - siz.ytosiz) // siz.ytsiz, 0)
    q1 = min(_cdiv(Y1 - siz.ytosiz, siz.ytsiz), siz.tiles_y)
    tiles = (np.arange(q0, q1, dtype=np.int64)[:, None] * siz.tiles_x
             + np.arange(p0, p1, dtype=np.int64)[None, :]).ravel()
    covered = None
    walk = tiles.tolist()
    if len(tiles) >= INTERIOR_TILES:
        # Tiles wholly inside the region need every precinct up to the window's resolution
        # that holds a code-block: chosen at once; only the tiles on the border are walked.
        tx0, ty0, tx1, ty1 = tile_bounds(siz, tiles)
        inside = (tx0 >= X0) & (ty0 >= Y0) & (tx1 <= X1) & (ty1 <= Y1)
        if int(inside.sum()) >= INTERIOR_TILES:
            covered = _covered_rows(ix, tiles[inside], window.comps, d)
            walk = tiles[~inside].tolist()
    table = _table(ix) if walk else None
    tcr = table.tcr if table is not None else None
    cells: list[Cells] = []
    dedupe = False
    for t in walk:
        tx0, ty0, tx1, ty1 = siz.tile_bounds(t)
        rx0, ry0, rx1, ry1 = max(X0, tx0), max(Y0, ty0), min(X1, tx1), min(Y1, ty1)
        if rx1 <= rx0 or ry1 <= ry0:
            continue
        done: dict[int, tuple[int, list[Cells]]] = {}  # shape -> (base, its cells)
        for c in window.comps:
            base = table.first.get((t, c))
            if base is None:
                continue
            shape = table.shape[(t, c)]
            if shape in done:  # the same precincts as an earlier component, shifted
                other, theirs = done[shape]
                shift = tcr["prec_base"][base] - tcr["prec_base"][other]
                cells.extend((b + shift, *rest) for b, *rest in theirs)
                continue
            mine: list[Cells] = []
            dedupe |= _tile_component_cells(table, base, siz.components[c].dx,
                                            siz.components[c].dy, d, (rx0, ry0, rx1, ry1), mine)
            done[shape] = (base, mine)
            cells.extend(mine)
    rows = _cell_rows(cells, dedupe)
    if covered is not None:
        # Interior and border tiles hold disjoint precincts: one sort joins them.
        rows = np.sort(np.concatenate((covered, rows)))
    return Plan(window.codestream, tiles, rows, window.layers)


INTERIOR_TILES = 16  # from this many tiles wholly inside a window on, they are planned at once


def _covered_rows(ix: CodestreamIndex, tiles: np.ndarray, comps, d: int) -> np.ndarray:
    """The precinct rows of tiles wholly inside the window (components `comps`, `d` levels
    discarded): what `_tile_component_rows` picks for a tile-component whose every sample is
    in the region. Its ranges are then whole resolutions at every level, so a precinct up to
    the window's resolution is picked when it holds a code-block: at resolution 0 always, above
    when its cell meets the extent of a band whose range the others' cross it (HL, LH, HH)."""
    tcr = ix.tcr
    inside = np.zeros(ix.siz.num_tiles, bool)
    inside[tiles] = True
    wanted = np.zeros(ix.siz.num_components, bool)
    for c in comps:
        wanted[c] = True
    sel = np.flatnonzero(inside[tcr["t"]] & wanted[tcr["c"]] & (tcr["r"] <= tcr["levels"] - d))
    counts = (tcr["npw"] * tcr["nph"])[sel]
    starts = tcr["prec_base"][sel]
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
        return (hi > lo) & (cell >= lo >> e) & (cell < -(-hi // (np.int64(1) << e)))

    hx, lx = meets(cx, x0 >> 1, x1 >> 1, bx), meets(cx, -(-x0 // 2), -(-x1 // 2), bx)
    hy, ly = meets(cy, y0 >> 1, y1 >> 1, by), meets(cy, -(-y0 // 2), -(-y1 // 2), by)
    held = (r == 0) | (hx & ly) | (lx & hy) | (hx & hy)
    ix._with_code_blocks = held
    return held


def _tile_component_cells(table: _TcrTable, base: int, dx: int, dy: int, d: int,
                          region: tuple[int, int, int, int], out: list[Cells]) -> bool:
    """Adds the precinct cells one tile-component needs to `out` (see `_band_cells`)."""
    tcr, geo = table.tcr, table.geo
    nl = tcr["levels"][base]
    top = max(nl - d, 0)
    # How far (in interleaved samples) a low-pass / high-pass coefficient reaches through the
    # synthesis filters: 5/3 has 3 and 5 taps, 9/7 has 7 and 9.
    reach_low, reach_high = (1, 2) if tcr["reversible"][base] else (3, 4)
    sx, sy = dx << min(d, nl), dy << min(d, nl)
    rx0, ry0, rx1, ry1 = region
    x0, y0, x1, y1 = geo[base + top][:4]
    a, b = max(-(-rx0 // sx), x0), min(-(-rx1 // sx), x1)
    c0, c1 = max(-(-ry0 // sy), y0), min(-(-ry1 // sy), y1)
    overlap = False
    if b <= a or c1 <= c0:
        return overlap
    for n in range(top, 0, -1):
        g = geo[base + n]
        x0, y0, x1, y1 = g[:4]
        # Low-pass coefficient k sits at 2k (k in [ceil(lo/2), ceil(hi/2))), high-pass k at
        # 2k+1 (k in [lo>>1, hi>>1)); both ranges are clipped to the resolution (boundary
        # extension mirrors inside, never further than the reach).
        lo, hi = max(a - reach_low, x0), min(b + reach_low, x1)
        low_x = (-(-lo >> 1), -(-hi >> 1))
        high_x = (max(a - reach_high, x0) >> 1, min(b + reach_high, x1) >> 1)
        lo, hi = max(c0 - reach_low, y0), min(c1 + reach_low, y1)
        low_y = (-(-lo >> 1), -(-hi >> 1))
        high_y = (max(c0 - reach_high, y0) >> 1, min(c1 + reach_high, y1) >> 1)
        overlap |= _band_cells(g, (low_x, high_x), (low_y, high_y), out)
        a, b = low_x
        c0, c1 = low_y
        if b <= a or c1 <= c0:
            return overlap
    # Resolution 0: the LL band, one rectangle in the resolution's own coordinates.
    x0, y0, _, _, ppx, ppy, npw, nph, prec_base = geo[base]
    if npw and nph:
        px0, px1 = _span(a, b, ppx, x0 >> ppx, npw)
        py0, py1 = _span(c0, c1, ppy, y0 >> ppy, nph)
        if px1 > px0 and py1 > py0:
            out.append((prec_base, npw, px0, py0, px1, py1))
    return overlap
