"""`jpip-server` as a user runs it: one-line errors and exit codes, the root check, the version.

`image_root` (tests/server/conftest.py) holds one corpus file."""
from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.server_process import free_port, running_server, server_command


def run_server(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_command(*args), cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line(err: str) -> None:
    assert err.count("\n") == 1, err
    assert "Traceback" not in err and "serving" not in err, err


def test_port_in_use(image_root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_server("--root", str(image_root), "--port", str(port))
    assert done.returncode == 1
    assert done.stderr.startswith(f"jpip-server: cannot listen on 127.0.0.1:{port}: "
                                  "address in use"), done.stderr
    assert_one_line(done.stderr)


def test_address_the_host_does_not_have(image_root: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): documentation only, on no host.
    port = free_port()
    done = run_server("--root", str(image_root), "--host", "192.0.2.1", "--port", str(port))
    assert done.returncode == 1
    assert done.stderr.startswith(f"jpip-server: cannot listen on 192.0.2.1:{port}: "
                                  "this host has no such address"), done.stderr
    assert_one_line(done.stderr)


@pytest.mark.parametrize("make", ["missing", "file"])
def test_root_must_exist_at_start(tmp_path: Path, make: str) -> None:
    root = tmp_path / "images"
    if make == "file":
        root.write_bytes(b"not a folder")
    done = run_server("--root", str(root), "--port", str(free_port()))
    assert done.returncode == 2
    reason = "does not exist" if make == "missing" else "is not a directory"
    assert done.stderr.startswith(f"jpip-server: option root: '{root}' {reason}"), done.stderr
    assert_one_line(done.stderr)


def test_root_from_the_environment_is_checked_too(tmp_path: Path) -> None:
    done = subprocess.run(server_command("--port", str(free_port())), cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "JPIP_ROOT": str(tmp_path / "gone")})
    assert done.returncode == 2 and "does not exist" in done.stderr, done.stderr


def _healthz(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_root_that_goes_away_later_is_a_503(image_root: Path, tmp_path: Path) -> None:
    with running_server(image_root, index_cache=tmp_path / "ix") as server:
        assert _healthz(server.url) == 200
        image_root.rename(tmp_path / "unmounted")
        assert _healthz(server.url) == 503
        (tmp_path / "unmounted").rename(image_root)
        assert _healthz(server.url) == 200
        assert server.proc.poll() is None


def test_a_missing_target_is_named(image_root: Path, tmp_path: Path) -> None:
    with running_server(image_root, index_cache=tmp_path / "ix") as server:
        try:
            urllib.request.urlopen(f"{server.url}/jpip?target=nothere.jp2&fsiz=8,8", timeout=10)
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read().decode()
    assert status == 404
    assert body == "no such target 'nothere.jp2' in the image root\n", body
    assert str(image_root) not in body


def test_empty_root_is_served_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with running_server(root, index_cache=tmp_path / "ix") as server:
        log = server.log.read_text()
    assert f"the image root {root} is empty" in log, log


def test_serving_is_logged_once_listening(image_root: Path, tmp_path: Path) -> None:
    with running_server(image_root, index_cache=tmp_path / "ix") as server:
        log = server.log.read_text()
    assert f"serving {image_root} on http://127.0.0.1:{server.port} (JPIP at /jpip" in log, log
    # Once, at start: which packet-header decoder indexes (codestream/native.py).
    assert log.count("packet headers are decoded by the C extension codestream._headers") == 1, log


def test_version() -> None:
    done = run_server("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"jpip-server {importlib.metadata.version('jpip-server')}"


@pytest.mark.parametrize("content, says", [
    (None, "cannot read"),
    (b"short\n", "at least 32 bytes"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "private key"),
    (b'{"keys": []}', "holds no keys"),
])
def test_a_key_file_that_cannot_be_used(image_root: Path, tmp_path: Path, content: bytes | None,
                                        says: str) -> None:
    key = tmp_path / "jwt.key"
    if content is not None:
        key.write_bytes(content)
    done = run_server("--root", str(image_root), "--port", str(free_port()),
                      "--auth-jwt-key", str(key))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("jpip-server: option auth_jwt_key: "), done.stderr
    assert says in done.stderr
    assert_one_line(done.stderr)


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET /healthz HTTX/1.1\r\nHost: x\r\n\r\n", b"400"),           # not HTTP
    (b"GET /healthz HTTP/1.1\r\nBad Name: 1\r\n\r\n", b"400"),        # a bad header
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"400"),          # a line too long
    (b"GET /healthz HTTP/2.0\r\nHost: x\r\nConnection: close\r\n\r\n", b"505"),
])
def test_malformed_requests_are_the_clients_fault_in_the_log(image_root: Path, tmp_path: Path,
                                                            request_bytes, status) -> None:
    """aiohttp refuses what its parser cannot read (400) and logs it at ERROR with a traceback;
    the server logs one INFO line instead, so ERROR stays for our own defects. An HTTP/2.0
    request line (which aiohttp's parser accepts) gets 505, not a 500 (found by fuzzing)."""
    with running_server(image_root, index_cache=tmp_path / "ix") as server:
        answer = _raw(server.port, request_bytes)
        log = server.log.read_text()
    assert answer.split(b" ", 2)[1] == status, answer[:200]
    assert "Traceback" not in log and " ERROR " not in log, log
    if status == b"400":
        assert "Error handling request from 127.0.0.1 (answered 400): " in log, log


