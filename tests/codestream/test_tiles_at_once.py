"""The geometry and packet order of many tiles at once (what the index builds) equal those of
each tile on its own (what the client's rebuild and the standard's loops give), for random
image, tile and precinct grids, subsampling, levels, progressions and POC changes."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from codestream.geometry import resolution_grids, resolution_rows, tile_bounds
from codestream.markers import CodingStyle, ComponentSize, PocEntry, Siz
from codestream.progression import packet_sequence, precincts_of_rows, tile_precincts


@st.composite
def images(draw):
    comps = tuple(ComponentSize(8, False, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
                  for _ in range(draw(st.integers(1, 3))))
    xosiz, yosiz = draw(st.integers(0, 40)), draw(st.integers(0, 40))
    xsiz, ysiz = xosiz + draw(st.integers(1, 160)), yosiz + draw(st.integers(1, 160))
    xtsiz, ytsiz = draw(st.integers(3, 70)), draw(st.integers(3, 70))
    xtosiz = draw(st.integers(max(0, xosiz - xtsiz + 1), xosiz))
    ytosiz = draw(st.integers(max(0, yosiz - ytsiz + 1), yosiz))
    siz = Siz(0, xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz, comps)
    styles = []
    for _ in comps:
        levels = draw(st.integers(0, 5))
        precincts = tuple((draw(st.integers(0 if r == 0 else 1, 6)),
                           draw(st.integers(0 if r == 0 else 1, 6))) for r in range(levels + 1))
        styles.append(CodingStyle(levels, 6, 6, 0, True, precincts))
    layers = draw(st.integers(1, 3))
    progression = draw(st.integers(0, 4))
    pocs = []
    if draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            pocs.append(PocEntry(draw(st.integers(0, 2)), draw(st.integers(0, 2)),
                                 draw(st.integers(1, layers)), draw(st.integers(1, 7)),
                                 draw(st.integers(1, 4)), draw(st.integers(0, 4))))
    return siz, styles, layers, progression, pocs


@settings(max_examples=100, deadline=None)
@given(images())
def test_many_tiles_at_once_equal_each_tile_alone(image) -> None:
    siz, styles, layers, progression, pocs = image
    tiles = np.arange(siz.num_tiles)
    rows = resolution_rows(siz, tiles, styles)
    sub = [(cm.dx, cm.dy) for cm in siz.components]
    tx0, ty0, _, _ = tile_bounds(siz, rows.t)
    batch = precincts_of_rows(rows, sub, (tx0, ty0))
    seq, seq_l = packet_sequence(batch, layers, progression, pocs)
    # Precinct k of the batch belongs to tile batch.tile[k]; each tile's are contiguous.
    first = np.searchsorted(batch.tile, tiles)
    k = 0
    expected_p, expected_l = [], []
    for t in tiles.tolist():
        grids = [resolution_grids(siz, t, c, styles[c]) for c in range(len(styles))]
        for c, comp_grids in enumerate(grids):
            for g in comp_grids:
                got = tuple(int(getattr(rows, f)[k]) for f in
                            ("t", "c", "r", "x0", "y0", "x1", "y1", "ppx", "ppy", "npw", "nph"))
                assert got == (t, c, g.r, g.x0, g.y0, g.x1, g.y1, g.ppx, g.ppy, g.npw, g.nph)
                k += 1
        one = tile_precincts(grids, sub, siz.tile_bounds(t)[:2])
        lo = int(first[t])
        for f in ("comp", "res", "index", "trig_y", "trig_x"):
            assert np.array_equal(getattr(batch, f)[lo:lo + len(one.comp)], getattr(one, f)), f
        p, lay = packet_sequence(one, layers, progression, pocs)
        expected_p.append(p + lo)
        expected_l.append(lay)
    assert k == len(rows)
    assert np.array_equal(seq, np.concatenate(expected_p))
    assert np.array_equal(seq_l, np.concatenate(expected_l))


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_packed_packet_sort_is_lexsort(data) -> None:
    """progression._lexsort_packets (one int64 key per packet) orders as np.lexsort does,
    ties included."""
    from codestream.progression import LAYER, _lexsort_packets

    n = data.draw(st.integers(1, 40))
    layers = data.draw(st.integers(1, 5))
    big = data.draw(st.booleans())
    field = st.lists(st.integers(0, 1 << 40 if big else 6), min_size=n, max_size=n)
    fields = [np.asarray(data.draw(field), np.int64) for _ in range(data.draw(st.integers(1, 5)))]
    keys = list(fields)
    keys.insert(data.draw(st.integers(0, len(keys))), LAYER)
    p = np.repeat(np.arange(n), layers)
    layer = np.tile(np.arange(layers), n)
    keep = np.asarray(data.draw(st.lists(st.booleans(), min_size=len(p), max_size=len(p))))
    if not keep.any():
        keep[0] = True
    p, layer = p[keep], layer[keep]
    expected = np.lexsort(tuple(layer if k is LAYER else k[p] for k in keys))
    assert np.array_equal(_lexsort_packets(tuple(keys), p, layer, layers), expected)


def test_packed_packet_sort_falls_back_past_63_bits() -> None:
    from codestream.progression import LAYER, _lexsort_packets

    rng = np.random.default_rng(5)
    n = 70_000  # four fields of ~70,000 distinct values each: 64 bits of ranks
    keys = tuple(rng.integers(0, 1 << 40, n) for _ in range(4)) + (LAYER,)
    p, layer = np.arange(n), np.zeros(n, np.int64)
    expected = np.lexsort(tuple(layer if k is LAYER else k[p] for k in keys))
    assert np.array_equal(_lexsort_packets(keys, p, layer, 1), expected)


def _packet_by_packet(prec, layers: int, progression: int, pocs: list) -> tuple:
    """packet_sequence the plain way: every packet of every POC step sorted by np.lexsort."""
    from codestream.progression import _ORDER_KEYS, LAYER

    done = np.zeros(len(prec.comp), np.int64)
    out_p, out_l = [], []
    for step in pocs or [PocEntry(0, 0, layers, 1 << 30, 1 << 30, progression)]:
        lye = min(step.lye, layers)
        sel = np.nonzero((prec.comp >= step.cs) & (prec.comp < step.ce) & (prec.res >= step.rs)
                         & (prec.res < step.re) & (done < lye))[0]
        p = np.asarray([k for k in sel for _ in range(done[k], lye)], np.int64)
        layer = np.asarray([v for k in sel for v in range(done[k], lye)], np.int64)
        done[sel] = lye
        if not len(p):
            continue
        keys = _ORDER_KEYS[min(step.progression, 4)](prec.index, prec.comp, prec.res,
                                                     prec.trig_y, prec.trig_x)
        keys = (*keys, prec.tile)
        perm = np.lexsort(tuple(layer if k is LAYER else k[p] for k in keys))
        out_p.append(p[perm])
        out_l.append(layer[perm])
    if not out_p:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    seq_p, seq_l = np.concatenate(out_p), np.concatenate(out_l)
    perm = np.argsort(prec.tile[seq_p], kind="stable")
    return seq_p[perm], seq_l[perm]


@settings(max_examples=100, deadline=None)
@given(images())
def test_precincts_sorted_whole_give_the_packet_by_packet_order(image) -> None:
    """packet_sequence sorts precincts, not packets, where the layer is innermost: the same
    order as sorting every packet (POC steps, partial layers and ties included)."""
    siz, styles, layers, progression, pocs = image
    rows = resolution_rows(siz, np.arange(siz.num_tiles), styles)
    tx0, ty0, _, _ = tile_bounds(siz, rows.t)
    prec = precincts_of_rows(rows, [(cm.dx, cm.dy) for cm in siz.components], (tx0, ty0))
    got = packet_sequence(prec, layers, progression, pocs)
    want = _packet_by_packet(prec, layers, progression, pocs)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
