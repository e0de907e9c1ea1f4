"""The aiohttp application: routes, the request middleware, CORS, health and metrics.

Every request goes through one middleware (server.middleware: metrics and request info,
the real client behind trusted proxies, errors, bounds and deadline); the response's headers
through one on_response_prepare hook (time to first byte, and CORS headers when CORS is on, so
they reach streamed responses and error answers alike).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

# numpy imports numpy.ma the first time np.unique runs (numpy 2): 20-45 ms that a new
# server's first answer would wait for (metadata requests use np.unique).
import numpy.ma  # noqa: F401
from aiohttp import web

from server.access import GUARD_KEY, create_guard
from server.config import ServerConfig, load_config
from server.deadline import Deadlines
from server.dicom_http import dicom_json
from server.jpip_handler import STATE_KEY, handle_jpip, setup_jpip
from server.logs import ACCESS_FLUSH_PERIOD, ACCESS_LOGGER, AccessLogger, flush_logs
from server.metrics import STATS_SHARE_PERIOD, Metrics, multiprocess_dir
from server.middleware import EXPOSED_HEADERS, request_middleware, response_prepare_hook
from server.proxy import TrustedProxies
from server.viewer import root_or_jpip, setup_viewer
from server.workers import WORKER_ENV

log = logging.getLogger("jpip.server")

__all__ = ["CONFIG_KEY", "METRICS_KEY", "EXPOSED_HEADERS", "create_app", "app_factory"]

CONFIG_KEY = web.AppKey("jpip_config", ServerConfig)
METRICS_KEY = web.AppKey("jpip_metrics", Metrics)
HEALTH_POOL_KEY = web.AppKey("jpip_health_pool", ThreadPoolExecutor)

JPIP_METHODS = ("GET", "HEAD", "POST", "OPTIONS")
READ_METHODS = ("GET", "HEAD", "OPTIONS")
PREFLIGHT_MAX_AGE = "86400"
# A browser sends a token in Authorization (a preflighted header); the headers asked for are
# allowed as they are named, this when none are.
PREFLIGHT_HEADERS = "Authorization, Content-Type"
HEALTH_CHECK_TIMEOUT = 2.0


# ----- handlers -----

async def jpip_endpoint(request: web.Request) -> web.StreamResponse:
    """config.jpip_path (and '/'): the target is named by the `target=` field."""
    return await handle_jpip(request)


async def jpip_path_form(request: web.Request) -> web.StreamResponse:
    """/<target path>: the path is the target (already percent-decoded once by aiohttp),
    unless the request names one with target= (see server.jpip_handler for the rules)."""
    return await handle_jpip(request, target=request.match_info["target"])


def _root_readable(root: str) -> bool:
    try:
        with os.scandir(root) as entries:
            next(entries, None)  # opening and reading the directory proves it is readable
        return True
    except OSError:
        return False


async def healthz(request: web.Request) -> web.Response:
    """Readiness: 200 while the image root can be read, 503 when it cannot (e.g. unmounted).

    With a shared session store, its reachability too: while it is away the server still
    answers stateless requests (sessions get 503), so that is "degraded" with 200, not a
    reason for a load balancer to take the server out."""
    root = request.app[CONFIG_KEY].root
    # In a thread of its own (index builds fill the default pool), with a deadline: a hung
    # network mount must neither stall the event loop nor leave the health check unanswered.
    loop = asyncio.get_running_loop()
    check = loop.run_in_executor(request.app[HEALTH_POOL_KEY], _root_readable, os.fspath(root))
    try:
        readable = await asyncio.wait_for(check, HEALTH_CHECK_TIMEOUT)
    except TimeoutError:
        readable = False
    store_up = await request.app[STATE_KEY].sessions.ping()
    status = "ok" if readable else "unavailable"
    if readable and store_up is False:
        status = "degraded"
    body = {"status": status, "root_readable": readable,
            "worker": request.app[METRICS_KEY].worker, "pid": os.getpid()}
    if store_up is not None:
        body["session_store"] = "ok" if store_up else "unreachable"
    resp = web.json_response(body, status=200 if readable else 503)
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    resp = web.Response(body=metrics.render())
    resp.headers["Content-Type"] = metrics.content_type
    return resp


def _preflight(allowed: Sequence[str]) -> web.Handler:
    allow = ", ".join(allowed)

    async def options(request: web.Request) -> web.Response:
        resp = web.Response(status=204, headers={"Allow": allow})
        if request.app[CONFIG_KEY].cors_origins:
            resp.headers["Access-Control-Allow-Methods"] = allow
            resp.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", PREFLIGHT_HEADERS)
            resp.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return resp

    return options


def _not_allowed(allowed: Sequence[str]) -> web.Handler:
    async def not_allowed(request: web.Request) -> web.Response:
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    return not_allowed


# ----- background work -----

class _running:  # noqa: N801 - used as `async with _running(...)`, like a function
    """`work` runs as a task inside the block, and is cancelled and awaited as it ends, however
    it ends. A class, not @asynccontextmanager: a Ctrl-C while the app starts leaves the cleanup
    contexts suspended at their `yield`, and asyncio closes them (GeneratorExit) as the loop
    ends; an @asynccontextmanager block then fails with "generator didn't stop after athrow()"
    (Python 3.11), logged by asyncio as an ERROR."""

    def __init__(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._work, self._name = work, name
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        self._task = asyncio.create_task(self._work, name=self._name)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def sweep_deadlines(deadlines: Deadlines, app: web.Application) -> AsyncIterator[None]:
    """Cuts the requests that outlive their deadline (server.deadline), while the app runs."""
    async with _running(deadlines.run(), "jpip-deadlines"):
        yield


async def health_pool(app: web.Application) -> AsyncIterator[None]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="healthz")
    app[HEALTH_POOL_KEY] = pool
    try:
        yield
    finally:  # (finally: also when asyncio closes a context never cleaned up, see _running)
        pool.shutdown(wait=False, cancel_futures=True)  # a thread stuck on a dead mount: leave it


async def log_flusher(app: web.Application) -> AsyncIterator[None]:
    """Writes the access lines the log handler holds, every ACCESS_FLUSH_PERIOD."""
    async def flush() -> None:
        while True:
            await asyncio.sleep(ACCESS_FLUSH_PERIOD)
            flush_logs()

    try:
        async with _running(flush(), "jpip-log-flusher"):
            yield
    finally:
        flush_logs()


async def stats_sharer(app: web.Application) -> AsyncIterator[None]:
    """A worker of several: shares its request figures with the others' /metrics, every
    STATS_SHARE_PERIOD and once more when it stops (server/metrics.py)."""
    metrics = app[METRICS_KEY]

    async def share() -> None:
        while True:
            await asyncio.sleep(STATS_SHARE_PERIOD)
            try:
                metrics.share()
            except OSError as e:  # a full disk: /metrics lags, serving goes on
                log.warning("cannot share request figures: %s", e)

    metrics.share()  # at once: the others' /metrics name this worker from the start
    try:
        async with _running(share(), "jpip-stats-sharer"):
            yield
    finally:
        with contextlib.suppress(OSError):
            metrics.share()


# ----- the application -----

def create_app(config: ServerConfig | None = None) -> web.Application:
    """The server application; without a config, it is read from the environment."""
    if config is None:
        config = load_config([], os.environ)
    metrics = Metrics(shared_sessions=config.session_store != "memory",
                      worker=os.environ.get(WORKER_ENV, "0"))
    # Access control (None: off); reads the key files (server.tokens.KeyFileError).
    guard = create_guard(config, on_denial=metrics.auth_denied)
    deadlines = Deadlines(config.request_timeout)
    app = web.Application(
        middlewares=[request_middleware(
            metrics, deadlines, config.max_request_body,
            # Only with trusted proxies: without, request.remote is the client already.
            TrustedProxies(config.trusted_proxies) if config.trusted_proxies else None)],
        client_max_size=config.max_request_body,
        handler_args={
            "max_line_size": config.max_field_size,
            "max_field_size": config.max_field_size,
            "keepalive_timeout": config.keepalive_timeout,
            # Our access log whoever runs the app (jpip-server, aiohttp.web, tests).
            "access_log_class": AccessLogger,
            "access_log": logging.getLogger(ACCESS_LOGGER),
        },
    )
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = metrics
    if guard is not None:
        app[GUARD_KEY] = guard
    app.on_response_prepare.append(response_prepare_hook(metrics, config.cors_origins))
    app.cleanup_ctx.append(partial(sweep_deadlines, deadlines))
    app.cleanup_ctx.append(health_pool)
    app.cleanup_ctx.append(log_flusher)
    if multiprocess_dir() is not None:
        app.cleanup_ctx.append(stats_sharer)
    setup_jpip(app, config, metrics, guard)  # the JPIP layer's state: index cache, sessions
    setup_viewer(app, config, jpip_path_form)  # the browser viewer, the listing, their APIs

    router = app.router
    # Fixed paths first; dynamic routes are matched in the order they are added.
    for path, handler, methods in (
        ("/healthz", healthz, READ_METHODS),
        ("/metrics", metrics_endpoint, READ_METHODS),
        ("/dicom-json", dicom_json, READ_METHODS),
        (config.jpip_path, jpip_endpoint, JPIP_METHODS),
        ("/", root_or_jpip(jpip_endpoint), JPIP_METHODS),  # without a query: the listing
    ):
        router.add_get(path, handler)  # HEAD too
        if "POST" in methods:
            router.add_post(path, handler)
        router.add_route("OPTIONS", path, _preflight(methods))
        # Without this, e.g. POST /healthz would fall through to the path form (target healthz).
        router.add_route("*", path, _not_allowed(methods))
    router.add_get("/{target:.+}", jpip_path_form)
    router.add_post("/{target:.+}", jpip_path_form)
    router.add_route("OPTIONS", "/{target:.*}", _preflight(JPIP_METHODS))
    return app


def app_factory(argv: list[str]) -> web.Application:
    """For `python -m aiohttp.web -P 8080 server.app:app_factory [--root DIR ...]`."""
    return create_app(load_config(argv, os.environ))