_STARTED_APP = """
import gc, sys, asyncio
from aiohttp import web
import server.cli

def started(app, **options):  # run_app's stand-in: start the app, report, stop it
    async def start():
        runner = web.AppRunner(app)
        await runner.setup()
        print(gc.get_freeze_count(), len(gc.get_objects()))
        options["print"]("Running on stand-in")  # as run_app once serving (else: status 130)
        await runner.cleanup()
    asyncio.run(start())

web.run_app = started
sys.exit(server.cli.main(sys.argv[1:]))
"""


def test_objects_alive_at_start_are_kept_out_of_full_collections(image_root: Path) -> None:
    # The collector's full passes would walk the ~100,000 objects every server holds from its
    # start (a pause of 30-70 ms under load): jpip-server freezes them once it has started.
    done = subprocess.run([sys.executable, "-c", _STARTED_APP, "--root", str(image_root),
                           "--port", str(free_port())], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    frozen, tracked = map(int, done.stdout.split())
    assert frozen > 20_000 and tracked < frozen // 10, (frozen, tracked)


_FIRST_ANSWER = """
import asyncio, sys, urllib.request
from aiohttp import web
import server.cli

def started(app, host, port, **options):  # run_app's stand-in: one request, then stop
    async def start():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        options["print"]("Running on stand-in")  # as run_app once serving (else: status 130)
        base = f"http://{host}:{port}"
        # The client's own first use (urllib imports encodings on its first request).
        await asyncio.to_thread(lambda: urllib.request.urlopen(base + "/healthz").read())
        before = set(sys.modules)
        url = f"{base}/jpip?target={sys.argv[-1]}&fsiz=64,64&type=jpp-stream"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=30).read())
        assert body, "an answer"
        print(" ".join(sorted(set(sys.modules) - before)))
        await runner.cleanup()
    asyncio.run(start())

web.run_app = started
sys.exit(server.cli.main(sys.argv[1:-1]))
"""


def test_a_new_servers_first_answer_imports_nothing(image_root: Path, tmp_path: Path) -> None:
    # A module imported on first use is paid for by a new server's first request: numpy's
    # np.unique imports numpy.ma (20-45 ms) the first time it runs.
    name = next(image_root.iterdir()).name
    done = subprocess.run([sys.executable, "-c", _FIRST_ANSWER, "--root", str(image_root),
                           "--host", "127.0.0.1", "--port", str(free_port()), name],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported by the first answer: {done.stdout}"
