"""Cache models: which bytes of which data-bins a client holds (ISO 15444-9 Annex B).

Data-bins are held as prefixes (bytes 0..n), because the server always sends a bin's bytes in
order from what the client holds. A bin that has an entry is known to the client up to that
length; an empty bin (an empty tile header, the empty metadata-bin 0 of a raw codestream) is
held once it has an entry of 0, and not before. Precinct holdings are sparse (sorted numpy
arrays of rows and byte counts), so an idle session costs memory in proportion to what it was
sent, not to the image's precinct count, and a model serialises to a few arrays. A change
replaces those arrays, never writes into them, so copies share them.

Every change to a model is one of four small records, by data-bin kind (plain slotted
dataclasses, not frozen ones: a response makes one per batch of messages, and frozen ones cost
three times as much to build; nothing changes a record once made):
`Received`/`ReceivedRows` (the client holds at least a prefix: bytes written, or an additive
`model=` statement) and `Evicted`/`EvictedRows` (it holds at most a prefix: a subtractive
statement). Rows are rows of the codestream's precinct index (`codestream.index`), which is the
same for a given target id, so records and models can be stored outside the process.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

__all__ = ["BinKind", "CacheModel", "CodestreamHoldings", "Evicted", "EvictedRows", "ModelRecord",
           "Received", "ReceivedRows", "SparseHoldings", "records_nbytes"]


class BinKind(IntEnum):
    """The data-bin families a model tracks, numbered as their (base) JPP message classes."""

    PRECINCT = 0
    TILE_HEADER = 2
    TILE = 4
    MAIN_HEADER = 6
    METADATA = 8


@dataclass(slots=True)
class Received:
    """The client holds at least bytes [0, end) of one bin (for METADATA the codestream is 0)."""

    kind: BinKind
    codestream: int
    bin_id: int
    end: int


@dataclass(slots=True)
class Evicted:
    """The client holds at most bytes [0, keep) of one bin (keep = 0: nothing of it)."""

    kind: BinKind
    codestream: int
    bin_id: int
    keep: int


@dataclass(slots=True)
class ReceivedRows:
    """`Received` for many bins of one codestream named by index row (PRECINCT, later TILE)."""

    kind: BinKind
    codestream: int
    rows: np.ndarray  # int32
    ends: np.ndarray  # int64


@dataclass(slots=True)
class EvictedRows:
    """`Evicted` for many bins of one codestream named by index row."""

    kind: BinKind
    codestream: int
    rows: np.ndarray
    keep: np.ndarray


ModelRecord = Received | Evicted | ReceivedRows | EvictedRows
_RECORD_OVERHEAD = 64  # what a record costs beyond its arrays, for byte accounting


def records_nbytes(records: Iterable[ModelRecord]) -> int:
    """Memory held by records (for caches that keep them)."""
    total = 0
    for r in records:
        total += _RECORD_OVERHEAD
        if isinstance(r, ReceivedRows):
            total += r.rows.nbytes + r.ends.nbytes
        elif isinstance(r, EvictedRows):
            total += r.rows.nbytes + r.keep.nbytes
    return total


class SparseHoldings:
    """Bytes held per index row: sorted rows (int32) with their prefix lengths (int64)."""

    __slots__ = ("rows", "held")

    def __init__(self) -> None:
        self.rows = np.zeros(0, np.int32)
        self.held = np.zeros(0, np.int64)

    def get(self, rows: np.ndarray) -> np.ndarray:
        if len(self.rows) == 0 or len(rows) == 0:
            return np.zeros(len(rows), np.int64)
        # The query in the holdings' type: searching int64 values in the int32 rows would
        # convert every row held, on every request.
        rows = np.asarray(rows, np.int32)
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
        if len(rows) > 1 and not bool((rows[1:] > rows[:-1]).all()):
            # Sorted, one value per row (the largest): what the merge below needs. (Records
            # come in delivery order, lowest resolution first, so this is the usual case;
            # repeats are rare: a row sent in several messages.)
            order = np.argsort(rows, kind="stable")
            rows, values = rows[order], values[order]
            repeat = rows[1:] == rows[:-1]
            if repeat.any():
                first = np.flatnonzero(np.concatenate(([True], ~repeat)))
                rows, values = rows[first], np.maximum.reduceat(values, first)
        n = len(self.rows)
        if n == 0:
            # (Copies: the caller's arrays are its own.)
            self.rows, self.held = rows.copy(), values.copy()
            return
        # Merged into the sorted holdings (a session's model grows by a window at a time:
        # no sort of everything held, only a search for the new rows).
        pos = np.searchsorted(self.rows, rows)
        found = self.rows[np.minimum(pos, n - 1)] == rows
        held = self.held
        if found.any():
            held = held.copy()  # the arrays may be shared (a snapshot): never changed in place
            at = pos[found]
            held[at] = np.maximum(held[at], values[found])
            new = ~found
            if not new.any():
                self.held = held
                return
            pos, rows, values = pos[new], rows[new], values[new]
        # The new rows go in before the held rows at their positions: the i-th new row lands
        # at pos[i] + i of the merged arrays, the held rows fill the rest in order.
        at = pos + np.arange(len(pos))
        old = np.ones(n + len(pos), bool)
        old[at] = False
        merged_rows = np.empty(len(old), np.int32)
        merged_rows[at], merged_rows[old] = rows, self.rows
        merged_held = np.empty(len(old), np.int64)
        merged_held[at], merged_held[old] = values, held
        self.rows, self.held = merged_rows, merged_held

    def lower_to(self, rows: np.ndarray, values: np.ndarray) -> None:
        """held[row] = min(held[row], value) for each pair; rows left with 0 are dropped."""
        if len(rows) == 0 or len(self.rows) == 0:
            return
        rows = np.asarray(rows, np.int32)
        values = np.asarray(values, np.int64)
        order = np.lexsort((values, rows))  # per row, the smallest value first
        rows, values = rows[order], values[order]
        first = np.ones(len(rows), bool)
        first[1:] = rows[1:] != rows[:-1]
        rows, values = rows[first], values[first]
        pos = np.searchsorted(rows, self.rows)
        pos_c = np.minimum(pos, len(rows) - 1)
        hit = rows[pos_c] == self.rows
        held = np.where(hit, np.minimum(self.held, values[pos_c]), self.held)
        keep = held > 0
        self.rows, self.held = self.rows[keep], held[keep]

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.held.nbytes

    def total(self) -> int:
        return int(self.held.sum())

    def __len__(self) -> int:
        return len(self.rows)


class CodestreamHoldings:
    """What the client holds of one codestream's bins."""

    __slots__ = ("main_header", "tile_headers", "precincts", "tiles")

    def __init__(self) -> None:
        self.main_header = 0  # never an empty bin: 0 means nothing held
        self.tile_headers: dict[int, int] = {}  # tile -> bytes held (an entry: known to the client)
        self.precincts = SparseHoldings()
        self.tiles = SparseHoldings()  # tile data-bins (JPT-streams)

    def is_empty(self) -> bool:
        return (self.main_header == 0 and not self.tile_headers and not len(self.precincts)
                and not len(self.tiles))

    @property
    def nbytes(self) -> int:
        return 64 + 32 * len(self.tile_headers) + self.precincts.nbytes + self.tiles.nbytes


