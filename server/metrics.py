"""Prometheus metrics, one registry per application (so tests and several apps never collide).

The observing middleware is the outermost one: it sees every request, including errors and the
router's 404/405, finishes the response itself (so the byte count and duration are exact), and
counts it by status.
"""
from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from server.access import DENIAL_REASONS
from server.logs import INFO_KEY, RequestInfo, request_info

# 1 ms .. 10 s: a cached thumbnail answers in a few ms, a large region in seconds.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INDEX_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The server's metrics. Attribute names are what the rest of the server increments."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "jpip_requests", "HTTP requests answered, by status", ["status"], registry=r)
        self.response_bytes = Counter(
            "jpip_response_bytes", "Bytes written in responses (headers included)", registry=r)
        self.request_duration = Histogram(
            "jpip_request_duration_seconds", "Time from request to the response's end",
            buckets=REQUEST_BUCKETS, registry=r)
        self.time_to_first_byte = Histogram(
            "jpip_time_to_first_byte_seconds", "Time from request to the response headers",
            buckets=REQUEST_BUCKETS, registry=r)
        self.sessions = Gauge("jpip_sessions", "JPIP sessions open", registry=r)
        self.sessions_created = Counter(
            "jpip_sessions_created", "JPIP sessions created", registry=r)
        self.sessions_expired = Counter(
            "jpip_sessions_expired", "JPIP sessions closed for being idle", registry=r)
        self.sessions_evicted = Counter(
            "jpip_sessions_evicted", "JPIP sessions closed to make room", registry=r)
        self.bytes_saved_by_model = Counter(
            "jpip_bytes_saved_by_model",
            "Data-bin bytes not sent because the client's cache model held them", registry=r)
        self.index_cache = Counter(
            "jpip_index_cache", "Index cache lookups by result", ["result"], registry=r)
        for result in ("hit", "miss", "build"):
            self.index_cache.labels(result=result)  # export zeros before the first lookup
        self.index_build_seconds = Histogram(
            "jpip_index_build_seconds", "Time to index a file", buckets=INDEX_BUCKETS,
            registry=r)
        self.response_cache = Counter(
            "jpip_response_cache", "Lookups of responses kept for fresh clients, by result",
            ["result"], registry=r)
        for result in ("hit", "miss"):
            self.response_cache.labels(result=result)
        self.auth_denials = Counter(
            "jpip_auth_denials", "Requests refused by access control, by reason", ["reason"],
            registry=r)
        for reason in DENIAL_REASONS:
            self.auth_denials.labels(reason=reason)
        self.session_model_resets = Counter(
            "jpip_session_model_resets", "Session cache models reset for exceeding the cap",
            registry=r)

    # ----- hooks for the session store and the index cache (thread-safe) -----

    def session_event(self, kind: str) -> None:
        """SessionStore events: created, expired, evicted, closed, model_reset."""
        if kind == "created":
            self.sessions_created.inc()
            self.sessions.inc()
        elif kind in ("expired", "evicted", "closed"):
            self.sessions.dec()
            if kind == "expired":
                self.sessions_expired.inc()
            elif kind == "evicted":
                self.sessions_evicted.inc()
        elif kind == "model_reset":
            self.session_model_resets.inc()

    def index_event(self, kind: str, seconds: float) -> None:
        """IndexCache events: hit, miss (with the wait), build (with the build time)."""
        if kind in ("hit", "miss", "build"):
            self.index_cache.labels(result=kind).inc()
        if kind == "build":
            self.index_build_seconds.observe(seconds)

    def auth_denied(self, reason: str) -> None:
        """A request refused by access control (reason: one of access.DENIAL_REASONS)."""
        self.auth_denials.labels(reason=reason).inc()

    def bytes_saved(self, count: int) -> None:
        """Bytes a client's cache model spared us from sending."""
        if count > 0:
            self.bytes_saved_by_model.inc(count)

    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    def middleware(self) -> web.Middleware:
        """Outermost middleware: request info, status counts, durations, bytes."""

        @web.middleware
        async def observe(request: web.Request, handler: web.Handler) -> web.StreamResponse:
            info = RequestInfo(start=time.perf_counter(), remote=request.remote)
            request[INFO_KEY] = info
            status = 500
            resp: web.StreamResponse | None = None
            try:
                try:
                    resp = await handler(request)
                except web.HTTPException as exc:
                    # What aiohttp would do after us, done here so it is counted and timed.
                    resp = web.Response(status=exc.status, reason=exc.reason, text=exc.text,
                                        headers=exc.headers)
                status = resp.status
                if not resp.prepared:
                    await resp.prepare(request)
                await resp.write_eof()
                return resp
            except ConnectionError:
                # Client gone while we finished the response; aiohttp will notice and drop it.
                if resp is not None:
                    return resp
                raise
            finally:
                self.requests.labels(status=str(status)).inc()
                self.request_duration.observe(time.perf_counter() - info.start)
                if resp is not None:
                    self.response_bytes.inc(resp.body_length or request.writer.output_size)

        return observe

    async def on_response_prepare(self, request: web.Request,
                                  response: web.StreamResponse) -> None:
        """Signal handler: the response's headers are being sent now."""
        info = request_info(request)
        if info is None:
            return
        now = time.perf_counter()
        info.response = response
        info.first_byte = now
        self.time_to_first_byte.observe(now - info.start)
