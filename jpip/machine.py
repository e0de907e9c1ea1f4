"""The JPIP protocol machine (ISO 15444-9 Annexes B-D): one request's way from fields to bytes.

Sans-I/O, in the manner of h11: the machine never reads a file, a socket or a clock. The server
feeds it a parsed request, the session state its store holds, and the target's index; the
machine answers with decisions (status, `JPIP-*` headers, the JPP-stream's chunks) and with
every change to session state as an explicit record (`cache.sessions`), which the server hands
back to its `SessionStore`. What was written is committed only once it was written.

One `Exchange` per request, stepped by the server in this order:

1. `machine.exchange(req)` checks what needs no state (`type`, `upload`, `pref=.../r`,
   `cnew` transports, the shape of `cclose`) and names the channel whose session to load
   (`ex.cid`) and the target the request names (`ex.target`).
2. `ex.bind(session, source, target_path)`: the channel rules (unknown cid 503, a channel of
   another target 400, `tid`, `subtarget`); `ex.opening` (a new session to create, for `cnew`
   without `cid`) or `ex.arrival` (a request that pre-empts the earlier ones on its channel,
   for every channel request without `wait=yes`) are the changes to record now.
3. Channel requests only: `ex.turn(session, waited_out)` until it says GO or PREEMPTED. A
   channel serves one response at a time, in qid order; the server waits between calls (for
   a change on the channel, or, for a qid gap, at most its own patience: `waited_out`).
   PREEMPTED is answered 202 with EOR 3 (window change). A store shared by processes may
   refuse GO's `Begin` (`TurnTaken`: another process took the channel meanwhile); then
   `ex.turn_taken()` and wait again.
4. `ex.reply(session)`: the answer. Its `changes` (new channel, a file changed on disk,
   `model=` statements) are recorded first; then its chunks are written. The headers are
   final once the first chunk has been taken (`JPIP-len` may depend on it).
5. After each chunk written: `ex.commit(chunk)` (the cache-model records of those bytes);
   between chunks, `ex.preempted(session)` says whether a newer request ended this response
   (write `ex.window_change()` and stop).
6. `ex.finish(...)`: the channel is free again (and `cclose` takes effect).
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache

from cache.model import CacheModel, ModelRecord
from cache.response_cache import ResponseCache
from cache.sessions import (
    AddChannel,
    Begin,
    Change,
    CloseChannels,
    End,
    ModelChange,
    OpenSession,
    Preempt,
    Retarget,
    SessionState,
    Skip,
)
from codestream.source import Source

from .errors import RequestError
from .jpp import EOR, MessageWriter
from .metareq import plan_metadata
from .model import SampledRange
from .modelspec import model_records, need_rows, need_tiles, restrict_to_need, tile_part_records
from .plan import plan_window
from .request import JPIPRequest
from .respond import WHOLE_BINS_BYTES, Chunk, Outcome, ResponseBuilder
from .respond_jpt import TileResponseBuilder
from .tileplan import plan_tiles, restrict_tiles
from .window import ViewWindow, resolve_window

__all__ = ["Exchange", "JPIPMachine", "Reply", "Turn", "TurnKind", "served_codestreams"]

JPP_STREAM = "jpp-stream"
JPT_STREAM = "jpt-stream"
JPT_EXTENDED = "jpt-stream;ttype=ext"
# The media type of each return type (HTTP Content-Type; exactly this, no parameters).
CONTENT_TYPES = {JPP_STREAM: "image/jpp-stream", JPT_STREAM: "image/jpt-stream",
                 JPT_EXTENDED: "image/jpt-stream"}
# Fields whose effect this server gives, listed in JPIP-handled when a request asks (`handled`).
# The others are recognised and checked, and then ignored as the standard allows (hints,
# quality), so they are not claimed as handled.
HANDLED_FIELDS = ("target", "subtarget", "tid", "cid", "cnew", "cclose", "qid", "fsiz", "roff",
                  "rsiz", "comps", "stream", "context", "layers", "metareq", "len", "wait",
                  "type", "model", "tpmodel", "need", "tpneed", "pref", "handled")


class TurnKind(Enum):
    GO = "go"                # serve now
    WAIT_BUSY = "busy"       # another response on this channel is being written
    WAIT_QID = "qid"         # a lower qid has not had its turn yet
    PREEMPTED = "preempted"  # a newer request superseded this one before it started


@dataclass(frozen=True, slots=True)
class Turn:
    kind: TurnKind
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True, slots=True)
class _Windows:
    """What a request's view-window resolves to in one target."""

    windows: tuple[tuple[int, ViewWindow], ...]  # (codestream index, window)
    stream_header: str | None                    # JPIP-stream, when the served set differs
    default_codestream: int                      # the number model/need descriptors default to


