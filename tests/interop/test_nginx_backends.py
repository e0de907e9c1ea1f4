"""Two `jpip-server` processes behind Debian's nginx with docker/nginx.conf.

Until sessions are shared between servers, a session lives in the server that opened it: each
server gets an instance id (--instance-id) that starts its channel ids, and nginx sends every
request naming a channel to that server. New sessions spread round-robin. Every window of every
session must arrive and decode to exactly OpenJPEG's pixels.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import aiohttp
import numpy as np
import pytest

from client.api import JPIPClient
from codestream.source import build_source
from tests.conftest import CORPUS
from tests.interop.nginx_harness import CONF, Nginx, instances, running_nginx
from tests.oracle import assert_same_pixels, decode_codestream
from tests.server_process import ServerProcess, running_server

SAMPLE = "file1.jp2"  # 768x512 RGB, 5 levels
SESSIONS = 6
# (fsiz, roff, rsiz, resolution level discarded, crop rows, crop columns)
WINDOWS = [
    ((192, 128), None, None, 2, slice(None), slice(None)),
    ((384, 256), (100, 50), (128, 96), 1, slice(50, 146), slice(100, 228)),
    ((768, 512), (300, 200), (200, 150), 0, slice(200, 350), slice(300, 500)),
]


@dataclass
class Cluster:
    nginx: Nginx
    servers: dict[str, ServerProcess]  # by instance id


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    by_instance = instances(CONF.read_text())
    assert len(by_instance) >= 2, "docker/nginx.conf routes to fewer than two servers"
    with ExitStack() as stack:
        servers = {
            instance: stack.enter_context(running_server(
                CORPUS, "--instance-id", instance,
                index_cache=tmp_path_factory.mktemp(f"ix-{instance}")))
            for instance in by_instance
        }
        nginx = stack.enter_context(running_nginx(
            {host: servers[instance].port for instance, host in by_instance.items()}))
        yield Cluster(nginx, servers)


def original(rlevel: int) -> np.ndarray:
    with build_source(CORPUS / SAMPLE) as src:
        ix = src.codestreams[0]
        data = bytes(src.view[ix.offset:ix.offset + ix.length])
    return np.stack(decode_codestream(data, rlevel=rlevel), axis=-1)


async def test_sessions_stay_on_the_server_that_opened_them(cluster: Cluster) -> None:
    wants = [original(rlevel)[rows, cols] for _, _, _, rlevel, rows, cols in WINDOWS]
    prefixes = []
    for _ in range(SESSIONS):
        async with JPIPClient(f"{cluster.nginx.url}/jpip?target={SAMPLE}") as client:
            for (fsiz, roff, rsiz, *_), want in zip(WINDOWS, wants, strict=True):
                bands = await client.window(fsiz=fsiz, roff=roff, rsiz=rsiz)
                assert_same_pixels([want], [np.stack(bands, axis=-1)], f"{client.cid} {fsiz}")
            assert client.cid is not None
            prefixes.append(client.cid.split(".")[0])
            # The server kept this session's model: nothing arrived twice.
            assert client.cache.duplicate_bytes == 0
    # Round-robin spread the new sessions over every server.
    assert set(prefixes) == set(cluster.servers), prefixes


async def test_cclose_reaches_the_server_holding_the_channel(cluster: Cluster) -> None:
    url = cluster.nginx.url
    async with aiohttp.ClientSession() as http:
        for _ in range(len(cluster.servers)):  # one session per server, round-robin
            async with http.get(f"{url}/jpip?target={SAMPLE}&fsiz=64,64&cnew=http"
                                "&type=jpp-stream") as r:
                assert r.status == 200
                await r.read()
                cid = dict(kv.split("=", 1) for kv in r.headers["JPIP-cnew"].split(","))["cid"]
            async with http.get(f"{url}/jpip?cid={cid}&fsiz=128,128&type=jpp-stream") as r:
                assert r.status == 200, await r.text()
                await r.read()
            async with http.get(f"{url}/jpip?cclose={cid}") as r:
                assert r.status == 200, await r.text()
            # Closed where it lived: the channel is gone.
            async with http.get(f"{url}/jpip?cid={cid}&fsiz=128,128&type=jpp-stream") as r:
                assert r.status == 503


async def test_stateless_requests_work_through_any_server(cluster: Cluster) -> None:
    async with JPIPClient(f"{cluster.nginx.url}/{SAMPLE}", stateless=True) as client:
        for (fsiz, roff, rsiz, rlevel, rows, cols) in WINDOWS[:2]:
            bands = await client.window(fsiz=fsiz, roff=roff, rsiz=rsiz)
            assert_same_pixels([original(rlevel)[rows, cols]], [np.stack(bands, axis=-1)],
                               f"stateless {fsiz}")
