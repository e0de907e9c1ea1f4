"""The JPIP endpoint over HTTP: read the request, feed the protocol machine, write what it plans.

The protocol itself (channels, sessions, tid, qid order, pre-emption, model/need, len, what a
cache model records) is `jpip.machine`'s. This module does the I/O around it: it parses the
HTTP request, resolves the target under the image root and loads its index, loads and stores
session state through the `SessionStore`, waits while a channel request's turn has not come
(on an asyncio.Condition per channel, woken by every change of that channel), streams the
chunks and commits each one once its write returned, so a client that goes away keeps a model
of what it really received. With access control on (server/access.py), the request's token is
checked once it is parsed, the target it names before it is looked up, and a session's
requests are kept to the subject that opened it; off, none of that costs anything.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from aiohttp import HttpVersion11, web

from cache import isolation
from cache.index_cache import IndexCache
from cache.response_cache import ResponseCache
from cache.sessions import (
    Change,
    CloseChannels,
    OverCapacity,
    SessionState,
    SessionStore,
    StoreUnavailable,
    TurnTaken,
    new_channel_id,
)
from codestream.errors import FileChanged
from jpip.errors import RequestError
from jpip.machine import Exchange, JPIPMachine, Reply, Turn, TurnKind
from jpip.request import JPIPRequest, parse_form_body, parse_query
from server.access import Guard, owner_denied
from server.deadline import lift_deadline
from server.errors import ServiceUnavailable
from server.frame_indexing import index_requested_frames
from server.logs import set_request_cid
from server.session_backend import make_session_store
from server.targets import TargetCache, TargetError
from server.tokens import Principal

log = logging.getLogger("jpip.request")

JPP_TYPE = "image/jpp-stream"
STATE_KEY = web.AppKey("jpip_state", object)
QID_WAIT = 2.0  # seconds a request waits for a missing lower qid on its channel
SWEEP_PERIOD = 30.0  # seconds between sweeps for idle sessions (at most)
WHOLE_BYTES = 1 << 20  # responses up to this size go out in one write (Content-Length)
# A write that leaves less than this in the transport's buffer never waits for the client
# (asyncio's default high-water mark is 64 KiB): it needs no write timeout.
NO_WAIT_BYTES = 16 << 10


class ChannelTurns:
    """The conditions requests wait on for their turn, one per channel while any waits."""

    def __init__(self) -> None:
        self._waiting: dict[str, list] = {}  # cid -> [condition, waiters]

    @contextlib.contextmanager
    def condition(self, cid: str):
        entry = self._waiting.get(cid)
        if entry is None:
            entry = self._waiting[cid] = [asyncio.Condition(), 0]
        entry[1] += 1
        try:
            yield entry[0]
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._waiting[cid]

    @property
    def waiting(self) -> bool:
        """True while any request waits for its turn (else `notify` has nobody to wake)."""
        return bool(self._waiting)

    async def notify(self, cids: Iterable[str | None]) -> None:
        if not self._waiting:
            return
        for cid in cids:
            entry = self._waiting.get(cid)
            if entry is not None:
                async with entry[0]:
                    entry[0].notify_all()


@dataclass
class JPIPState:
    root: Path
    jpip_path: str
    lenient: bool
    index_cache: IndexCache
    sessions: SessionStore
    machine: JPIPMachine
    responses: ResponseCache
    write_timeout: float = 60.0
    metrics: object | None = None
    guard: Guard | None = None  # access control (None: off)
    turns: ChannelTurns = field(default_factory=ChannelTurns)
    targets: TargetCache | None = None

    def __post_init__(self) -> None:
        if self.targets is None:
            self.targets = TargetCache(self.root)


def setup_jpip(app: web.Application, config, metrics=None,
               guard: Guard | None = None) -> JPIPState:
    """Creates the JPIP state (index cache, sessions, the machine) for an app built from
    `config`, with a background task that expires idle sessions while the app runs."""

    def index_event(kind: str, seconds: float) -> None:
        if metrics is not None:
            metrics.index_event(kind, seconds)

    responses = ResponseCache(config.response_cache_bytes)
    state = JPIPState(
        root=Path(config.root).resolve(),
        jpip_path=config.jpip_path,
        lenient=config.lenient,
        index_cache=IndexCache(config.effective_index_cache_dir(), config.index_cache_entries,
                               on_event=index_event),
        sessions=make_session_store(config, metrics),
        machine=JPIPMachine(jpip_path=config.jpip_path,
                            max_response_bytes=config.max_response_bytes, responses=responses,
                            # channel ids name the server (--instance-id) for a routing proxy
                            new_id=partial(new_channel_id, config.instance_id)),
        responses=responses,
        write_timeout=config.request_timeout,
        metrics=metrics,
        guard=guard,
    )
    app[STATE_KEY] = state

    async def sweep_sessions(app: web.Application) -> AsyncIterator[None]:
        # A shared store tells this process of changes other processes make to channels that
        # requests here wait on.
        state.sessions.on_remote_change(lambda cid: state.turns.notify([cid]))
        await state.sessions.start()
        # Idle sessions also expire when nobody opens a new one.
        period = min(max(state.sessions.idle_timeout / 4, 0.05), SWEEP_PERIOD)

        async def sweep() -> None:
            while True:
                await asyncio.sleep(period)
                with contextlib.suppress(StoreUnavailable):  # logged by the store; next time
                    await state.sessions.expire()

        task = asyncio.create_task(sweep(), name="jpip-session-sweeper")
        try:
            yield
        finally:  # also when asyncio closes this context, never cleaned up (Ctrl-C at start)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close_state(app: web.Application) -> None:
        # on_cleanup runs after in-flight requests finished (on_shutdown runs before).
        state.index_cache.close()
        isolation.shutdown()
        await state.sessions.close_all()

    async def start_indexers(app: web.Application) -> None:
        # Files are indexed in child processes (cache.isolation); started now, so that the
        # first request does not wait for them. Where none can start (a sandbox without
        # fork), indexing goes on in this process, with the danger said once.
        try:
            await asyncio.to_thread(isolation.warm)
        except Exception as e:  # noqa: BLE001 - any failure to start them is reported alike
            log.warning("cannot start indexing processes (%s): files are indexed in the "
                        "server's process, where a file rewritten in place while it is "
                        "indexed can end it", e)
            state.index_cache.index_in_process()

    app.on_startup.append(start_indexers)
    app.cleanup_ctx.append(sweep_sessions)
    app.on_cleanup.append(close_state)
    return state


def _state(request: web.Request) -> JPIPState:
    state = request.app.get(STATE_KEY)
    if state is None:
        raise web.HTTPInternalServerError(text="JPIP state not set up\n")
    return state


_parsed: OrderedDict[tuple[str, bool], JPIPRequest] = OrderedDict()
QUERIES_KEPT = 1024      # parsed requests kept by query string (a JPIPRequest is immutable)
QUERY_KEPT_CHARS = 1024  # longer queries (a long model=) are parsed every time


def _parse_query(query: str, lenient: bool) -> JPIPRequest:
    """parse_query, with the recent queries' results kept: a repeated request (a viewer's
    thumbnail, a window asked again) is not parsed again. Errors are not kept."""
    if len(query) > QUERY_KEPT_CHARS:
        return parse_query(query, lenient=lenient)
    key = (query, lenient)
    req = _parsed.get(key)
    if req is None:
        req = _parsed[key] = parse_query(query, lenient=lenient)
        if len(_parsed) > QUERIES_KEPT:
            _parsed.popitem(last=False)
    return req


async def _read_request(request: web.Request, lenient: bool) -> JPIPRequest:
    if request.method == "POST":
        body = await request.read()
        query = request.rel_url.raw_query_string
        if query and body:
            raise RequestError(None, "fields in both the URL and the POST body")
        if not body:
            return _parse_query(query, lenient)
        # The body is bounded by --max-request-body, and a session's restated model (sent as a
        # body once it outgrows a URL) may be far longer than the per-field cap of a query.
        return parse_form_body(body, lenient=lenient, max_field_length=len(body))
    return _parse_query(request.rel_url.raw_query_string, lenient)


def _target_path(state: JPIPState, ex: Exchange, path_target: str | None,
                 session: SessionState | None, principal: Principal | None) -> str | None:
    """The real path of the file a request is for. `target=` wins over the URL path
    (clients that send every request to one script URL, e.g. OpenJPEG's viewer at
    /myFCGI?target=x.jp2); a channel request whose path names no file is served from its
    session's target. With access control on, the name must be allowed before it is looked
    up, and so must the file it leads to."""
    path = _named_target(state, ex, path_target, principal)
    if path is None and session is not None:
        path = session.target
    if principal is not None and path is not None:
        state.guard.check_path(principal, path)
    return path


PLUS_HINT = "'+' is a literal plus in JPIP requests; encode a space as %20"


def _named_target(state: JPIPState, ex: Exchange, path_target: str | None,
                  principal: Principal | None) -> str | None:
    if ex.target is not None:
        if principal is not None:
            state.guard.check_target(principal, ex.target)
        try:
            return state.targets.resolve(ex.target)
        except TargetError as e:
            if e.status == 404 and "+" in ex.target:
                # HTML forms, and clients that encode like them, send a space as '+'.
                raise TargetError(f"{e.reason} ({PLUS_HINT})", 404) from None
            raise
    if path_target is not None:
        if principal is not None:
            state.guard.check_target(principal, path_target)
        try:
            return state.targets.resolve(path_target)
        except TargetError as e:
            if ex.cid is None:
                raise TargetError(
                    f"{e.reason}: {path_target[:200]!r} is not a file served here; request "
                    f"{state.jpip_path}?target=<file>, or /<file> for a file under the root",
                    404) from None
    return None


async def _source(state: JPIPState, path: str):
    try:
        # resolve_target returns real paths; a session's target is one.
        return await state.index_cache.aget(path, resolved=True)
    except FileNotFoundError:
        raise TargetError("no such target (it went away)", 404) from None
    except PermissionError:
        raise TargetError("the target cannot be read", 403) from None


async def _held_source(state: JPIPState, path: str, held: list):
    """The target's source, held open until the answer is written (Source.in_use; its
    context manager is appended to `held`, whose owner exits it). A source closed by another
    request between the lookup and the hold (its file changed) is looked up again: the cache
    then has the new file's."""
    for attempt in range(3):
        # The usual case, an index in memory of an unchanged file, needs no await.
        source = state.index_cache.cached(path) or await _source(state, path)
        use = source.in_use()
        try:
            use.__enter__()
        except FileChanged:
            if attempt == 2:
                raise
            continue
        held.append(use)
        return source
    raise AssertionError("unreachable")


