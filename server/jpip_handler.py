"""The JPIP request path: query -> typed request -> channel/session -> windows -> JPP-stream.

This is the only place where the protocol meets aiohttp. Responses are streamed chunk by chunk;
a chunk's bytes are recorded in the session's cache model only after its write returned, so a
client that goes away keeps a model of what it really received.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from cache.index_cache import IndexCache
from cache.model import CacheModel
from cache.response_cache import ResponseCache
from cache.sessions import Channel, OverCapacity, SessionStore, UnknownChannel
from jpip.errors import RequestError
from jpip.jpp import EOR, MessageWriter
from jpip.modelspec import apply_model, restrict_to_need
from jpip.plan import plan_window
from jpip.request import JPIPRequest, parse_form_body, parse_query
from jpip.respond import Chunk, ResponseBuilder
from jpip.window import resolve_window
from server.deadline import lift_deadline
from server.errors import ServiceUnavailable
from server.frame_indexing import index_requested_frames
from server.logs import set_request_cid
from server.targets import resolve_target

log = logging.getLogger("jpip.request")

JPP_TYPE = "image/jpp-stream"
STATE_KEY = web.AppKey("jpip_state", object)
QID_WAIT = 2.0  # seconds a request waits for lower qids on its channel
SWEEP_PERIOD = 30.0  # seconds between sweeps for idle sessions (at most)


@dataclass
class JPIPState:
    root: Path
    jpip_path: str
    lenient: bool
    index_cache: IndexCache
    sessions: SessionStore
    max_response_bytes: int
    responses: ResponseCache
    write_timeout: float = 60.0
    metrics: object | None = None


def setup_jpip(app: web.Application, config, metrics=None) -> JPIPState:
    """Creates the JPIP state (index cache, sessions) for an app built from `config`, with a
    background task that expires idle sessions while the app runs."""

    def index_event(kind: str, seconds: float) -> None:
        if metrics is not None:
            metrics.index_event(kind, seconds)

    def session_event(kind: str) -> None:
        if metrics is not None:
            metrics.session_event(kind)

    state = JPIPState(
        root=Path(config.root).resolve(),
        jpip_path=config.jpip_path,
        lenient=config.lenient,
        index_cache=IndexCache(config.effective_index_cache_dir(), config.index_cache_entries,
                               on_event=index_event),
        sessions=SessionStore(max_sessions=config.max_sessions,
                              idle_timeout=config.session_idle_timeout,
                              max_model_bytes=config.max_session_bytes,
                              on_event=session_event, cid_prefix=config.instance_id),
        max_response_bytes=config.max_response_bytes,
        responses=ResponseCache(config.response_cache_bytes),
        write_timeout=config.request_timeout,
        metrics=metrics,
    )
    app[STATE_KEY] = state

    async def sweep_sessions(app: web.Application) -> AsyncIterator[None]:
        # Idle sessions also expire when nobody opens a new one.
        period = min(max(state.sessions.idle_timeout / 4, 0.05), SWEEP_PERIOD)

        async def sweep() -> None:
            while True:
                await asyncio.sleep(period)
                state.sessions.expire()

        task = asyncio.create_task(sweep(), name="jpip-session-sweeper")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close_state(app: web.Application) -> None:
        # on_cleanup runs after in-flight requests finished (on_shutdown runs before).
        state.index_cache.close()
        state.sessions.close_all()

    app.cleanup_ctx.append(sweep_sessions)
    app.on_cleanup.append(close_state)
    return state


def _state(request: web.Request) -> JPIPState:
    state = request.app.get(STATE_KEY)
    if state is None:
        raise web.HTTPInternalServerError(text="JPIP state not set up\n")
    return state


async def _read_request(request: web.Request, lenient: bool) -> JPIPRequest:
    if request.method == "POST":
        body = await request.read()
        query = request.rel_url.raw_query_string
        if query and body:
            raise RequestError(None, "fields in both the URL and the POST body")
        return parse_form_body(body, lenient=lenient) if body else parse_query(query,
                                                                                lenient=lenient)
    return parse_query(request.rel_url.raw_query_string, lenient=lenient)


def _resolve(state: JPIPState, name: str) -> Path:
    return resolve_target(state.root, name)


def _codestreams(req: JPIPRequest, count: int) -> tuple[list[int], str | None]:
    """The codestreams a request names (stream=, context=jpxl<...>), default 0, and the
    JPIP-stream value when the served set differs from the requested one."""
    ranges = list(req.stream or ())
    # JPX compositing layers map one to one onto codestreams in the files we serve.
    if req.context is not None:
        ranges.extend(req.context.jpxl_layers)
    if not ranges:
        return [0], None
    served: set[int] = set()
    clipped = False
    for lo, hi, step in ranges:
        top = count - 1 if hi is None else hi
        if top > count - 1 or lo > count - 1:
            clipped = True
        served.update(range(lo, min(top, count - 1) + 1, max(step or 1, 1)))
    out = sorted(served)
    return out, (",".join(str(c) for c in out) if clipped else None)


async def handle_jpip(request: web.Request, target: str | None = None) -> web.StreamResponse:
    """Serve one JPIP request; `target` is the path form's target, if any."""
    state = _state(request)
    req = await _read_request(request, state.lenient)
    headers: dict[str, str] = {"Content-Type": JPP_TYPE, "Cache-Control": "no-cache"}
    if req.qid is not None:
        headers["JPIP-qid"] = str(req.qid)
    if req.upload:
        raise RequestError("upload", "uploads are not supported", status=501)
    _check_type(req)

    channel: Channel | None = None
    sessions = state.sessions
    if req.cclose and not req.cid and req.cclose != ("*",):
        # cclose alone names the channels to close.
        sessions.close(list(req.cclose))
        return _eor_only(headers, EOR.WINDOW_DONE)
    if req.cid:
        try:
            channel = sessions.get(req.cid)
        except UnknownChannel as e:
            raise RequestError("cid", str(e), status=503) from e
    name = target if target is not None else req.target
    if channel is not None:
        path = Path(channel.session.target)
        if name is not None and _resolve(state, name) != path:
            raise RequestError("cid", "the channel belongs to another target")
    else:
        if name is None:
            raise RequestError("target", "no target: give target=, a path, or cid=")
        path = _resolve(state, name)

    source = await state.index_cache.aget(path)
    await index_requested_frames(source, req)  # a DICOM object's frames, off the event loop
    current_tid = source.identity.target_id
    tid_mismatch = req.tid is not None and req.tid not in ("0", current_tid)
    if req.tid is not None or req.cnew:
        headers["JPIP-tid"] = current_tid

    if req.cnew:
        transports = [t.strip() for t in req.cnew]
        if "http" not in transports:
            raise RequestError("cnew", "only the http transport is offered", status=501)
        if channel is not None:
            channel = sessions.add_channel(channel.session)
        else:
            try:
                channel = sessions.open(str(path), current_tid)
            except OverCapacity as e:
                raise ServiceUnavailable(e.reason, retry_after=e.retry_after) from e
        headers["JPIP-cnew"] = (f"cid={channel.cid},path={state.jpip_path.lstrip('/')},"
                                "transport=http")
    if channel is not None:
        set_request_cid(request, channel.cid)

    if channel is not None and channel.session.target_id != current_tid:
        # The file changed on disk: the session's model describes another file.
        channel.session.model = CacheModel()
        channel.session.target_id = current_tid
        headers["JPIP-tid"] = current_tid

    if channel is None:
        return await _serve(request, state, req, source, None, headers, tid_mismatch)

    # One request at a time per channel, in qid order; a newer request pre-empts older ones
    # unless it says wait=yes.
    if channel.lock is None:
        channel.lock = asyncio.Lock()
    if not req.wait:
        channel.generation += 1
    my_generation = channel.generation
    channel.busy += 1
    try:
        if req.qid is not None:
            deadline = time.monotonic() + QID_WAIT
            while channel.last_qid >= 0 and req.qid > channel.last_qid + 1 \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        async with channel.lock:
            if req.qid is not None:
                channel.last_qid = max(channel.last_qid, req.qid)
            if channel.generation != my_generation and not req.wait:
                return _eor_only(headers, EOR.WINDOW_CHANGE, status=202)
            resp = await _serve(request, state, req, source, channel, headers, tid_mismatch,
                                my_generation)
        if req.cclose:
            ids = list(channel.session.channels) if req.cclose == ("*",) else list(req.cclose)
            sessions.close(ids)
        return resp
    finally:
        channel.busy -= 1