class CacheModel:
    """The server's picture of one client's cache: per codestream holdings + metadata-bins."""

    __slots__ = ("streams", "metadata", "version", "complete_for")

    def __init__(self) -> None:
        self.streams: dict[int, CodestreamHoldings] = {}
        self.metadata: dict[int, int] = {}  # metadata-bin id -> bytes held (entry: known)
        # Counts the apply() calls: what a conclusion drawn from the model is valid for.
        self.version = 0
        # (request key, version, what it concluded): a request found to need nothing at that
        # version (jpip.machine: a window asked again is answered without planning it again).
        self.complete_for: tuple | None = None

    def stream(self, cs: int) -> CodestreamHoldings:
        h = self.streams.get(cs)
        if h is None:
            h = self.streams[cs] = CodestreamHoldings()
        return h

    def held(self, kind: BinKind, cs: int, bin_id: int) -> int | None:
        """Bytes held of one header or metadata bin; None when the client holds nothing of it
        (not even the fact that it is empty)."""
        if kind == BinKind.METADATA:
            return self.metadata.get(bin_id)
        h = self.streams.get(cs)
        if h is None:
            return None
        if kind == BinKind.MAIN_HEADER:
            return h.main_header or None
        if kind == BinKind.TILE_HEADER:
            return h.tile_headers.get(bin_id)
        raise ValueError(f"{kind!r} bins are held by row; use the stream's holdings")

    def apply(self, records: Iterable[ModelRecord]) -> None:
        """Applies model records in order."""
        self.version += 1
        # Consecutive ReceivedRows of one kind and codestream (a response's batches of
        # messages) are raised at once: one merge into the holdings instead of one each.
        run: list[ReceivedRows] = []
        for r in records:
            if type(r) is ReceivedRows:
                if run and (r.kind != run[0].kind or r.codestream != run[0].codestream):
                    self._raise_rows(run)
                    run = []
                run.append(r)
                continue
            if run:
                self._raise_rows(run)
                run = []
            if type(r) is Received:
                self._one(r.kind, r.codestream, r.bin_id, r.end, max)
            elif type(r) is EvictedRows:
                self._rows(r.kind, r.codestream).lower_to(r.rows, r.keep)
            elif type(r) is Evicted:
                self._one(r.kind, r.codestream, r.bin_id, r.keep, min)
            else:
                raise TypeError(f"not a model record: {r!r}")
        if run:
            self._raise_rows(run)

    def _raise_rows(self, run: list[ReceivedRows]) -> None:
        first = run[0]
        if len(run) == 1:
            rows, ends = first.rows, first.ends
        else:
            rows = np.concatenate([r.rows for r in run])
            ends = np.concatenate([r.ends for r in run])
        self._rows(first.kind, first.codestream).raise_to(rows, ends)

    def _rows(self, kind: BinKind, cs: int) -> SparseHoldings:
        h = self.stream(cs)
        if kind == BinKind.PRECINCT:
            return h.precincts
        if kind == BinKind.TILE:
            return h.tiles
        raise ValueError(f"{kind!r} bins are not held by row")

    def _one(self, kind: BinKind, cs: int, bin_id: int, value: int, pick) -> None:
        if kind == BinKind.MAIN_HEADER:
            h = self.stream(cs)
            h.main_header = max(0, pick(h.main_header, value))
            return
        if kind == BinKind.TILE_HEADER:
            table = self.stream(cs).tile_headers
        elif kind == BinKind.METADATA:
            table = self.metadata
        else:
            raise ValueError(f"{kind!r} bins are held by row: use ReceivedRows/EvictedRows")
        old = table.get(bin_id)
        if pick is max:
            table[bin_id] = value if old is None else max(old, value)
        elif old is not None:
            # Evicted down to 0 bytes: the client holds nothing of the bin, not even an
            # empty one (so an empty bin is sent again).
            if value <= 0:
                del table[bin_id]
            else:
                table[bin_id] = min(old, value)

    def is_empty(self) -> bool:
        """True while the client is known to hold nothing at all."""
        return not self.metadata and all(s.is_empty() for s in self.streams.values())

    def copy(self) -> CacheModel:
        """A model holding the same, changed independently of this one. Its containers are
        new and its arrays shared: holdings replace their arrays, never write into them."""
        out = CacheModel()
        out.metadata = dict(self.metadata)
        for cs, h in self.streams.items():
            c = out.streams[cs] = CodestreamHoldings()
            c.main_header = h.main_header
            c.tile_headers = dict(h.tile_headers)
            for name in ("precincts", "tiles"):
                src, dst = getattr(h, name), getattr(c, name)
                dst.rows, dst.held = src.rows, src.held
        # The same content at the same count of changes: a conclusion kept still holds.
        out.version, out.complete_for = self.version, self.complete_for
        return out

    @property
    def nbytes(self) -> int:
        return 64 + sum(s.nbytes for s in self.streams.values()) + 32 * len(self.metadata)
