"""Which tile data-bins a view-window needs, and how much of each (JPT-streams, 15444-9 A.3.3).

A tile data-bin grows tile-part by tile-part, so a window needs, of each tile it touches, the
prefix of tile-parts that holds every packet its precincts need (jpip.plan: the precincts
whose code-blocks reach the window, their first `layers` packets), and at least the first
tile-part (it carries the tile's header). Tile-parts hold packets in progression order, so a
file split into tile-parts by resolution or by layer (the usual reasons for tile-parts) gives
a window at a reduced resolution or quality a short prefix; a window may get packets beyond
what it needs within the last tile-part it takes (tile-parts are sent whole).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from codestream.index import CodestreamIndex
from codestream.tilebins import tile_bins

from .plan import Plan

__all__ = ["TilePlan", "plan_tiles", "restrict_tiles"]

PLANS_KEPT = 64


@dataclass(frozen=True)
class TilePlan:
    """The tile data-bins of one codestream a window needs: `tiles` (sorted) and per tile the
    bytes of its bin (`ends`), which are its first `parts` tile-parts."""

    codestream: int
    tiles: np.ndarray
    ends: np.ndarray
    parts: np.ndarray


def plan_tiles(ix: CodestreamIndex, plan: Plan, whole: bool = False) -> TilePlan:
    """The tile plan of a precinct plan (`whole`: the window is the whole codestream with
    every layer, so every tile data-bin is needed whole). Recent plans are kept per index."""
    # Precinct plans are immutable and kept per window (jpip.plan): the same window gives the
    # same plan object, so it names its tile plan (kept beside it: its id cannot be reused).
    key = (id(plan), whole)
    kept = getattr(ix, "_tile_plans", None)
    if kept is None:
        kept = ix._tile_plans = OrderedDict()
    found = kept.get(key)
    if found is not None and found[0] is plan:
        kept.move_to_end(key)
        return found[1]
    tile_plan = _plan_tiles(ix, plan, whole)
    kept[key] = (plan, tile_plan)
    if len(kept) > PLANS_KEPT:
        kept.popitem(last=False)
    return tile_plan


def _plan_tiles(ix: CodestreamIndex, plan: Plan, whole: bool) -> TilePlan:
    tb = tile_bins(ix)
    tiles = np.asarray(plan.tiles, np.int64)
    counts = tb.first[tiles + 1] - tb.first[tiles]
    tiles = tiles[counts > 0]  # a tile without tile-parts has nothing to send
    if whole:
        return _frozen(plan.codestream, tiles, tb.bin_length[tiles],
                       tb.first[tiles + 1] - tb.first[tiles])
    # The last part position holding a needed packet, per tile of the plan (not per tile of
    # the image: a window's work is sized by the window); at least the first part.
    lastq = tb.first[tiles].astype(np.int64)
    rows = plan.rows
    if len(rows) and plan.layers > 0 and len(tiles):
        pr = ix.precincts
        n = np.minimum(pr["pkt_count"][rows], plan.layers).astype(np.int64)
        total = int(n.sum())
        if total:
            starts = pr["pkt_start"][rows]
            offsets = np.cumsum(n) - n
            packets = np.repeat(starts - offsets, n) + np.arange(total)
            q = tb.packet_part[packets].astype(np.int64)
            q = q[q >= 0]
            # A part's tile has parts, so it is one of `tiles` (sorted).
            np.maximum.at(lastq, np.searchsorted(tiles, tb.tile[q]), q)
    return _frozen(plan.codestream, tiles, tb.end[lastq], lastq - tb.first[tiles] + 1)


def _frozen(cs: int, tiles: np.ndarray, ends: np.ndarray, parts: np.ndarray) -> TilePlan:
    for a in (tiles, ends, parts):
        a.flags.writeable = False
    return TilePlan(cs, tiles, ends, parts)


def restrict_tiles(plans: list[TilePlan], wanted: dict[int, dict[int, int]],
                   ixs: list[CodestreamIndex]) -> list[TilePlan]:
    """Keeps, of each plan, the tiles `tpneed`/`need` name, up to the bytes named (the
    smaller of that and what the window needs)."""
    out = []
    for plan in plans:
        want = wanted.get(plan.codestream, {})
        tb = tile_bins(ixs[plan.codestream])
        keep = np.asarray([t in want for t in plan.tiles.tolist()], bool)
        tiles = plan.tiles[keep]
        cap = np.asarray([want[t] for t in tiles.tolist()], np.int64)
        ends = np.minimum(plan.ends[keep], cap)
        # Parts up to the one that holds the last byte wanted.
        first = tb.first[tiles]
        parts = np.asarray([int(np.searchsorted(tb.end[f:f + p], e, side="left")) + 1
                            if e > 0 else 0
                            for f, p, e in zip(first.tolist(), plan.parts[keep].tolist(),
                                               ends.tolist(), strict=True)], np.int64)
        out.append(TilePlan(plan.codestream, tiles, ends, parts))
    return out
