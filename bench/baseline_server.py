"""The framework's ceiling: a bare aiohttp + uvloop server that returns n bytes.

    python -m bench.baseline_server --port PORT

GET /bytes?n=N answers N bytes (image/jpp-stream, no work, no logging); GET /healthz answers
"ok". The benchmark asks it for exactly the sizes our server sent, with the same concurrency
and connection handling, so the ratio of the two is what our request path costs on top of
aiohttp on this machine.
"""
from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

_blob = bytes(1 << 20)


async def send_bytes(request: web.Request) -> web.Response:
    global _blob
    n = int(request.query.get("n", "0"))
    if n > len(_blob):  # grown once, so a response only slices (copies n bytes, as ours join)
        _blob = bytes(max(n, 2 * len(_blob)))
    return web.Response(body=_blob[:n], content_type="image/jpp-stream")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/bytes", send_bytes)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    try:
        import uvloop
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    # Same keep-alive lifetime as our server's default; no access log (nothing but aiohttp).
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None,
                keepalive_timeout=75.0, loop=loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
