"""Server subprocesses for the benchmark, and what /proc says about them.

Servers run as child processes (not in the harness) so their CPU time and memory are theirs
alone: CPU from /proc/PID/task/*/schedstat (or utime+stime of /proc/PID/stat), VmRSS/VmHWM
from /proc/PID/status.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    # The server's --port 0 would work, but then nothing tells us which port it got.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """CPU time of a process (all its live threads), in seconds.

    From /proc/PID/task/*/schedstat (nanoseconds) when the kernel has it: utime+stime of
    /proc/PID/stat count 10 ms ticks, too coarse for 200 requests of 0.1 ms each.
    """
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        total = 0
    if total:
        return total / 1e9
    return stat_cpu_seconds(pid)


def stat_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, dead ones too), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int, name: str) -> int:
    """A VmRSS-like field of /proc/PID/status, in KiB (0 if absent)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants (a supervisor and its workers)."""
    total = cpu_seconds(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return total
    return total + sum(tree_cpu_seconds(c) for c in children)


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


@dataclass
class ServerProcess:
    """One server child process on 127.0.0.1; use as a context manager."""

    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/healthz"
    cwd: Path = ROOT
    proc: subprocess.Popen | None = None
    _log: object = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # a file, not a pipe: a full pipe would stall it
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONPATH", str(ROOT))
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.base_url + self.health_path, timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not come up in {timeout:g} s; see {self.log_path}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: a profiled server writes its profile then), SIGKILL if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        return status_kib(self.pid, "VmHWM")

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def jpip_server(root: Path, cache_dir: Path, log_path: Path, *, profile: Path | None = None,
                extra_env: dict[str, str] | None = None,
                extra_args: list[str] | None = None) -> ServerProcess:
    """Our server (python -m server.cli); with `profile` (a file stem) under pyinstrument,
    which starts sampling when sent SIGUSR1."""
    port = free_port()
    args = ["--root", str(root), "--host", "127.0.0.1", "--port", str(port),
            "--index-cache-dir", str(cache_dir), *(extra_args or [])]
    if profile is None:
        argv = [sys.executable, "-m", "server.cli", *args]
    else:
        argv = [sys.executable, "-m", "bench.profiled_server", "--profile-out", str(profile),
                "--on-signal", "--", *args]
    return ServerProcess(argv, port, log_path, env=dict(extra_env or {}))


def baseline_server(log_path: Path) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "bench.baseline_server", "--port", str(port)]
    return ServerProcess(argv, port, log_path, health_path="/healthz")
