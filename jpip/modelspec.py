"""Applies `model=` / `need=` descriptors (ISO 15444-9 C.9) to a cache model or a plan.

Descriptors name bins explicitly (Hm, H<t>, P<id>, M<n>) or implicitly by tile, component,
resolution and precinct ranges; qualifiers give a byte count (`:N`) or a layer count (`:LN`).
Everything is resolved to precinct rows of the index with numpy, never by looping over all
precincts in Python.
"""
from __future__ import annotations

import numpy as np

from cache.model import CacheModel
from codestream.source import Source

from .model import ModelItem, ModelSpec, UintRange
from .plan import Plan


def _range_mask(values: np.ndarray, rng: UintRange | None) -> np.ndarray:
    if rng is None:
        return np.ones(len(values), bool)
    mask = values >= rng.lo
    if rng.hi is not None:
        mask &= values <= rng.hi
    return mask


def _codestreams(item: ModelItem, count: int, default: int) -> list[int]:
    if item.codestreams is None:
        return [default] if default < count else []
    out: set[int] = set()
    for r in item.codestreams:
        top = count - 1 if r.hi is None else min(r.hi, count - 1)
        out.update(range(r.lo, top + 1))
    return sorted(out)


def item_rows(item: ModelItem, source: Source, cs: int) -> np.ndarray:
    """Precinct rows a P or implicit descriptor names in codestream cs."""
    pr = source.codestreams[cs].precincts
    if item.kind == "P":
        return np.flatnonzero(_range_mask(pr["id"], item.ids))
    mask = (_range_mask(pr["t"], item.tiles) & _range_mask(pr["c"], item.components)
            & _range_mask(pr["r"], item.resolutions) & _range_mask(pr["p"], item.precincts))
    return np.flatnonzero(mask)


def _held_values(item: ModelItem, source: Source, cs: int, rows: np.ndarray) -> np.ndarray:
    ix = source.codestreams[cs]
    pr, pk = ix.precincts, ix.packets
    full = pr["bin_length"][rows]
    if item.bytes is not None:
        return np.minimum(full, item.bytes)
    if item.layers is not None:
        count = pr["pkt_count"][rows]
        n = np.minimum(count, item.layers)
        ends = pk["bin_end"][np.maximum(pr["pkt_start"][rows] + n - 1, 0)] if len(pk["bin_end"]) \
            else np.zeros(len(rows), np.int64)
        return np.where(n > 0, ends, 0)
    return full


def _header_value(item: ModelItem, length: int) -> int:
    if item.bytes is not None:
        return min(item.bytes, length)
    return length


def apply_model(spec: ModelSpec, source: Source, model: CacheModel, default_cs: int = 0) -> None:
    """Amends `model` with what the client says it holds (additive) or dropped (subtractive)."""
    count = len(source.codestreams)
    for item in spec.items:
        for cs in _codestreams(item, count, default_cs):
            hold = model.stream(cs)
            if item.kind == "Hm":
                n = _header_value(item, len(source.main_header_bin(cs)))
                hold.main_header = min(hold.main_header, n) if item.subtractive else \
                    max(hold.main_header, n)
            elif item.kind == "H":
                ntiles = source.codestreams[cs].num_tiles
                tiles = np.flatnonzero(_range_mask(np.arange(ntiles), item.ids))
                for t in tiles.tolist():
                    n = _header_value(item, len(source.tile_header_bin(cs, t)))
                    old = hold.tile_headers.get(t, 0)
                    hold.tile_headers[t] = min(old, n) if item.subtractive else max(old, n)
            elif item.kind in ("P", "implicit"):
                rows = item_rows(item, source, cs)
                if len(rows) == 0:
                    continue
                values = _held_values(item, source, cs, rows)
                if item.subtractive:
                    if item.bytes is None and item.layers is None:
                        values = np.zeros(len(rows), np.int64)
                    current = hold.precincts.get(rows)
                    hold.precincts.set(rows, np.minimum(current, values))
                else:
                    hold.precincts.raise_to(rows, values)
            elif item.kind == "M":
                if item.ids is None or item.ids.covers(0):
                    n = _header_value(item, len(source.metadata0))
                    old = model.metadata.get(0, 0)
                    model.metadata[0] = min(old, n) if item.subtractive else max(old, n)
            # 'T' (tile data-bins, JPT) does not describe a JPP-stream cache: ignored.


def restrict_to_need(spec: ModelSpec, source: Source, plans: list[Plan], default_cs: int = 0
                     ) -> list[Plan]:
    """Keeps only the precincts a `need=` list names (headers are always kept)."""
    count = len(source.codestreams)
    wanted: dict[int, list[np.ndarray]] = {}
    for item in spec.items:
        if item.subtractive or item.kind not in ("P", "implicit"):
            continue
        for cs in _codestreams(item, count, default_cs):
            wanted.setdefault(cs, []).append(item_rows(item, source, cs))
    out = []
    for plan in plans:
        rows = wanted.get(plan.codestream)
        keep = np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
        out.append(Plan(plan.codestream, plan.tiles, np.intersect1d(plan.rows, keep),
                        plan.layers))
    return out