def _check_type(req: JPIPRequest) -> None:
    if not req.type:
        return
    for t in req.type:
        if t == "jpp-stream":
            return
    raise RequestError("type", f"cannot serve {','.join(req.type)}; this server sends "
                       "jpp-stream", status=415)


def _eor_only(headers: dict[str, str], reason: int, status: int = 200) -> web.Response:
    return web.Response(status=status, body=MessageWriter().eor(reason), headers=headers)


async def _serve(request: web.Request, state: JPIPState, req: JPIPRequest, source,
                 channel: Channel | None, headers: dict[str, str], tid_mismatch: bool,
                 generation: int = 0) -> web.StreamResponse:
    streams, stream_changed = _codestreams(req, len(source.codestreams))
    if stream_changed is not None:
        headers["JPIP-stream"] = stream_changed
    windows = []
    for n, cs in enumerate(streams):
        ix = source.codestreams[cs]
        fsiz = (req.fsiz.fx, req.fsiz.fy, req.fsiz.round) if req.fsiz is not None else None
        window = resolve_window(ix, cs, fsiz=fsiz, roff=req.roff, rsiz=req.rsiz,
                                comps=req.comps, layers=req.layers)
        if n == 0:
            headers.update(window.changed)
        windows.append((ix, window))

    # A stateless request's model lives for this response only: nothing to record in it.
    model = channel.session.model if channel is not None else CacheModel()
    if req.model and not tid_mismatch:
        apply_model(req.model, source, model, streams[0] if streams else 0)
    use_need = bool(req.need) and not tid_mismatch

    limit = req.len
    if limit is None or limit > state.max_response_bytes:
        limit = state.max_response_bytes if limit is None else min(limit, state.max_response_bytes)
    metadata_only = (req.metareq is not None and req.metareq.metadata_only) or req.len == 0

    # A client holding nothing gets what every such client gets: maybe a kept response.
    key = None
    if state.responses.enabled and not use_need and model.is_empty():
        key = (source.identity.target_id, limit, metadata_only,
               tuple((w.codestream, w.discard, w.region, w.comps, w.layers) for _, w in windows))
    cached = state.responses.get(key) if key is not None else None
    if key is not None and state.metrics is not None:
        state.metrics.response_cache.labels(result="miss" if cached is None else "hit").inc()
    builder = recorder = None
    if cached is not None:
        chunks = (Chunk(data, list(updates)) for data, updates in cached.chunks)
    else:
        plans = [plan_window(ix, w) for ix, w in windows]
        if use_need:
            plans = restrict_to_need(req.need, source, plans, streams[0] if streams else 0)
        builder = ResponseBuilder(source, plans, model, byte_limit=limit, send_metadata=True,
                                  metadata_only=metadata_only)
        chunks = builder.chunks()
        if key is not None:
            recorder = state.responses.recorder()
    skipped = builder.outcome.bytes_skipped if builder is not None else 0

    resp = web.StreamResponse(status=200, headers=headers)
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    lift_deadline(request)  # from here on each write is bounded instead
    delivered = 0
    complete = False
    try:
        for chunk in chunks:
            if channel is not None and channel.generation != generation and chunk.updates:
                # A newer request arrived: end this one at a message boundary (EOR 3).
                await resp.write(MessageWriter().eor(EOR.WINDOW_CHANGE))
                break
            async with asyncio.timeout(state.write_timeout):
                await resp.write(chunk.data)
            delivered += len(chunk.data)
            if recorder is not None:
                recorder.add(chunk.data, chunk.updates)
            if chunk.updates and channel is not None:
                model.commit(chunk.updates)
        else:
            complete = True
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        log.info("client went away after %d bytes", delivered)
        raise
    finally:
        if channel is not None:
            channel.session.bytes_sent += delivered
            channel.session.bytes_saved += skipped
            state.sessions.check_model_size(channel.session)
        if state.metrics is not None:
            state.metrics.bytes_saved(skipped)
    if recorder is not None and complete:
        state.responses.put(key, recorder)
    return resp
