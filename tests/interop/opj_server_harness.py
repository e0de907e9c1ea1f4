"""Helpers for the OpenJPEG JPIP interop tests (opj_server, opj_jpip_transcode).

openjpip's private tile-header convention, seen on the wire from opj_server and required by
opj_jpip_transcode: tile-header data-bin t holds the tile-part header from just after the SOT
marker code up to and including SOD, i.e. `Lsot Isot Psot TPsot TNsot <markers> FF93`. Our
server (and the standard's reading in shared/jpip-protocol.md section 4.2) sends the marker
segments only. The two converters below map one convention onto the other; they are test
scaffolding, not a proposal to change either side.

`opj_stack()` runs opj_server (a FastCGI program) behind nginx on 127.0.0.1: the test process
creates the unix listening socket and hands it to opj_server as fd 0, which is how libfcgi
expects to be started (what spawn-fcgi does), so no extra package is needed. opj_server always
opens an auxiliary TCP listener on 0.0.0.0:60000, so it runs in its own network namespace
(`unshare -n`) when the machine allows it; the unix socket works across namespaces.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from codestream.markers import COD, read_segment
from jpip.jpp import TILE_HEADER, EndOfResponse, MessageWriter, message_bytes, parse_stream
from tests.server_process import stop_process

OPJ_SERVER = Path("/usr/bin/opj_server")            # Debian libopenjpip-server
OPJ_TRANSCODE = Path("/usr/bin/opj_jpip_transcode")  # Debian libopenjpip-dec-server
NGINX = Path("/usr/sbin/nginx")                      # Debian nginx-light
UNSHARE = Path("/usr/bin/unshare")                   # util-linux (essential)
FCGI_LOCATION = "/myFCGI"
SOD_MARKER = b"\xff\x93"
SOT_BODY = struct.Struct(">HHIBB")  # Lsot Isot Psot TPsot TNsot
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
TRANSCODE_TIMEOUT = 30.0


def require_binary(path: Path, package: str) -> None:
    """A missing tool is a failure, not a skip: `make test` installs it (system-deps.sh)."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} is missing: install the Debian package {package} "
                    "(scripts/system-deps.sh --test)")


# ----- openjpip's tile-header convention ---------------------------------------------------

def to_openjpip_tile_headers(stream: bytes) -> bytes:
    """Our JPP-stream with every tile-header bin wrapped as openjpip writes it: SOT body
    before the marker segments (Psot 0: opj_jpip_transcode recomputes it) and SOD after.
    Our server sends each tile-header bin whole, in one message, which this relies on."""
    writer = MessageWriter()
    out = bytearray()
    for item in parse_stream(stream):
        if isinstance(item, EndOfResponse):
            out += writer.eor(item.reason, item.body)
            continue
        data = item.data
        if item.bin_class == TILE_HEADER:
            assert item.offset == 0 and item.is_last, "tile-header bin split over messages"
            data = SOT_BODY.pack(10, item.bin_id, 0, 0, 1) + data + SOD_MARKER
        out += message_bytes(writer, item.bin_class, item.csn, item.bin_id, item.offset, data,
                             item.is_last, item.aux)
    return bytes(out)


def from_openjpip_tile_header(data: bytes | bytearray) -> bytes:
    """The marker segments of an openjpip tile-header bin (SOT body and SOD removed)."""
    data = bytes(data)
    if len(data) < SOT_BODY.size + 2 or data[:2] != b"\x00\x0a" or data[-2:] != SOD_MARKER:
        raise ValueError(f"not an openjpip tile-header bin: {data[:16].hex()}...")
    return data[SOT_BODY.size:-2]


def main_cod_levels(codestream: bytes) -> int:
    """Decomposition levels of the main-header COD (SPcod's first byte)."""
    pos = 2
    while True:
        seg = read_segment(codestream, pos, len(codestream))
        if seg.code == COD:
            return codestream[seg.offset + 9]
        pos = seg.end


def run_transcode(jpp: Path, out: Path) -> subprocess.CompletedProcess[bytes]:
    """opj_jpip_transcode in.jpp out.j2k (the output extension picks J2K, not JP2)."""
    return subprocess.run([str(OPJ_TRANSCODE), str(jpp), str(out)], capture_output=True,
                          timeout=TRANSCODE_TIMEOUT, check=False)


def describe_exit(proc: subprocess.CompletedProcess[bytes]) -> str:
    rc = proc.returncode
    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
    err = proc.stderr.decode(errors="replace").strip()[-300:]
    return f"{how}; stderr: {err!r}"


# ----- opj_server behind nginx -------------------------------------------------------------

@dataclass
class OpjStack:
    base: str          # http://127.0.0.1:PORT/myFCGI
    workdir: Path
    namespaced: bool   # opj_server in its own network namespace

    def url(self, target: str) -> str:
        return f"{self.base}?target={target}"

    def logs(self) -> str:
        parts = []
        for name in ("opj_server.err", "opj_server.out", "error.log"):
            p = self.workdir / name
            if p.exists():
                parts.append(f"--- {name}\n{p.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not dlopen after fork


def _die_with_parent() -> None:
    """Children get SIGKILL if the test process dies, so nothing outlives a crashed run."""
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _netns_prefix() -> list[str]:
    """`unshare -n` (root) or `unshare -r -n` (user namespaces), whichever works here."""
    for prefix in ([str(UNSHARE), "-n"], [str(UNSHARE), "-r", "-n"]):
        try:
            ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=5).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return prefix
    return []


