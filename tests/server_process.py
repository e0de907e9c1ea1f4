"""A real `jpip-server` process on loopback, for tests that need the command as users run it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "server.entry", *args]  # what `jpip-server` runs


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path  # the server's stderr

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path | None = None,
                 timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = log.read_text(errors="replace") if log is not None else ""
            raise AssertionError(f"jpip-server exited ({proc.returncode}): {said}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("jpip-server did not become healthy")


@contextmanager
def running_server(root: Path, *args: str, env: dict[str, str] | None = None,
                   index_cache: Path | None = None,
                   command: Sequence[str] | None = None) -> Iterator[ServerProcess]:
    """`jpip-server --root ROOT --port FREE ARGS...` until the block ends (then SIGTERM)."""
    port = free_port()
    full_env = {**os.environ, **(env or {})}
    if index_cache is not None:
        full_env["JPIP_INDEX_CACHE_DIR"] = str(index_cache)
    cmd = [*(command or server_command()), "--root", str(root), "--port", str(port), *args]
    # stderr into a file: a pipe nobody reads would block a chatty server.
    with tempfile.NamedTemporaryFile(prefix="jpip-server-", suffix=".log", delete=False) as fh:
        log = Path(fh.name)
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=full_env, stdout=subprocess.DEVNULL,
                                stderr=fh)
    try:
        wait_healthy(port, proc, log)
        yield ServerProcess(proc, port, log)
    finally:
        stop_process(proc)
        log.unlink(missing_ok=True)


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM (a server drains and exits), then SIGKILL if it is not gone in `timeout` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
