"""Sessions shared through Redis: real `jpip-server` processes and a real `redis-server`.

Server A and server B name the same Redis (`--session-store redis://...`) and nothing else
links them: a session's requests are sent to A and B in turn, A is killed with SIGKILL between
two requests and in the middle of a response, two servers build one index at once, Redis goes
away and comes back. Every window must decode to exactly OpenJPEG's pixels, and the client
must never receive a byte twice.
"""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from redis import Redis

from cache.redis_sessions import DEFAULT_PREFIX
from client.api import JPIPClient, StreamError
from codestream.source import build_source
from jpip.jpp import EOR, EndOfResponse, parse_stream
from jpip.respond import CHUNK_TARGET
from tests.conftest import CORPUS, INTEROP
from tests.oracle import assert_same_pixels, decode_codestream
from tests.redis_server import RedisServer, running_redis
from tests.server_process import ServerProcess, running_server
from tests.tokens import AUDIENCE, hs_secret, mint

SAMPLE = "file1.jp2"  # 768x512 RGB, 5 levels
LARGE = "rgb4096.jp2"  # 4096x4096 RGB, 5 MB: responses of many chunks
# (fsiz, roff, rsiz, levels discarded, rows, columns of the full decode at that level)
WINDOWS = [
    ((192, 128), None, None, 2, slice(None), slice(None)),
    ((384, 256), (100, 50), (128, 96), 1, slice(50, 146), slice(100, 228)),
    ((768, 512), (300, 200), (200, 150), 0, slice(200, 350), slice(300, 500)),
    ((768, 512), (0, 0), (400, 300), 0, slice(0, 300), slice(0, 400)),
    ((384, 256), None, None, 1, slice(None), slice(None)),
    ((768, 512), None, None, 0, slice(None), slice(None)),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    shutil.copy(CORPUS / SAMPLE, folder / SAMPLE)
    shutil.copy(INTEROP / LARGE, folder / LARGE)
    return folder


@contextmanager
def servers(root: Path, redis: RedisServer, count: int = 2, *args: str,
            index_cache: Path | None = None) -> Iterator[list[ServerProcess]]:
    with ExitStack() as stack:
        yield [stack.enter_context(running_server(
            root, "--session-store", redis.url, "--session-lease", "1", *args,
            index_cache=index_cache)) for _ in range(count)]


def decoded(name: str, rlevel: int, area: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """OpenJPEG's decode of the image at `rlevel` levels discarded (of `area`: y0, x0, y1, x1
    on the reference grid, if given)."""
    with build_source(name) as src:
        ix = src.codestreams[0]
        data = bytes(src.view[ix.offset:ix.offset + ix.length])
    return np.stack(decode_codestream(data, rlevel=rlevel, area=area), axis=-1)


def route(client: JPIPClient, server: ServerProcess) -> None:
    """Sends the client's next channel requests to `server`, as a load balancer may."""
    client._channel_url = f"{server.url}/jpip"


@pytest.fixture(scope="module")
def originals(root) -> dict[int, np.ndarray]:
    return {level: decoded(str(root / SAMPLE), level) for level in {w[3] for w in WINDOWS}}


async def check_window(client: JPIPClient, window, originals, what: str) -> None:
    fsiz, roff, rsiz, level, rows, cols = window
    bands = await client.window(fsiz=fsiz, roff=roff, rsiz=rsiz)
    assert_same_pixels([originals[level][rows, cols]], [np.stack(bands, axis=-1)], what)
    assert client.cache.duplicate_bytes == 0, f"{what}: bytes received twice"


async def test_a_session_alternates_between_two_servers(root, originals) -> None:
    with running_redis() as redis, servers(root, redis) as (a, b):
        async with JPIPClient(f"{a.url}/jpip?target={SAMPLE}") as client:
            for i, window in enumerate(WINDOWS):
                server = (a, b)[i % 2]
                if client.cid is not None:
                    route(client, server)
                await check_window(client, window, originals, f"window {i} on {server.port}")
            cid = client.cid
        # cclose (sent by the client at the end, to B) closed the session for A as well.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{a.url}/jpip?cid={cid}&fsiz=64,64") as r:
                assert r.status == 503


async def test_a_server_killed_between_two_requests(root, originals) -> None:
    with running_redis() as redis, servers(root, redis) as (a, b):
        async with JPIPClient(f"{a.url}/jpip?target={SAMPLE}") as client:
            await check_window(client, WINDOWS[0], originals, "first window on A")
            await check_window(client, WINDOWS[1], originals, "second window on A")
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            route(client, b)
            for i, window in enumerate(WINDOWS[2:], 2):
                await check_window(client, window, originals, f"window {i} on B")


def channel_holder(redis: RedisServer, cid: str) -> str | None:
    """The process token holding the channel's lease in Redis (cache/redis_scripts.py), if
    any: set from the response's start (Begin) to its end."""
    with Redis.from_url(redis.url) as r:
        sid = r.get(f"{DEFAULT_PREFIX}c:{cid}")
        packed = r.hget(f"{DEFAULT_PREFIX}s:{sid.decode()}:chan", cid) if sid else None
    if packed is None:
        return None
    owner = packed.decode().split()[3]
    return None if owner == "-" else owner


async def test_a_server_killed_in_the_middle_of_a_response(root) -> None:
    """A dies holding the channel: stopped and killed as soon as Redis shows it answering a
    response of many chunks, so it never ends it. B answers the next request once A's lease
    ran out (1 s), from what A committed chunk by chunk: nothing is missing, and at most the
    one chunk A wrote but had not recorded yet is sent again."""
    with running_redis() as redis, servers(root, redis) as (a, b):
        window = {"fsiz": (4096, 4096), "roff": (0, 0), "rsiz": (4096, 2048)}
        async with JPIPClient(f"{a.url}/jpip?target={LARGE}") as client:
            await client.fetch(fsiz=(256, 256))  # opens the session on A
            route(client, a)
            response = asyncio.create_task(client.fetch(**window))
            for _ in range(5000):
                await asyncio.sleep(0.001)
                if channel_holder(redis, client.cid) is not None:
                    break
            else:
                raise AssertionError("A never began the response")
            a.proc.send_signal(signal.SIGSTOP)  # at once: A is mid-response
            a.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            with contextlib.suppress(aiohttp.ClientError, StreamError):
                await response  # cut short, or whole if A had written all before it stopped
            a.proc.wait(10)
            assert channel_holder(redis, client.cid) is not None  # A died holding it
            route(client, b)
            bands = await client.window(**window)
            waited = time.monotonic() - killed
            assert 0.3 < waited < 8, f"B answered {waited:.2f} s after A died"
            assert client.cache.duplicate_bytes <= CHUNK_TARGET + 16384
        want = decoded(str(root / LARGE), 0, area=(0, 0, 2048, 4096))
        assert_same_pixels([want], [np.stack(bands, axis=-1)], "window finished on B")


async def test_two_servers_building_one_index_at_once(root, tmp_path) -> None:
    """Two processes sharing an index cache directory get the first request for a large
    image at the same moment: one builds, the other loads what it saved; both serve."""
    cache = tmp_path / "index-cache"
    with running_redis() as redis, servers(root, redis, index_cache=cache) as (a, b):
        window = {"fsiz": (1024, 1024), "roff": (256, 256), "rsiz": (512, 512)}

        async def fetch(server: ServerProcess) -> np.ndarray:
            async with JPIPClient(f"{server.url}/jpip?target={LARGE}") as client:
                return np.stack(await client.window(**window), axis=-1)

        got = await asyncio.gather(fetch(a), fetch(b))
        builds = sum(metric(s, 'jpip_index_cache_total{result="build"}') for s in (a, b))
        assert builds == 1
        assert len(list(cache.glob("*.jpidx"))) == 1 and not list(cache.glob("*.tmp"))
    want = decoded(str(root / LARGE), 2)[256:768, 256:768]
    for image in got:
        assert_same_pixels([want], [image], "window after a shared build")


async def test_redis_stopped_and_restarted(root, originals) -> None:
    """Redis away: session requests get 503 with Retry-After (never 500), stateless requests
    are still served, /healthz says degraded; Redis back (its append-only file kept every
    session): the session continues where it was."""
    with running_redis(appendonly=True) as redis, servers(root, redis, 1) as (a,):
        async with JPIPClient(f"{a.url}/jpip?target={SAMPLE}") as client, \
                aiohttp.ClientSession() as http:
            await check_window(client, WINDOWS[0], originals, "before")
            await check_window(client, WINDOWS[1], originals, "before")
            redis.stop()
            statuses = []
            for _ in range(3):
                async with http.get(f"{a.url}/jpip?cid={client.cid}&fsiz=384,256") as r:
                    statuses.append(r.status)
                    assert r.status == 503 and int(r.headers["Retry-After"]) > 0
                async with http.get(f"{a.url}/jpip?target={SAMPLE}&fsiz=64,64&cnew=http") as r:
                    statuses.append(r.status)
                    assert r.status == 503
                async with http.get(f"{a.url}/jpip?target={SAMPLE}&fsiz=64,64") as r:
                    assert r.status == 200 and len(await r.read()) > 100  # stateless
            async with http.get(f"{a.url}/healthz") as r:
                assert r.status == 200
                assert (await r.json())["session_store"] == "unreachable"
            redis.start()
            await asyncio.sleep(0.6)  # the server's fail-fast pause
            for i, window in enumerate(WINDOWS[2:], 2):
                await check_window(client, window, originals, f"window {i} after")
            async with http.get(f"{a.url}/healthz") as r:
                assert (await r.json())["session_store"] == "ok"
        assert 500 not in statuses
        assert metric(a, 'jpip_requests_total{status="500"}') == 0


def metric(server: ServerProcess, name: str) -> float:
    try:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as r:
            text = r.read().decode()
    except urllib.error.URLError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _cid(headers) -> str:
    return dict(kv.split("=", 1) for kv in headers["JPIP-cnew"].split(","))["cid"]


async def test_preemption_and_qid_order_hold_across_servers(root) -> None:
    """A response being written by A is pre-empted by a newer request sent to B (A ends it at a
    message boundary with EOR 3, B then answers); a request with qid 3 sent to B waits until
    qid 2, sent to A later, has had its turn."""
    with running_redis() as redis, servers(root, redis) as (a, b):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{a.url}/jpip?target={LARGE}&fsiz=256,256&cnew=http&qid=1"
                                "&type=jpp-stream") as r:
                assert r.status == 200
                await r.read()
                cid = _cid(r.headers)
            base = f"jpip?cid={cid}&type=jpp-stream"

            # Pre-emption: a whole-image response read slowly on A, a new window on B.
            body = bytearray()
            async with http.get(f"{a.url}/{base}&fsiz=4096,4096") as slow:
                body += await slow.content.read(65536)
                newer = asyncio.create_task(_get(http, f"{b.url}/{base}&fsiz=512,512"))
                while chunk := await slow.content.read(65536):
                    body += chunk
                    # Slow enough that B's request reaches Redis and A sees it before A's
                    # last chunk, even on a loaded machine (5 ms per chunk lost that race).
                    await asyncio.sleep(0.02)
            status, newer_items = await newer
            items = parse_stream(bytes(body))
            assert isinstance(items[-1], EndOfResponse) and items[-1].reason == EOR.WINDOW_CHANGE
            assert status == 200 and newer_items[-1].reason in (EOR.WINDOW_DONE, EOR.IMAGE_DONE)

            # qid order: 3 reaches B first and waits for 2, sent to A a moment later.
            third = asyncio.create_task(_get(http, f"{b.url}/{base}&fsiz=1024,1024&qid=3&wait=yes",
                                             stamp=True))
            await asyncio.sleep(0.3)
            assert not third.done()
            second = await _get(http, f"{a.url}/{base}&fsiz=768,768&qid=2&wait=yes", stamp=True)
            status3, _, started3 = await third
            assert second[0] == status3 == 200
            assert started3 > second[2], "qid 3 was answered before qid 2's turn"


async def _get(http: aiohttp.ClientSession, url: str, stamp: bool = False):
    """(status, messages), and with `stamp` when the response's headers arrived."""
    async with http.get(url) as r:
        started = time.monotonic()
        data = await r.read()
        out = (r.status, parse_stream(data))
    return (*out, started) if stamp else out


async def test_a_session_stays_its_owners_on_every_server(root, tmp_path) -> None:
    """Access control with sessions in Redis: the session Alice opened on A is bound to her
    token's subject wherever her requests land. Bob's token (allowed the same target) gets 403
    on A and on B, for windows and cclose, and the session is untouched; Alice goes on on B,
    closes it there, and B's audit line names her."""
    secret = hs_secret(tmp_path / "jwt.key")
    alice, bob = (mint(secret, sub=who) for who in ("alice", "bob"))
    auth = ("--auth-jwt-key", str(tmp_path / "jwt.key"), "--auth-audience", AUDIENCE)
    with running_redis() as redis, servers(root, redis, 2, *auth) as (a, b):
        async with aiohttp.ClientSession() as http:
            def get(server: ServerProcess, query: str, token: str | None):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                return http.get(f"{server.url}/jpip?{query}", headers=headers)

            async with get(a, f"target={SAMPLE}&cnew=http&fsiz=96,64&type=jpp-stream",
                           alice) as r:
                assert r.status == 200
                first = await r.read()
                cid = r.headers["JPIP-cnew"].split("cid=")[1].split(",")[0]
            window = "fsiz=192,128&type=jpp-stream"
            for server in (a, b):
                for query in (f"cid={cid}&{window}", f"cclose={cid}"):
                    async with get(server, query, bob) as r:
                        assert r.status == 403, (server.port, query)
                        assert "another subject" in await r.text()
                    async with get(server, query, None) as r:
                        assert r.status == 401, (server.port, query)
            async with get(b, f"cid={cid}&{window}", alice) as r:  # untouched, and hers
                assert r.status == 200
                more = await r.read()
            sent = len(first) + len(more)
            async with get(b, f"cclose={cid}", alice) as r:
                assert r.status == 200
                await r.read()
            async with get(a, f"cid={cid}&{window}", alice) as r:
                assert r.status == 503  # closed for A too (an unknown channel)
        audit = [line for line in b.log.read_text().splitlines() if "session ended" in line]
        assert len(audit) == 1 and "subject=alice" in audit[0], audit
        assert "ended (closed)" in audit[0] or "(closed)" in audit[0]
        assert f"target={SAMPLE}" in audit[0]
        logged = int(audit[0].split("bytes=")[1].split()[0])
        assert 0 < logged <= sent
