"""Cache models: which bytes of which data-bins a client holds (ISO 15444-9 Annex B).

Data-bins are held as prefixes (bytes 0..n), because the server always sends a bin's bytes in
order from what the client holds. Precinct holdings are sparse (sorted numpy arrays of rows and
byte counts), so an idle session costs memory in proportion to what it was sent, not to the
image's precinct count.
"""
from __future__ import annotations

import numpy as np


class SparseHoldings:
    """Bytes held per precinct row: sorted rows (int32) with their prefix lengths (int64)."""

    __slots__ = ("rows", "held")

    def __init__(self) -> None:
        self.rows = np.zeros(0, np.int32)
        self.held = np.zeros(0, np.int64)

    def get(self, rows: np.ndarray) -> np.ndarray:
        if len(self.rows) == 0 or len(rows) == 0:
            return np.zeros(len(rows), np.int64)
        pos = np.searchsorted(self.rows, rows)
        pos_c = np.minimum(pos, len(self.rows) - 1)
        found = self.rows[pos_c] == rows
        return np.where(found, self.held[pos_c], 0)

    def raise_to(self, rows: np.ndarray, values: np.ndarray) -> None:
        """held[row] = max(held[row], value) for each pair."""
        if len(rows) == 0:
            return
        rows = np.asarray(rows, np.int32)
        values = np.asarray(values, np.int64)
        all_rows = np.concatenate([self.rows, rows])
        all_vals = np.concatenate([self.held, values])
        order = np.lexsort((-all_vals, all_rows))  # per row, the largest value first
        all_rows, all_vals = all_rows[order], all_vals[order]
        first = np.ones(len(all_rows), bool)
        first[1:] = all_rows[1:] != all_rows[:-1]
        self.rows, self.held = all_rows[first], all_vals[first]

    def set(self, rows: np.ndarray, values: np.ndarray) -> None:
        """held[row] = value (used by subtractive model= statements)."""
        if len(rows) == 0:
            return
        keep = ~np.isin(self.rows, rows)
        self.rows, self.held = self.rows[keep], self.held[keep]
        nz = np.asarray(values) > 0
        if nz.any():
            self.raise_to(np.asarray(rows)[nz], np.asarray(values)[nz])

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.held.nbytes

    def total(self) -> int:
        return int(self.held.sum())


class CodestreamHoldings:
    __slots__ = ("main_header", "tile_headers", "precincts")

    def __init__(self) -> None:
        self.main_header = 0
        self.tile_headers: dict[int, int] = {}
        self.precincts = SparseHoldings()

    @property
    def nbytes(self) -> int:
        return 64 + 32 * len(self.tile_headers) + self.precincts.nbytes


class CacheModel:
    """The server's picture of one client's cache: per codestream holdings + metadata-bins."""

    __slots__ = ("streams", "metadata")

    def __init__(self) -> None:
        self.streams: dict[int, CodestreamHoldings] = {}
        self.metadata: dict[int, int] = {}

    def stream(self, cs: int) -> CodestreamHoldings:
        h = self.streams.get(cs)
        if h is None:
            h = self.streams[cs] = CodestreamHoldings()
        return h

    def commit(self, updates: list[tuple[str, int, object, object]]) -> None:
        """Records delivered bytes. Each update is (kind, codestream, key, new prefix end):
        kind 'P' with key = rows array and values array, 'H' tile header, 'M' main header,
        'm' metadata-bin."""
        for kind, cs, key, value in updates:
            if kind == "P":
                self.stream(cs).precincts.raise_to(key, value)
            elif kind == "H":
                th = self.stream(cs).tile_headers
                th[key] = max(th.get(key, 0), value)
            elif kind == "M":
                s = self.stream(cs)
                s.main_header = max(s.main_header, value)
            elif kind == "m":
                self.metadata[key] = max(self.metadata.get(key, 0), value)

    def is_empty(self) -> bool:
        """True while the client is known to hold nothing at all."""
        return not self.metadata and all(
            s.main_header == 0 and not s.tile_headers and len(s.precincts.rows) == 0
            for s in self.streams.values())

    @property
    def nbytes(self) -> int:
        return 64 + sum(s.nbytes for s in self.streams.values()) + 32 * len(self.metadata)
