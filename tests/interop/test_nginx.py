"""The real nginx (Debian's, with docker/nginx.conf) in front of the server.

docker/nginx.conf is rewritten only where it must be (addresses, pid/log/temp paths), so the
directives that matter for JPIP (no buffering, HTTP/1.1 upstream keep-alive, forwarded headers,
cid stickiness) are the ones deployed. nginx missing is a failure, not a skip: `make test`
installs it (scripts/system-deps.sh).
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from server.app import EXPOSED_HEADERS, create_app
from server.config import ServerConfig
from tests.conftest import CORPUS, PROJECT_ROOT

NGINX = "/usr/sbin/nginx"
CONF = PROJECT_ROOT / "docker" / "nginx.conf"
SAMPLE = "file1.jp2"
CHUNK = 64 << 10
STREAM_CHUNKS = 64  # 4 MiB
FIREHOSE_BYTES = 64 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rewrite_conf(text: str, tmp: Path, listen: int, upstream: int) -> str:
    """docker/nginx.conf with loopback addresses and every writable path under `tmp`."""
    subs = [
        (r"listen 8080;", f"listen 127.0.0.1:{listen};"),
        (r"server jpip:8080;", f"server 127.0.0.1:{upstream};"),
        (r"pid [^;]+;", f"pid {tmp}/nginx.pid;"),
        (r"error_log [^;]+;", f"error_log {tmp}/error.log info;"),
        (r"access_log [^;]+;", f"access_log {tmp}/access.log;"),
        (r"worker_processes [^;]+;", "worker_processes 1;"),
        (r"http \{", "http {\n" + "".join(
            f"    {kind}_temp_path {tmp}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))),
    ]
    for pattern, replacement in subs:
        text, n = re.subn(pattern, replacement, text)
        assert n == 1, f"docker/nginx.conf no longer has exactly one {pattern!r}"
    return text


@dataclass
class Stack:
    nginx: str     # base URL through nginx
    direct: str    # base URL of the server itself
    nginx_port: int
    stream_done: list[float]
    first_seen: asyncio.Event
    written: list[int]


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
         "xfp": request.headers.get("X-Forwarded-Proto")},
        headers={"JPIP-cnew": "cid=abc123,path=jpip,transport=http", "JPIP-tid": "T-1",
                 "JPIP-fsiz": "64,48", "Cache-Control": "no-cache"})


DONE_KEY = web.AppKey("stream_done", list)
SEEN_KEY = web.AppKey("first_seen", asyncio.Event)
WRITTEN_KEY = web.AppKey("written", list)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    assert Path(NGINX).is_file(), f"{NGINX} is missing: install nginx (make setup-test)"
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

    # Outside tmp_path (mode 700): nginx workers run as another user when we are root, and
    # must reach their temp files.
    ngx_dir = Path(tempfile.mkdtemp(prefix="jpip-nginx-"))
    ngx_dir.chmod(0o755)
    listen = free_port()
    conf = ngx_dir / "nginx.conf"
    conf.write_text(rewrite_conf(CONF.read_text(), ngx_dir, listen, upstream))
    stderr = (ngx_dir / "stderr.log").open("wb")
    proc = subprocess.Popen([NGINX, "-p", str(ngx_dir), "-c", str(conf),
                             "-e", str(ngx_dir / "error.log"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                log = (ngx_dir / "error.log").read_text() if (ngx_dir / "error.log").exists() \
                    else ""
                pytest.fail(f"nginx exited: {(ngx_dir / 'stderr.log').read_text()} {log}")
            try:
                with socket.create_connection(("127.0.0.1", listen), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not start listening")
                await asyncio.sleep(0.02)
        yield Stack(f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{upstream}", listen,
                    app[DONE_KEY], app[SEEN_KEY], app[WRITTEN_KEY])
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        stderr.close()
        await runner.cleanup()
        shutil.rmtree(ngx_dir, ignore_errors=True)


async def test_healthz_through_nginx(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s, s.get(stack.nginx + "/healthz") as r:
        assert r.status == 200
        assert await r.json() == {"status": "ok", "root_readable": True}
        assert r.headers["Access-Control-Allow-Origin"] == "*"


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