def _channels_touched(channel: str | None, changes: Iterable[Change]) -> list[str | None]:
    out = [channel]
    for change in changes:
        if type(change) is CloseChannels:
            out.extend(change.cids)
    return out


async def handle_jpip(request: web.Request, target: str | None = None) -> web.StreamResponse:
    """Serve one JPIP request; `target` is the path form's target (the URL path), if any."""
    # The target's file stays open until the answer is written, even if it is replaced,
    # deleted or evicted from the index cache meanwhile (Source.in_use).
    held: list = []
    try:
        return await _handle_jpip(request, target, held)
    finally:
        for use in held:
            use.__exit__(None, None, None)


async def _handle_jpip(request: web.Request, target: str | None,
                       held: list) -> web.StreamResponse:
    state = _state(request)
    req = await _read_request(request, state.lenient)
    principal = None
    if state.guard is not None:  # access control: the one check when it is off
        principal = state.guard.principal(request, req.access_token)
    ex = state.machine.exchange(req, principal.subject if principal is not None else None)
    store = state.sessions
    session = await store.load(ex.cid) if ex.cid is not None else None
    if session is not None and session.owner != ex.owner:
        raise owner_denied(state.guard)  # another subject's session (cclose too)
    source = path = None
    if not ex.close_only:
        path = _target_path(state, ex, target, session, principal)
        if path is not None:
            source = await _held_source(state, path, held)
            if not source.complete:  # what a lazy index lacks, off the loop
                await index_requested_frames(source, req)
    ex.bind(session, source, path)

    if ex.opening is not None:
        try:
            session = await store.open(ex.opening)
        except OverCapacity as e:
            raise ServiceUnavailable(e.reason, retry_after=e.retry_after) from e
    elif ex.arrival:
        await store.apply(session, ex.arrival)
        if state.turns.waiting:  # a waiting request may now be superseded
            await state.turns.notify([ex.channel])
    if ex.channel is not None:
        set_request_cid(request, ex.channel)
    if ex.queued:
        turn = ex.turn(session)  # the usual case: its turn has come (no wait, no reload)
        if turn.kind not in _NOW or not await _record_turn(state, ex, session, turn):
            turn, session = await _await_turn(state, ex, session)  # its changes are recorded
        if ex.req.qid is not None and state.turns.waiting:
            await state.turns.notify([ex.channel])  # its qid is taken: the next may go
        if turn.kind is TurnKind.PREEMPTED:
            return await _answer(request, state, ex, ex.preempted_reply(session), None)
    if not ex.serving:
        # Stateless, or cclose alone: no channel of ours to hold while writing.
        reply = ex.reply(session)
        if reply.changes and session is not None:
            await store.apply(session, reply.changes)
            if state.turns.waiting:
                await state.turns.notify(_channels_touched(None, reply.changes))
        return await _answer(request, state, ex, reply, None)

    # The channel is ours (busy) from here: whatever happens, free it and wake the next.
    progress = _Progress()
    reply = None
    try:
        reply = ex.reply(session)
        if reply.changes:
            await store.apply(session, reply.changes)
        return await _stream(request, state, ex, reply, session, progress)
    finally:
        changes = ex.finish(session, progress.sent, progress.complete)
        await store.apply(session, changes)
        if state.turns.waiting:
            touched = [*(reply.changes if reply is not None else ()), *changes]
            await state.turns.notify(_channels_touched(ex.channel, touched))
        _observe(state, ex, reply)


