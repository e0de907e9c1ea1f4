"""The benchmark's requests, and the bytes each one strictly needs (computed from the index).

"Strictly needed" for a window: metadata-bin 0 (the JP2 header boxes; empty for a raw
codestream), the main header, the headers of the tiles the window touches, and the precinct
bytes of the precincts `plan_window` says the window needs, up to the requested layers. In a
session only what the client does not hold yet is needed, so a session step needs the growth of
the union of its windows' needs. JPP message headers and the EOR are overhead on top.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from codestream.source import Source
from jpip.plan import plan_window
from jpip.window import resolve_window

Window = tuple[tuple[int, int], tuple[int, int] | None, tuple[int, int] | None]  # fsiz, roff, rsiz


def window_query(win: Window) -> str:
    fsiz, roff, rsiz = win
    q = f"fsiz={fsiz[0]},{fsiz[1]}"
    if roff is not None:
        q += f"&roff={roff[0]},{roff[1]}"
    if rsiz is not None:
        q += f"&rsiz={rsiz[0]},{rsiz[1]}"
    return q + "&type=jpp-stream"


class Needs:
    """Bytes a window needs, per data-bin, from one codestream's index (codestream 0)."""

    def __init__(self, source: Source) -> None:
        self.ix = ix = source.codestreams[0]
        self.meta0 = len(source.metadata0)
        self.main = int(ix.main_header_ranges[:, 1].sum())
        th = ix.tile_header_ranges
        self.tile_header = np.bincount(th[:, 0], weights=th[:, 2], minlength=ix.num_tiles
                                       ).astype(np.int64) if len(th) else np.zeros(ix.num_tiles,
                                                                                   np.int64)
        self.nprec = len(ix.precincts["id"])

    @property
    def size(self) -> tuple[int, int]:
        siz = self.ix.siz
        return siz.xsiz - siz.xosiz, siz.ysiz - siz.yosiz

    def frame(self, fsiz: tuple[int, int]) -> tuple[int, int]:
        """The frame size the server picks for fsiz (round-down)."""
        return resolve_window(self.ix, 0, fsiz=(fsiz[0], fsiz[1], "round-down")).frame

    def bins(self, win: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tiles, precinct rows, bytes needed of each row) for one window."""
        fsiz, roff, rsiz = win
        ix = self.ix
        window = resolve_window(ix, 0, fsiz=(fsiz[0], fsiz[1], "round-down"), roff=roff,
                                rsiz=rsiz)
        plan = plan_window(ix, window)
        rows = plan.rows
        pr, pk = ix.precincts, ix.packets
        starts, counts = pr["pkt_start"][rows], pr["pkt_count"][rows]
        last = starts + np.minimum(counts, plan.layers) - 1
        ends = np.where((counts > 0) & (plan.layers > 0),
                        pk["bin_end"][np.maximum(last, 0)], 0).astype(np.int64)
        return plan.tiles, rows, ends

    def stateless(self, win: Window) -> int:
        tiles, _, ends = self.bins(win)
        return self.meta0 + self.main + int(self.tile_header[tiles].sum()) + int(ends.sum())


@dataclass
class SessionNeeds:
    """What a session's client holds if it got exactly what it needed; step() -> the growth."""

    needs: Needs
    headers_sent: bool = False
    tiles: set[int] = field(default_factory=set)
    held: np.ndarray | None = None

    def step(self, win: Window) -> int:
        n = self.needs
        if self.held is None:
            self.held = np.zeros(n.nprec, np.int64)
        tiles, rows, ends = n.bins(win)
        grow = 0
        if not self.headers_sent:
            grow += n.meta0 + n.main
            self.headers_sent = True
        new_tiles = [t for t in tiles.tolist() if t not in self.tiles]
        grow += int(n.tile_header[new_tiles].sum()) if new_tiles else 0
        self.tiles.update(new_tiles)
        before = self.held[rows]
        more = np.maximum(ends - before, 0)
        grow += int(more.sum())
        self.held[rows] = np.maximum(before, ends)
        return grow


# ----------------------------------------------------------------------------- workloads
@dataclass
class Request:
    query: str       # without target= / cid= (added by the client)
    needed: int


@dataclass
class Trace:
    """A viewer session: the first request opens it (cnew), the last one closes it (cclose)."""

    steps: list[Request]


def thumbnail_requests(needs: Needs, count: int, side: int = 256) -> list[Request]:
    win: Window = ((side, side), None, None)
    req = Request(window_query(win), needs.stateless(win))
    return [req] * max(count, 1)


def region_requests(needs: Needs, count: int, seed: int, side: int = 512) -> list[Request]:
    """count side x side windows at full resolution, at seeded random places."""
    w, h = needs.size
    rng = random.Random(seed)
    out = []
    for _ in range(max(count, 1)):
        x, y = rng.randrange(max(w - side, 0) + 1), rng.randrange(max(h - side, 0) + 1)
        win: Window = ((w, h), (x, y), (min(side, w), min(side, h)))
        out.append(Request(window_query(win), needs.stateless(win)))
    return out


def viewer_windows(needs: Needs, rng: random.Random, view: int = 512,
                   pans: int = 20) -> list[Window]:
    """Overview thumbnail, zoom in twice (x2) towards a point, pan `pans` quarter-windows,
    zoom out twice back to the overview."""
    f0 = needs.frame((view, view))

    def centred(frame: tuple[int, int], cx: float, cy: float) -> Window:
        vw, vh = min(view, frame[0]), min(view, frame[1])
        x = int(min(max(cx * frame[0] - vw / 2, 0), frame[0] - vw))
        y = int(min(max(cy * frame[1] - vh / 2, 0), frame[1] - vh))
        return (frame, (x, y), (vw, vh))

    px, py = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)  # the point zoomed towards
    wins: list[Window] = [((view, view), None, None)]
    # Ask for frames that exist, so the server does not rescale (and say so in headers).
    f1 = needs.frame((2 * f0[0], 2 * f0[1]))
    f2 = needs.frame((2 * f1[0], 2 * f1[1]))
    wins.append(centred(f1, px, py))
    wins.append(centred(f2, px, py))
    # Pan in a seeded direction, bouncing off the edges.
    dx, dy = rng.choice([(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)])
    (x, y), (vw, vh) = wins[-1][1], wins[-1][2]
    step_x, step_y = vw // 4, vh // 4
    for _ in range(pans):
        nx, ny = x + dx * step_x, y + dy * step_y
        if not 0 <= nx <= f2[0] - vw:
            dx = -dx
            nx = x + dx * step_x
        if not 0 <= ny <= f2[1] - vh:
            dy = -dy
            ny = y + dy * step_y
        x, y = min(max(nx, 0), f2[0] - vw), min(max(ny, 0), f2[1] - vh)
        wins.append((f2, (x, y), (vw, vh)))
    cx, cy = (x + vw / 2) / f2[0], (y + vh / 2) / f2[1]
    wins.append(centred(f1, cx, cy))
    wins.append(((view, view), None, None))
    return wins


def viewer_traces(needs: Needs, count: int, seed: int) -> list[Trace]:
    rng = random.Random(seed)
    traces = []
    for _ in range(max(count, 1)):
        session = SessionNeeds(needs)
        wins = viewer_windows(needs, rng)
        traces.append(Trace([Request(window_query(w), session.step(w)) for w in wins]))
    return traces
