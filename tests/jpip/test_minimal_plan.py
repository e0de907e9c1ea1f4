"""Minimality: the planner picks exactly the precincts whose coefficients reach the window.

The oracle here works in the other direction from the planner, and precinct by precinct: from
each precinct's coefficient rectangle in each of its bands, it propagates UP through the
synthesis filters (which output samples can each coefficient change?) to the window's
resolution, and keeps the precinct if that footprint meets the window. The planner goes DOWN
from the window, a resolution at a time, over precinct rectangles. Both use the filters'
supports in interleaved coordinates (low-pass coefficient k at 2k, high-pass at 2k+1):

    5/3: a low-pass coefficient changes outputs within 1 of it, a high-pass one within 2
    9/7: within 3 and 4

(the synthesis filters of ISO 15444-1 Annex F have 3/5 and 7/9 taps). Boundary extension
mirrors positions about the edges, which never reaches further than that, so clipping to each
resolution's extent is exact. Pixel exactness (that nothing needed is missing) is checked
against OpenJPEG in test_plan_oracle.py; this test adds that nothing else is sent.

Two empty sets agree without showing anything, so each file counts the windows whose oracle
set is non-empty and must reach MIN_COMPARED (tests/test_corpus.py guards the list of files).
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from codestream.source import build_source
from jpip.plan import plan_window
from jpip.window import frame_size, resolve_window
from tests.conftest import INTEROP, corpus_files

LOW_REACH = {True: 1, False: 3}   # reversible (5/3) or not (9/7)
HIGH_REACH = {True: 2, False: 4}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _up(lo: int, hi: int, reach: int, odd: int, x0: int, x1: int) -> tuple[int, int]:
    """Outputs [lo', hi') at the next resolution that coefficients [lo, hi) of one band reach
    (odd = 1 for the high-pass band), clipped to the resolution's extent [x0, x1)."""
    if hi <= lo:
        return 0, 0
    return max(2 * lo + odd - reach, x0), min(2 * (hi - 1) + odd + reach + 1, x1)


def relevant_rows(ix, window) -> set[int]:
    """Precinct rows whose footprint at the window's resolution meets the window."""
    siz = ix.siz
    X0, Y0, X1, Y1 = window.region
    tcr, pr = ix.tcr, ix.precincts
    keep: set[int] = set()
    for row in range(len(pr["id"])):
        t, c, r = int(pr["t"][row]), int(pr["c"][row]), int(pr["r"][row])
        if c not in window.comps:
            continue
        tx0, ty0, tx1, ty1 = siz.tile_bounds(t)
        rx0, ry0, rx1, ry1 = max(X0, tx0), max(Y0, ty0), min(X1, tx1), min(Y1, ty1)
        if rx1 <= rx0 or ry1 <= ry0:
            continue
        base = int(np.nonzero((tcr["t"] == t) & (tcr["c"] == c) & (tcr["r"] == 0))[0][0])
        nl = int(tcr["levels"][base])
        top = max(nl - window.discard, 0)
        if r > top:
            continue
        rev = bool(tcr["reversible"][base])
        comp = siz.components[c]
        sx, sy = comp.dx << min(window.discard, nl), comp.dy << min(window.discard, nl)
        # The window at the top resolution: samples u with u * s in [r0, r1).
        wx = (_cdiv(rx0, sx), _cdiv(rx1, sx))
        wy = (_cdiv(ry0, sy), _cdiv(ry1, sy))
        i = base + r
        ppx, ppy, npw = int(tcr["ppx"][i]), int(tcr["ppy"][i]), int(tcr["npw"][i])
        x0, y0, x1, y1 = (int(tcr[k][i]) for k in ("x0", "y0", "x1", "y1"))
        p = int(pr["p"][row])
        cx0 = max(((x0 >> ppx) + p % npw) << ppx, x0)
        cy0 = max(((y0 >> ppy) + p // npw) << ppy, y0)
        cx1 = min((((x0 >> ppx) + p % npw) + 1) << ppx, x1)
        cy1 = min((((y0 >> ppy) + p // npw) + 1) << ppy, y1)
        if r == 0:
            footprints = [((cx0, cx1), (cy0, cy1))]
        else:
            # The cell's coefficients in the low and high bands, per axis, then where they
            # reach at resolution r itself.
            lo_x, hi_x = (_cdiv(cx0, 2), _cdiv(cx1, 2)), (cx0 // 2, cx1 // 2)
            lo_y, hi_y = (_cdiv(cy0, 2), _cdiv(cy1, 2)), (cy0 // 2, cy1 // 2)
            fx = {0: _up(*lo_x, LOW_REACH[rev], 0, x0, x1),
                  1: _up(*hi_x, HIGH_REACH[rev], 1, x0, x1)}
            fy = {0: _up(*lo_y, LOW_REACH[rev], 0, y0, y1),
                  1: _up(*hi_y, HIGH_REACH[rev], 1, y0, y1)}
            # HL, LH, HH: (x high?, y high?)
            footprints = [(fx[1], fy[0]), (fx[0], fy[1]), (fx[1], fy[1])]
        for (ax, bx), (ay, by) in footprints:
            for n in range(r + 1, top + 1):  # on up as low-pass coefficients
                j = base + n
                ax, bx = _up(ax, bx, LOW_REACH[rev], 0, int(tcr["x0"][j]), int(tcr["x1"][j]))
                ay, by = _up(ay, by, LOW_REACH[rev], 0, int(tcr["y0"][j]), int(tcr["y1"][j]))
            if max(ax, wx[0]) < min(bx, wx[1]) and max(ay, wy[0]) < min(by, wy[1]):
                keep.add(row)
                break
    return keep


def windows(ix, rng: random.Random):
    levels = min(int(ix.tcr["levels"].min()), 5)
    for d in range(levels + 1):
        fw, fh = frame_size(ix.siz, d)
        yield (fw, fh), None, None
        yield (fw, fh), (0, 0), (1, 1)
        yield (fw, fh), (fw - 1, fh - 1), (1, 1)
        for _ in range(4):
            ox, oy = rng.randrange(fw), rng.randrange(fh)
            yield (fw, fh), (ox, oy), (rng.randint(1, max(1, fw // 3)),
                                      rng.randint(1, max(1, fh // 3)))


FILES = [*corpus_files(), INTEROP / "med2048.jp2"]
# The smallest matrix: small_world has no decomposition level, so 7 windows of one frame.
MIN_COMPARED = 7


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_planner_sends_exactly_the_precincts_that_reach_the_window(path) -> None:
    rng = random.Random(path.name)
    with build_source(path) as src:
        ix = src.codestreams[0]
        if len(ix.precincts["id"]) > 20000:
            pytest.fail("the oracle is a Python loop over precincts: pick smaller files")
        compared = 0
        for fsiz, roff, rsiz in windows(ix, rng):
            w = resolve_window(ix, 0, fsiz=(*fsiz, "round-down"), roff=roff, rsiz=rsiz)
            planned = set(plan_window(ix, w).rows.tolist())
            oracle = relevant_rows(ix, w)
            assert planned == oracle, (
                f"fsiz={fsiz} roff={roff} rsiz={rsiz}: {len(planned - oracle)} extra, "
                f"{len(oracle - planned)} missing of {len(oracle)}")
            compared += bool(oracle)
        print(f"{path.name}: {compared} windows compared")
        assert compared >= MIN_COMPARED, f"only {compared} windows with precincts to compare"
