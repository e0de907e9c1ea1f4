"""View-window resolution (ISO 15444-9 C.4): fsiz/roff/rsiz/comps/layers -> what is served.

The frame size at discard level d is ceil(Xsiz/2^d) - ceil(XOsiz/2^d) (and so for y); the
region requested in the client's frame is rescaled to the chosen frame (start floored, end
ceiled) and clipped. Every change is reported back as a JPIP-* response header value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from codestream.index import CodestreamIndex
from codestream.markers import Siz


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def frame_size(siz: Siz, discard: int) -> tuple[int, int]:
    s = 1 << discard
    return (_cdiv(siz.xsiz, s) - _cdiv(siz.xosiz, s), _cdiv(siz.ysiz, s) - _cdiv(siz.yosiz, s))


def choose_discard(siz: Siz, max_discard: int, fx: int, fy: int, rounding: str) -> int:
    """The discard level the rounding rule picks for a requested frame size (C.4.2)."""
    sizes = [frame_size(siz, d) for d in range(max_discard + 1)]  # d = 0 is the largest
    if rounding == "round-up":
        fits = [d for d, (w, h) in enumerate(sizes) if w >= fx and h >= fy]
        return max(fits) if fits else 0
    if rounding == "closest":
        target = fx * fy
        # Nearest in area; on a tie the larger frame (smaller d).
        return min(range(len(sizes)), key=lambda d: (abs(sizes[d][0] * sizes[d][1] - target), d))
    fits = [d for d, (w, h) in enumerate(sizes) if w <= fx and h <= fy]
    return min(fits) if fits else max_discard


@dataclass(frozen=True)
class ViewWindow:
    """What a response serves from one codestream (all coordinates resolved and clipped)."""

    codestream: int
    discard: int
    frame: tuple[int, int]
    offset: tuple[int, int]          # region offset in the frame
    size: tuple[int, int]            # region size in the frame (0 = empty window)
    region: tuple[int, int, int, int]  # [X0, X1) x [Y0, Y1) on the reference grid: x0, y0, x1, y1
    comps: tuple[int, ...]
    layers: int
    changed: dict[str, str] = field(default_factory=dict)  # response header name -> value

    @property
    def empty(self) -> bool:
        return self.size[0] <= 0 or self.size[1] <= 0 or not self.comps


def _format_ranges(values: tuple[int, ...]) -> str:
    out, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(out)


def resolve_window(ix: CodestreamIndex, codestream: int, *,
                   fsiz: tuple[int, int, str] | None,
                   roff: tuple[int, int] | None = None,
                   rsiz: tuple[int, int] | None = None,
                   comps: tuple[tuple[int, int | None], ...] | None = None,
                   layers: int | None = None) -> ViewWindow:
    """Resolves the request's view-window fields against one codestream."""
    siz = ix.siz
    changed: dict[str, str] = {}
    max_layers = ix.max_layers
    nlayers = max_layers if layers is None else min(layers, max_layers)
    if layers is not None and layers > max_layers:
        changed["JPIP-layers"] = str(max_layers)
    comp_list = _resolve_comps(ix, comps, changed)
    if fsiz is None:  # no image data asked for: headers and metadata only
        return ViewWindow(codestream, 0, frame_size(siz, 0), (0, 0), (0, 0), (0, 0, 0, 0),
                          comp_list, nlayers, changed)
    fx, fy, rounding = fsiz
    d = choose_discard(siz, ix.max_levels, fx, fy, rounding)
    w, h = frame_size(siz, d)
    if (w, h) != (fx, fy):
        changed["JPIP-fsiz"] = f"{w},{h}"
    ox, oy = roff if roff is not None else (0, 0)
    sx, sy = rsiz if rsiz is not None else (fx - ox, fy - oy)
    # Rescale into the chosen frame: start floored, end ceiled, then clipped.
    x0, y0 = ox * w // fx, oy * h // fy
    x1 = min(w, _cdiv((ox + max(sx, 0)) * w, fx))
    y1 = min(h, _cdiv((oy + max(sy, 0)) * h, fy))
    x0, y0 = min(x0, w), min(y0, h)
    rw, rh = max(0, x1 - x0), max(0, y1 - y0)
    if roff is not None and (x0, y0) != (ox, oy):
        changed["JPIP-roff"] = f"{x0},{y0}"
    if rsiz is not None and (rw, rh) != (sx, sy):
        changed["JPIP-rsiz"] = f"{rw},{rh}"
    s = 1 << d
    bx, by = _cdiv(siz.xosiz, s), _cdiv(siz.yosiz, s)
    region = (max(siz.xosiz, (bx + x0) * s), max(siz.yosiz, (by + y0) * s),
              min(siz.xsiz, (bx + x0 + rw) * s), min(siz.ysiz, (by + y0 + rh) * s))
    return ViewWindow(codestream, d, (w, h), (x0, y0), (rw, rh), region, comp_list, nlayers,
                      changed)


def _resolve_comps(ix: CodestreamIndex, comps, changed: dict[str, str]) -> tuple[int, ...]:
    n = ix.num_components
    if comps is None:
        return tuple(range(n))
    wanted: set[int] = set()
    for lo, hi in comps:
        top = n - 1 if hi is None else min(hi, n - 1)
        wanted.update(range(lo, top + 1))
    asked = set(wanted)
    # An inverse colour transform (RCT/ICT) needs components 0, 1 and 2 together.
    if n >= 3 and bool(ix.tile_mct.any()) and wanted & {0, 1, 2}:
        wanted |= {0, 1, 2}
    result = tuple(sorted(wanted))
    requested_existing = {c for c in asked if c < n}
    if set(result) != requested_existing:
        changed["JPIP-comps"] = _format_ranges(result) if result else ""
    return result
