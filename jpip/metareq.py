"""Which metadata-bins (and how much of each) a request needs (15444-9 C.5, metareq).

Sans-I/O. The partition and each box's scope are `codestream.metabins`'. A response carries:

- metadata-bin 0 whole, always (the top-level boxes: every other box is reached from it);
- when image data is asked for (no `!!`), the boxes needed to interpret it: every codestream
  header, compositing layer header and JP2 header box (`jpch`, `jplh`, `jp2h`) that is global
  or tied to a codestream of the window, with all its sub-boxes;
- what `metareq` asks for. Each `[box-prop;...]` group names box types (`*`: any) within the
  bins under its root bin (`R`, default 0) down to a depth (`D`, counted from the top level of
  the root bin), restricted by qualifiers: `/a` every box of the target, `/g` global boxes,
  `/s` boxes tied to a codestream of the window, `/w` boxes tied to a region (an ROI
  description) that meets the window; none given means `/wsg` (boxes relevant to the window).
  A matched box is sent with the bins needed to reach it (each placeholder on its way from
  metadata-bin 0, as a prefix of the bin holding it) and its contents: whole, or the first N
  bytes of them (`:N`), or with every box below it whole (`:r`). Box types are 4 characters; an
  underscore stands for a space (`xml_`, as OpenJPEG's viewer writes it).

Order: bin 0, the boxes needed to interpret the image and the boxes asked for with priority
(`!`) come before image data; the other boxes asked for come after it (C.5.2: metadata without
priority ranks below the image data of the window).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from codestream.metabins import MetadataBins

from .request import MetaReq
from .window import ViewWindow

__all__ = ["MetaPlan", "plan_metadata", "type_code"]

_ESSENTIAL = np.asarray([int.from_bytes(t, "big") for t in (b"jp2h", b"jpch", b"jplh")],
                        np.int64)


@dataclass(frozen=True, slots=True)
class MetaPlan:
    """(metadata-bin id, bytes needed from its start) to send before and after image data,
    each in bin order."""

    first: tuple[tuple[int, int], ...]
    last: tuple[tuple[int, int], ...] = ()


def type_code(box_type: str) -> int:
    """A metareq box type as the 4CC integer of codestream.metabins ('_' stands for ' ')."""
    return int.from_bytes(box_type.replace("_", " ").encode("latin-1"), "big")


def plan_metadata(meta: MetadataBins, metareq: MetaReq | None,
                  windows: Sequence[ViewWindow], metadata_only: bool) -> MetaPlan:
    if metareq is not None:
        return _plan(meta, metareq, windows, metadata_only)
    # Without metareq the plan depends on the window's codestreams alone: kept per target.
    key = ("default", metadata_only, tuple(sorted({w.codestream for w in windows})))
    found = meta.derived.get(key)
    if found is None:
        found = meta.derived[key] = _plan(meta, None, windows, metadata_only)
        if len(meta.derived) > 256:  # many codestreams asked one by one: keep the recent
            meta.derived.pop(next(iter(meta.derived)))
    return found


def _plan(meta: MetadataBins, metareq: MetaReq | None, windows: Sequence[ViewWindow],
          metadata_only: bool) -> MetaPlan:
    n = meta.count
    first = np.zeros(n, np.int64)
    last = np.zeros(n, np.int64)
    first[0] = meta.length(0)
    if len(meta.nodes["type"]) == 0:
        return MetaPlan(((0, int(first[0])),))
    scope = _Scope(meta, windows)
    if not metadata_only:
        essential = np.flatnonzero(np.isin(meta.nodes["type"], _ESSENTIAL)
                                   & (scope.global_ | scope.stream_hit))
        _need(meta, first, essential, "r")
    if metareq is not None:
        for item in metareq.items:
            root = item.root_bin or 0
            if root >= n:
                continue  # no such bin: nothing in it to match
            nd = meta.nodes
            top = meta.bins["subtree_end"][root]
            in_scope = (nd["bin"] >= root) & (nd["bin"] < top)
            if item.max_depth is not None:
                base = 0 if root == 0 else int(nd["depth"][meta.bins["owner"][root]]) + 1
                in_scope &= nd["depth"] - base <= item.max_depth
            if root:
                _path(meta, first, np.asarray([meta.bins["owner"][root]], np.int64))
            for prop in item.props:
                mask = in_scope & scope.qualified(prop.qualifiers)
                if prop.box_type != "*":
                    mask &= nd["type"] == type_code(prop.box_type)
                _need(meta, first if prop.priority else last, np.flatnonzero(mask), prop.limit)
    last = np.where(last > first, last, 0)
    return MetaPlan(_pairs(first), _pairs(last))


def _pairs(ends: np.ndarray) -> tuple[tuple[int, int], ...]:
    ids = np.flatnonzero(ends)
    out = [(int(i), int(ends[i])) for i in ids]
    return tuple(out)


def _need(meta: MetadataBins, ends: np.ndarray, nodes: np.ndarray, limit) -> None:
    """Raises `ends` to cover the matched `nodes`, the way to them and their contents."""
    if len(nodes) == 0:
        return
    nd = meta.nodes
    _path(meta, ends, nodes)
    cb = nd["contents_bin"][nodes]
    cb = cb[cb >= 0]
    if len(cb) == 0:
        return
    lengths = meta.bins["length"]
    if limit == "r":
        # The contents bins and every bin below them, whole (pre-order ids: a range each).
        top = meta.bins["subtree_end"][cb]
        span = top - cb
        ids = np.repeat(cb - np.cumsum(span) + span, span) + np.arange(int(span.sum()))
        np.maximum.at(ends, ids, lengths[ids])
    else:
        want = lengths[cb] if limit is None else np.minimum(lengths[cb], limit)
        np.maximum.at(ends, cb, want)


def _path(meta: MetadataBins, ends: np.ndarray, nodes: np.ndarray) -> None:
    """Raises `ends` to cover the entries of `nodes` and of all their ancestors in the bins
    holding them (so a client can reach each one from metadata-bin 0)."""
    nd = meta.nodes
    cur = np.unique(nodes)
    while len(cur):
        np.maximum.at(ends, nd["bin"][cur], nd["bin_offset"][cur] + nd["entry_length"][cur])
        up = nd["parent"][cur]
        cur = np.unique(up[up >= 0])


class _Scope:
    """Per node of the box tree: is it global, tied to a codestream of the window, tied to
    a region meeting the window."""

    def __init__(self, meta: MetadataBins, windows: Sequence[ViewWindow]) -> None:
        nd = meta.nodes
        m = len(nd["type"])
        self.count = m
        streams = np.asarray(sorted({w.codestream for w in windows}), np.int64)
        no_region = nd["region_count"] < 0
        self.global_ = (nd["stream_count"] == 0) & no_region
        hit = np.isin(meta.streams, streams).astype(np.int64)
        self.stream_hit = _any_in(hit, nd["stream_start"], nd["stream_count"]) & no_region
        region_hit = np.zeros(m, bool)
        has_region = ~no_region
        if has_region.any() and len(meta.regions):
            rects = meta.regions
            meets = np.zeros(len(rects), bool)
            for w in windows:
                if w.empty:
                    continue
                x0, y0, x1, y1 = w.region
                meets |= ((rects[:, 0] < x1) & (rects[:, 2] > x0) & (rects[:, 1] < y1)
                          & (rects[:, 3] > y0))
            counts = np.maximum(nd["region_count"], 0)
            region_hit = _any_in(meets.astype(np.int64), nd["region_start"], counts)
        any_stream = _any_in(hit, nd["stream_start"], nd["stream_count"])
        self.window_hit = has_region & region_hit & (any_stream | (nd["stream_count"] == 0))

    def qualified(self, qualifiers: frozenset[str]) -> np.ndarray:
        if "a" in qualifiers:
            return np.ones(self.count, bool)
        q = qualifiers or frozenset("wsg")
        mask = np.zeros(self.count, bool)
        if "g" in q:
            mask |= self.global_
        if "s" in q:
            mask |= self.stream_hit
        if "w" in q:
            mask |= self.window_hit
        return mask


def _any_in(flags: np.ndarray, start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per node, whether any of flags[start:start+count] is set."""
    csum = np.concatenate(([0], np.cumsum(flags)))
    return (csum[start + count] - csum[start]) > 0
