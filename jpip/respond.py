"""Turns planned windows into JPP-stream chunks, skipping what the cache model holds.

Sans-I/O: `ResponseBuilder.chunks()` yields `Chunk`s (bytes to write + the cache-model records
they carry, `cache.model.Received*`). The caller writes a chunk, and only once the write
succeeded commits its records, so the model never claims bytes the client did not get. A bin's
record is made only for a message that was really queued: an empty bin (an empty tile header,
the empty metadata-bin 0 of a raw codestream) that a byte limit left out stays unheld.

Byte limits: `byte_limit` counts message headers and bodies (not the EOR). A limit the client
set ends the response with EOR 4 (byte limit); the server's own cap, when the client set none,
with EOR 7 (response limit). A client limit so small that the first message cannot carry one
byte of its body is raised (`raised_limit`, for `JPIP-len`) so that a client repeating the
request makes progress; `len=0` is never raised (it asks for no data at all).

Order: the metadata the image needs (`meta_plan.first`, see jpip.metareq: metadata-bin 0 and
what it leads to), then per codestream the main header and the tile headers, then image data
quality layer by quality layer (all precincts' layer 0, lowest resolution first, before any
layer 1), so a response cut by `len` shows the whole window at a lower quality; then the
metadata asked for without priority (`meta_plan.last`). Small responses no byte limit can cut
carry each precinct's bytes in one message instead (`whole_bins_up_to`).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from cache.model import BinKind, CacheModel, Received, ReceivedRows
from codestream.index import CodestreamIndex
from codestream.source import SPAN_BUDGET, FileBytes, Source, SpanReader

from .jpp import EOR, MAIN_HEADER, METADATA, PRECINCT, TILE_HEADER, MessageWriter
from .metareq import MetaPlan
from .plan import Plan, bin_runs, planned_ends

CHUNK_TARGET = 256 * 1024
MAX_HEADER_BYTES = 24  # a precinct message header without class/CSn: Bin-ID, offset, length
CLASS_CSN_BYTES = 9  # what class and CSn add to a header, at most (1 + 8 VBAS bytes)
BATCH_SLACK = 64  # bytes a batch buffer keeps free after its messages (_flush)
MAX_EOR_BYTES = 3  # an EOR message with no body
RAISED_BODY = 256  # body bytes a raised limit lets the first message carry (at most)
# A response of up to this much image data goes out in one write (server/), so its layer
# order would show nothing earlier: its precincts go one message each (`whole_bins_up_to`).
WHOLE_BINS_BYTES = 1 << 20


@dataclass(slots=True)
class Chunk:
    data: bytes | bytearray  # (a bytearray is the builder's own, never changed once yielded)
    records: list = field(default_factory=list)  # cache-model records of the bytes in `data`


@dataclass
class Outcome:
    """What the response did, for EOR, metrics and logs."""

    reason: int = EOR.WINDOW_DONE
    raised_limit: int | None = None  # the byte limit, when raised to let a message through
    bytes_sent: int = 0          # message headers + bodies (what `len` counts)
    data_bytes: int = 0          # data-bin bytes
    bytes_skipped: int = 0       # planned bytes the model said the client holds
    messages: int = 0


class ResponseBuilder:
    """One response's messages. `plans` use codestream indexes; messages carry CSn =
    index + `source.first_codestream`.

    `server_limit`: the byte limit is the server's own cap (EOR 7 when reached), not the
    client's `len` (EOR 4). `whole_target`: the plans cover everything the target holds, so a
    completed response ends with EOR 1 (image done) rather than 2 (window done). `meta_plan`:
    the metadata-bin prefixes to send (None: metadata-bin 0 whole).
    `whole_bins_up_to`: a plan whose precinct data still to send is at most this many bytes,
    and that no byte limit can cut, goes one message per precinct (all its layers) instead of
    layer by layer (WHOLE_BINS_BYTES is what the server uses; 0: always layer by layer).
    """

    def __init__(self, source: Source, plans: list[Plan], model: CacheModel, *,
                 byte_limit: int | None = None, server_limit: bool = False,
                 meta_plan: MetaPlan | None = None, metadata_only: bool = False,
                 whole_target: bool = False, whole_bins_up_to: int = 0) -> None:
        self.source = source
        self.plans = plans
        self.model = model
        self.limit = byte_limit
        self.server_limit = server_limit
        self.meta_plan = meta_plan or MetaPlan(((0, source.metadata.length(0)),))
        self.metadata_only = metadata_only
        self.whole_target = whole_target
        self.whole_bins_up_to = whole_bins_up_to
        self.first = source.first_codestream
        self.writer = MessageWriter()
        self.outcome = Outcome()
        self._parts: list = []
        self._size = 0
        self._records: list = []
        self._stopped = False
        self._reader: FileBytes | SpanReader = source.view  # _precinct_data sets spans

    # --- message plumbing ------------------------------------------------------------------
    def _room(self) -> int:
        if self.limit is None:
            return 1 << 62
        return self.limit - self.outcome.bytes_sent

    def _stop(self) -> None:
        self._stopped = True
        self.outcome.reason = EOR.RESPONSE_LIMIT if self.server_limit else EOR.BYTE_LIMIT

    def _message(self, cls: int, csn: int, bin_id: int, offset: int, pieces: list, length: int,
                 is_last: bool, aux: tuple[int, int] | None = None) -> int | None:
        """Queues one message (CSn as sent); returns the body bytes queued (may be cut by the
        byte limit), or None when not even its header fit. `aux` (extended classes): the Aux
        value of the whole message and of one cut short."""
        whole_aux, cut_aux = aux if aux is not None else (None, None)
        header = self.writer.header(cls, csn, bin_id, offset, length, is_last, whole_aux)
        room = self._room()
        if (len(header) + length > room and self.outcome.messages == 0 and room > 0
                and room - len(header) < min(length, 1) and self.limit):
            # Not one body byte fits in the client's limit: raise it (JPIP-len), or a client
            # that repeats the request would never progress.
            self.limit = len(header) + min(length, RAISED_BODY)
            self.outcome.raised_limit = self.limit
            room = self._room()
        if len(header) + length > room:
            # Send what fits of the body, then stop: the byte limit is reached.
            self._stop()
            cut = room - len(header)
            if cut <= 0:
                self.writer.discard()
                return None
            # The shorter message cannot hold the bin's last byte; re-encode its header.
            header = self.writer.header(cls, csn, bin_id, offset, cut, False, cut_aux)
            cut = min(cut, room - len(header))
            if cut <= 0:
                self.writer.discard()
                return None
            header = self.writer.header(cls, csn, bin_id, offset, cut, False, cut_aux)
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
        parts = self._parts
        if len(parts) == 1:
            data = parts[0]
        elif type(parts[0]) is bytearray and sum(map(len, parts[1:])) <= BATCH_SLACK:
            # A batch and a few bytes after it (the EOR): they join the batch in its slack.
            data = parts[0]
            try:
                data += b"".join(parts[1:])
            except BufferError:  # (see _in_batches): as any other parts
                data = b"".join(parts)
        else:
            data = b"".join(parts)
        chunk = Chunk(data, self._records)
        self._parts, self._size, self._records = [], 0, []
        return chunk

    def _bin(self, kind: BinKind, cls: int, cs: int, bin_id: int, data: bytes,
             held: int | None) -> None:
        """Queues what the client lacks of one header or metadata bin (`held`: bytes it holds,
        None if it does not even know the bin), recording only what was queued."""
        if held is not None and held >= len(data):
            self.outcome.bytes_skipped += len(data)
            return
        start = held or 0
        # Metadata-bins belong to the target, not to a codestream: their messages say CSn 0.
        csn = 0 if kind == BinKind.METADATA else cs + self.first
        n = self._message(cls, csn, bin_id, start, [data[start:]], len(data) - start, True)
        if n is not None:
            self._records.append(Received(kind, cs, bin_id, start + n))

    def _metadata(self, wanted: tuple[tuple[int, int], ...]) -> Iterator[Chunk]:
        """Queues what the client lacks of metadata-bin prefixes (bin id, bytes wanted)."""
        held = self.model.metadata
        meta = self.source.metadata
        for bin_id, end in wanted:
            if self._stopped:
                return
            have = held.get(bin_id)
            if have is not None and have >= end:
                self.outcome.bytes_skipped += end
                continue
            start = have or 0
            # Metadata-bins belong to the target, not to a codestream: their messages say CSn 0.
            n = self._message(METADATA, 0, bin_id, start,
                              self.source.metadata_pieces(bin_id, start, end), end - start,
                              end == meta.length(bin_id))
            if n is not None:
                self._records.append(Received(BinKind.METADATA, 0, bin_id, start + n))
            if self._size >= CHUNK_TARGET:
                chunk = self._flush()
                if chunk:
                    yield chunk

    # --- the response ----------------------------------------------------------------------
    def chunks(self) -> Iterator[Chunk]:
        yield from self._metadata(self.meta_plan.first)
        if not self.metadata_only:
            yield from self._image_data()
        yield from self._metadata(self.meta_plan.last)
        if self.outcome.reason == EOR.WINDOW_DONE and self.whole_target and not self._stopped:
            self.outcome.reason = EOR.IMAGE_DONE
        # The EOR ends the last chunk: a small response is one chunk, written at once.
        self._parts.append(self.writer.eor(self.outcome.reason))
        yield self._flush()

    def _image_data(self) -> Iterator[Chunk]:
        """Header bins and precinct data of the plans (JPT-streams send tile data instead)."""
        for plan in self.plans:
            if self._stopped:
                break
            yield from self._headers(plan)
        yield from self._precinct_data()

    def _headers(self, plan: Plan) -> Iterator[Chunk]:
        src, cs = self.source, plan.codestream
        hold = self.model.stream(cs)
        if not self._stopped:
            self._bin(BinKind.MAIN_HEADER, MAIN_HEADER, cs, 0, src.main_header_bin(cs),
                      hold.main_header or None)
        for t in plan.tiles.tolist():
            if self._stopped:
                return
            self._bin(BinKind.TILE_HEADER, TILE_HEADER, cs, t, src.tile_header_bin(cs, t),
                      hold.tile_headers.get(t))
        if self._size >= CHUNK_TARGET:
            chunk = self._flush()
            if chunk:
                yield chunk

    def _precinct_data(self) -> Iterator[Chunk]:
        for plan in self.plans:
            if self._stopped or len(plan.rows) == 0 or plan.layers <= 0:
                continue
            src, cs = self.source, plan.codestream
            self._reader = src.view
            ix = src.codestreams[cs]
            pr, pk = ix.precincts, ix.packets
            rows = plan.rows
            planned_end = (plan.ends if plan.ends is not None
                           else planned_ends(ix, rows, plan.layers))
            held = self.model.stream(cs).precincts.get(rows)
            if held.any():
                self.outcome.bytes_skipped += int(np.minimum(held, planned_end).sum())
                # Only the precincts the client lacks something of go further (a repeated or
                # panned window holds most of them already).
                lacking = np.flatnonzero(held < planned_end)
                if len(lacking) == 0:
                    continue
                rows, held, planned_end = rows[lacking], held[lacking], planned_end[lacking]
            order = np.argsort(_send_rank(ix)[rows])
            rows, held, planned_end = rows[order], held[order], planned_end[order]
            ids = pr["id"][rows]
            bin_len = pr["bin_length"][rows]
            whole = bin_runs(ix)[rows]  # bins that are one run of the file
            if self._whole_bins(rows, held, planned_end):
                # One message per precinct whose bin is one run of the file: [held, planned
                # end) of it. (A bin in pieces, e.g. the layers of an LRCP/RLCP file, keeps a
                # message per packet below: clients such as OpenJPEG's JPIP transcoder rebuild
                # those packets from the message boundaries.)
                sel = np.flatnonzero(whole & (held < planned_end))
                if len(sel):
                    frm, ends = held[sel], planned_end[sel]
                    runs = pk["offset"][pr["pkt_start"][rows[sel]]] + frm
                    yield from self._send_layer(cs, rows, held, sel, ids[sel], frm, ends, runs,
                                                ends == bin_len[sel],
                                                one_chunk=self._written_whole(ends - frm))
                    if self._stopped:
                        return
                if whole.all():
                    continue
                rest = np.flatnonzero(~whole)
                rows, held, ids, bin_len = rows[rest], held[rest], ids[rest], bin_len[rest]
            else:
                # Layer by layer: each precinct whose bin is one run of the file is read
                # whole ([held, planned end)) before its first layer is sent, not a packet
                # at a time (within what a byte limit lets through).
                first_at = pk["offset"][pr["pkt_start"][rows[whole]]]
                self._reader = SpanReader(src.view, first_at + held[whole],
                                          planned_end[whole] - held[whole],
                                          budget=min(SPAN_BUDGET, self._room()))
            starts, counts = pr["pkt_start"][rows], pr["pkt_count"][rows]
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

    def _whole_bins(self, rows: np.ndarray, held: np.ndarray, planned_end: np.ndarray) -> bool:
        """Whether a plan's precinct data goes one message per precinct rather than layer by
        layer: when it is small (`whole_bins_up_to`) and no byte limit can cut it, the layer
        order buys nothing, and one message per bin costs far fewer headers."""
        if self.whole_bins_up_to <= 0:
            return False
        total = int(planned_end.sum()) - int(held.sum())
        if total > self.whole_bins_up_to:
            return False
        return self.limit is None or total + len(rows) * MAX_HEADER_BYTES <= self._room()

    def _written_whole(self, lengths: np.ndarray) -> bool:
        """Whether the response ends with these messages and is small enough to go out in
        one write (whole_bins_up_to): then it needs no chunks, and is one buffer. (A
        response streamed keeps chunks of CHUNK_TARGET bytes: each is committed once
        written, so a connection lost resends at most one.)"""
        return (len(self.plans) == 1 and not self.meta_plan.last
                and self._size + int(lengths.sum()) + len(lengths) * MAX_HEADER_BYTES
                + CLASS_CSN_BYTES + MAX_EOR_BYTES <= self.whole_bins_up_to)

    def _send_layer(self, cs: int, rows: np.ndarray, held: np.ndarray, sel: np.ndarray,
                    ids: np.ndarray, frm: np.ndarray, ends: np.ndarray, runs: np.ndarray,
                    last: np.ndarray, *, one_chunk: bool = False) -> Iterator[Chunk]:
        """Messages for bytes [frm, ends) of the precincts at positions `sel` of `rows`.
        `one_chunk`: the response is written whole (`_written_whole`): no chunks of
        CHUNK_TARGET bytes; as one buffer it is written without a join."""
        pos, count = 0, len(sel)
        if count == 0 or self._stopped:
            return
        if int(runs.min()) >= 0 and self._fits(ends - frm, CLASS_CSN_BYTES):
            # Every message is one file run and all of them fit: no per-message checks.
            yield from self._in_batches(cs, rows, held, sel, ids, frm, ends, runs, last,
                                        one_chunk)
            return
        csn = cs + self.first
        # The first precinct message after header bins carries class and CSn: general path.
        while pos < count and not self.writer.continues(PRECINCT, csn) and not self._stopped:
            yield from self._one_by_one(cs, rows, held, sel, ids, frm, ends, runs, last,
                                        pos, pos + 1)
            pos += 1
        if pos == count or self._stopped:
            return
        if int(runs[pos:].min()) >= 0 and self._fits(ends[pos:] - frm[pos:], 0):
            yield from self._in_batches(cs, rows, held, sel[pos:], ids[pos:], frm[pos:],
                                        ends[pos:], runs[pos:], last[pos:], one_chunk)
        else:
            yield from self._one_by_one(cs, rows, held, sel, ids, frm, ends, runs, last,
                                        pos, count)

    def _fits(self, lengths: np.ndarray, extra: int) -> bool:
        """Whether messages of these body lengths (plus `extra` header bytes) surely fit in
        what the byte limit leaves."""
        return self.limit is None or (int(lengths.sum()) + len(lengths) * MAX_HEADER_BYTES
                                      + extra <= self._room())

    def _in_batches(self, cs, rows, held, sel, ids, frm, ends, runs, last,
                    one_chunk: bool = False) -> Iterator[Chunk]:
        """Queues every message, flushing a chunk about every CHUNK_TARGET bytes (one batch
        for all when `one_chunk`). A batch is one buffer: the headers written in place, the
        bodies read from the file straight into place between them (no copy of them but
        the file's into the batch)."""
        lengths = ends - frm
        reach = np.cumsum(lengths)
        writer = self.writer
        csn = cs + self.first
        start = 0
        while start < len(sel):
            before = int(reach[start - 1]) if start else 0
            if one_chunk:
                stop = len(sel)
            else:
                stop = int(np.searchsorted(reach, before + max(CHUNK_TARGET - self._size, 1)))
                stop = min(stop + 1, len(sel))
            span = slice(start, stop)
            sizes = lengths[span].tolist()
            bin_ids, offsets, lasts = ids[span].tolist(), frm[span].tolist(), last[span].tolist()
            if writer.continues(PRECINCT, csn):
                headers = writer.next_headers(bin_ids, offsets, sizes, lasts)
            else:  # the first precinct message of the response (or after other classes)
                headers = [writer.header(PRECINCT, csn, bin_ids[0], offsets[0], sizes[0],
                                         lasts[0])]
                headers += writer.next_headers(bin_ids[1:], offsets[1:], sizes[1:], lasts[1:])
            data = int(reach[stop - 1]) - before
            total = sum(map(len, headers)) + data
            # The messages queued before (header bins, metadata) open the batch: the chunk is
            # then the batch itself, not a join of it.
            queued = b"".join(self._parts) if self._parts else b""
            batch = bytearray(len(queued) + total + BATCH_SLACK)
            place = memoryview(batch)
            place[:len(queued)] = queued
            bodies = []  # each message's body, in place after its header
            pos = len(queued)
            for header, size in zip(headers, sizes, strict=True):
                end = pos + len(header)
                place[pos:end] = header
                pos = end + size
                bodies.append(place[end:pos])
            self._reader.read_runs_into(bodies, runs[span], lengths[span])
            del bodies, place
            try:
                del batch[pos:]  # the slack stays allocated: the EOR joins the batch in place
            except BufferError:  # a view of it still held (a profiler keeping a frame)
                batch = batch[:pos]
            self._parts = [batch]
            self._size += total
            out = self.outcome
            out.bytes_sent += total
            out.data_bytes += data
            out.messages += stop - start
            held[sel[span]] = ends[span]
            self._records.append(ReceivedRows(BinKind.PRECINCT, cs,
                                              rows[sel[span]].astype(np.int32),
                                              ends[span].astype(np.int64)))
            start = stop
            if not one_chunk and self._size >= CHUNK_TARGET:  # (one chunk: the EOR joins it)
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
                        row: int) -> int | None:
        """Queues bytes [a, b) of a precinct bin (one packet's worth); returns how many."""
        length = b - a
        writer = self.writer
        if run >= 0 and writer.continues(PRECINCT, cs + self.first):
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
        return self._message(PRECINCT, cs + self.first, bin_id, a,
                             self.source.bin_range(cs, row, a, b),
                             length, last)

    def _record(self, cs: int, rows: np.ndarray, sent: list, held: np.ndarray) -> None:
        """Model records for the messages queued since the last call (committed by the
        caller once their chunk is written), and the local copy of what is held."""
        if not sent:
            return
        where = np.fromiter((i for i, _ in sent), np.int64, len(sent))
        new_end = np.fromiter((e for _, e in sent), np.int64, len(sent))
        held[where] = new_end
        self._records.append(ReceivedRows(BinKind.PRECINCT, cs, rows[where].astype(np.int32),
                                          new_end))


