"""`model=` / `need=` descriptors (ISO 15444-9 C.8) resolved against a target's index.

Descriptors name bins explicitly (Hm, H<t>, P<id>, M<n>) or implicitly by tile, component,
resolution and precinct ranges; qualifiers give a byte count (`:N`) or a layer count (`:LN`).
`model_records` turns a `model=` list into cache-model records (`cache.model`), which the
session layer applies like any other change: additive descriptors say the client holds at
least that much (`Received`), subtractive ones (`-`) that it holds at most that much
(`Evicted`: a whole-bin subtractive descriptor means nothing of the bin, so it is sent again).

Codestream qualifiers and the default codestream are codestream numbers as the client sees
them (`Source.first_codestream` is the number of codestream index 0); records carry indexes.

Cost: explicit precinct descriptors are looked up together, by binary search in the index's
precincts sorted by in-class id, so N descriptors cost O(N log P), not O(N P); implicit ones
select rows of the (tile, component, resolution) table first. Nothing loops over every
precinct of an image in Python.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cache.model import BinKind, Evicted, EvictedRows, ModelRecord, Received, ReceivedRows
from codestream.index import CodestreamIndex
from codestream.source import Source
from codestream.tilebins import tile_bins

from .model import ModelItem, ModelSpec, TilePartRange, TpSpec, UintRange
from .plan import Plan

__all__ = ["model_records", "need_rows", "need_tiles", "restrict_to_need", "tile_part_records"]

_WHOLE, _BYTES, _LAYERS = 0, 1, 2  # qualifier kinds, per descriptor


def _range_mask(values: np.ndarray, rng: UintRange | None) -> np.ndarray:
    if rng is None:
        return np.ones(len(values), bool)
    mask = values >= rng.lo
    if rng.hi is not None:
        mask &= values <= rng.hi
    return mask


def _indexes(item: ModelItem, source: Source, default: int) -> list[int]:
    """The codestream indexes a descriptor applies to (its qualifier, else the default)."""
    first, count = source.first_codestream, len(source.codestreams)
    if item.codestreams is None:
        return [default - first] if 0 <= default - first < count else []
    out: set[int] = set()
    for r in item.codestreams:
        lo = max(r.lo - first, 0)
        hi = count - 1 if r.hi is None else min(r.hi - first, count - 1)
        out.update(range(lo, hi + 1))
    return sorted(out)


@dataclass(frozen=True, slots=True)
class _IdIndex:
    """An index's precinct rows in in-class id order (computed once per index)."""

    ids: np.ndarray   # sorted in-class ids
    rows: np.ndarray  # the row of each


def _id_index(ix: CodestreamIndex) -> _IdIndex:
    found = getattr(ix, "_id_index", None)
    if found is None:
        order = np.argsort(ix.precincts["id"], kind="stable")
        found = _IdIndex(ix.precincts["id"][order], order.astype(np.int64))
        ix._id_index = found  # cached on the index, like the planner's table
    return found


def _explicit_rows(ix: CodestreamIndex, items: list[ModelItem]) -> tuple[np.ndarray, np.ndarray]:
    """Rows named by explicit P descriptors, and for each row the position of its descriptor."""
    idx = _id_index(ix)
    n = len(items)
    lo = np.fromiter((0 if it.ids is None else it.ids.lo for it in items), np.int64, n)
    hi = np.fromiter((-1 if it.ids is None or it.ids.hi is None else it.ids.hi
                      for it in items), np.int64, n)
    open_top = np.fromiter((it.ids is None or it.ids.hi is None for it in items), bool, n)
    left = np.searchsorted(idx.ids, lo, side="left")
    right = np.where(open_top, len(idx.ids), np.searchsorted(idx.ids, hi, side="right"))
    counts = np.maximum(right - left, 0)
    total = int(counts.sum())
    owner = np.repeat(np.arange(n), counts)
    # Position inside each descriptor's [left, right) run: a running index minus run starts.
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    pos = np.repeat(left, counts) + (np.arange(total) - starts)
    return idx.rows[pos], owner


