"""`jpip-server --workers N` as a user runs it: N worker processes on one socket, a dead
worker replaced, SIGTERM draining every in-flight response, /metrics adding up all workers.
The sessions live in a real redis-server (tests/redis_server.py)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from jpip.jpp import EndOfResponse, parse_stream
from tests.conftest import CORPUS, INTEROP, PROJECT_ROOT
from tests.redis_server import RedisServer, running_redis
from tests.server_process import ServerProcess, free_port, running_server, server_command

LARGE = "rgb4096.jp2"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    shutil.copy(CORPUS / "file1.jp2", folder / "file1.jp2")
    shutil.copy(INTEROP / LARGE, folder / LARGE)
    return folder


def workers_of(server: ServerProcess) -> set[int]:
    """The supervisor's child processes (its workers)."""
    pid = server.proc.pid
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def wait_for(condition, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def healthz_pid(url: str) -> int:
    """The pid of the worker that answered /healthz."""
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
        return json.load(r)["pid"]


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


def test_workers_need_a_shared_session_store(image_root: Path) -> None:
    done = subprocess.run(server_command("--root", str(image_root), "--port", str(free_port()),
                                         "--workers", "2"),
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "need a shared session store (--session-store redis://" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_dead_worker_is_replaced_and_metrics_cover_all_workers(root, redis, tmp_path) -> None:
    with running_server(root, "--workers", "2", "--session-store", redis.url,
                        index_cache=tmp_path / "ix") as server:
        wait_for(lambda: len(workers_of(server)) == 2, what="two workers")
        first = workers_of(server)
        seen: set[int] = set()

        def both_seen() -> bool:
            # A new connection each time: any worker may take it (on a loaded machine one
            # worker can take hundreds in a row while the other is still warming up).
            seen.add(healthz_pid(server.url))
            return seen == first

        wait_for(both_seen, what="both workers answering")
        victim = min(first)
        subprocess.run(["kill", "-KILL", str(victim)], check=True)
        wait_for(lambda: len(workers_of(server) - first) == 1, what="a new worker")
        now = workers_of(server)
        assert victim not in now and len(now) == 2
        answered: set[int] = set()
        made = [0]  # requests since the kill

        def both_answer() -> bool:
            made[0] += 1
            pid = healthz_pid(server.url)  # every request is answered, by either worker
            assert pid in now
            answered.add(pid)
            return answered == now

        wait_for(both_answer, what="the new worker serving")
        # Requests since the kill, all answered by live workers: whichever worker answers
        # /metrics counts them all once each shared its figures (every second).
        def all_counted() -> bool:
            made[0] += 1
            m = metrics(server.url)  # (this one is counted once it is answered)
            statuses = sum(v for k, v in m.items() if k.startswith("jpip_requests_total"))
            by_worker = {k: v for k, v in m.items() if k.startswith("jpip_worker_requests_total")}
            assert statuses == sum(by_worker.values())  # one view of all workers
            return len(by_worker) >= 2 and statuses >= made[0] - 1

        wait_for(all_counted, what="every worker's requests in /metrics")
        m = metrics(server.url)
        starts = {k: v for k, v in m.items() if k.startswith("jpip_worker_starts_total")}
        assert sorted(starts.values()) == [1.0, 2.0], starts  # one worker started twice


async def test_sigterm_drains_every_worker(root, redis, tmp_path) -> None:
    """SIGTERM while a large response is being read slowly: it still arrives whole (EOR), no
    new connection is taken, every worker and the supervisor exit with status 0."""
    with running_server(root, "--workers", "2", "--session-store", redis.url,
                        index_cache=tmp_path / "ix") as server:
        wait_for(lambda: len(workers_of(server)) == 2, what="two workers")
        children = workers_of(server)
        body = bytearray()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/jpip?target={LARGE}&fsiz=4096,4096"
                                "&type=jpp-stream") as r:
                assert r.status == 200
                body += await r.content.read(100_000)
                server.proc.send_signal(signal.SIGTERM)
                while chunk := await r.content.read(200_000):
                    body += chunk
                    time.sleep(0.05)  # a slow reader: the response outlasts the signal
        items = list(parse_stream(bytes(body)))
        assert isinstance(items[-1], EndOfResponse) and items[-1].reason in (1, 2)
        assert len(body) > 3_000_000
        assert server.proc.wait(30) == 0
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or \
                "zombie" in Path(f"/proc/{pid}/status").read_text()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{server.url}/healthz", timeout=1)