_FIRST = [0]  # the codestream index served when a request names none (do not modify)


def served_codestreams(req: JPIPRequest, source: Source) -> tuple[list[int], str | None]:
    """The codestream indexes a request names (`stream=`, `context=jpxl<...>`, else the first
    codestream), and the `JPIP-stream` value (sampled ranges of codestream numbers) when the
    served set differs from the requested one. Codestream number n is index
    n - `source.first_codestream`."""
    if req.stream is None and req.context is None:
        return _FIRST, None
    first, count = source.first_codestream, len(source.codestreams)
    last = first + count - 1
    ranges: list[SampledRange] = list(req.stream or ())
    # JPX compositing layers map one to one onto codestreams in the files we serve.
    if req.context is not None:
        ranges.extend(req.context.jpxl_layers)
    if not ranges:
        return _FIRST, None
    served: set[int] = set()
    kept: list[SampledRange] = []
    changed = False
    for r in ranges:
        lo = max(r.lo, first)
        if lo > r.lo:  # below the first number: start at the first sample inside
            lo = r.lo + -(-(first - r.lo) // r.step) * r.step
        hi = last if r.hi is None else min(r.hi, last)
        if r.hi is None or r.hi > last or lo != r.lo:
            changed = True
        if lo > hi:
            continue
        hi = lo + (hi - lo) // r.step * r.step  # the last sample actually served
        served.update(range(lo - first, hi - first + 1, r.step))
        kept.append(SampledRange(lo, hi, r.step))
    if not served:
        asked = ",".join(str(r) for r in ranges)
        have = (f"codestreams {SampledRange(first, last)}" if count > 1
                else f"only codestream {first}")
        raise RequestError("stream", f"no codestream {asked} in this target (it has {have})",
                           404)
    return sorted(served), (",".join(str(r) for r in kept) if changed else None)


@lru_cache(maxsize=64)  # clients send a few type lists, again and again (refusals not kept)
def _negotiate_type(types: tuple[str, ...] | None) -> str | None:
    """The first acceptable return type wins (None: the request names none); 415 when none
    can be produced."""
    if not types:
        return None
    problems = []
    for t in types:
        base, *params = t.split(";")
        if base == JPP_STREAM:
            if params == ["ptype=ext"]:
                problems.append(f"{t}: extended precinct messages (class 1) are not supported")
            elif params:
                problems.append(f"{t}: unknown parameters")
            else:
                return JPP_STREAM
        elif base == JPT_STREAM:
            if params == ["ttype=ext"]:
                return JPT_EXTENDED
            if params:
                problems.append(f"{t}: unknown parameters")
            else:
                return JPT_STREAM
        else:
            problems.append(f"{t}: this server sends {JPP_STREAM} and {JPT_STREAM}")
    raise RequestError("type", "; ".join(problems), 415)


def _check_prefs(req: JPIPRequest) -> None:
    """Preference sets marked required (`/r`) that the server does not honour: 501 with
    JPIP-pref echoing them (15444-9 C.10.2). This server honours no preference, so every
    required set is refused; optional ones are hints and ignored."""
    if not req.pref:
        return
    required = [p.raw for p in req.pref if p.required]
    if required:
        raise RequestError("pref", f"required preferences cannot be honoured: "
                           f"{','.join(required)}", 501, headers={"JPIP-pref": ",".join(required)})


@dataclass
class Reply:
    """An answer: status and headers, changes to record before streaming, and the chunks."""

    status: int
    headers: dict[str, str]
    changes: list[Change] = field(default_factory=list)
    content_type: str = CONTENT_TYPES[JPP_STREAM]
    cache_result: str | None = None  # "hit"/"miss" when the response cache was consulted
    _chunks: Callable[[], Iterator[Chunk]] | None = None
    body: bytes = b""

    def chunks(self) -> Iterator[Chunk]:
        """The response's chunks, the last one holding the EOR. Built lazily: take them only
        after `changes` were recorded. The headers are final once the first one is taken."""
        if self._chunks is None:
            yield Chunk(self.body)
        else:
            yield from self._chunks()


class JPIPMachine:
    """The protocol rules of one server. It holds no session state of its own: sessions are
    the store's, passed in and changed through records. `responses` (optional) keeps whole
    responses for clients that hold nothing yet."""

    def __init__(self, *, jpip_path: str = "/jpip", max_response_bytes: int = 1 << 30,
                 responses: ResponseCache | None = None,
                 new_id: Callable[[], str] = lambda: secrets.token_hex(16)) -> None:
        self.channel_path = jpip_path.lstrip("/")  # as given in JPIP-cnew (relative)
        self.max_response_bytes = max_response_bytes
        self.responses = responses
        self.new_id = new_id

    def exchange(self, req: JPIPRequest, owner: str | None = None) -> Exchange:
        """`owner`: who the request is from (a token's subject), recorded in a session it
        opens; the server keeps a session's requests to its owner."""
        return Exchange(self, req, owner)


class Exchange:
    """One request's state in the machine (see the module docstring for the steps)."""

    def __init__(self, machine: JPIPMachine, req: JPIPRequest,
                 owner: str | None = None) -> None:
        self.machine = machine
        self.req = req
        self.owner = owner
        self.headers: dict[str, str] = {}
        if req.qid is not None:
            self.headers["JPIP-qid"] = str(req.qid)
        if req.handled:
            self.headers["JPIP-handled"] = ",".join(
                "cnew=http" if f == "cnew" else f for f in HANDLED_FIELDS if req.has(f))
        if req.quality is not None:
            self.headers["JPIP-quality"] = "-1"  # no quality limit is applied
        self._guard(self._check_fields)
        # What the server loads for step 2.
        self.cid: str | None = req.cid
        self.close_only = bool(req.cclose) and req.cid is None
        if self.close_only:
            self.cid = req.cclose[0] if req.cclose != ("*",) else None
        self.target: str | None = req.target
        self.stream_type: str | None = self.requested_type  # the session's, if None
        # Set by bind().
        self.channel: str | None = None       # the channel this request is served on
        self.opening: OpenSession | None = None
        self.arrival: list[Change] = []
        self.source: Source | None = None
        self.target_path: str | None = None
        self.target_id: str | None = None
        self.tid_mismatch = False
        self.generation: int | None = None
        self._began = False                   # the channel is busy with this request's reply
        # Set while streaming.
        self.outcome: Outcome | None = None
        self._recorder = None
        self._cache_key = None
        self._complete = False

    # --- errors carry the headers every answer to this request carries --------------------
    def _guard(self, step, *args):
        try:
            return step(*args)
        except RequestError as e:
            for name, value in self.headers.items():
                e.headers.setdefault(name, value)
            raise

    def _check_fields(self) -> None:
        req = self.req
        if req.upload:
            raise RequestError("upload", "uploads are not supported", 501)
        self.requested_type = _negotiate_type(req.type)
        _check_prefs(req)
        if req.cnew is not None and "http" not in req.cnew:
            raise RequestError("cnew", f"transport {','.join(req.cnew)} is not offered; "
                               "this server offers http", 501)
        if req.subtarget is not None and req.subtarget.byte_range is None:
            raise RequestError("subtarget", "codestream sub-targets are not supported; "
                               "use stream= or context=", 501)

    # --- step 2 -------------------------------------------------------------------------------
    def bind(self, session: SessionState | None, source: Source | None,
             target_path: str | None) -> None:
        """Binds the request to the loaded session (None when `ex.cid` named none) and the
        target (None for a `cclose` without `cid`)."""
        self._guard(self._bind, session, source, target_path)

    def _bind(self, session: SessionState | None, source: Source | None,
              target_path: str | None) -> None:
        req = self.req
        if self.close_only:
            return
        if req.cid is not None and session is None:
            raise RequestError("cid", f"unknown or closed channel {req.cid[:64]!r}", 503)
        if session is not None and target_path is not None and target_path != session.target:
            raise RequestError("cid", "the channel belongs to another target")
        if source is None or target_path is None:
            raise RequestError("target", f"no target: name a file with /{self.machine.channel_path}"
                               "?target=<file> or /<file>, or a channel with cid=")
        self.source, self.target_path = source, target_path
        self.target_id = current = source.identity.target_id  # a hash: computed once
        self.tid_mismatch = req.tid is not None and req.tid not in ("0", current)
        if req.tid is not None or req.cnew:
            self.headers["JPIP-tid"] = current
        if req.subtarget is not None:
            rng = req.subtarget.byte_range
            size = source.identity.size
            if rng.lo != 0 or (rng.hi is not None and rng.hi < size - 1):
                raise RequestError("subtarget", f"byte range {rng} is not the whole target "
                                   f"(0-{size - 1}); sub-ranges are not served", 501)
        if session is None:
            if req.cnew:
                cid = self.machine.new_id()
                self.opening = OpenSession(self.machine.new_id(), target_path, current, cid,
                                           owner=self.owner,
                                           stream_type=self.stream_type or JPP_STREAM,
                                           qid=req.qid)
                self.channel = cid
                self._began = True  # the new channel is opened busy with this reply
                self._announce(cid)
            return
        self.channel = req.cid
        if not req.wait:
            self.arrival.append(Preempt(req.cid))

    def _announce(self, cid: str) -> None:
        self.headers["JPIP-cnew"] = f"cid={cid},path={self.machine.channel_path},transport=http"

    @property
    def queued(self) -> bool:
        """True for a request on an existing channel: it must wait for its turn."""
        return self.channel is not None and self.opening is None and not self._began

    @property
    def serving(self) -> bool:
        """True while this request's reply occupies its channel (after GO, or a new one)."""
        return self._began

    # --- step 3 -------------------------------------------------------------------------------
    def turn(self, session: SessionState, waited_out: bool = False) -> Turn:
        """Whether this channel request may be served now. `waited_out`: the server stopped
        waiting for a missing lower qid (the client may never send it)."""
        ch = session.channels.get(self.channel)
        if ch is None:
            raise self._guard_error(RequestError("cid", "the channel was closed", 503))
        if self.generation is None:
            self.generation = ch.generation  # as it stands right after this request arrived
        qid = self.req.qid
        if ch.generation != self.generation:
            return Turn(TurnKind.PREEMPTED, (Skip(self.channel, qid),))
        if ch.busy:
            return Turn(TurnKind.WAIT_BUSY)
        # qid n waits for n - 1 (a channel's first qid may be 0 or 1); the server stops
        # waiting after a while (`waited_out`), since a lower qid may never come.
        if qid is not None and qid > max(ch.last_qid + 1, 1) and not waited_out:
            return Turn(TurnKind.WAIT_QID)
        self._began = True
        return Turn(TurnKind.GO, (Begin(self.channel, qid, self.generation),))

    def turn_taken(self) -> None:
        """The store refused the GO's `Begin` (a store shared by processes: another process
        began a response on the channel, or pre-empted this request, since the load this turn
        was decided on). The request waits again: call `turn` on the state loaded anew."""
        self._began = False

    def _guard_error(self, e: RequestError) -> RequestError:
        for name, value in self.headers.items():
            e.headers.setdefault(name, value)
        return e

    # --- step 4 -------------------------------------------------------------------------------
    def _return_type(self, session: SessionState | None) -> str:
        """The request's return type, else its session's (C.7.3), else JPP-stream."""
        if self.stream_type is not None:
            return self.stream_type
        return session.stream_type if session is not None else JPP_STREAM

    def preempted_reply(self, session: SessionState | None = None) -> Reply:
        """202: superseded before it started (15444-9 Annex F), EOR 3."""
        return Reply(202, dict(self.headers), body=MessageWriter().eor(EOR.WINDOW_CHANGE),
                     content_type=CONTENT_TYPES[self._return_type(session)])

    def reply(self, session: SessionState | None) -> Reply:
        return self._guard(self._reply, session)

    def _reply(self, session: SessionState | None) -> Reply:
        req = self.req
        if self.close_only:
            ids = () if session is None else tuple(c for c in req.cclose
                                                   if c in session.channels)
            changes: list[Change] = [CloseChannels(ids)] if ids else []
            self._complete = True
            return Reply(200, dict(self.headers), changes,
                         body=MessageWriter().eor(EOR.WINDOW_DONE))
        source = self.source
        assert source is not None, "bind() first"
        headers = dict(self.headers)
        changes = []
        current = self.target_id
        if session is not None and session.target_id != current:
            # The file changed on disk: the session's model describes another file.
            changes.append(Retarget(current))
            headers["JPIP-tid"] = current
        if session is not None and req.cnew and self.opening is None:
            cid = self.machine.new_id()
            changes.append(AddChannel(cid))
            self._announce(cid)
            headers["JPIP-cnew"] = self.headers["JPIP-cnew"]

        win = self._windows(source)
        if win.stream_header is not None:
            headers["JPIP-stream"] = win.stream_header
        if win.windows:
            headers.update(win.windows[0][1].changed)

        return_type = self._return_type(session)
        tiles = return_type != JPP_STREAM
        statements: list[ModelRecord] = []
        if (req.model or req.tpmodel) and not self.tid_mismatch:
            if req.model:
                statements = model_records(req.model, source, win.default_codestream)
            if req.tpmodel:
                statements += tile_part_records(req.tpmodel, source, win.default_codestream)
            if session is not None and statements:
                changes.append(ModelChange(tuple(statements)))
        need = None
        if not self.tid_mismatch:
            if tiles and (req.need or req.tpneed):
                need = need_tiles(req.need, req.tpneed, source, win.default_codestream)
            elif not tiles and req.need:
                need = need_rows(req.need, source, win.default_codestream)

        limit, server_limit = req.len, False
        if limit is None:
            limit, server_limit = self.machine.max_response_bytes, True
        elif limit > self.machine.max_response_bytes:
            limit = self.machine.max_response_bytes
            headers["JPIP-len"] = str(limit)
        metadata_only = req.metareq is not None and req.metareq.metadata_only
        reply = Reply(200, headers, changes, content_type=CONTENT_TYPES[return_type])

        def build() -> Iterator[Chunk]:
            if session is not None:
                model = session.model  # read now: the changes above are recorded by now
            else:
                model = CacheModel()   # a stateless request's model lives for this response
                model.apply(statements)
            yield from self._build(reply, source, win, model, limit, server_limit,
                                   metadata_only, need, return_type)

        reply._chunks = build
        return reply

    def _windows(self, source: Source) -> _Windows:
        req = self.req
        indexes, stream_header = served_codestreams(req, source)
        fsiz = (req.fsiz.fx, req.fsiz.fy, req.fsiz.round) if req.fsiz is not None else None
        windows = tuple((cs, resolve_window(source.codestreams[cs], cs, fsiz=fsiz, roff=req.roff,
                                            rsiz=req.rsiz, comps=req.comps, layers=req.layers))
                        for cs in indexes)
        return _Windows(windows, stream_header, indexes[0] + source.first_codestream)

    def _build(self, reply: Reply, source: Source, win: _Windows, model: CacheModel,
               limit: int, server_limit: bool, metadata_only: bool, need,
               return_type: str) -> Iterator[Chunk]:
        responses = self.machine.responses
        windows = [w for _, w in win.windows]
        # What the answer depends on besides the model (a request with need= is not kept).
        asked = None if need is not None else (
            self.target_id, return_type, limit, server_limit, metadata_only,
            self.req.raw.get("metareq"),
            tuple((w.codestream, w.discard, w.region, w.comps, w.layers) for w in windows))
        key = None
        if responses is not None and responses.enabled and asked is not None and model.is_empty():
            key = asked
        cached = responses.get(key) if key is not None else None
        if key is not None:
            reply.cache_result = "miss" if cached is None else "hit"
        if cached is not None:
            self.outcome = Outcome()
            for data, records in cached.chunks:
                yield Chunk(data, list(records))
            self._complete = True
            return
        version = model.version
        done = model.complete_for
        if done is not None and done[0] == asked and done[1] == version:
            # Asked again with nothing applied to the model since it held all of it: the EOR
            # alone, as the builder found then (no planning, no lookups).
            self.outcome = Outcome(reason=done[2], bytes_skipped=done[3])
            yield Chunk(MessageWriter().eor(done[2]))
            self._complete = True
            return
        whole_streams = [_whole_codestream(source, cs, w) for cs, w in win.windows]
        whole = (need is None and not metadata_only
                 and len(windows) == len(source.codestreams) and all(whole_streams))
        plans = [plan_window(source.codestreams[cs], w) for cs, w in win.windows]
        meta_plan = plan_metadata(source.metadata, self.req.metareq, windows, metadata_only)
        if return_type == JPP_STREAM:
            if need is not None:
                plans = restrict_to_need(plans, need)
            builder = ResponseBuilder(source, plans, model, byte_limit=limit,
                                      server_limit=server_limit, meta_plan=meta_plan,
                                      metadata_only=metadata_only, whole_target=whole,
                                      whole_bins_up_to=WHOLE_BINS_BYTES)
        else:
            tile_plans = [plan_tiles(source.codestreams[p.codestream], p, w)
                          for p, w in zip(plans, whole_streams, strict=True)]
            if need is not None:
                tile_plans = restrict_tiles(tile_plans, need, source.codestreams)
            builder = TileResponseBuilder(source, tile_plans, model, byte_limit=limit,
                                          server_limit=server_limit, meta_plan=meta_plan,
                                          metadata_only=metadata_only, whole_target=whole,
                                          extended=return_type == JPT_EXTENDED)
        self.outcome = builder.outcome
        if key is not None:
            self._recorder = responses.recorder()
            self._cache_key = key
        out = builder.outcome
        for chunk in builder.chunks():
            if out.raised_limit is not None and "JPIP-len" not in reply.headers:
                reply.headers["JPIP-len"] = str(out.raised_limit)
            if out.messages == 0 and asked is not None and model.version == version:
                # Nothing to send (the chunk is the EOR alone): kept for the same request.
                model.complete_for = (asked, version, out.reason, out.bytes_skipped)
            yield chunk
        self._complete = True

    # --- step 5 -------------------------------------------------------------------------------
    def commit(self, chunk: Chunk) -> list[Change]:
        """The changes recording that `chunk` was written (nothing for a stateless request)."""
        if self._recorder is not None:
            self._recorder.add(chunk.data, chunk.records)
        if self.channel is None or not chunk.records:
            return []
        return [ModelChange(tuple(chunk.records))]

    def preempted(self, session: SessionState | None) -> bool:
        """True when a newer request on this channel pre-empts the response being written."""
        if session is None or self.generation is None:
            return False
        ch = session.channels.get(self.channel)
        return ch is not None and ch.generation != self.generation

    def window_change(self) -> bytes:
        """The EOR that ends a response cut short for a newer request (EOR 3)."""
        self._complete = False
        return MessageWriter().eor(EOR.WINDOW_CHANGE)

    # --- step 6 -------------------------------------------------------------------------------
    def finish(self, session: SessionState | None, sent: int, complete: bool) -> list[Change]:
        """The changes once the response is over: `sent` bytes were written, `complete`
        when every chunk was. Keeps a complete response for the next fresh client."""
        saved = self.outcome.bytes_skipped if self.outcome is not None else 0
        if (complete and self._complete and self._recorder is not None
                and self.outcome is not None and self.outcome.raised_limit is None):
            self.machine.responses.put(self._cache_key, self._recorder)
        self._recorder = None
        changes: list[Change] = []
        if self._began:
            changes.append(End(self.channel, sent, saved))
            self._began = False
        req = self.req
        if req.cclose and req.cid is not None and session is not None:
            # Only channels of this session: cclose=* means all of them.
            ids = tuple(session.channels) if req.cclose == ("*",) else tuple(
                c for c in req.cclose if c in session.channels)
            if ids:
                changes.append(CloseChannels(ids))
        return changes


def _whole_codestream(source: Source, cs: int, w: ViewWindow) -> bool:
    """The window covers everything of the codestream: full resolution, region, components
    and layers (after it, the client holds the whole codestream)."""
    ix = source.codestreams[cs]
    siz = ix.siz
    return (not w.empty and w.discard == 0 and w.region == (siz.xosiz, siz.yosiz, siz.xsiz,
                                                             siz.ysiz)
            and len(w.comps) == ix.num_components and w.layers >= ix.max_layers)
