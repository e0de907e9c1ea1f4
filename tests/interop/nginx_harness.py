"""Debian's real nginx with the repository's docker/nginx.conf, on loopback.

The file is rewritten only where it must be: addresses (the listen port; each backend name,
which stands for every replica it resolves to, to one loopback server line per replica),
pid/log/temp paths, one worker. Where the local nginx is older than the image's (Debian 12 has
1.22; `resolve` on upstream servers needs 1.27.3) that parameter would not even parse, and
loopback addresses never need a lookup: it is dropped. Every directive that matters for JPIP
(no buffering, keep-alive, forwarded headers, routing by channel id) is the one deployed.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.server_process import stop_process

NGINX = "/usr/sbin/nginx"
CONF = PROJECT_ROOT / "docker" / "nginx.conf"
RESOLVE_SINCE = (1, 27, 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend_names(text: str) -> set[str]:
    """The host names of the upstream servers in docker/nginx.conf (jpip: the replicas)."""
    return set(re.findall(r"^\s*server\s+([A-Za-z0-9_.-]+):8080\b", text, re.M))


def rewrite_conf(text: str, tmp: Path, listen: int,
                 backends: Mapping[str, int | Sequence[int]]) -> str:
    """docker/nginx.conf with loopback addresses and every writable path under `tmp`.

    `backends` maps each backend host name of the file to the loopback port(s) standing for
    the replicas that name resolves to."""
    assert set(backends) == backend_names(text), \
        f"docker/nginx.conf names the backends {sorted(backend_names(text))}"
    subs = [
        (r"listen 8080;", f"listen 127.0.0.1:{listen};"),
        (r"pid [^;]+;", f"pid {tmp}/nginx.pid;"),
        (r"error_log [^;]+;", f"error_log {tmp}/error.log info;"),
        (r"access_log /dev/stdout", f"access_log {tmp}/access.log"),  # its format kept
        (r"worker_processes [^;]+;", "worker_processes 1;"),
        (r"http \{", "http {\n" + "".join(
            f"    {kind}_temp_path {tmp}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))),
    ]
    for pattern, replacement in subs:
        text, n = re.subn(pattern, replacement, text)
        assert n == 1, f"docker/nginx.conf no longer has exactly one {pattern!r}"
    for name, ports in backends.items():
        ports = [ports] if isinstance(ports, int) else list(ports)

        def replicas(m: re.Match[str], ports=ports) -> str:
            # Loopback addresses never need `resolve` (nor have older nginx versions it).
            params = m.group(2).replace(" resolve", "")
            return "".join(f"{m.group(1)}127.0.0.1:{port}{params};\n" for port in ports)

        text = re.sub(rf"(^\s*server\s+){re.escape(name)}:8080\b([^;]*);\n", replicas, text,
                      flags=re.M)
    return text


@dataclass
class Nginx:
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def running_nginx(backends: Mapping[str, int | Sequence[int]],
                  conf: Path = CONF) -> Iterator[Nginx]:
    """nginx with `conf` rewritten for loopback, listening until the block ends."""
    assert Path(NGINX).is_file(), f"{NGINX} is missing: install nginx (make setup-test)"
    # Outside pytest's tmp_path (mode 700): nginx workers run as another user when we are root,
    # and must reach their temp files.
    ngx_dir = Path(tempfile.mkdtemp(prefix="jpip-nginx-"))
    ngx_dir.chmod(0o755)
    listen = free_port()
    conf_path = ngx_dir / "nginx.conf"
    conf_path.write_text(rewrite_conf(conf.read_text(), ngx_dir, listen, backends))
    stderr = (ngx_dir / "stderr.log").open("wb")
    proc = subprocess.Popen([NGINX, "-p", str(ngx_dir), "-c", str(conf_path),
                             "-e", str(ngx_dir / "error.log"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=stderr)
    nginx = Nginx(listen, ngx_dir)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited: {(ngx_dir / 'stderr.log').read_text()} "
                            f"{nginx.error_log()}")
            try:
                with socket.create_connection(("127.0.0.1", listen), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not start listening")
                time.sleep(0.02)
        yield nginx
    finally:
        stop_process(proc, timeout=5)
        stderr.close()
        shutil.rmtree(ngx_dir, ignore_errors=True)
