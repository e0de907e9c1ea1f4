"""A real `redis-server` (Debian's package) on loopback, for the tests of shared sessions.

Each one listens on a free port with its files in a temporary directory, saves nothing unless
asked (`appendonly=True`: an append-only file fsynced at every write, so a restart keeps every
session), asks for a password if given one, and can be stopped and started again on the same
port and directory.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.server_process import free_port, stop_process

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, directory: Path, *, appendonly: bool = False,
                 password: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--protected-mode", "yes",
                "--daemonize", "no", "--logfile", str(self.directory / "redis.log")]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                log = (self.directory / "redis.log")
                pytest.fail(f"redis-server exited: {log.read_text() if log.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        # Ours, not another process's server that took the port first.
                        if self.proc.poll() is None and self._listening():
                            return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not start")
            time.sleep(0.02)

    def _listening(self) -> bool:
        """Whether our redis-server process holds a socket listening on our port."""
        assert self.proc is not None
        inodes = set()
        for fd in Path(f"/proc/{self.proc.pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].split(":")[1], 16) == self.port \
                            and cols[9] in inodes:
                        return True
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            log = self.directory / "redis.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            print(f"redis-server had exited ({self.proc.returncode}): {tail}", file=sys.stderr)
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)
        self.proc = None

    def command(self, *args: str) -> str:
        """One command through redis-cli-free RESP (inline form), its first reply line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall((" ".join(args) + "\r\n").encode())
            return s.recv(65536).decode(errors="replace")

    def info(self) -> dict[str, str]:
        """INFO all as a dict (a bulk reply, read whole)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"INFO all\r\n")
            data = s.recv(1 << 20)
            size = int(data[1:data.index(b"\r\n")]) if data.startswith(b"$") else 0
            while len(data) < size + len(str(size)) + 5:
                more = s.recv(1 << 20)
                if not more:
                    break
                data += more
        out = {}
        for line in data.decode(errors="replace").splitlines():
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                out[key] = value.strip()
        return out

    def __enter__(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def running_redis(*, appendonly: bool = False,
                  password: str | None = None) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).is_file():
        pytest.fail(f"{REDIS_SERVER} is missing: install redis-server (make setup-test)")
    directory = Path(tempfile.mkdtemp(prefix="jpip-redis-"))
    server = RedisServer(directory, appendonly=appendonly, password=password)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
