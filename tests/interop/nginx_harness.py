"""Debian's real nginx with the repository's docker/nginx.conf, on loopback.

The file is rewritten only where it must be: addresses (the listen port, each backend name to a
loopback port), pid/log/temp paths, one worker. Where the local nginx is older than the image's
(Debian 12 has 1.22; `resolve` on upstream servers needs 1.27.3) that one parameter is
dropped: loopback addresses never need a lookup. Every directive that matters for JPIP (no
buffering, keep-alive, forwarded headers, routing by channel id) is the one deployed.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

NGINX = "/usr/sbin/nginx"
CONF = PROJECT_ROOT / "docker" / "nginx.conf"
RESOLVE_SINCE = (1, 27, 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_version() -> tuple[int, ...]:
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert m, f"cannot read the nginx version from {out!r}"
    return tuple(int(g) for g in m.groups())


def backend_names(text: str) -> set[str]:
    """The host names of the upstream servers in docker/nginx.conf (jpip-a, jpip-b, ...)."""
    return set(re.findall(r"^\s*server\s+([A-Za-z0-9_.-]+):8080\b", text, re.M))


def instances(conf: str) -> dict[str, str]:
    """instance id -> backend host name, read from docker/nginx.conf: the map sends `ID.` to
    upstream jpip_X, whose one server is the backend started with --instance-id ID."""
    upstreams = {name: re.findall(r"server\s+([A-Za-z0-9_.-]+):8080", body)
                 for name, body in re.findall(r"upstream\s+(\w+)\s*\{([^}]*)\}", conf)}
    routes = re.findall(r'"~\^([A-Za-z0-9_-]+)\\\."\s+(\w+);', conf)
    assert routes, "docker/nginx.conf has no cid routes"
    out = {}
    for instance, upstream in routes:
        assert len(upstreams.get(upstream, [])) == 1, f"{upstream} is not one server"
        out[instance] = upstreams[upstream][0]
    return out


def rewrite_conf(text: str, tmp: Path, listen: int, backends: Mapping[str, int]) -> str:
    """docker/nginx.conf with loopback addresses and every writable path under `tmp`.

    `backends` maps each backend host name of the file to the loopback port standing for it."""
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
    for name, port in backends.items():
        text = re.sub(rf"(^\s*server\s+){re.escape(name)}:8080\b", rf"\g<1>127.0.0.1:{port}",
                      text, flags=re.M)
    if nginx_version() < RESOLVE_SINCE:
        text, n = re.subn(r"(^\s*server\s+127\.0\.0\.1:\d+)\s+resolve\s*;", r"\1;", text,
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
def running_nginx(backends: Mapping[str, int], conf: Path = CONF) -> Iterator[Nginx]:
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
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr.close()
        shutil.rmtree(ngx_dir, ignore_errors=True)
