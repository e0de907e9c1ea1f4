"""Integer geometry of tiles, tile-components, resolutions, bands, precincts and code-blocks.

All equations are those of ISO 15444-1 Annex B (B-7, B-12, B-14, B-15, B-16); coordinates are
half-open [x0, x1). Partitions are anchored at 0 on each resolution's (or band's) grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .intmath import ceil_div
from .markers import CodingStyle, Siz

__all__ = ["ResolutionGrid", "ResolutionRows", "band_bounds", "ceil_div", "precinct_band_grids",
           "precinct_band_grid_rows", "precinct_id", "resolution_grids", "resolution_rows",
           "tile_bounds", "tile_component_bounds"]


def precinct_id(t, c, s, num_components: int, num_tiles: int):
    """The in-class identifier of a precinct data-bin (15444-9 A.3.2.1, Eq. A-1):
    I = t + (c + s * num_components) * num_tiles, where s counts the precincts of the
    tile-component from resolution 0 upwards, raster order within a resolution. Works on ints
    and on numpy arrays alike."""
    return t + (c + s * num_components) * num_tiles


@dataclass(frozen=True, slots=True)
class ResolutionGrid:
    """One resolution of one tile-component and its precinct partition."""

    r: int
    x0: int
    y0: int
    x1: int
    y1: int
    ppx: int  # precinct exponents on this resolution's grid
    ppy: int
    npw: int  # precincts across / down (0 when the resolution is empty)
    nph: int

    @property
    def num_precincts(self) -> int:
        return self.npw * self.nph

    @property
    def px_origin(self) -> int:
        return self.x0 >> self.ppx

    @property
    def py_origin(self) -> int:
        return self.y0 >> self.ppy

    def precinct_cell(self, p: int) -> tuple[int, int, int, int]:
        """Bounds of precinct p (raster index) on this resolution's grid, clipped to it."""
        px, py = p % self.npw, p // self.npw
        cx0 = (self.px_origin + px) << self.ppx
        cy0 = (self.py_origin + py) << self.ppy
        return (max(cx0, self.x0), max(cy0, self.y0),
                min(cx0 + (1 << self.ppx), self.x1), min(cy0 + (1 << self.ppy), self.y1))


def tile_component_bounds(siz: Siz, t: int, c: int) -> tuple[int, int, int, int]:
    tx0, ty0, tx1, ty1 = siz.tile_bounds(t)
    comp = siz.components[c]
    return (ceil_div(tx0, comp.dx), ceil_div(ty0, comp.dy),
            ceil_div(tx1, comp.dx), ceil_div(ty1, comp.dy))


def resolution_grids(siz: Siz, t: int, c: int, style: CodingStyle) -> list[ResolutionGrid]:
    tcx0, tcy0, tcx1, tcy1 = tile_component_bounds(siz, t, c)
    nl = style.levels
    grids = []
    for r in range(nl + 1):
        scale = 1 << (nl - r)
        x0, y0 = ceil_div(tcx0, scale), ceil_div(tcy0, scale)
        x1, y1 = ceil_div(tcx1, scale), ceil_div(tcy1, scale)
        ppx, ppy = style.precincts[r]
        if x1 > x0 and y1 > y0:
            npw = ceil_div(x1, 1 << ppx) - (x0 >> ppx)
            nph = ceil_div(y1, 1 << ppy) - (y0 >> ppy)
        else:
            npw = nph = 0
        grids.append(ResolutionGrid(r, x0, y0, x1, y1, ppx, ppy, npw, nph))
    return grids


def tile_bounds(siz: Siz, tiles: np.ndarray) -> tuple[np.ndarray, ...]:
    """(tx0, ty0, tx1, ty1) of many tiles at once (Siz.tile_bounds, vectorised)."""
    tiles = np.asarray(tiles, np.int64)
    p, q = tiles % siz.tiles_x, tiles // siz.tiles_x
    return (np.maximum(siz.xtosiz + p * siz.xtsiz, siz.xosiz),
            np.maximum(siz.ytosiz + q * siz.ytsiz, siz.yosiz),
            np.minimum(siz.xtosiz + (p + 1) * siz.xtsiz, siz.xsiz),
            np.minimum(siz.ytosiz + (q + 1) * siz.ytsiz, siz.ysiz))


@dataclass(frozen=True, slots=True)
class ResolutionRows:
    """The resolution grids of many tile-components at once: one row per (tile, component,
    resolution), in that order, each with what `ResolutionGrid` holds and its tile-component's
    bounds. Tiles sharing their coding styles are laid out in one go."""

    t: np.ndarray
    c: np.ndarray
    r: np.ndarray
    levels: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    ppx: np.ndarray
    ppy: np.ndarray
    npw: np.ndarray
    nph: np.ndarray
    tcx0: np.ndarray
    tcy0: np.ndarray
    tcx1: np.ndarray
    tcy1: np.ndarray

    def __len__(self) -> int:
        return len(self.t)


