"""Where an index's large columns are made: in ordinary memory, or where the process that runs
the indexing says (cache.isolation: an indexing child makes them in the shared memory that
takes its result back to the server, so they are not copied there afterwards).

A child indexes one file at a time, in one thread: the maker in force is a module global,
set around each job (`columns_made_by`)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

Maker = Callable[[int, np.dtype], np.ndarray]

_maker: Maker | None = None


def result_column(n: int, dtype) -> np.ndarray:
    """An uninitialised array of `n` items of `dtype` that will be part of the index (not a
    temporary): made by the maker in force, else by numpy."""
    if _maker is None:
        return np.empty(n, dtype)
    return _maker(n, np.dtype(dtype))


@contextmanager
def columns_made_by(maker: Maker) -> Iterator[None]:
    """`result_column` calls `maker(n, dtype)` while the block runs."""
    global _maker
    previous, _maker = _maker, maker
    try:
        yield
    finally:
        _maker = previous
