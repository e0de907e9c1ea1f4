"""The one middleware every request goes through, and the hook on every response's headers.

In this order, for every request (the router's 404/405 too):

1. observe: the request's `RequestInfo` (server.logs), its status, duration and bytes counted
   (server.metrics), the response finished here (so the byte count and duration are exact);
2. the real client behind trusted proxies (server.proxy; only when some are configured);
3. errors: an exception becomes its answer and one log line (server.errors);
4. bounds: HTTP/1.x only, the body's size refused up front, the request's deadline
   (server.deadline).

One middleware, not four: each layer is a coroutine and a call per request, and together they
cost more than aiohttp's own request handling of a small answer.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import HttpVersion10, HttpVersion11, web

from server.deadline import DEADLINE_KEY, Deadlines
from server.errors import ServiceUnavailable, error_answer
from server.logs import INFO_KEY, RequestInfo
from server.metrics import Metrics
from server.proxy import TrustedProxies, forwarded_request

TIMEOUT_RETRY_AFTER = 2
_HTTP1 = (HttpVersion10, HttpVersion11)


def request_middleware(metrics: Metrics, deadlines: Deadlines, max_body: int,
                       trusted: TrustedProxies | None = None) -> web.Middleware:
    """The middleware (see the module docstring); `deadlines` must be running (its sweep)."""
    count = metrics.stats.request
    perf_counter = time.perf_counter

    @web.middleware
    async def serve(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        info = RequestInfo(start=perf_counter(), remote=request.remote)
        request[INFO_KEY] = info
        status = 500
        resp: web.StreamResponse | None = None
        try:
            try:
                resp = await _bounded(request if trusted is None
                                      else forwarded_request(request, info, trusted),
                                      handler, deadlines, max_body)
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
            count(status, perf_counter() - info.start,
                  (resp.body_length or request.writer.output_size) if resp is not None else 0)

    return serve


async def _bounded(request: web.Request, handler: web.Handler, deadlines: Deadlines,
                   max_body: int) -> web.StreamResponse:
    """The handler's response within the request's bounds; an exception other than an
    HTTPException becomes its answer (server.errors)."""
    # aiohttp's parser lets "HTTP/2.0" request lines through; only HTTP/1.x is spoken here.
    if request.version not in _HTTP1:
        raise web.HTTPVersionNotSupported(
            text=f"HTTP/{request.version.major}.{request.version.minor} is not supported: "
                 "use HTTP/1.1\n")
    length = request.content_length
    if length is not None and length > max_body:
        # Refused up front, whether or not the handler would have read it.
        raise web.HTTPRequestEntityTooLarge(max_size=max_body, actual_size=length)
    # A streaming handler lifts this deadline once its response has started and then
    # bounds each write instead, so a large response is never cut for its size alone.
    deadline = request[DEADLINE_KEY] = deadlines.start()
    try:
        try:
            resp = await handler(request)
        except BaseException as exc:
            if deadline.cut() and isinstance(exc, asyncio.CancelledError):
                # Not started: 503 + Retry-After. Started: error_answer cuts the connection.
                raise ServiceUnavailable(
                    f"request took longer than {deadlines.seconds:g} s",
                    retry_after=TIMEOUT_RETRY_AFTER) from None
            raise
        finally:
            deadlines.stop(deadline)
        deadline.cut()  # fired as the handler returned: its cancellation is withdrawn
        return resp
    except web.HTTPException:
        raise
    except Exception as exc:
        return error_answer(request, exc)


def response_prepare_hook(metrics: Metrics, cors_origins: Sequence[str]
                          ) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """The app's one on_response_prepare handler: the time to first byte, and the CORS
    headers when CORS is on (so they reach streamed responses and error answers alike).
    What does not depend on the request is computed once."""
    headers_sent = metrics.headers_sent
    if not cors_origins:
        async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
            headers_sent(request, response)

        return on_prepare

    add_cors = cors_headers(cors_origins)

    async def on_prepare_cors(request: web.Request, response: web.StreamResponse) -> None:
        headers_sent(request, response)
        add_cors(request, response)

    return on_prepare_cors


# The JPIP response headers a viewer on another origin may read.
EXPOSED_HEADERS = (
    "JPIP-cnew", "JPIP-tid", "JPIP-qid", "JPIP-fsiz", "JPIP-rsiz", "JPIP-roff", "JPIP-comps",
    "JPIP-layers", "JPIP-len", "JPIP-stream", "JPIP-context", "JPIP-metareq", "JPIP-quality",
    "JPIP-type", "JPIP-mset", "JPIP-cap", "JPIP-pref", "JPIP-handled", "JPIP-roi", "JPIP-srate",
    "WWW-Authenticate",  # why a token was refused (401/403), for a viewer on another origin
)


def cors_headers(origins: Sequence[str]) -> Callable[[web.Request, web.StreamResponse], None]:
    """Adds the CORS headers for `origins` to a response about to be sent."""
    origins = frozenset(origins)
    any_origin = "*" in origins
    exposed = ", ".join(EXPOSED_HEADERS)

    def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        headers = response.headers
        if origin is not None and origin in origins:
            headers["Access-Control-Allow-Origin"] = origin
            headers.add("Vary", "Origin")
        elif any_origin:
            headers["Access-Control-Allow-Origin"] = "*"
        else:
            return  # an origin we do not serve: the browser will refuse, as it should
        headers["Access-Control-Expose-Headers"] = exposed

    return add_cors_headers