def resolution_rows(siz: Siz, tiles: np.ndarray, styles: list[CodingStyle]) -> ResolutionRows:
    """`resolution_grids` of every component of each of `tiles` (which share `styles`, one per
    component), vectorised over tiles and components: the same equations (B-12, B-14, B-16)."""
    tiles = np.asarray(tiles, np.int64)
    tx0, ty0, tx1, ty1 = tile_bounds(siz, tiles)
    dx = np.asarray([cm.dx for cm in siz.components], np.int64)
    dy = np.asarray([cm.dy for cm in siz.components], np.int64)
    nl = np.asarray([st.levels for st in styles], np.int64)
    nres = int(nl.max()) + 1
    r = np.arange(nres, dtype=np.int64)
    valid = r[None, :] <= nl[:, None]                       # [C, R]
    shift = np.where(valid, nl[:, None] - r[None, :], 0)
    ppx = np.zeros((len(styles), nres), np.int64)
    ppy = np.zeros_like(ppx)
    for c, st in enumerate(styles):
        for k, (px, py) in enumerate(st.precincts):
            ppx[c, k], ppy[c, k] = px, py
    # [T, C]: tile-component bounds; [T, C, R]: resolution bounds.
    tcx0, tcx1 = ceil_div(tx0[:, None], dx), ceil_div(tx1[:, None], dx)
    tcy0, tcy1 = ceil_div(ty0[:, None], dy), ceil_div(ty1[:, None], dy)
    scale = (np.int64(1) << shift)[None]
    x0, x1 = ceil_div(tcx0[:, :, None], scale), ceil_div(tcx1[:, :, None], scale)
    y0, y1 = ceil_div(tcy0[:, :, None], scale), ceil_div(tcy1[:, :, None], scale)
    nonempty = (x1 > x0) & (y1 > y0)
    npw = np.where(nonempty, ceil_div(x1, np.int64(1) << ppx) - (x0 >> ppx), 0)
    nph = np.where(nonempty, ceil_div(y1, np.int64(1) << ppy) - (y0 >> ppy), 0)
    keep = np.broadcast_to(valid, x0.shape)
    shape = x0.shape

    def rows(a: np.ndarray) -> np.ndarray:
        return np.broadcast_to(a, shape)[keep]

    t_idx = np.broadcast_to(tiles[:, None, None], shape)
    c_idx = np.broadcast_to(np.arange(len(styles))[None, :, None], shape)
    return ResolutionRows(
        t=t_idx[keep], c=c_idx[keep], r=rows(r[None, None, :]), levels=rows(nl[None, :, None]),
        x0=x0[keep], y0=y0[keep], x1=x1[keep], y1=y1[keep],
        ppx=rows(ppx[None]), ppy=rows(ppy[None]), npw=npw[keep], nph=nph[keep],
        tcx0=rows(tcx0[:, :, None]), tcy0=rows(tcy0[:, :, None]),
        tcx1=rows(tcx1[:, :, None]), tcy1=rows(tcy1[:, :, None]))


def band_bounds(tcx0: int, tcy0: int, tcx1: int, tcy1: int, nb: int, xob: int, yob: int
                ) -> tuple[int, int, int, int]:
    """Band bounds at decomposition level nb (B-15); xob/yob are 1 for high-pass directions."""
    if nb == 0:
        return tcx0, tcy0, tcx1, tcy1
    hx, hy = (1 << (nb - 1)) * xob, (1 << (nb - 1)) * yob
    s = 1 << nb
    return (ceil_div(tcx0 - hx, s), ceil_div(tcy0 - hy, s),
            ceil_div(tcx1 - hx, s), ceil_div(tcy1 - hy, s))


def precinct_band_grids(siz: Siz, t: int, c: int, style: CodingStyle, grid: ResolutionGrid,
                        p: int) -> list[tuple[int, int]]:
    """Code-block grid (cw, ch) of each band of precinct p, in packet order (LL | HL, LH, HH)."""
    tcx0, tcy0, tcx1, tcy1 = tile_component_bounds(siz, t, c)
    nl, r = style.levels, grid.r
    px, py = p % grid.npw, p // grid.npw
    if r == 0:
        bands = [(nl, 0, 0)]
        bpx, bpy = grid.ppx, grid.ppy
    else:
        bands = [(nl - r + 1, 1, 0), (nl - r + 1, 0, 1), (nl - r + 1, 1, 1)]
        bpx, bpy = grid.ppx - 1, grid.ppy - 1
    xcb, ycb = min(style.cb_w, bpx), min(style.cb_h, bpy)
    out = []
    for nb, xob, yob in bands:
        bx0, by0, bx1, by1 = band_bounds(tcx0, tcy0, tcx1, tcy1, nb, xob, yob)
        cx0 = ((grid.x0 >> grid.ppx) + px) << bpx
        cy0 = ((grid.y0 >> grid.ppy) + py) << bpy
        x0, y0 = max(cx0, bx0), max(cy0, by0)
        x1, y1 = min(cx0 + (1 << bpx), bx1), min(cy0 + (1 << bpy), by1)
        if x1 > x0 and y1 > y0:
            out.append((ceil_div(x1, 1 << xcb) - (x0 >> xcb), ceil_div(y1, 1 << ycb) - (y0 >> ycb)))
        else:
            out.append((0, 0))
    return out