_FASTCGI_PARAMS = ("QUERY_STRING $query_string", "REQUEST_METHOD $request_method",
                   "CONTENT_TYPE $content_type", "CONTENT_LENGTH $content_length",
                   "SCRIPT_NAME $fastcgi_script_name", "REQUEST_URI $request_uri",
                   "SERVER_PROTOCOL $server_protocol", "GATEWAY_INTERFACE CGI/1.1",
                   "REMOTE_ADDR $remote_addr", "SERVER_NAME $server_name")


def _nginx_conf(work: Path, port: int, sock: Path) -> str:
    params = "".join(f"            fastcgi_param {p};\n" for p in _FASTCGI_PARAMS)
    temps = "".join(f"    {k}_temp_path {work}/{k};\n"
                    for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"worker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log info;\n"
            "events { worker_connections 64; }\n"
            f"http {{\n    access_log {work}/access.log;\n{temps}"
            f"    server {{\n        listen 127.0.0.1:{port};\n"
            f"        location {FCGI_LOCATION} {{\n{params}"
            f"            fastcgi_pass unix:{sock};\n"
            "            fastcgi_read_timeout 60s;\n        }\n    }\n}\n")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    stop_process(proc, timeout=STOP_TIMEOUT)


def _get(url: str, timeout: float) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


@contextlib.contextmanager
def opj_stack(images: list[Path], warm: list[str]) -> Iterator[OpjStack]:
    """opj_server serving `images` (symlinked into its working directory) behind nginx.

    `warm` targets are requested once, in order, before yielding: opj_server numbers
    codestreams by the order it first opens targets (CSn 0, 1, ...), so this fixes each
    target's CSn for the tests. Everything is stopped and removed on exit, also on failure.
    """
    require_binary(OPJ_SERVER, "libopenjpip-server")
    require_binary(NGINX, "nginx-light")
    # Outside pytest's tmp_path (mode 700): nginx workers run as `nobody` when we are root
    # and must reach the socket.
    work = Path(tempfile.mkdtemp(prefix="jpip-opj-"))
    work.chmod(0o755)
    images_dir = work / "images"
    images_dir.mkdir()
    for img in images:
        assert img.is_file(), f"interop image {img} is missing"
        (images_dir / img.name).symlink_to(img)
    sock_path = work / "fcgi.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    opj: subprocess.Popen[bytes] | None = None
    ngx: subprocess.Popen[bytes] | None = None
    try:
        listener.bind(str(sock_path))
        sock_path.chmod(0o777)
        listener.listen(16)
        prefix = _netns_prefix()
        if not prefix:
            warnings.warn("no network namespace available: opj_server's auxiliary listener "
                          "on port 60000 is open on all interfaces for this test", stacklevel=2)
        with open(work / "opj_server.out", "wb") as out, \
                open(work / "opj_server.err", "wb") as err:
            # fd 0 is the FastCGI listening socket (libfcgi's convention).
            opj = subprocess.Popen([*prefix, str(OPJ_SERVER)], stdin=listener.fileno(),
                                   stdout=out, stderr=err, cwd=images_dir,
                                   preexec_fn=_die_with_parent)
        listener.close()  # opj_server holds its own copy

        port = _free_port()
        conf = work / "nginx.conf"
        conf.write_text(_nginx_conf(work, port, sock_path))
        with open(work / "nginx.err", "wb") as err:
            ngx = subprocess.Popen([str(NGINX), "-p", str(work), "-c", str(conf),
                                    "-e", str(work / "error.log"), "-g", "daemon off;"],
                                   stdout=subprocess.DEVNULL, stderr=err,
                                   preexec_fn=_die_with_parent)
        stack = OpjStack(f"http://127.0.0.1:{port}{FCGI_LOCATION}", work, bool(prefix))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if ngx.poll() is not None or opj.poll() is not None:
                pytest.fail(f"nginx or opj_server exited at start\n{stack.logs()}\n"
                            f"{(work / 'nginx.err').read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"nginx did not listen within {START_TIMEOUT} s\n{stack.logs()}")
                time.sleep(0.02)
        for target in warm:
            try:
                status, ctype, body = _get(f"{stack.url(target)}&fsiz=8,8&type=jpp-stream",
                                           START_TIMEOUT)
            except OSError as e:
                pytest.fail(f"opj_server does not answer for {target}: {e}\n{stack.logs()}")
            if status != 200 or ctype != "image/jpp-stream" or not body:
                pytest.fail(f"opj_server warm-up of {target}: {status} {ctype!r} "
                            f"{len(body)} bytes\n{stack.logs()}")
        yield stack
    finally:
        listener.close()
        _stop(ngx)
        _stop(opj)
        shutil.rmtree(work, ignore_errors=True)