_NOW = (TurnKind.GO, TurnKind.PREEMPTED)  # turns that need no wait


async def _await_turn(state: JPIPState, ex: Exchange,
                      session: SessionState) -> tuple[Turn, SessionState]:
    """Waits until the machine says this channel request may go (or was superseded), and
    records that turn; called once its first turn said wait (or was taken by another
    process). The session is loaded again after every wake-up, as a store shared by
    processes requires; such a store also wakes us for changes made elsewhere, and we reload
    every `poll_interval` anyway (a missed wake-up, a dead holder's lease running out)."""
    store = state.sessions
    poll = store.poll_interval
    loop = asyncio.get_running_loop()
    deadline = loop.time() + QID_WAIT
    waited_out = False
    await store.flush(session)  # this request's arrival must be seen while it waits
    async with store.watching(ex.channel):
        with state.turns.condition(ex.channel) as cond:
            async with cond:
                while True:
                    session = await store.load(ex.cid)
                    turn = _turn(ex, session, waited_out)
                    if turn.kind is TurnKind.WAIT_BUSY:
                        await _wait(cond, poll)
                    elif turn.kind is TurnKind.WAIT_QID:
                        remaining = deadline - loop.time()
                        if remaining <= 0 or not await _wait(
                                cond, remaining if poll is None else min(poll, remaining)):
                            # The missing qid may never come: serve anyway once it is late.
                            waited_out = loop.time() >= deadline
                    elif await _record_turn(state, ex, session, turn):
                        return turn, session


