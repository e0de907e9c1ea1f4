"""The application shell: health, metrics, CORS, methods, errors, limits, proxies, shutdown."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from codestream.errors import CodestreamError
from jpip.errors import RequestError
from server.app import CONFIG_KEY, EXPOSED_HEADERS, METRICS_KEY, app_factory, create_app
from server.config import ServerConfig
from server.errors import ServiceUnavailable
from server.jpip_handler import STATE_KEY
from server.logs import ACCESS_LOGGER, JsonFormatter, set_request_cid
from server.metrics import Metrics
from server.proxy import TrustedProxies
from server.targets import TargetError
from tests.conftest import PROJECT_ROOT
from tests.server.conftest import MakeClient, build_app, free_port

# ----- test-only routes -----

ERRORS: dict[str, Exception] = {
    "request": RequestError("fsiz", "expected two integers, got 'x'"),
    "request-pref": RequestError("pref", "cannot honour", 501, headers={"JPIP-pref": "fvsc/r"}),
    "bad-cid": RequestError("cid", "unknown or closed channel", 503),
    "target": TargetError("no such target"),
    "suffix": TargetError("'.txt' files are not served", 415),
    "codestream": CodestreamError(1234, "SIZ segment ends early"),
    "not-jpeg2000": CodestreamError(0, "no signature", not_jpeg2000=True),
    "unsupported": CodestreamError(99, "uses a feature we do not serve", unsupported=True),
    "busy": ServiceUnavailable("too many sessions", retry_after=7),
    "bug": RuntimeError("secret detail\nTraceback (most recent call last): nothing"),
    "http": web.HTTPForbidden(text="forbidden here\n"),
}


async def raise_error(request: web.Request) -> web.StreamResponse:
    raise ERRORS[request.match_info["kind"]]


async def sleep_long(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(10)
    return web.Response(text="late\n")


async def stream_then(request: web.Request) -> web.StreamResponse:
    """Sends 64 KiB, then fails (?fail=1) or stalls, to check the response is cut."""
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b"x" * 65536)
    if request.query.get("fail"):
        raise RuntimeError("broke mid-stream")
    await asyncio.sleep(10)
    return resp


async def read_body(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(text=f"{len(body)}\n")


async def whoami(request: web.Request) -> web.Response:
    set_request_cid(request, "c0ffee")
    return web.json_response({"remote": request.remote, "scheme": request.scheme})


def add_test_routes(app: web.Application) -> None:
    app.router.add_get("/_test/raise/{kind}", raise_error)
    app.router.add_get("/_test/sleep", sleep_long)
    app.router.add_get("/_test/stream", stream_then)
    app.router.add_post("/_test/body", read_body)
    app.router.add_get("/_test/whoami", whoami)


# ----- the app object -----

def test_app_keys_and_factory(image_root: Path) -> None:
    config = ServerConfig(root=image_root)
    app = create_app(config)
    assert app[CONFIG_KEY] is config
    assert isinstance(app[METRICS_KEY], Metrics)
    app2 = app_factory(["--root", str(image_root), "--jpip-path", "/j2"])
    assert app2[CONFIG_KEY].jpip_path == "/j2" and app2[CONFIG_KEY].root == image_root
    # Each app has its own registry: two apps in one process do not collide.
    assert app[METRICS_KEY].registry is not app2[METRICS_KEY].registry


# ----- health and metrics -----

async def test_healthz(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    r = await client.get("/healthz")
    assert r.status == 200
    pid = {"worker": "0", "pid": os.getpid()}  # which worker process answered
    assert await r.json() == {"status": "ok", "root_readable": True, **pid}
    r = await client.head("/healthz")
    assert r.status == 200 and await r.read() == b""

    missing = await make_client(root=tmp_path / "not-mounted")
    r = await missing.get("/healthz")
    assert r.status == 503
    assert await r.json() == {"status": "unavailable", "root_readable": False, **pid}


async def test_healthz_hung_root(make_client: MakeClient, monkeypatch: Any) -> None:
    def hang(root: str) -> bool:
        time.sleep(0.6)
        return True

    monkeypatch.setattr("server.app._root_readable", hang)
    monkeypatch.setattr("server.app.HEALTH_CHECK_TIMEOUT", 0.1)
    client = await make_client()
    started = time.perf_counter()
    r = await client.get("/healthz")
    assert r.status == 503 and (await r.json())["root_readable"] is False
    assert time.perf_counter() - started < 0.5


async def test_metrics_text(make_client: MakeClient) -> None:
    client = await make_client(add_test_routes)
    await client.get("/healthz")
    await client.get("/_test/raise/target")
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    text = await r.text()
    for name in ("jpip_requests_total", "jpip_response_bytes_total",
                 "jpip_request_duration_seconds_bucket", "jpip_time_to_first_byte_seconds",
                 "jpip_sessions ", "jpip_sessions_created_total", "jpip_sessions_expired_total",
                 "jpip_sessions_evicted_total", "jpip_bytes_saved_by_model_total",
                 'jpip_index_cache_total{result="hit"}', 'jpip_index_cache_total{result="miss"}',
                 'jpip_index_cache_total{result="build"}', "jpip_index_build_seconds_bucket",
                 'jpip_response_cache_total{result="hit"}'):
        assert name in text, name
    assert 'jpip_requests_total{status="200"} 1.0' in text
    assert 'jpip_requests_total{status="404"} 1.0' in text
    assert 'le="0.001"' in text and 'le="10.0"' in text
    assert await (await client.head("/metrics")).read() == b""


def test_metrics_hooks() -> None:
    m = Metrics()
    for kind in ("created", "created", "created", "expired", "evicted", "closed", "model_reset"):
        m.session_event(kind)
    m.index_event("miss", 0.2)
    m.index_event("build", 0.1)
    text = m.render().decode()
    assert "jpip_sessions 0.0" in text
    assert "jpip_sessions_created_total 3.0" in text
    assert "jpip_sessions_expired_total 1.0" in text and "jpip_sessions_evicted_total 1.0" in text
    assert 'jpip_index_cache_total{result="build"} 1.0' in text
    assert "jpip_index_build_seconds_count 1.0" in text


async def test_bytes_saved_by_a_real_session(make_client: MakeClient) -> None:
    """A session asking again for what it holds: the bytes its model saved are counted."""
    client = await make_client()
    r = await client.get("/jpip?target=file1.jp2&cnew=http&fsiz=96,64")
    cid = dict(kv.split("=", 1) for kv in r.headers["JPIP-cnew"].split(","))["cid"]
    sent = len(await r.read())
    r = await client.get(f"/jpip?cid={cid}&fsiz=96,64")
    assert await r.read() == b"\x00\x02\x00"  # nothing new: the EOR alone
    text = await (await client.get("/metrics")).text()
    saved = float(next(line.split()[-1] for line in text.splitlines()
                       if line.startswith("jpip_bytes_saved_by_model_total")))
    assert 0 < saved < sent
    state = client.app[STATE_KEY]
    assert (await state.sessions.load(cid)).bytes_saved == saved


# ----- CORS, methods -----

async def test_cors_any_origin(make_client: MakeClient) -> None:
    client = await make_client(add_test_routes)
    for path in ("/healthz", "/jpip?target=nope.jp2", "/_test/raise/request"):
        r = await client.get(path, headers={"Origin": "https://viewer.example"})
        assert r.headers["Access-Control-Allow-Origin"] == "*", path
        exposed = [h.strip() for h in r.headers["Access-Control-Expose-Headers"].split(",")]
        assert exposed == list(EXPOSED_HEADERS)
    assert len(EXPOSED_HEADERS) == 21 and "JPIP-cnew" in EXPOSED_HEADERS
    assert "WWW-Authenticate" in EXPOSED_HEADERS  # a viewer elsewhere reads why it was refused


async def test_cors_listed_origins(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=("https://a.example",))
    r = await client.get("/healthz", headers={"Origin": "https://a.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert "Origin" in r.headers.getall("Vary")
    r = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


async def test_cors_disabled(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=())
    r = await client.get("/healthz", headers={"Origin": "https://a.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    r = await client.options("/jpip")
    assert r.status == 204 and "Access-Control-Allow-Methods" not in r.headers


async def test_preflight(make_client: MakeClient) -> None:
    client = await make_client()
    for path in ("/jpip", "/some/image.jp2", "/", "/healthz", "/anything/at/all"):
        r = await client.options(path, headers={
            "Origin": "https://viewer.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-extra"})
        assert r.status == 204, path
        assert await r.read() == b""
        assert "GET" in r.headers["Allow"] and "OPTIONS" in r.headers["Allow"]
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert r.headers["Access-Control-Allow-Headers"] == "content-type, x-extra"
        assert "GET" in r.headers["Access-Control-Allow-Methods"]
        assert int(r.headers["Access-Control-Max-Age"]) > 0
    r = await client.options("/jpip")
    assert "POST" in r.headers["Allow"]


async def test_methods_reach_the_jpip_handler(make_client: MakeClient, monkeypatch: Any,
                                              image_root: Path) -> None:
    seen: list[tuple[str, str | None, str]] = []

    async def fake_handle(request: web.Request, target: str | None = None) -> web.Response:
        seen.append((request.method, target, request.rel_url.raw_query_string))
        return web.Response(text="ok\n", headers={"JPIP-tid": "T1"})

    monkeypatch.setattr("server.app.handle_jpip", fake_handle)
    client = await make_client(jpip_path="/jp")
    assert (await client.get("/jp?target=a.jp2&fsiz=8,8")).status == 200
    assert (await client.post("/jp", data=b"target=a.jp2")).status == 200
    r = await client.head("/jp?target=a.jp2")
    assert r.status == 200 and r.headers["JPIP-tid"] == "T1" and await r.read() == b""
    assert (await client.get("/dir/im%20age.jp2?fsiz=8,8")).status == 200
    assert (await client.get("/%252e%252e%252fx.jp2")).status == 200
    assert (await client.post("/x.jp2", data=b"fsiz=1,1")).status == 200
    assert (await client.get("/?target=a.jp2")).status == 200
    assert seen == [
        ("GET", None, "target=a.jp2&fsiz=8,8"), ("POST", None, ""), ("HEAD", None,
                                                                      "target=a.jp2"),
        ("GET", "dir/im age.jp2", "fsiz=8,8"),   # the path form, decoded once
        ("GET", "%2e%2e%2fx.jp2", ""),
        ("POST", "x.jp2", ""),
        ("GET", None, "target=a.jp2"),
    ]
    for method, path in (("PUT", "/jp"), ("DELETE", "/x.jp2"), ("POST", "/healthz"),
                         ("POST", "/metrics"), ("PATCH", "/")):
        r = await client.request(method, path)
        assert r.status == 405, (method, path)
        assert "GET" in r.headers["Allow"]


# ----- the error middleware -----

@pytest.mark.parametrize("kind, status, body", [
    ("request", 400, "fsiz: expected two integers, got 'x'\n"),
    ("request-pref", 501, "pref: cannot honour\n"),
    ("bad-cid", 503, "cid: unknown or closed channel\n"),
    ("target", 404, "no such target\n"),
    ("suffix", 415, "'.txt' files are not served\n"),
    ("codestream", 422, "damaged JPEG 2000 file: SIZ segment ends early at byte 1234\n"),
    ("not-jpeg2000", 415, "not a JPEG 2000 file (no signature)\n"),
    ("unsupported", 501, "cannot serve target: uses a feature we do not serve\n"),
    ("busy", 503, "too many sessions\n"),
    ("bug", 500, "internal error\n"),
    ("http", 403, "forbidden here\n"),
])
async def test_error_answers(make_client: MakeClient, caplog: pytest.LogCaptureFixture,
                             kind: str, status: int, body: str) -> None:
    caplog.set_level(logging.INFO)
    client = await make_client(add_test_routes)
    r = await client.get(f"/_test/raise/{kind}")
    text = await r.text()
    assert r.status == status
    assert text == body and text.count("\n") == 1
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "Traceback" not in text and "secret" not in text
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    if kind == "busy":
        assert r.headers["Retry-After"] == "7"
    if kind == "request-pref":
        assert r.headers["JPIP-pref"] == "fvsc/r"
    if kind != "http":
        errors = [rec for rec in caplog.records if rec.name == "jpip.errors"]
        assert len(errors) == 1
        assert f"-> {status}" in errors[0].getMessage()
        assert (errors[0].exc_info is not None) == (kind == "bug")  # traceback only in the log
        if kind == "codestream":
            assert "at byte 1234" in errors[0].getMessage()


async def test_request_timeout_before_the_response(make_client: MakeClient) -> None:
    client = await make_client(add_test_routes, request_timeout=0.2)
    started = time.perf_counter()
    r = await client.get("/_test/sleep")
    assert r.status == 503
    assert int(r.headers["Retry-After"]) > 0
    assert "0.2 s" in await r.text()
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("query", ["", "?fail=1"])
async def test_response_cut_after_it_started(make_client: MakeClient, query: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await make_client(add_test_routes, request_timeout=0.3)
    r = await client.get("/_test/stream" + query)
    assert r.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await r.read()  # no final chunk: the client knows the response is incomplete
    metrics = (await (await client.get("/metrics")).text())
    assert 'jpip_requests_total{status="200"}' in metrics
    assert any("response cut" in rec.getMessage() for rec in caplog.records)


async def test_client_going_away_is_not_an_error(image_root: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    done = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"z" * 65536)
                await asyncio.sleep(0.01)
        finally:
            done.set()

    # A runner as jpip-server has it: handlers are not cancelled when the client leaves.
    app = build_app(image_root, lambda app: app.router.add_get("/_test/endless", endless))
    runner, port = await _serve(app, grace=1)
    try:
        async with aiohttp.ClientSession() as session:
            r = await session.get(f"http://127.0.0.1:{port}/_test/endless")
            await r.content.readany()
            r.close()  # drop the connection mid-response
            await asyncio.wait_for(done.wait(), 5)
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert any("client connection lost" in rec.getMessage() for rec in caplog.records)


# ----- limits -----

async def test_request_body_limit(make_client: MakeClient) -> None:
    client = await make_client(add_test_routes, max_request_body=1024)
    r = await client.post("/jpip", data=b"model=" + b"x" * 2000)
    assert r.status == 413
    r = await client.post("/_test/body", data=b"x" * 1000)
    assert r.status == 200 and await r.text() == "1000\n"

    async def chunks() -> Any:  # no Content-Length: caught while the handler reads
        for _ in range(4):
            yield b"y" * 600

    r = await client.post("/_test/body", data=chunks())
    assert r.status == 413


async def test_overlong_header_and_request_line(make_client: MakeClient) -> None:
    client = await make_client(max_field_size=4096)
    r = await client.get("/healthz", headers={"X-Big": "a" * 5000})
    assert r.status in (400, 431)
    r = await client.get("/jpip?model=" + "b" * 5000)
    assert r.status in (400, 414)
    r = await client.get("/healthz", headers={"X-Fine": "a" * 3000})
    assert r.status == 200


# ----- proxies and logs -----

def test_trusted_proxies_rules() -> None:
    t = TrustedProxies(["10.0.0.0/8", "::1"])
    assert t.client("203.0.113.1", ["1.2.3.4"], ["https"]) == ("203.0.113.1", None)
    assert t.client("10.0.0.5", ["1.2.3.4"], ["https"]) == ("1.2.3.4", "https")
    assert t.client("10.0.0.5", ["1.2.3.4, 10.9.9.9"], []) == ("1.2.3.4", None)
    assert t.client("10.0.0.5", ["6.6.6.6, 1.2.3.4, 10.9.9.9"], []) == ("1.2.3.4", None)
    assert t.client("10.0.0.5", ["6.6.6.6", "1.2.3.4"], []) == ("1.2.3.4", None)
    assert t.client("10.0.0.5", ["1.2.3.4:5555"], []) == ("1.2.3.4", None)
    assert t.client("::1", ["[2001:db8::1]:80"], []) == ("2001:db8::1", None)
    assert t.client("10.0.0.5", ["unknown, 10.1.1.1"], []) == ("10.1.1.1", None)
    assert t.client("10.0.0.5", ["garbage"], ["gopher"]) == ("10.0.0.5", None)
    assert t.client("10.0.0.5", ["10.1.1.1"], []) == ("10.1.1.1", None)  # all trusted
    assert t.client("::ffff:10.0.0.5", ["1.2.3.4"], []) == ("1.2.3.4", None)
    assert t.client(None, ["1.2.3.4"], []) == (None, None)
    assert not TrustedProxies([])


async def test_forwarded_headers(make_client: MakeClient) -> None:
    headers = {"X-Forwarded-For": "203.0.113.7, 10.1.2.3", "X-Forwarded-Proto": "https"}
    untrusting = await make_client(add_test_routes)
    assert await (await untrusting.get("/_test/whoami", headers=headers)).json() == {
        "remote": "127.0.0.1", "scheme": "http"}
    trusting = await make_client(add_test_routes, trusted_proxies=("127.0.0.1", "10.0.0.0/8"))
    assert await (await trusting.get("/_test/whoami", headers=headers)).json() == {
        "remote": "203.0.113.7", "scheme": "https"}
    only_local = await make_client(add_test_routes, trusted_proxies=("127.0.0.1",))
    assert (await (await only_local.get("/_test/whoami", headers=headers)).json())[
        "remote"] == "10.1.2.3"


async def test_access_log(make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    client = await make_client(add_test_routes, trusted_proxies=("127.0.0.1",))
    await client.get("/_test/whoami?x=1", headers={"X-Forwarded-For": "198.51.100.4"})
    await client.get("/_test/raise/target?cid=abc")
    records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(records) == 2
    first, second = records
    assert first.getMessage().startswith('198.51.100.4 "GET /_test/whoami?x=1" 200 ')
    assert "cid=c0ffee" in first.getMessage()
    line = json.loads(JsonFormatter().format(first))
    assert line["method"] == "GET" and line["path"] == "/_test/whoami" and line["status"] == 200
    assert line["remote"] == "198.51.100.4" and line["cid"] == "c0ffee"
    assert line["bytes"] > 0 and line["duration_ms"] >= 0 and line["logger"] == ACCESS_LOGGER
    assert json.loads(JsonFormatter().format(second))["cid"] == "abc"
    assert json.loads(JsonFormatter().format(second))["status"] == 404


# ----- graceful shutdown -----

async def _serve(app: web.Application, grace: float) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=grace)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def slow_stream_routes(chunks: int, pause: float) -> Any:
    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(chunks):
            await resp.write(b"%d\n" % i)
            await asyncio.sleep(pause)
        await resp.write_eof()
        return resp

    def add(app: web.Application) -> None:
        app.router.add_get("/_test/slow", slow)

    return add


async def test_shutdown_lets_inflight_responses_finish(image_root: Path) -> None:
    app = build_app(image_root, slow_stream_routes(8, 0.05), shutdown_grace=5)
    runner, port = await _serve(app, grace=5)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/_test/slow") as r:
            await r.content.readline()           # the response is in flight
            cleanup = asyncio.create_task(runner.cleanup())
            await asyncio.sleep(0.05)
            with pytest.raises(aiohttp.ClientConnectionError):  # no longer accepting
                async with aiohttp.ClientSession() as other:
                    await other.get(f"http://127.0.0.1:{port}/healthz")
            rest = await r.read()
        assert rest.count(b"\n") == 7             # finished, all of it
    await asyncio.wait_for(cleanup, 5)


async def test_shutdown_cuts_responses_after_the_grace(image_root: Path) -> None:
    app = build_app(image_root, slow_stream_routes(100, 0.1))
    runner, port = await _serve(app, grace=0.3)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/_test/slow") as r:
            await r.content.readline()
            started = time.perf_counter()
            cleanup = asyncio.create_task(runner.cleanup())
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
    await asyncio.wait_for(cleanup, 5)
    assert time.perf_counter() - started < 3


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.communicate()[1].decode()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not become healthy")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "server.cli", *args]


def test_cli_sigterm_exits_zero(image_root: Path) -> None:
    port = free_port()
    env = {**os.environ, "JPIP_JSON_LOGS": "1"}
    proc = subprocess.Popen(_cli("--root", str(image_root), "--port", str(port),
                                 "--shutdown-grace", "2"),
                            cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE)
    try:
        _wait_healthy(port, proc)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert time.monotonic() - started < 3
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any(line.get("path") == "/healthz" and line.get("status") == 200 for line in lines)
    assert any(line["message"] == "stopped" for line in lines)


def test_cli_bad_option_exits_2(image_root: Path) -> None:
    done = subprocess.run(_cli("--root", str(image_root), "--port", "eighty"), cwd=PROJECT_ROOT,
                          capture_output=True, timeout=20)
    assert done.returncode == 2
    assert b"option port (--port)" in done.stderr
    assert b"Traceback" not in done.stderr
