"""The real nginx (Debian's, with docker/nginx.conf) in front of the server.

docker/nginx.conf is rewritten only where it must be (addresses, pid/log/temp paths), so the
directives that matter for JPIP (no buffering, HTTP/1.1 upstream keep-alive, forwarded headers,
cid stickiness) are the ones deployed. nginx missing is a failure, not a skip: `make test`
installs it (scripts/system-deps.sh).
"""
from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yarl
from aiohttp import web

from server.app import EXPOSED_HEADERS, create_app
from server.config import ServerConfig
from tests.conftest import CORPUS
from tests.interop.nginx_harness import CONF, backend_names, running_nginx

SAMPLE = "file1.jp2"
CHUNK = 64 << 10
STREAM_CHUNKS = 64  # 4 MiB
FIREHOSE_BYTES = 64 << 20


@dataclass
class Stack:
    nginx: str     # base URL through nginx
    direct: str    # base URL of the server itself
    nginx_port: int
    stream_done: list[float]
    first_seen: asyncio.Event
    written: list[int]
    access_log: Callable[[], str] = str  # nginx's access log as written so far


async def stream_big(request: web.Request) -> web.StreamResponse:
    """4 MiB in 64 KiB chunks with pauses, remembering when the last byte was written."""
    resp = web.StreamResponse(headers={"Content-Type": "image/jpp-stream"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(STREAM_CHUNKS):
        await resp.write(b"\xa5" * CHUNK)
        await asyncio.sleep(0.005)
    request.app[DONE_KEY].append(time.perf_counter())
    await resp.write_eof()
    return resp


async def firehose(request: web.Request) -> web.StreamResponse:
    """Writes FIREHOSE_BYTES as fast as the connection takes them, counting what was written."""
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    written = request.app[WRITTEN_KEY]
    chunk = b"\x5a" * CHUNK
    for _ in range(FIREHOSE_BYTES // CHUNK):
        await resp.write(chunk)
        written[0] += CHUNK
    await resp.write_eof()
    return resp


async def trickle(request: web.Request) -> web.StreamResponse:
    """Writes one small chunk, then waits (up to 3 s) for the client to say it arrived."""
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b"first message\n")
    seen = request.app[SEEN_KEY]
    try:
        await asyncio.wait_for(seen.wait(), 3)
        await resp.write(b"seen\n")
    except TimeoutError:
        await resp.write(b"timeout\n")
    await resp.write_eof()
    return resp


async def echo(request: web.Request) -> web.Response:
    return web.json_response(
        {"remote": request.remote, "scheme": request.scheme,
         "xff": request.headers.get("X-Forwarded-For"),
         "xfp": request.headers.get("X-Forwarded-Proto"),
         "host": request.headers.get("Host")},
        headers={"JPIP-cnew": "cid=abc123,path=jpip,transport=http", "JPIP-tid": "T-1",
                 "JPIP-fsiz": "64,48", "Cache-Control": "no-cache"})


DONE_KEY = web.AppKey("stream_done", list)
SEEN_KEY = web.AppKey("first_seen", asyncio.Event)
WRITTEN_KEY = web.AppKey("written", list)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    root = tmp_path / "images"
    root.mkdir()
    assert (CORPUS / SAMPLE).is_file(), f"corpus file {CORPUS / SAMPLE} is missing"
    shutil.copy(CORPUS / SAMPLE, root / SAMPLE)

    app = create_app(ServerConfig(root=root, trusted_proxies=("127.0.0.1",)))
    app[DONE_KEY] = []
    app[SEEN_KEY] = asyncio.Event()
    app[WRITTEN_KEY] = [0]
    app.router.add_get("/_test/firehose", firehose)
    app.router.add_get("/_test/trickle", trickle)
    app.router.add_get("/_test/stream", stream_big)
    app.router.add_get("/_test/echo", echo)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream = runner.addresses[0][1]

    # Every backend name of docker/nginx.conf stands for this one server.
    backends = {name: upstream for name in backend_names(CONF.read_text())}
    try:
        with running_nginx(backends) as nginx:
            yield Stack(nginx.url, f"http://127.0.0.1:{upstream}", nginx.port,
                        app[DONE_KEY], app[SEEN_KEY], app[WRITTEN_KEY], nginx.access_log)
    finally:
        await runner.cleanup()


async def test_healthz_through_nginx(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s, s.get(stack.nginx + "/healthz") as r:
        assert r.status == 200
        body = await r.json()
        assert (body["status"], body["root_readable"]) == ("ok", True)
        assert r.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("path", ["/metrics", "/metrics?x=1", "//metrics", "/%6Detrics",
                                  "/./metrics"])
async def test_metrics_are_not_published_through_nginx(stack: Stack, path: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(yarl.URL(stack.direct + "/metrics")) as r:
            assert r.status == 200  # the server has them, for the internal network
        async with s.get(yarl.URL(stack.nginx + path, encoded=True)) as r:
            assert r.status == 403
            assert "jpip_" not in await r.text()
        path = f"/jpip?target={SAMPLE}&fsiz=64,64&type=jpp-stream"
        async with s.get(stack.nginx + path) as r:  # the rest is served
            assert r.status == 200 and len(await r.read()) > 0


@pytest.mark.parametrize("path", [f"/jpip?target={SAMPLE}&fsiz=64,64&type=jpp-stream",
                                  f"/{SAMPLE}?fsiz=64,64&type=jpp-stream"])
async def test_jpip_request_same_through_nginx(stack: Stack, path: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(stack.direct + path) as r:
            direct = (r.status, _jpip_headers(r.headers), await r.read())
        async with s.get(stack.nginx + path) as r:
            proxied = (r.status, _jpip_headers(r.headers), await r.read())
    assert direct[0] == 200 and direct[1]["Content-Type"] == "image/jpp-stream"
    assert len(direct[2]) > 0
    assert proxied == direct
    assert direct[1]["Access-Control-Expose-Headers"] == ", ".join(EXPOSED_HEADERS)


def _jpip_headers(headers: aiohttp.typedefs.LooseHeaders) -> dict[str, str]:
    keep = ("content-type", "cache-control", "access-control-allow-origin",
            "access-control-expose-headers")
    return {k: v for k, v in headers.items()  # type: ignore[union-attr]
            if k.lower().startswith("jpip-") or k.lower() in keep}


async def test_headers_intact_and_forwarded_for(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.nginx_port)
    writer.write(b"GET /_test/echo HTTP/1.1\r\nHost: localhost\r\n"
                 b"X-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    # Exact names and values: JHelioviewer-era clients compare them byte for byte.
    for line in (b"JPIP-cnew: cid=abc123,path=jpip,transport=http", b"JPIP-tid: T-1",
                 b"JPIP-fsiz: 64,48", b"Cache-Control: no-cache"):
        assert b"\r\n" + line + b"\r\n" in head + b"\r\n", line
    info = json.loads(_dechunk(head, body))
    assert info["xff"] == "203.0.113.9, 127.0.0.1"   # nginx appended the peer it saw
    assert info["xfp"] == "http"
    # 127.0.0.1 (nginx) is trusted, so the right-most untrusted address is the client.
    assert info["remote"] == "203.0.113.9"


async def test_http10_client_without_host(stack: Stack) -> None:
    # $http_host is empty for an HTTP/1.0 request without Host: the upstream request (HTTP/1.1)
    # would go without one. $host falls back to the server_name.
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.nginx_port)
    writer.write(b"GET /_test/echo HTTP/1.0\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(_dechunk(head, body))["host"] == "jpip"


def _dechunk(head: bytes, body: bytes) -> bytes:
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, body = out + body[:size], body[size + 2:]


async def test_large_stream_is_not_buffered(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s, s.get(stack.nginx + "/_test/stream") as r:
        assert r.status == 200
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert r.headers["Content-Type"] == "image/jpp-stream"
        first = await r.content.readany()
        first_at = time.perf_counter()
        total = len(first) + len(await r.read())
    assert total == STREAM_CHUNKS * CHUNK
    assert stack.stream_done, "the server never finished writing"
    # The first bytes reached the client while the server was still writing.
    assert first_at < stack.stream_done[0] - 0.1, (first_at, stack.stream_done[0])


async def test_small_chunk_is_forwarded_at_once(stack: Stack) -> None:
    # A short JPP-stream message must reach the client even though the response goes on.
    async with aiohttp.ClientSession() as s, s.get(stack.nginx + "/_test/trickle") as r:
        line = await asyncio.wait_for(r.content.readline(), 2)
        assert line == b"first message\n"
        stack.first_seen.set()
        assert await r.read() == b"seen\n"


async def test_backpressure_reaches_the_server(stack: Stack) -> None:
    # Unbuffered, a client that stops reading stops the server's writes after a few socket
    # buffers: the server's "written" is close to what the client received (its cache model
    # is updated on write). A buffering proxy would swallow the whole response.
    async with aiohttp.ClientSession() as s, s.get(stack.nginx + "/_test/firehose") as r:
        first = await r.content.readany()
        await asyncio.sleep(0.5)
        stalled_at = stack.written[0]
        total = len(first) + len(await r.read())
    assert total == FIREHOSE_BYTES
    assert stalled_at < FIREHOSE_BYTES // 2, f"{stalled_at >> 20} MiB written while paused"


async def test_nginx_access_log_holds_no_access_token(stack: Stack) -> None:
    window = f"target={SAMPLE}&fsiz=8,8&type=jpp-stream"
    queries = {
        f"{window}&access_token=SECRET1": f"?{window}&access_token=[redacted]",
        f"access_token=SECRET2&{window}": f"?access_token=[redacted]&{window}",
        f"access_token=SECRET3&{window}&access_token=SECRET4":
            f"?access_token=[redacted]&{window}&access_token=[redacted]",
        f"{window}&acc%65ss_token=SECRET5": "?[query not logged]",
        f"{window}&Access_Token=SECRET6": "?[query not logged]",
        window: f"?{window}",
    }
    async with aiohttp.ClientSession() as s:
        for query in queries:
            async with s.get(yarl.URL(f"{stack.nginx}/jpip?{query}", encoded=True)) as r:
                await r.read()
    deadline = time.monotonic() + 5
    while stack.access_log().count("\n") < len(queries) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    log = stack.access_log()
    assert "SECRET" not in log, log
    for logged in queries.values():
        assert f"/jpip{logged} HTTP/1.1" in log, (logged, log)