async def _record_turn(state: JPIPState, ex: Exchange, session: SessionState,
                       turn: Turn) -> bool:
    """Records a GO or PREEMPTED turn; False when a shared store gave the channel to a request
    of another process first (then this one waits again)."""
    try:
        await state.sessions.apply(session, turn.changes)
    except TurnTaken:
        ex.turn_taken()
        return False
    return True


async def _wait(cond: asyncio.Condition, timeout: float | None) -> bool:
    """Waits for a change of the channel; False when `timeout` seconds passed without one."""
    if timeout is None:
        await cond.wait()
        return True
    try:
        async with asyncio.timeout(timeout):
            await cond.wait()
    except TimeoutError:
        return False
    return True


def _turn(ex: Exchange, session: SessionState | None, waited_out: bool) -> Turn:
    if session is None:  # closed or expired while the request waited
        raise RequestError("cid", "the channel was closed", 503, headers=dict(ex.headers))
    return ex.turn(session, waited_out)


@dataclass
class _Progress:
    sent: int = 0            # bytes written
    complete: bool = False   # every chunk was written


async def _answer(request: web.Request, state: JPIPState, ex: Exchange, reply: Reply,
                  session: SessionState | None) -> web.StreamResponse:
    progress = _Progress()
    try:
        return await _stream(request, state, ex, reply, session, progress)
    finally:
        ex.finish(session, progress.sent, progress.complete)
        _observe(state, ex, reply)


