"""Packet order of a tile: the five progression orders of B.12 and POC changes, vectorised.

Position-driven orders (RPCL, PCRL, CPRL) visit a precinct when the sweep over the reference
grid reaches the first point that B.12.1.3's conditions assign to it; we compute that trigger
point per precinct row/column instead of sweeping every grid position.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import ResolutionGrid, ResolutionRows
from .markers import PocEntry


@dataclass(frozen=True, slots=True)
class TilePrecincts:
    """The precincts of one tile (or of many: then `tile` names each one's tile, and the
    tiles' packets come tile after tile) in (t, c, r, p) order, with what the orders sort on."""

    comp: np.ndarray  # int32
    res: np.ndarray   # int32
    index: np.ndarray  # int64: p, raster index within its resolution
    trig_y: np.ndarray  # int64: reference-grid point where position orders visit it
    trig_x: np.ndarray
    tile: np.ndarray | None = None


def _trigger(coord0: int, t0: int, pp: int, scale: int, count: int) -> np.ndarray:
    """Trigger coordinates of precinct rows (or columns) 0..count-1 (B.12.1.3 conditions).

    coord0: first coordinate of the resolution (trx0), t0: tile start on the reference grid,
    pp: precinct exponent, scale: XRsiz * 2^(NL - r).
    """
    m0 = coord0 >> pp
    trig = (np.arange(count, dtype=np.int64) + m0) * ((1 << pp) * scale)
    if count and coord0 % (1 << pp):
        trig[0] = t0
    elif count:
        trig[0] = coord0 * scale
    return trig


def tile_precincts(grids_by_comp: list[list[ResolutionGrid]], subsampling: list[tuple[int, int]],
                   tile_origin: tuple[int, int]) -> TilePrecincts:
    comps, ress, idxs, tys, txs = [], [], [], [], []
    tx0, ty0 = tile_origin
    for c, grids in enumerate(grids_by_comp):
        dx, dy = subsampling[c]
        nl = len(grids) - 1
        for g in grids:
            n = g.num_precincts
            if n == 0:
                continue
            ty = _trigger(g.y0, ty0, g.ppy, dy << (nl - g.r), g.nph)
            tx = _trigger(g.x0, tx0, g.ppx, dx << (nl - g.r), g.npw)
            comps.append(np.full(n, c, np.int32))
            ress.append(np.full(n, g.r, np.int32))
            idxs.append(np.arange(n, dtype=np.int64))
            tys.append(np.repeat(ty, g.npw))
            txs.append(np.tile(tx, g.nph))
    if not comps:
        e = np.zeros(0, np.int64)
        return TilePrecincts(e.astype(np.int32), e.astype(np.int32), e, e, e)
    return TilePrecincts(np.concatenate(comps), np.concatenate(ress), np.concatenate(idxs),
                         np.concatenate(tys), np.concatenate(txs))


def precincts_of_rows(rows: ResolutionRows, subsampling: list[tuple[int, int]],
                      tile_origins: tuple[np.ndarray, np.ndarray]) -> TilePrecincts:
    """`tile_precincts` of many tiles at once, from their resolution rows (rows in (t, c, r)
    order; `tile_origins` is (tx0, ty0) per row): the same triggers as `_trigger`."""
    counts = rows.npw * rows.nph
    total = int(counts.sum())
    grp = np.repeat(np.arange(len(rows)), counts)
    p = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    npw = rows.npw[grp]
    px, py = p % npw, p // npw
    dx = np.asarray([s[0] for s in subsampling], np.int64)[rows.c]
    dy = np.asarray([s[1] for s in subsampling], np.int64)[rows.c]
    shift = rows.levels - rows.r
    tx0, ty0 = tile_origins

    def trigger(pos, coord0, pp, scale, t0):
        coord0, pp, scale = coord0[grp], pp[grp], scale[grp]
        trig = (pos + (coord0 >> pp)) * ((np.int64(1) << pp) * scale)
        first = np.where(coord0 % (np.int64(1) << pp) != 0, t0[grp], coord0 * scale)
        return np.where(pos == 0, first, trig)

    return TilePrecincts(rows.c[grp].astype(np.int32), rows.r[grp].astype(np.int32), p,
                         trigger(py, rows.y0, rows.ppy, dy << shift, ty0),
                         trigger(px, rows.x0, rows.ppx, dx << shift, tx0),
                         rows.t[grp])


LAYER = None  # in a sort key list of packet_sequence: the packet's layer
# Each progression's sort keys, least significant first (np.lexsort's order), from the
# precincts' index, component, resolution and trigger points.
_ORDER_KEYS = {
    0: lambda i, c, r, y, x: (i, c, r, LAYER),  # LRCP
    1: lambda i, c, r, y, x: (i, c, LAYER, r),  # RLCP
    2: lambda i, c, r, y, x: (LAYER, c, x, y, r),  # RPCL
    3: lambda i, c, r, y, x: (LAYER, r, c, x, y),  # PCRL
    4: lambda i, c, r, y, x: (LAYER, r, x, y, c),  # CPRL (and any larger value)
}


def _lexsort_packets(keys: tuple, p: np.ndarray, layer: np.ndarray, layers: int) -> np.ndarray:
    """np.lexsort of the packets (precinct p[k], layer[k]) by `keys` (least significant
    first, as np.lexsort): precinct fields, and LAYER for the layer. The keys are packed into
    one int64 per packet (dense ranks of each precinct field, worked out per precinct) and
    sorted once, stably, which is several times faster than lexsort over millions of packets;
    lexsort itself when the ranks do not fit in 63 bits."""
    ranked = _packed_ranks(keys, int(p.max()) + 1, layers)  # p is never empty here
    if ranked is None:
        return np.lexsort(tuple(layer if k is LAYER else k[p] for k in keys))
    packed, layer_scale = ranked
    return np.argsort(packed[p] + layer.astype(np.int64) * layer_scale, kind="stable")


def _packed_ranks(keys: tuple, size: int, layers: int) -> tuple[np.ndarray, int] | None:
    """`keys` (as _lexsort_packets's) packed into one int64 for each precinct 0..size-1, and
    the weight of LAYER in it (0 without); None when they do not fit in 63 bits."""
    packed = np.zeros(size, np.int64)
    scale = 1  # the weight of the next (more significant) key
    layer_scale = 0
    for key in keys:
        if key is LAYER:
            width, layer_scale = layers, scale
        else:
            rank, width = dense_ranks(key[:size])
            packed += rank * scale
        scale *= max(width, 1)
        if scale >= 1 << 62:
            return None
    return packed, layer_scale


def dense_ranks(values: np.ndarray) -> tuple[np.ndarray, int]:
    """(rank of each value among the distinct values, in ascending order; how many distinct
    values there are): np.unique's inverse and count. Values within a range not much wider
    than their count (components, resolutions, trigger points on the reference grid) are
    ranked through a table of that range instead of a sort (262k precincts: 4 sorts were
    40 ms of a whole-file index)."""
    values = np.asarray(values, np.int64)
    if not len(values):
        return np.zeros(0, np.int64), 0
    lo, hi = int(values.min()), int(values.max())
    if hi - lo >= 4 * len(values) + 1024:
        distinct, rank = np.unique(values, return_inverse=True)
        return rank.astype(np.int64).reshape(-1), len(distinct)
    present = np.zeros(hi - lo + 1, bool)
    present[values - lo] = True
    table = np.cumsum(present, dtype=np.int64) - 1
    return table[values - lo], int(table[-1]) + 1


def _precinct_order(keys: tuple, sel: np.ndarray) -> np.ndarray | None:
    """The order of precincts `sel` (ascending) by `keys` (precinct fields only), when no two
    of them are alike in all of them; None otherwise (or past 63 bits)."""
    ranked = _packed_ranks(keys, int(sel[-1]) + 1, 1)
    if ranked is None:
        return None
    key = ranked[0][sel]
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    return None if (ordered[1:] == ordered[:-1]).any() else order


def packet_sequence(prec: TilePrecincts, layers: int, progression: int,
                    pocs: list[PocEntry]) -> tuple[np.ndarray, np.ndarray]:
    """(precinct row, layer) of every packet of the tile (of the tiles, tile after tile), in
    codestream order."""
    n = len(prec.comp)
    done = np.zeros(n, np.int64)
    steps = pocs or [PocEntry(0, 0, layers, 1 << 30, 1 << 30, progression)]
    out_p, out_l = [], []
    for step in steps:
        lye = min(step.lye, layers)
        sel = np.nonzero((prec.comp >= step.cs) & (prec.comp < step.ce) & (prec.res >= step.rs)
                         & (prec.res < step.re) & (done < lye))[0]
        if len(sel) == 0:
            continue
        counts = lye - done[sel]
        c, r, i = prec.comp, prec.res, prec.index  # per precinct; LAYER: the packet's layer
        y, x = prec.trig_y, prec.trig_x
        keys = _ORDER_KEYS[min(step.progression, 4)](i, c, r, y, x)
        if prec.tile is not None:
            keys = (*keys, prec.tile)  # tile after tile
        # The layer innermost (RPCL, PCRL, CPRL), precincts not alike in the other keys: each
        # precinct's packets come together, by layer, so the precincts are sorted (8 times
        # fewer items than packets for 8 layers), then each gives its packets.
        order = _precinct_order(keys[1:], sel) if keys[0] is LAYER else None
        if order is not None:
            ps, run = sel[order], counts[order]
            first = np.cumsum(run) - run
            out_p.append(np.repeat(ps, run))
            layer = np.repeat(done[ps] - first, run)
            layer += np.arange(len(layer))  # in place: millions of packets
            out_l.append(layer)
            done[sel] = lye
            continue
        p = np.repeat(sel, counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        layer = np.repeat(done[sel], counts) + (np.arange(len(p)) - starts)
        done[sel] = lye
        perm = _lexsort_packets(keys, p, layer, lye)
        out_p.append(p[perm])
        out_l.append(layer[perm])
    if not out_p:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(out_p) == 1:  # one step (no POC): not copied
        return out_p[0], out_l[0]
    seq_p, seq_l = np.concatenate(out_p), np.concatenate(out_l)
    if prec.tile is not None and len(out_p) > 1:
        # POC steps come one after the other within a tile, tiles one after the other.
        perm = np.argsort(prec.tile[seq_p], kind="stable")
        seq_p, seq_l = seq_p[perm], seq_l[perm]
    return seq_p, seq_l
