"""Turns planned windows into JPP-stream chunks, skipping what the cache model holds.

Sans-I/O: `ResponseBuilder.chunks()` yields `Chunk`s (bytes to write + the cache-model updates
they carry). The caller writes a chunk, and only once the write succeeded commits its updates,
so the model never claims bytes the client did not get.

Order: metadata-bin 0, then per codestream the main header and the tile headers, then image
data quality layer by quality layer (all precincts' layer 0, lowest resolution first, before any
layer 1), so a response cut by `len` shows the whole window at a lower quality.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from cache.model import CacheModel
from codestream.source import Source

from .jpp import EOR, MAIN_HEADER, METADATA, PRECINCT, TILE_HEADER, MessageWriter
from .plan import Plan

CHUNK_TARGET = 256 * 1024
MAX_HEADER_BYTES = 24  # a precinct message header without class/CSn: Bin-ID, offset, length


@dataclass
class Chunk:
    data: bytes
    updates: list = field(default_factory=list)


@dataclass
class Outcome:
    """What the response did, for EOR, metrics and logs."""

    reason: int = EOR.WINDOW_DONE
    bytes_sent: int = 0          # message headers + bodies (what `len` counts)
    data_bytes: int = 0          # data-bin bytes
    bytes_skipped: int = 0       # planned bytes the model said the client holds
    messages: int = 0


class ResponseBuilder:
    def __init__(self, source: Source, plans: list[Plan], model: CacheModel, *,
                 byte_limit: int | None = None, send_metadata: bool = True,
                 metadata_only: bool = False) -> None:
        self.source = source
        self.plans = plans
        self.model = model
        self.limit = byte_limit
        self.send_metadata = send_metadata
        self.metadata_only = metadata_only
        self.writer = MessageWriter()
        self.outcome = Outcome()
        self._parts: list = []
        self._size = 0
        self._updates: list = []
        self._stopped = False

    # --- message plumbing ------------------------------------------------------------------
    def _room(self) -> int:
        if self.limit is None:
            return 1 << 62
        return self.limit - self.outcome.bytes_sent

    def _message(self, cls: int, cs: int, bin_id: int, offset: int, pieces: list, length: int,
                 is_last: bool) -> int:
        """Queues one message; returns the body bytes actually queued (may be cut by len)."""
        header = self.writer.header(cls, cs, bin_id, offset, length, is_last)
        room = self._room()
        if len(header) + length > room:
            # Send what fits of the body, then stop: the byte limit is reached.
            self._stopped = True
            self.outcome.reason = EOR.BYTE_LIMIT
            cut = room - len(header)
            if cut <= 0:
                self.writer.discard()
                return 0
            # The shorter message cannot hold the bin's last byte; re-encode its header.
            header = self.writer.header(cls, cs, bin_id, offset, cut, False)
            cut = min(cut, room - len(header))
            if cut <= 0:
                self.writer.discard()
                return 0
            header = self.writer.header(cls, cs, bin_id, offset, cut, False)
            pieces = _take(pieces, cut)
            length = cut
        self._parts.append(header)
        self._parts.extend(pieces)
        self._size += len(header) + length
        self.outcome.bytes_sent += len(header) + length
        self.outcome.data_bytes += length
        self.outcome.messages += 1
        return length

    def _flush(self) -> Chunk | None:
        if not self._parts:
            return None
        chunk = Chunk(b"".join(self._parts), self._updates)
        self._parts, self._size, self._updates = [], 0, []
        return chunk

    # --- the response ----------------------------------------------------------------------
    def chunks(self) -> Iterator[Chunk]:
        src, model = self.source, self.model
        if self.send_metadata:
            meta = src.metadata0
            held = model.metadata.get(0, -1)
            if held < len(meta) or (held < 0 and not meta):
                start = max(held, 0)
                n = self._message(METADATA, 0, 0, start, [meta[start:]], len(meta) - start, True)
                self._updates.append(("m", 0, 0, start + n))
        if not self.metadata_only:
            for plan in self.plans:
                if self._stopped:
                    break
                yield from self._headers(plan)
            yield from self._precinct_data()
        last = self._flush()
        if last is not None:
            yield last
        yield Chunk(self.writer.eor(self.outcome.reason))

    def _headers(self, plan: Plan) -> Iterator[Chunk]:
        src, cs = self.source, plan.codestream
        hold = self.model.stream(cs)
        mh = src.main_header_bin(cs)
        if hold.main_header < len(mh) and not self._stopped:
            n = self._message(MAIN_HEADER, cs, 0, hold.main_header, [mh[hold.main_header:]],
                              len(mh) - hold.main_header, True)
            self._updates.append(("M", cs, 0, hold.main_header + n))
        elif hold.main_header >= len(mh):
            self.outcome.bytes_skipped += len(mh)
        for t in plan.tiles.tolist():
            if self._stopped:
                return
            th = src.tile_header_bin(cs, t)
            held = hold.tile_headers.get(t, -1)
            if held >= len(th):
                self.outcome.bytes_skipped += len(th)
                continue
            start = max(held, 0)
            n = self._message(TILE_HEADER, cs, t, start, [th[start:]], len(th) - start, True)
            self._updates.append(("H", cs, t, start + n))
        if self._size >= CHUNK_TARGET:
            chunk = self._flush()
            if chunk:
                yield chunk

    def _precinct_data(self) -> Iterator[Chunk]:
        for plan in self.plans:
            if self._stopped or len(plan.rows) == 0 or plan.layers <= 0:
                continue
            src, cs = self.source, plan.codestream
            ix = src.codestreams[cs]
            pr, pk = ix.precincts, ix.packets
            rows = plan.rows
            # Lowest resolution first, then tile, component, position.
            rows = rows[np.lexsort((pr["p"][rows], pr["c"][rows], pr["t"][rows], pr["r"][rows]))]
            ids = pr["id"][rows]
            starts, counts = pr["pkt_start"][rows], pr["pkt_count"][rows]
            bin_len = pr["bin_length"][rows]
            held = self.model.stream(cs).precincts.get(rows)
            planned_end = np.where(counts > 0, pk["bin_end"][np.maximum(
                starts + np.minimum(counts, plan.layers) - 1, 0)], 0)
            planned_end = np.where(counts > 0, planned_end, 0)
            self.outcome.bytes_skipped += int(np.minimum(held, planned_end).sum())
            for layer in range(plan.layers):
                live = np.nonzero(counts > layer)[0]
                if len(live) == 0:
                    break
                k = starts[live] + layer
                ends = pk["bin_end"][k]
                packed = pk["packed_length"][k]
                begins = ends - pk["length"][k] - packed
                frm = np.maximum(begins, held[live])
                todo = np.nonzero(frm < ends)[0]
                if len(todo) == 0:
                    continue
                sel = live[todo]
                # A packet without a packed header is one run of the file: where the part
                # still to send starts (-1: assemble it with bin_range).
                file_from = np.where(packed[todo] == 0,
                                     pk["offset"][k[todo]] + (frm[todo] - begins[todo]), -1)
                yield from self._send_layer(cs, rows, held, sel, ids[sel], frm[todo],
                                            ends[todo], file_from, ends[todo] == bin_len[sel])
                if self._stopped:
                    return

    def _send_layer(self, cs: int, rows: np.ndarray, held: np.ndarray, sel: np.ndarray,
                    ids: np.ndarray, frm: np.ndarray, ends: np.ndarray, runs: np.ndarray,
                    last: np.ndarray) -> Iterator[Chunk]:
        """Messages for bytes [frm, ends) of the precincts at positions `sel` of `rows`."""
        pos, count = 0, len(sel)
        # The first precinct message after header bins carries class and CSn: general path.
        while pos < count and not self.writer.continues(PRECINCT, cs) and not self._stopped:
            yield from self._one_by_one(cs, rows, held, sel, ids, frm, ends, runs, last,
                                        pos, pos + 1)
            pos += 1
        if pos == count or self._stopped:
            return
        lengths = ends[pos:] - frm[pos:]
        if int(runs[pos:].min()) >= 0 and (self.limit is None or int(lengths.sum()) + (
                count - pos) * MAX_HEADER_BYTES <= self._room()):
            # Every message is one file run and all of them fit: no per-message checks.
            yield from self._in_batches(cs, rows, held, sel[pos:], ids[pos:], frm[pos:],
                                        ends[pos:], runs[pos:], last[pos:])
        else:
            yield from self._one_by_one(cs, rows, held, sel, ids, frm, ends, runs, last,
                                        pos, count)

    def _in_batches(self, cs, rows, held, sel, ids, frm, ends, runs, last) -> Iterator[Chunk]:
        """Queues every message, flushing a chunk about every CHUNK_TARGET bytes."""
        lengths = ends - frm
        reach = np.cumsum(lengths)
        view = self.source.view
        start = 0
        while start < len(sel):
            before = int(reach[start - 1]) if start else 0
            stop = int(np.searchsorted(reach, before + max(CHUNK_TARGET - self._size, 1))) + 1
            stop = min(stop, len(sel))
            span = slice(start, stop)
            offsets, sizes, froms = frm[span].tolist(), lengths[span].tolist(), runs[span].tolist()
            headers = self.writer.next_headers(ids[span].tolist(), offsets, sizes,
                                               last[span].tolist())
            parts = self._parts  # a new list after every flush
            for header, run, size in zip(headers, froms, sizes, strict=True):
                parts.append(header)
                parts.append(view[run:run + size])
            total = sum(map(len, headers)) + int(reach[stop - 1]) - before
            self._size += total
            out = self.outcome
            out.bytes_sent += total
            out.data_bytes += int(reach[stop - 1]) - before
            out.messages += stop - start
            held[sel[span]] = ends[span]
            self._updates.append(("P", cs, rows[sel[span]].astype(np.int32),
                                  ends[span].astype(np.int64)))
            start = stop
            if self._size >= CHUNK_TARGET:
                chunk = self._flush()
                if chunk:
                    yield chunk

    def _one_by_one(self, cs, rows, held, sel, ids, frm, ends, runs, last, start: int,
                    stop: int) -> Iterator[Chunk]:
        """Queues messages start..stop-1 each checked against the byte budget."""
        sent = []  # (position in rows, new bin end)
        for j in range(start, stop):
            i, a = int(sel[j]), int(frm[j])
            n = self._packet_message(cs, int(ids[j]), a, int(ends[j]), int(runs[j]),
                                     bool(last[j]), int(rows[i]))
            if n:
                sent.append((i, a + n))
            if self._stopped:
                break
            if self._size >= CHUNK_TARGET:
                self._record(cs, rows, sent, held)
                sent = []
                chunk = self._flush()
                if chunk:
                    yield chunk
        self._record(cs, rows, sent, held)

    def _packet_message(self, cs: int, bin_id: int, a: int, b: int, run: int, last: bool,
                        row: int) -> int:
        """Queues bytes [a, b) of a precinct bin (one packet's worth); returns how many."""
        length = b - a
        writer = self.writer
        if run >= 0 and writer.continues(PRECINCT, cs):
            # The hot path: same class and codestream as the last message, one file run.
            header = writer.next_header(bin_id, a, length, last)
            size = len(header) + length
            if self.limit is None or size <= self._room():
                self._parts.append(header)
                self._parts.append(self.source.view[run:run + length])
                self._size += size
                out = self.outcome
                out.bytes_sent += size
                out.data_bytes += length
                out.messages += 1
                return length
            # Too big for the byte budget: the general path re-encodes it, cut to fit.
        return self._message(PRECINCT, cs, bin_id, a, self.source.bin_range(cs, row, a, b),
                             length, last)

    def _record(self, cs: int, rows: np.ndarray, sent: list, held: np.ndarray) -> None:
        """Model updates for the messages queued since the last call (committed by the
        caller once their chunk is written), and the local copy of what is held."""
        if not sent:
            return
        where = np.fromiter((i for i, _ in sent), np.int64, len(sent))
        new_end = np.fromiter((e for _, e in sent), np.int64, len(sent))
        held[where] = new_end
        self._updates.append(("P", cs, rows[where].astype(np.int32), new_end))


def _take(pieces: list, n: int) -> list:
    out = []
    for p in pieces:
        if n <= 0:
            break
        if len(p) > n:
            out.append(p[:n])
            n = 0
        else:
            out.append(p)
            n -= len(p)
    return out
