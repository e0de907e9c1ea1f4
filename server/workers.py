"""`jpip-server --workers N`: N worker processes serving one listening socket, supervised.

One Python process uses one core; the supervisor (`supervise`) lets a server use N:

- It opens the listening socket itself (a port in use is reported at once, exit 1), then starts
  each worker as `python -m server.entry` with the same arguments, with the socket inherited
  (its descriptor number in `_JPIP_LISTEN_FD`) and the worker's number in `_JPIP_WORKER`. All
  workers accept on that one socket: an idle worker takes the next connection, a busy one does
  not compete for it. Sessions must live in a shared store (`--session-store redis://...`,
  checked by the config), since any worker may get any request.
- A worker that exits while the server runs is started again under the same number, at once
  the first time and after a pause that doubles (up to `MAX_RESTART_PAUSE`) while workers keep
  dying young, so a crash loop does not spin.
- SIGTERM or SIGINT: every worker gets SIGTERM and drains (stops accepting, lets in-flight
  responses finish for `--shutdown-grace` seconds); one still running `KILL_MARGIN` seconds
  after that is killed. Exit status 0.
- Workers get SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so none outlives it.
- Metrics: workers share a fresh directory for prometheus_client's multiprocess mode (removed
  at exit), so `/metrics` from any worker covers all of them; a dead worker's live gauges go.

The supervisor imports no event loop and serves nothing itself.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

log = logging.getLogger("jpip.workers")

LISTEN_FD_ENV = "_JPIP_LISTEN_FD"
WORKER_ENV = "_JPIP_WORKER"
SUPERVISOR_ENV = "_JPIP_SUPERVISOR"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BACKLOG = 1024
TICK = 0.1                # seconds between looks at the workers
YOUNG = 5.0               # a worker dying sooner than this after its start died young
MAX_RESTART_PAUSE = 5.0
KILL_MARGIN = 5.0
_PR_SET_PDEATHSIG = 1


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port that child processes inherit (OSError if not)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def inherited_socket() -> socket.socket | None:
    """In a worker: the supervisor's listening socket (None when this is no worker)."""
    fd = os.environ.get(LISTEN_FD_ENV)
    if fd is None:
        return None
    die_with_supervisor()
    return socket.socket(fileno=int(fd))


def die_with_supervisor() -> None:
    """SIGTERM to this worker when its supervisor dies (Linux); exit now if it is gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: a killed supervisor leaves workers to be stopped by hand
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor is not None and os.getppid() != int(supervisor):
        sys.exit(0)  # it died before we could ask to be told


@dataclass
class _Worker:
    number: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pause: float = 0.0        # before the next start, after dying young
    restart_at: float = 0.0


class Supervisor:
    """Starts, watches and stops the workers of one server."""

    def __init__(self, count: int, argv: list[str], sock: socket.socket, *,
                 shutdown_grace: float) -> None:
        self.argv = argv
        self.sock = sock
        self.shutdown_grace = shutdown_grace
        self.workers = [_Worker(n) for n in range(count)]
        self.metrics_dir = tempfile.mkdtemp(prefix="jpip-metrics-")
        self.stopping = False

    def _start(self, w: _Worker) -> None:
        env = {**os.environ, LISTEN_FD_ENV: str(self.sock.fileno()), WORKER_ENV: str(w.number),
               SUPERVISOR_ENV: str(os.getpid()), MULTIPROC_ENV: self.metrics_dir}
        w.proc = subprocess.Popen([sys.executable, "-m", "server.entry", *self.argv], env=env,
                                  pass_fds=(self.sock.fileno(),))
        w.started = time.monotonic()
        log.info("worker %d started (pid %d)", w.number, w.proc.pid)

    def _reap(self, w: _Worker, now: float) -> None:
        """A worker exited: note it and plan its restart."""
        assert w.proc is not None
        code = w.proc.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        _forget_metrics(w.proc.pid, self.metrics_dir)
        young = now - w.started < YOUNG
        w.pause = min(max(w.pause * 2, TICK), MAX_RESTART_PAUSE) if young else 0.0
        w.restart_at = now + w.pause
        log.warning("worker %d (pid %d) exited with %s; starting it again%s", w.number,
                    w.proc.pid, how, f" in {w.pause:g} s" if w.pause else "")
        w.proc = None

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for w in self.workers:
            self._start(w)
        try:
            while not self.stopping:
                now = time.monotonic()
                for w in self.workers:
                    if w.proc is not None and w.proc.poll() is not None:
                        self._reap(w, now)
                    if w.proc is None and now >= w.restart_at and not self.stopping:
                        self._start(w)
                time.sleep(TICK)
            return self._drain()
        finally:
            self.sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _drain(self) -> int:
        """Every worker drains; those still running after the grace period are killed."""
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        log.info("stopping %d workers (in-flight responses get %g s)", len(live),
                 self.shutdown_grace)
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        self.sock.close()  # no new connections from here
        deadline = time.monotonic() + self.shutdown_grace + KILL_MARGIN
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time: killing it", proc.pid)
                proc.kill()
                proc.wait()
        return 0


def _forget_metrics(pid: int, directory: str) -> None:
    try:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid, directory)
    except OSError:
        pass