async def _stream(request: web.Request, state: JPIPState, ex: Exchange, reply: Reply,
                  session: SessionState | None, progress: _Progress) -> web.StreamResponse:
    """Writes the reply's chunks; with a session, each chunk's model records are committed
    once its write returned.

    A response of up to WHOLE_BYTES (a thumbnail, a pan, a window; an EOR alone) is built
    whole and goes out with its headers and Content-Length in one write; a larger one is
    streamed in chunked coding, chunk by chunk (the headers are sent with the first)."""
    chunks = reply.chunks()
    try:
        held = [next(chunks)]  # builds the first chunk: the headers are final after it
        size = len(held[0].data)
        whole = True
        while size <= WHOLE_BYTES:
            chunk = next(chunks, None)
            if chunk is None:
                break
            held.append(chunk)
            size += len(chunk.data)
        else:
            whole = False
        headers = {"Content-Type": reply.content_type, "Cache-Control": "no-cache",
                   **reply.headers}
        if whole:
            return await _send_whole(request, state, ex, reply, session, progress, headers,
                                     held)
        resp = web.StreamResponse(status=reply.status, headers=headers)
        if request.version == HttpVersion11:
            resp.enable_chunked_encoding()
        else:
            # HTTP/1.0 has no chunked coding: the body ends when the connection closes, even
            # when the client asked to keep it alive (it could not tell where the body ends).
            resp.force_close()
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        lift_deadline(request)  # from here on each write is bounded instead
        store = state.sessions
        pending = iter(held)
        chunk = next(pending)
        while chunk is not None:
            if chunk.records and ex.preempted(session):
                # A newer request arrived: end this one at a message boundary (EOR 3).
                await resp.write(ex.window_change())
                break
            await _bounded(request, state, progress, resp.write(chunk.data))
            progress.sent += len(chunk.data)
            committed = ex.commit(chunk)
            if committed and session is not None:
                await store.apply(session, committed)
            chunk = next(pending, None) or next(chunks, None)
        else:
            progress.complete = True
        await resp.write_eof()
        return resp
    except (ConnectionResetError, asyncio.CancelledError):
        log.info("client went away after %d bytes", progress.sent)
        raise
    finally:
        chunks.close()


async def _send_whole(request: web.Request, state: JPIPState, ex: Exchange, reply: Reply,
                      session: SessionState | None, progress: _Progress,
                      headers: dict[str, str], held: list) -> web.StreamResponse:
    """One write for the whole response; its records are committed once it returned."""
    if any(c.records for c in held) and ex.preempted(session):
        # A newer request arrived while this one was built: the EOR 3 alone.
        body, held = ex.window_change(), []
    else:
        body = held[0].data if len(held) == 1 else b"".join(c.data for c in held)
    resp = web.Response(status=reply.status, headers=headers, body=body)
    if request.version != HttpVersion11:
        resp.force_close()  # HTTP/1.0: the body ends with the connection, as when streamed
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    lift_deadline(request)
    transport = request.transport
    if transport is not None and transport.get_write_buffer_size() + len(body) < NO_WAIT_BYTES:
        await resp.write_eof()  # the transport takes it all without pausing: nothing to bound
    else:
        await _bounded(request, state, progress, resp.write_eof())
    progress.sent = len(body) if held else 0
    progress.complete = bool(held)
    changes = []
    for chunk in held:
        changes.extend(ex.commit(chunk))
    if changes and session is not None:
        await state.sessions.apply(session, changes)
    return resp


async def _bounded(request: web.Request, state: JPIPState, progress: _Progress,
                   write: Awaitable[None]) -> None:
    """Awaits one write, for at most the write timeout: a client that stops reading is gone."""
    try:
        async with asyncio.timeout(state.write_timeout):
            await write
    except TimeoutError:
        if request.transport is not None:
            request.transport.close()
        raise ConnectionResetError(f"client read nothing for {state.write_timeout:g} s "
                                   f"after {progress.sent} bytes") from None


def _observe(state: JPIPState, ex: Exchange, reply: Reply | None) -> None:
    """Metrics of one answer, read once it is over (the bytes saved are known only then)."""
    metrics = state.metrics
    if metrics is None:
        return
    if ex.outcome is not None and ex.outcome.bytes_skipped:
        metrics.bytes_saved(ex.outcome.bytes_skipped)
    if reply is not None and reply.cache_result is not None:
        metrics.response_cache_lookup(reply.cache_result)
