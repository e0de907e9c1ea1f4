"""Debian's nginx with docker/nginx.conf in front of two `jpip-server` processes that share
their sessions through a real redis-server, as docker/compose.yaml deploys them.

nginx sends a channel's requests to one server (consistent hashing on the cid) for locality
only: when that server goes away, the session continues on the other, with nothing sent twice.
Every window decodes to exactly OpenJPEG's pixels.
"""
from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import aiohttp
import numpy as np
import pytest

from client.api import JPIPClient
from codestream.source import build_source
from tests.conftest import CORPUS
from tests.interop.nginx_harness import CONF, Nginx, backend_names, running_nginx
from tests.oracle import assert_same_pixels, decode_codestream
from tests.redis_server import running_redis
from tests.server_process import ServerProcess, running_server

SAMPLE = "file1.jp2"  # 768x512 RGB, 5 levels
SESSIONS = 4
# (fsiz, roff, rsiz, resolution level discarded, crop rows, crop columns)
WINDOWS = [
    ((192, 128), None, None, 2, slice(None), slice(None)),
    ((384, 256), (100, 50), (128, 96), 1, slice(50, 146), slice(100, 228)),
    ((768, 512), (300, 200), (200, 150), 0, slice(200, 350), slice(300, 500)),
    ((768, 512), (0, 0), (300, 300), 0, slice(0, 300), slice(0, 300)),
]


@dataclass
class Cluster:
    nginx: Nginx
    servers: list[ServerProcess]


@pytest.fixture
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    (name,) = backend_names(CONF.read_text())  # one name, resolving to every replica
    with ExitStack() as stack:
        redis = stack.enter_context(running_redis())
        servers = [stack.enter_context(running_server(
            CORPUS, "--session-store", redis.url, "--session-lease", "1",
            index_cache=tmp_path_factory.mktemp(f"ix{n}"))) for n in range(2)]
        nginx = stack.enter_context(running_nginx({name: [s.port for s in servers]}))
        yield Cluster(nginx, servers)


def original(rlevel: int) -> np.ndarray:
    with build_source(CORPUS / SAMPLE) as src:
        ix = src.codestreams[0]
        data = bytes(src.view[ix.offset:ix.offset + ix.length])
    return np.stack(decode_codestream(data, rlevel=rlevel), axis=-1)


def loads(server: ServerProcess) -> float:
    """Session loads by this server: one per request naming a channel."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('jpip_session_store_round_trips_total{op="load"}'):
                return float(line.split()[-1])
    return 0.0


async def test_sessions_through_nginx_keep_to_one_server(cluster: Cluster) -> None:
    wants = [original(rlevel)[rows, cols] for _, _, _, rlevel, rows, cols in WINDOWS]
    for _ in range(SESSIONS):
        before = [loads(s) for s in cluster.servers]
        async with JPIPClient(f"{cluster.nginx.url}/jpip?target={SAMPLE}") as client:
            for (fsiz, roff, rsiz, *_), want in zip(WINDOWS, wants, strict=True):
                bands = await client.window(fsiz=fsiz, roff=roff, rsiz=rsiz)
                assert_same_pixels([want], [np.stack(bands, axis=-1)], f"{client.cid} {fsiz}")
            assert client.cache.duplicate_bytes == 0
        # Every request naming the channel (3 windows and cclose) went to one server.
        added = sorted(loads(s) - b for s, b in zip(cluster.servers, before, strict=True))
        assert added == [0, len(WINDOWS)], added


async def test_a_session_moves_when_its_server_goes_away(cluster: Cluster) -> None:
    wants = [original(rlevel)[rows, cols] for _, _, _, rlevel, rows, cols in WINDOWS]
    async with JPIPClient(f"{cluster.nginx.url}/jpip?target={SAMPLE}") as client:
        for i, ((fsiz, roff, rsiz, *_), want) in enumerate(zip(WINDOWS, wants, strict=True)):
            if i == 2:
                # The server the channel is routed to dies: nginx moves it to the other one.
                (holder,) = [s for s in cluster.servers if loads(s) > 0]
                holder.proc.send_signal(signal.SIGKILL)
                holder.proc.wait(10)
            bands = await client.window(fsiz=fsiz, roff=roff, rsiz=rsiz)
            assert_same_pixels([want], [np.stack(bands, axis=-1)], f"window {i}")
        assert client.cache.duplicate_bytes == 0


async def test_cclose_closes_the_session_for_every_server(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.nginx.url}/jpip?target={SAMPLE}&fsiz=64,64&cnew=http"
                            "&type=jpp-stream") as r:
            assert r.status == 200
            await r.read()
            cid = dict(kv.split("=", 1) for kv in r.headers["JPIP-cnew"].split(","))["cid"]
        async with http.get(f"{cluster.nginx.url}/jpip?cclose={cid}") as r:
            assert r.status == 200, await r.text()
        for server in cluster.servers:  # asked directly: the channel is gone everywhere
            async with http.get(f"{server.url}/jpip?cid={cid}&fsiz=128,128") as r:
                assert r.status == 503


async def test_stateless_requests_work_through_any_server(cluster: Cluster) -> None:
    async with JPIPClient(f"{cluster.nginx.url}/{SAMPLE}", stateless=True) as client:
        for (fsiz, roff, rsiz, rlevel, rows, cols) in WINDOWS[:2]:
            bands = await client.window(fsiz=fsiz, roff=roff, rsiz=rsiz)
            assert_same_pixels([original(rlevel)[rows, cols]], [np.stack(bands, axis=-1)],
                               f"stateless {fsiz}")
