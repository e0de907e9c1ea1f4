"""SparseHoldings against a plain dict: whatever the order and repeats of the rows given,
raise_to keeps the largest value per row and lower_to the smallest (dropping zeros)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.model import BinKind, CacheModel, EvictedRows, ReceivedRows, SparseHoldings

pairs = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 1 << 40)), max_size=60)


def _state(h: SparseHoldings) -> dict[int, int]:
    """Rows held (a row held at 0 bytes is not held)."""
    assert bool((np.diff(h.rows) > 0).all()), "rows sorted, each once"
    return {r: v for r, v in zip(h.rows.tolist(), h.held.tolist(), strict=True) if v > 0}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), pairs), max_size=6))
def test_holdings_match_a_dict(steps) -> None:
    h, ref = SparseHoldings(), {}
    for raise_, batch in steps:
        rows = np.array([r for r, _ in batch], np.int32)
        vals = np.array([v for _, v in batch], np.int64)
        before = (h.rows, h.held)
        frozen = [a.copy() for a in before]
        if raise_:
            h.raise_to(rows, vals)
            for r, v in batch:
                ref[r] = max(ref.get(r, 0), v)
        else:
            h.lower_to(rows, vals)
            low: dict[int, int] = {}
            for r, v in batch:
                low[r] = min(low.get(r, v), v)
            ref = {r: (min(v, low[r]) if r in low else v) for r, v in ref.items()}
        ref = {r: v for r, v in ref.items() if v > 0}
        assert _state(h) == ref
        # The arrays held before were not changed in place (they may be shared).
        assert all(np.array_equal(a, b) for a, b in zip(before, frozen, strict=True))
        query = np.arange(0, 205, dtype=np.int64)
        assert h.get(query).tolist() == [ref.get(int(q), 0) for q in query]


records = st.lists(st.tuples(st.booleans(), st.integers(0, 1), st.booleans(), pairs), max_size=8)


def _record(received: bool, cs: int, tile: bool, batch):
    kind = BinKind.TILE if tile else BinKind.PRECINCT
    rows = np.array([r for r, _ in batch], np.int32)
    vals = np.array([v for _, v in batch], np.int64)
    return (ReceivedRows if received else EvictedRows)(kind, cs, rows, vals)


@settings(max_examples=200, deadline=None)
@given(records)
def test_records_applied_at_once_as_one_by_one(steps) -> None:
    """CacheModel.apply raises consecutive ReceivedRows together: the same holdings as
    applying each record alone, whatever the kinds, codestreams and evictions between."""
    batch = [_record(*s) for s in steps]
    together, alone = CacheModel(), CacheModel()
    together.apply(batch)
    for r in batch:
        alone.apply([r])
    for cs in range(2):
        for name in ("precincts", "tiles"):
            a = getattr(together.stream(cs), name)
            b = getattr(alone.stream(cs), name)
            assert _state(a) == _state(b)
