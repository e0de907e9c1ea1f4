"""Integer geometry of tiles, tile-components, resolutions, bands, precincts and code-blocks.

All equations are those of ISO 15444-1 Annex B (B-7, B-12, B-14, B-15, B-16); coordinates are
half-open [x0, x1). Partitions are anchored at 0 on each resolution's (or band's) grid.
"""
from __future__ import annotations

from dataclasses import dataclass

from .intmath import ceil_div
from .markers import CodingStyle, Siz

__all__ = ["ResolutionGrid", "band_bounds", "ceil_div", "precinct_band_grids", "precinct_id",
           "resolution_grids", "tile_component_bounds"]


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
