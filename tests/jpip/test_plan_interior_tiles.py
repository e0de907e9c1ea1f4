"""Tiles wholly inside a window are planned at once (jpip.plan._covered_rows): the same rows as
walking them one by one, for tiled corpus files and a file of 62,500 one-pixel tiles, over
random windows at every resolution, all components and single ones."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

import jpip.plan as plan
from codestream.source import build_source
from jpip.window import frame_size, resolve_window
from tests.conftest import CORPUS

TINY_TILES = Path(__file__).resolve().parents[1] / "fuzz/regressions/codestream" / \
    "62500-one-pixel-tiles.j2k"
FILES = [CORPUS / n for n in ("p1_05.j2k", "p0_10.j2k", "test-card-lossy-tiled.jp2",
                              "small_world_non_consecutive_tilepart_tlm.jp2")] + [TINY_TILES]


def _plans(ix, windows, interior: int):
    old = plan.INTERIOR_TILES
    plan.INTERIOR_TILES = interior
    try:
        out = []
        for w in windows:
            for attr in ("_plans", "_with_code_blocks", "_plan_grids"):
                if hasattr(ix, attr):
                    delattr(ix, attr)
            out.append(plan.plan_window(ix, w))
        return out
    finally:
        plan.INTERIOR_TILES = old


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_interior_tiles_planned_at_once_as_one_by_one(path) -> None:
    rng = random.Random(path.name)
    with build_source(path) as src:
        for cs, ix in enumerate(src.codestreams):
            windows = []
            comps = [None] + [((c, c),) for c in range(min(ix.num_components, 2))]
            for d in range(ix.max_discard + 1):
                fw, fh = frame_size(ix.siz, d)
                for _ in range(6):
                    x, y = rng.randrange(fw), rng.randrange(fh)
                    w, h = rng.randint(1, fw - x), rng.randint(1, fh - y)
                    windows.append(resolve_window(ix, cs, fsiz=(fw, fh, "round-down"),
                                                  roff=(x, y), rsiz=(w, h),
                                                  comps=rng.choice(comps)))
                windows.append(resolve_window(ix, cs, fsiz=(fw, fh, "round-down")))
            walked = _plans(ix, windows, interior=1 << 30)
            at_once = _plans(ix, windows, interior=1)
            covered = 0
            for w, a, b in zip(windows, walked, at_once, strict=True):
                assert np.array_equal(a.rows, b.rows), (path.name, w)
                assert np.array_equal(a.tiles, b.tiles)
                covered += len(a.tiles) > 1
            assert covered > 0
