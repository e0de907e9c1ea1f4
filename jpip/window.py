"""View-window resolution (ISO 15444-9 C.4): fsiz/roff/rsiz/comps/layers -> what is served.

The frame size at discard level d is ceil(Xsiz/2^d) - ceil(XOsiz/2^d) (and so for y); the
region requested in the client's frame is rescaled to the chosen frame (start floored, end
ceiled) and clipped. Every change is reported back as a JPIP-* response header value.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from codestream.index import CodestreamIndex
from codestream.intmath import ceil_div
from codestream.markers import Siz


def frame_size(siz: Siz, discard: int) -> tuple[int, int]:
    s = 1 << discard
    return (ceil_div(siz.xsiz, s) - ceil_div(siz.xosiz, s),
            ceil_div(siz.ysiz, s) - ceil_div(siz.yosiz, s))


def frame_sizes(siz: Siz, max_discard: int) -> tuple[tuple[int, int], ...]:
    """The frame size at every discard level 0..max_discard (0 is the largest)."""
    return tuple(frame_size(siz, d) for d in range(max_discard + 1))


def _index_frame_sizes(ix: CodestreamIndex) -> tuple[tuple[int, int], ...]:
    sizes = getattr(ix, "_frame_sizes", None)
    if sizes is None:
        sizes = ix._frame_sizes = frame_sizes(ix.siz, ix.max_discard)  # once per index
    return sizes


def choose_discard(sizes: tuple[tuple[int, int], ...], fx: int, fy: int, rounding: str) -> int:
    """The discard level the rounding rule picks for a requested frame size (C.4.2), given
    the frame sizes of the levels a client may discard (`frame_sizes`)."""
    # Plain loops over the few levels (this runs on every request): round-up takes the
    # largest d whose frame holds the request, round-down the smallest d whose frame fits in
    # it, closest the nearest in area (on a tie the larger frame, the smaller d).
    if rounding == "round-up":
        for d in range(len(sizes) - 1, -1, -1):
            w, h = sizes[d]
            if w >= fx and h >= fy:
                return d
        return 0
    if rounding == "closest":
        target, best, best_gap = fx * fy, 0, -1
        for d, (w, h) in enumerate(sizes):
            gap = abs(w * h - target)
            if best_gap < 0 or gap < best_gap:
                best, best_gap = d, gap
        return best
    for d, (w, h) in enumerate(sizes):
        if w <= fx and h <= fy:
            return d
    return len(sizes) - 1


@dataclass(frozen=True, slots=True)
class FrameRegion:
    """A requested fsiz/roff/rsiz mapped onto a codestream's resolutions (C.4.1)."""

    discard: int
    frame: tuple[int, int]           # the chosen frame size
    offset: tuple[int, int]          # region offset in that frame
    size: tuple[int, int]            # region size in that frame (0: empty)
    region: tuple[int, int, int, int]  # [X0, X1) x [Y0, Y1) on the reference grid: x0, y0, x1, y1


def frame_region(siz: Siz, max_discard: int | tuple[tuple[int, int], ...],
                 fsiz: tuple[int, int, str], roff: tuple[int, int] | None,
                 rsiz: tuple[int, int] | None) -> FrameRegion:
    """The one mapping of a view-window onto a codestream, used by the server and the client.

    `max_discard`: the most levels a client may discard, or their `frame_sizes` (the server
    keeps them per index). The discard level follows the rounding rule; the region, given in
    the requested frame, is rescaled into the chosen one (start floored, end ceiled),
    clipped, and placed on the reference grid."""
    sizes = frame_sizes(siz, max_discard) if isinstance(max_discard, int) else max_discard
    fx, fy, rounding = fsiz
    d = choose_discard(sizes, fx, fy, rounding)
    w, h = sizes[d]
    ox, oy = roff if roff is not None else (0, 0)
    sx, sy = rsiz if rsiz is not None else (fx - ox, fy - oy)
    x0, y0 = min(ox * w // fx, w), min(oy * h // fy, h)
    x1 = min(w, ceil_div((ox + max(sx, 0)) * w, fx))
    y1 = min(h, ceil_div((oy + max(sy, 0)) * h, fy))
    rw, rh = max(0, x1 - x0), max(0, y1 - y0)
    s = 1 << d
    bx, by = ceil_div(siz.xosiz, s), ceil_div(siz.yosiz, s)
    region = (max(siz.xosiz, (bx + x0) * s), max(siz.yosiz, (by + y0) * s),
              min(siz.xsiz, (bx + x0 + rw) * s), min(siz.ysiz, (by + y0 + rh) * s))
    return FrameRegion(d, (w, h), (x0, y0), (rw, rh), region)


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
    # (read only: windows are kept and shared, see resolve_window)

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


WINDOWS_KEPT = 64  # per index: the windows asked again (repeats, several viewers' thumbnails)


def resolve_window(ix: CodestreamIndex, codestream: int, *,
                   fsiz: tuple[int, int, str] | None,
                   roff: tuple[int, int] | None = None,
                   rsiz: tuple[int, int] | None = None,
                   comps: tuple[tuple[int, int | None], ...] | None = None,
                   layers: int | None = None) -> ViewWindow:
    """Resolves the request's view-window fields against one codestream (windows are
    immutable: the recent ones are kept on the index)."""
    # (Callers may pass lists: the key is made of tuples.)
    key = (codestream, _tuple(fsiz), _tuple(roff), _tuple(rsiz),
           None if comps is None else tuple(map(_tuple, comps)), layers)
    kept = getattr(ix, "_windows", None)
    if kept is None:
        kept = ix._windows = OrderedDict()
    window = kept.get(key)
    if window is None:
        window = kept[key] = _resolve_window(ix, codestream, fsiz, roff, rsiz, comps, layers)
        if len(kept) > WINDOWS_KEPT:
            kept.popitem(last=False)
    return window


def _tuple(value):
    return value if value is None or type(value) is tuple else tuple(value)


def _resolve_window(ix: CodestreamIndex, codestream: int, fsiz: tuple[int, int, str] | None,
                    roff: tuple[int, int] | None, rsiz: tuple[int, int] | None,
                    comps: tuple[tuple[int, int | None], ...] | None,
                    layers: int | None) -> ViewWindow:
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
    fr = frame_region(siz, _index_frame_sizes(ix), fsiz, roff, rsiz)
    if fr.frame != (fsiz[0], fsiz[1]):
        changed["JPIP-fsiz"] = "{},{}".format(*fr.frame)
    if roff is not None and fr.offset != tuple(roff):
        changed["JPIP-roff"] = "{},{}".format(*fr.offset)
    if rsiz is not None and fr.size != tuple(rsiz):
        changed["JPIP-rsiz"] = "{},{}".format(*fr.size)
    return ViewWindow(codestream, fr.discard, fr.frame, fr.offset, fr.size, fr.region,
                      comp_list, nlayers, changed)


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