def _implicit_rows(ix: CodestreamIndex, item: ModelItem) -> np.ndarray:
    """Rows named by an implicit descriptor (t/c/r/p ranges), via the tcr table."""
    tcr = ix.tcr
    sel = np.flatnonzero(_range_mask(tcr["t"], item.tiles) & _range_mask(tcr["c"], item.components)
                         & _range_mask(tcr["r"], item.resolutions))
    parts = []
    for i in sel.tolist():
        n = int(tcr["npw"][i]) * int(tcr["nph"][i])
        p = item.precincts
        lo = 0 if p is None else min(p.lo, n)
        hi = n if p is None or p.hi is None else min(p.hi + 1, n)
        if hi > lo:
            parts.append(int(tcr["prec_base"][i]) + np.arange(lo, hi, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _layer_ends(ix: CodestreamIndex, rows: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """Bin bytes up to the end of the first `layers` packets of each row (0 for 0 layers)."""
    pr, pk = ix.precincts, ix.packets
    n = np.minimum(pr["pkt_count"][rows], layers)
    if len(pk["bin_end"]) == 0:
        return np.zeros(len(rows), np.int64)
    ends = pk["bin_end"][np.maximum(pr["pkt_start"][rows] + n - 1, 0)]
    return np.where(n > 0, ends, 0).astype(np.int64)


def _row_values(ix: CodestreamIndex, rows: np.ndarray, kinds: np.ndarray, amounts: np.ndarray,
                subtractive: bool) -> np.ndarray:
    """Per row the prefix a descriptor speaks of: the whole bin (additive) or nothing
    (subtractive), `:N` bytes, or `:LN` layers."""
    full = ix.precincts["bin_length"][rows].astype(np.int64)
    out = np.zeros(len(rows), np.int64) if subtractive else full.copy()
    by_bytes = kinds == _BYTES
    out[by_bytes] = np.minimum(full[by_bytes], amounts[by_bytes])
    by_layers = kinds == _LAYERS
    if by_layers.any():
        out[by_layers] = _layer_ends(ix, rows[by_layers], amounts[by_layers])
    return out


def _qualifiers(items: list[ModelItem]) -> tuple[np.ndarray, np.ndarray]:
    kinds = np.fromiter((_WHOLE if it.whole_bin else _BYTES if it.bytes is not None else _LAYERS
                         for it in items), np.int8, len(items))
    amounts = np.fromiter((it.bytes if it.bytes is not None else it.layers or 0
                           for it in items), np.int64, len(items))
    return kinds, amounts


def _bin_value(item: ModelItem, length: int) -> int:
    if item.bytes is not None:
        return min(item.bytes, length)
    return 0 if item.subtractive else length


def _tile_header_lengths(ix: CodestreamIndex) -> np.ndarray:
    th = ix.tile_header_ranges
    if not len(th):
        return np.zeros(ix.num_tiles, np.int64)
    return np.bincount(th[:, 0], weights=th[:, 2], minlength=ix.num_tiles).astype(np.int64)


def model_records(spec: ModelSpec, source: Source, default_codestream: int) -> list[ModelRecord]:
    """Cache-model records for a `model=` list, in the list's order."""
    out: list[ModelRecord] = []
    items = spec.items
    i = 0
    while i < len(items):
        item = items[i]
        if item.kind == "P":
            # A run of explicit precinct descriptors with the same sign and codestreams.
            j = i + 1
            while (j < len(items) and items[j].kind == "P"
                   and items[j].subtractive == item.subtractive
                   and items[j].codestreams == item.codestreams):
                j += 1
            run = list(items[i:j])
            kinds, amounts = _qualifiers(run)
            for cs in _indexes(item, source, default_codestream):
                ix = source.codestreams[cs]
                rows, owner = _explicit_rows(ix, run)
                if len(rows):
                    out.append(_rows_record(ix, cs, rows, kinds[owner], amounts[owner],
                                            item.subtractive))
            i = j
            continue
        i += 1
        if item.kind == "M":
            # Metadata-bins belong to the target, not to a codestream.
            lengths = source.metadata.bins["length"]
            ids = np.flatnonzero(_range_mask(np.arange(len(lengths)), item.ids))
            for k in ids.tolist():
                value = _bin_value(item, int(lengths[k]))
                out.append(Evicted(BinKind.METADATA, 0, k, value) if item.subtractive
                           else Received(BinKind.METADATA, 0, k, value))
            continue
        for cs in _indexes(item, source, default_codestream):
            ix = source.codestreams[cs]
            if item.kind == "Hm":
                value = _bin_value(item, len(source.main_header_bin(cs)))
                out.append(Evicted(BinKind.MAIN_HEADER, cs, 0, value) if item.subtractive
                           else Received(BinKind.MAIN_HEADER, cs, 0, value))
            elif item.kind == "H":
                lengths = _tile_header_lengths(ix)
                tiles = np.flatnonzero(_range_mask(np.arange(ix.num_tiles), item.ids))
                for t in tiles.tolist():
                    value = _bin_value(item, int(lengths[t]))
                    out.append(Evicted(BinKind.TILE_HEADER, cs, t, value) if item.subtractive
                               else Received(BinKind.TILE_HEADER, cs, t, value))
            elif item.kind == "implicit":
                rows = _implicit_rows(ix, item)
                if len(rows):
                    kinds, amounts = _qualifiers([item])
                    out.append(_rows_record(ix, cs, rows, np.repeat(kinds, len(rows)),
                                            np.repeat(amounts, len(rows)), item.subtractive))
            elif item.kind == "T":
                out.extend(_tile_records(ix, cs, item))
    return out


def _tile_records(ix: CodestreamIndex, cs: int, item: ModelItem) -> list[ModelRecord]:
    """A T descriptor (tile data-bins, JPT-streams): the whole bin, nothing of it
    (subtractive), or its first N bytes."""
    lengths = tile_bins(ix).bin_length
    tiles = np.flatnonzero(_range_mask(np.arange(ix.num_tiles), item.ids))
    if item.bytes is not None:
        values = np.minimum(lengths[tiles], item.bytes)
    else:
        values = np.zeros(len(tiles), np.int64) if item.subtractive else lengths[tiles]
    if not item.subtractive:
        keep = values > 0
        tiles, values = tiles[keep], values[keep]
    if len(tiles) == 0:
        return []
    record = EvictedRows if item.subtractive else ReceivedRows
    return [record(BinKind.TILE, cs, tiles.astype(np.int32), values.astype(np.int64))]


def _tile_part_span(ix: CodestreamIndex, rng: TilePartRange) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """The tiles a tile-part range names, and per tile the first and last part position it
    names (positions of codestream.tilebins; tiles where it names no existing part left out)."""
    tb = tile_bins(ix)
    (t0, p0), (t1, p1) = rng.first, rng.last
    t1 = min(t1, ix.num_tiles - 1)
    tiles = np.arange(t0, t1 + 1, dtype=np.int64)
    if len(tiles) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    first, count = tb.first[tiles], tb.first[tiles + 1] - tb.first[tiles]
    lo = np.zeros(len(tiles), np.int64)
    hi = count - 1
    lo[0] = p0
    if tiles[-1] == rng.last[0]:
        hi[-1] = min(int(hi[-1]), p1)
    ok = lo <= hi
    return tiles[ok], (first + lo)[ok], (first + hi)[ok]


def tile_part_records(spec: TpSpec, source: Source, default_codestream: int
                      ) -> list[ModelRecord]:
    """Cache-model records for a `tpmodel=` list. A tile data-bin is held as a prefix, so an
    additive range says the client holds each tile's bin up to the end of the last tile-part
    it names, a subtractive one that it holds at most what comes before the first."""
    out: list[ModelRecord] = []
    for rng in spec:
        for cs in _indexes(rng, source, default_codestream):
            ix = source.codestreams[cs]
            tb = tile_bins(ix)
            tiles, lo, hi = _tile_part_span(ix, rng)
            if len(tiles) == 0:
                continue
            if rng.subtractive:
                out.append(EvictedRows(BinKind.TILE, cs, tiles.astype(np.int32), tb.start[lo]))
            else:
                out.append(ReceivedRows(BinKind.TILE, cs, tiles.astype(np.int32), tb.end[hi]))
    return out


def need_tiles(need: ModelSpec | None, tpneed: TpSpec | None, source: Source,
               default_codestream: int) -> dict[int, dict[int, int]]:
    """Per codestream index, the tiles `need=` (T descriptors) and `tpneed=` name and the
    bytes of each tile data-bin they name (the end of the last tile-part named)."""
    wanted: dict[int, dict[int, int]] = {}

    def add(cs: int, tiles: np.ndarray, ends: np.ndarray) -> None:
        into = wanted.setdefault(cs, {})
        for t, e in zip(tiles.tolist(), ends.tolist(), strict=True):
            into[t] = max(into.get(t, 0), e)

    for item in need or ():
        if item.kind != "T" or item.subtractive:
            continue
        for cs in _indexes(item, source, default_codestream):
            for rec in _tile_records(source.codestreams[cs], cs, item):
                add(cs, rec.rows.astype(np.int64), rec.ends)
    for rng in tpneed or ():
        if rng.subtractive:
            continue
        for cs in _indexes(rng, source, default_codestream):
            ix = source.codestreams[cs]
            tiles, _, hi = _tile_part_span(ix, rng)
            add(cs, tiles, tile_bins(ix).end[hi])
    return wanted


def _rows_record(ix: CodestreamIndex, cs: int, rows: np.ndarray, kinds: np.ndarray,
                 amounts: np.ndarray, subtractive: bool) -> ReceivedRows | EvictedRows:
    values = _row_values(ix, rows, kinds, amounts, subtractive)
    rows32 = rows.astype(np.int32)
    if subtractive:
        return EvictedRows(BinKind.PRECINCT, cs, rows32, values)
    return ReceivedRows(BinKind.PRECINCT, cs, rows32, values)


def need_rows(spec: ModelSpec, source: Source, default_codestream: int) -> dict[int, np.ndarray]:
    """The precinct rows per codestream index a `need=` list names (sorted, unique)."""
    wanted: dict[int, list[np.ndarray]] = {}
    explicit = [it for it in spec.items if it.kind == "P" and not it.subtractive]
    for item in spec.items:
        if item.subtractive or item.kind != "implicit":
            continue
        for cs in _indexes(item, source, default_codestream):
            wanted.setdefault(cs, []).append(_implicit_rows(source.codestreams[cs], item))
    by_streams: dict[tuple | None, list[ModelItem]] = {}
    for item in explicit:
        by_streams.setdefault(item.codestreams, []).append(item)
    for run in by_streams.values():
        for cs in _indexes(run[0], source, default_codestream):
            rows, _ = _explicit_rows(source.codestreams[cs], run)
            wanted.setdefault(cs, []).append(rows)
    return {cs: np.unique(np.concatenate(parts)) for cs, parts in wanted.items()}


def restrict_to_need(plans: list[Plan], wanted: dict[int, np.ndarray]) -> list[Plan]:
    """Keeps only the precincts `need=` names (header bins are always kept)."""
    out = []
    for plan in plans:
        keep = wanted.get(plan.codestream, np.zeros(0, np.int64))
        out.append(Plan(plan.codestream, plan.tiles, np.intersect1d(plan.rows, keep),
                        plan.layers))
    return out
