"""A bounded load test of sessions: 10,000 sessions opened over loopback against the real app.

It reports (prints, and records as test properties) the server process's RSS before and after,
and checks: the model memory of an idle session is small, the cap evicts the least recently
used idle session, idle sessions expire on their own (the background sweep), and once every
session is closed nothing is left behind: no session, channel, file descriptor or task.
"""
from __future__ import annotations

import asyncio
import os
import random

import aiohttp

from server.app import create_app
from server.config import ServerConfig
from server.jpip_handler import STATE_KEY
from tests.conftest import INTEROP

SESSIONS = int(os.environ.get("JPIP_LOAD_SESSIONS", "10000"))
CONCURRENCY = 16
IMAGE = "rgb4096.jp2"


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _open_sessions(base: str, count: int, seed: int) -> list[str]:
    """`count` sessions, each opened with one 64x64 window at fsiz=512: their cids."""
    rng = random.Random(seed)
    queue = [(rng.randrange(448), rng.randrange(448)) for _ in range(count)]
    cids: list[str] = []
    conn = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(base, connector=conn) as http:
        async def worker() -> None:
            while queue:
                x, y = queue.pop()
                url = (f"/jpip?target={IMAGE}&cnew=http&type=jpp-stream&fsiz=512,512"
                       f"&roff={x},{y}&rsiz=64,64")
                async with http.get(url) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
                    cids.append(resp.headers["JPIP-cnew"].split(",")[0].removeprefix("cid="))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return cids


async def test_ten_thousand_sessions(aiohttp_server, tmp_path, record_property) -> None:
    config = ServerConfig(root=INTEROP, index_cache_dir=tmp_path / "ix", port=0,
                          max_sessions=SESSIONS, session_idle_timeout=600)
    app = create_app(config)
    server = await aiohttp_server(app)
    state = app[STATE_KEY]
    base = str(server.make_url("/"))
    # Warm up: the index is built and the code paths are loaded before anything is counted.
    await _open_sessions(base, 1, seed=0)
    await state.sessions.close_all()
    fds0, tasks0, rss0 = open_fds(), len(asyncio.all_tasks()), rss_mib()

    cids = await _open_sessions(base, SESSIONS, seed=1)
    rss1 = rss_mib()
    assert len(state.sessions) == SESSIONS == len(set(cids))
    model_bytes = sum(s.model.nbytes for s in state.sessions.sessions())
    report = {"sessions": SESSIONS, "rss_before_mib": round(rss0, 1),
              "rss_after_mib": round(rss1, 1),
              "rss_kib_per_session": round((rss1 - rss0) * 1024 / SESSIONS, 2),
              "model_bytes_per_session": round(model_bytes / SESSIONS, 1)}
    for k, v in report.items():
        record_property(k, v)
    print(f"\nsession load: {report}")
    # The whole process (client side included) stays far below 1 GB for 10,000 sessions.
    assert rss1 - rss0 < 512 * SESSIONS / 10000
    assert model_bytes / SESSIONS < 4096

    # At the cap, a new session evicts the least recently used idle one.
    extra = await _open_sessions(base, 1, seed=2)
    assert len(state.sessions) == SESSIONS
    async with aiohttp.ClientSession(base) as http:
        async with http.get(f"/jpip?cid={cids[0]}&fsiz=64,64") as resp:
            assert resp.status == 503  # the oldest session was evicted
        async with http.get(f"/jpip?cid={extra[0]}&fsiz=64,64") as resp:
            assert resp.status == 200

    # Expiry: with every session idle past the timeout, one sweep drops them all.
    state.sessions.idle_timeout = 0
    assert await state.sessions.expire() == SESSIONS
    assert len(state.sessions) == 0 and state.sessions.channel_count == 0

    # Nothing is left behind once the client connections are gone.
    await asyncio.sleep(0.1)
    assert open_fds() <= fds0
    assert len(asyncio.all_tasks()) <= tasks0


async def test_idle_sessions_expire_without_requests(aiohttp_server, tmp_path) -> None:
    """The background sweep expires idle sessions even when no request comes to trigger it."""
    config = ServerConfig(root=INTEROP, index_cache_dir=tmp_path / "ix", port=0,
                          session_idle_timeout=0.2)
    app = create_app(config)
    server = await aiohttp_server(app)
    await _open_sessions(str(server.make_url("/")), 3, seed=3)
    state = app[STATE_KEY]
    assert len(state.sessions) == 3
    for _ in range(40):
        await asyncio.sleep(0.05)
        if len(state.sessions) == 0:
            break
    assert len(state.sessions) == 0