def _send_rank(ix: CodestreamIndex) -> np.ndarray:
    """Per precinct row: its place in the order precincts are sent, lowest resolution first,
    then tile, component, position. Computed once per index."""
    rank = getattr(ix, "_send_rank", None)
    if rank is None:
        rank = _rank_by_resolution_rows(ix)
        if rank is None:
            rank = _rank_by_sorting(ix)
        rank.flags.writeable = False
        ix._send_rank = rank  # cached on the index, like plan.bin_runs
    return rank


def _rank_by_sorting(ix: CodestreamIndex) -> np.ndarray:
    """_send_rank of any index: its precincts sorted."""
    pr = ix.precincts
    order = np.lexsort((pr["p"], pr["c"], pr["t"], pr["r"]))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _rank_by_resolution_rows(ix: CodestreamIndex) -> np.ndarray | None:
    """_send_rank from the (tile, component, resolution) table when the precinct rows are
    its rows' precincts one row after the other, in raster order (as codestream.index makes
    them): the table's rows sorted, each giving its precincts in a block, instead of sorting
    every precinct (262k of them: 36 ms on a cold server's first request). None otherwise."""
    tcr, pr = ix.tcr, ix.precincts
    counts = tcr["npw"] * tcr["nph"]
    n = len(pr["p"])
    if int(counts.sum()) != n or not np.array_equal(tcr["prec_base"],
                                                    np.cumsum(counts) - counts):
        return None
    order = np.lexsort((tcr["c"], tcr["t"], tcr["r"]))
    placed = np.empty(len(order), np.int64)  # where each table row's block goes
    placed[order] = np.cumsum(counts[order]) - counts[order]
    return np.arange(n, dtype=np.int64) + np.repeat(placed - tcr["prec_base"], counts)


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
