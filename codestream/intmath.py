"""Integer arithmetic the JPEG 2000 geometry is written in (T.800 uses ceil-divisions throughout).

Its own module, below `markers` and `geometry`, so every package shares the one definition.
"""
from __future__ import annotations


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for integers (b > 0), exactly, without floats."""
    return -(-a // b)
