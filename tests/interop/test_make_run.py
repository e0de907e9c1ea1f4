"""`make run` serves the demo image: start it, fetch a window with curl, stop it."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

from jpip.jpp import EndOfResponse, Message, parse_stream
from tests.conftest import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_run_serves_the_demo_image(tmp_path) -> None:
    assert shutil.which("curl"), "curl is needed (Debian package curl)"
    port = free_port()
    env = dict(os.environ, JPIP_INDEX_CACHE_DIR=str(tmp_path / "ix"))
    proc = subprocess.Popen(["make", "--no-print-directory", "run", f"PORT={port}"],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
                time.sleep(0.3)
        else:
            raise AssertionError("make run did not start listening in 120 s")
        out = tmp_path / "thumb.jpp"
        headers = subprocess.run(
            ["curl", "-sS", "-D", "-", "-o", str(out),
             f"http://127.0.0.1:{port}/jpip?target=demo.jp2&fsiz=256,256&type=jpp-stream"],
            capture_output=True, text=True, timeout=60, check=True).stdout
        assert " 200" in headers.splitlines()[0]
        assert "Content-Type: image/jpp-stream" in headers
        items = parse_stream(out.read_bytes())
        assert isinstance(items[-1], EndOfResponse) and items[-1].reason == 2
        assert any(isinstance(m, Message) and m.bin_class == 0 for m in items)
        viewer = f"http://127.0.0.1:{port}/viewer?target=demo.jp2"
        page = subprocess.run(["curl", "-sS", "-D", "-", viewer], capture_output=True, text=True,
                              timeout=60, check=True).stdout
        assert " 200" in page.splitlines()[0] and "<canvas" in page
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    printed = proc.stdout.read().decode(errors="replace")
    assert f"viewer: http://127.0.0.1:{port}/viewer?target=demo.jp2" in printed