def precinct_band_grid_rows(tc: tuple[np.ndarray, ...], levels: np.ndarray, r: np.ndarray,
                            res_x0: np.ndarray, res_y0: np.ndarray, ppx: np.ndarray,
                            ppy: np.ndarray, npw: np.ndarray, nph: np.ndarray, cb_w: np.ndarray,
                            cb_h: np.ndarray, row: np.ndarray, p: np.ndarray) -> np.ndarray:
    """`precinct_band_grids` of many precincts at once (the same equations, vectorised): an
    (n, 3, 2) int32 array of code-blocks across and down per band, in packet order (LL | HL,
    LH, HH); the bands a resolution lacks (1 and 2 at resolution 0) are (0, 0).

    The precincts are given by their resolution row `row` (an index into the per-row
    arguments) and raster index `p`. Per row: its tile-component's bounds `tc` (tcx0, tcy0,
    tcx1, tcy1), decomposition levels, resolution, the resolution's origin, precinct
    exponents, precincts across and down, and its component's code-block exponents.

    Across, a precinct's code-blocks depend on its column alone, and down on its row: they
    are worked out once per column and per row of each resolution row, then gathered per
    precinct (a 16384² image has 262k precincts in 256 columns and rows per resolution)."""
    tcx0, tcy0, tcx1, tcy1 = (np.asarray(a, np.int64) for a in tc)
    r = np.asarray(r, np.int64)
    npw, nph = np.asarray(npw, np.int64), np.asarray(nph, np.int64)
    low = r == 0
    # Resolution 0 holds the LL band at level nl, its precinct cells on the resolution's grid;
    # higher ones the HL, LH, HH bands at level nl - r + 1, on cells half as large (B.6).
    nb = np.where(low, levels, levels - r + 1)
    bpx, bpy = np.where(low, ppx, ppx - 1), np.where(low, ppy, ppy - 1)
    # One entry per column (x) and per row (y) of precincts of each resolution row.
    x_base = np.concatenate(([0], np.cumsum(npw)))
    y_base = np.concatenate(([0], np.cumsum(nph)))
    x_row = np.repeat(np.arange(len(r)), npw)
    y_row = np.repeat(np.arange(len(r)), nph)
    x_pos = np.arange(len(x_row), dtype=np.int64) - x_base[x_row]
    y_pos = np.arange(len(y_row), dtype=np.int64) - y_base[y_row]
    pw = npw[row]
    xi, yi = x_base[row] + p % pw, y_base[row] + p // pw
    out = np.zeros((len(p), 3, 2), np.int32)
    for k, (xob, yob) in enumerate(((1, 0), (0, 1), (1, 1))):
        if k == 0:  # LL at resolution 0, else HL
            xob, yob = np.where(low, 0, 1), np.zeros(len(r), np.int64)
        else:
            xob, yob = np.full(len(r), xob, np.int64), np.full(len(r), yob, np.int64)
        cw, x_ok = _band_axis(tcx0, tcx1, nb, res_x0, ppx, bpx, cb_w, xob, x_row, x_pos)
        ch, y_ok = _band_axis(tcy0, tcy1, nb, res_y0, ppy, bpy, cb_h, yob, y_row, y_pos)
        there = x_ok[xi] & y_ok[yi]
        if k:
            there &= ~low[row]
        out[:, k, 0] = np.where(there, cw[xi], 0)
        out[:, k, 1] = np.where(there, ch[yi], 0)
    return out


def _band_axis(t0: np.ndarray, t1: np.ndarray, nb: np.ndarray, res0: np.ndarray,
               pp: np.ndarray, bp: np.ndarray, cb: np.ndarray, ob: np.ndarray,
               row: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis, for precinct column (or row) `pos` of resolution row `row` (per-row
    arguments indexed by it): the code-blocks its band spans, and whether the band meets the
    precinct at all (B-15 for the band's bounds, B.6 for the precinct's cell, B.7)."""
    t0, t1, nb, res0 = t0[row], t1[row], nb[row], np.asarray(res0, np.int64)[row]
    pp, bp, cb, ob = np.asarray(pp, np.int64)[row], bp[row], np.asarray(cb, np.int64)[row], \
        ob[row]
    s = np.int64(1) << nb
    half = s >> 1  # 2^(nb-1), 0 at nb = 0 (band_bounds: the tile-component itself)
    b0, b1 = ceil_div(t0 - half * ob, s), ceil_div(t1 - half * ob, s)
    c0 = ((res0 >> pp) + pos) << bp
    lo, hi = np.maximum(c0, b0), np.minimum(c0 + (np.int64(1) << bp), b1)
    xcb = np.minimum(cb, bp)
    return ceil_div(hi, np.int64(1) << xcb) - (lo >> xcb), hi > lo
