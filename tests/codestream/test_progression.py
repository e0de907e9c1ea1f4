"""codestream.progression's helpers against their plain numpy equivalents."""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from codestream.progression import dense_ranks


@given(st.lists(st.integers(-(1 << 40), 1 << 40), max_size=200),
       st.integers(0, 3), st.integers(-(1 << 20), 1 << 20))
def test_dense_ranks_are_numpys_unique_inverse_and_count(values, narrow, shift) -> None:
    """Through the table (values in a narrow range) or a sort (a wide one), the same as
    np.unique: the rank of each value among the distinct ones, and their number."""
    a = np.asarray(values, np.int64)
    if narrow:  # a range no wider than the values' count: the table
        a = a % (len(a) * narrow + 1) + shift
    distinct, inverse = np.unique(a, return_inverse=True)
    rank, width = dense_ranks(a)
    assert width == len(distinct)
    assert rank.dtype == np.int64 and np.array_equal(rank, inverse.reshape(-1))


def test_dense_ranks_of_trigger_points() -> None:
    y = np.repeat(np.arange(256, dtype=np.int64) * 64, 256)  # a resolution's precinct rows
    rank, width = dense_ranks(np.concatenate([y, y[:10] + 32]))
    assert width == 257 and rank[:256].tolist() == [0] * 256 and rank[-1] == 1
