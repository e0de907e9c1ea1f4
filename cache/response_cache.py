"""Whole responses for clients that hold nothing yet, kept to be sent again.

A fresh client's response (stateless without `model=`/`need=`, or a session whose cache model
is still empty) depends only on the file and the resolved view-window: every viewer that opens
an image asks for the same thumbnail. Such responses are kept here, chunk by chunk with the
cache-model records each chunk carries (a new session commits those into its own model), in an
LRU bounded by bytes. Keys start with the file's target id, so a changed file never matches.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from .model import records_nbytes


@dataclass(frozen=True, slots=True)
class CachedResponse:
    chunks: tuple[tuple[bytes, tuple], ...]  # (bytes to write, model records they carry)
    nbytes: int                              # memory held, data and records


class ResponseCache:
    """An LRU of complete responses, at most `max_bytes` in all and `max_entry_bytes` each."""

    def __init__(self, max_bytes: int, max_entry_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._entries: OrderedDict[Hashable, CachedResponse] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> CachedResponse | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def recorder(self) -> Recorder:
        """Collects the chunks of one response as they are sent (see Recorder)."""
        return Recorder(self.max_entry_bytes)

    def put(self, key: Hashable, recorder: Recorder) -> bool:
        """Keeps what `recorder` collected, if it is whole and small enough."""
        entry = recorder.result()
        if entry is None:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes and self._entries:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


class Recorder:
    """The chunks of one response; gives up (for good) once they pass the size limit."""

    __slots__ = ("limit", "chunks", "nbytes", "overflow")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[tuple[bytes, tuple]] = []
        self.nbytes = 0
        self.overflow = False

    def add(self, data: bytes, records: Sequence) -> None:
        if self.overflow:
            return
        self.nbytes += len(data) + records_nbytes(records)
        if self.nbytes > self.limit:
            self.overflow = True
            self.chunks = []
            return
        self.chunks.append((data, tuple(records)))

    def result(self) -> CachedResponse | None:
        if self.overflow or not self.chunks:
            return None
        return CachedResponse(tuple(self.chunks), self.nbytes)
