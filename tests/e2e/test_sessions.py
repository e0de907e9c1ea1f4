"""Sessions: a viewer's pan/zoom sequence never receives a byte twice and decodes exactly."""
from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

import client.api as client_api
from client.api import JPIPClient
from codestream.source import build_source
from jpip.jpp import parse_stream
from jpip.window import resolve_window
from server.app import create_app
from server.config import ServerConfig
from tests.conftest import INTEROP
from tests.oracle import OracleError, assert_same_pixels, decode_codestream, window_crops

IMAGE = "med2048.jp2"  # 2048x2048 16-bit, 256/128 precincts, 6 layers, PLT


@pytest.fixture
async def interop_server(aiohttp_server, tmp_path):
    config = ServerConfig(root=INTEROP, index_cache_dir=tmp_path / "ix", port=0)
    return await aiohttp_server(create_app(config))


@pytest.fixture(scope="module")
def source():
    with build_source(INTEROP / IMAGE) as src:
        yield src


def pan_sequence() -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
    """Thumbnail, zoom in twice towards a point, pan, zoom out: 20 windows."""
    wins = [((256, 256), (0, 0), (256, 256)), ((512, 512), (128, 128), (256, 256)),
            ((1024, 1024), (384, 384), (256, 256))]
    x, y = 384, 384
    for step in range(15):
        x += 64 if step % 4 != 3 else 0
        y += 64 if step % 4 == 3 else 0
        # Up to the right edge (partly clipped there), never wholly outside the frame.
        wins.append(((2048, 2048), (2 * x - 512, 2 * y), (512, 512)))
    wins += [((1024, 1024), (400, 400), (512, 512)), ((256, 256), (0, 0), (256, 256))]
    return wins


def reference(src, fsiz, roff, rsiz):
    ix = src.codestreams[0]
    w = resolve_window(ix, 0, fsiz=(fsiz[0], fsiz[1], "round-down"), roff=roff, rsiz=rsiz)
    x0, y0, x1, y1 = w.region
    original = bytes(src.view[ix.offset:ix.offset + ix.length])
    try:
        return decode_codestream(original, rlevel=w.discard, area=(y0, x0, y1, x1))
    except OracleError:  # OpenJPEG refuses some areas: decode all and crop
        full = decode_codestream(original, rlevel=w.discard)
        return window_crops(full, ix.siz, w.discard, w.region)


async def test_pan_sequence_never_resends_and_decodes_exactly(interop_server, source) -> None:
    url = str(interop_server.make_url("/jpip")) + f"?target={IMAGE}"
    async with JPIPClient(url) as client:
        for n, (fsiz, roff, rsiz) in enumerate(pan_sequence()):
            stats = await client.fetch_all(fsiz=fsiz, roff=roff, rsiz=rsiz)
            assert stats[-1].eor == 2
            if n % 4 == 0 or n == 19:
                got = client.decode(fsiz=fsiz, roff=roff, rsiz=rsiz)
                assert_same_pixels(reference(source, fsiz, roff, rsiz), got, f"window {n}")
        assert client.cache.duplicate_bytes == 0
        # Repeating a window: only the EOR message comes back.
        raw = bytearray()
        client.raw_sink = raw
        await client.fetch(fsiz=(2048, 2048), roff=(1000, 1000), rsiz=(512, 512))
        assert bytes(raw) == b"\x00\x02\x00"


async def test_stateless_model_gives_the_same_bytes_as_the_session(interop_server) -> None:
    url = str(interop_server.make_url("/jpip")) + f"?target={IMAGE}"
    per_window = {}
    for stateless in (False, True):
        async with JPIPClient(url, stateless=stateless) as client:
            sizes = []
            for fsiz, roff, rsiz in pan_sequence()[:10]:
                before = client.cache.data_bytes
                await client.fetch(fsiz=fsiz, roff=roff, rsiz=rsiz)
                sizes.append(client.cache.data_bytes - before)
            assert client.cache.duplicate_bytes == 0
            per_window[stateless] = sizes
    assert per_window[True] == per_window[False]


async def test_len_limited_requests_continue_where_they_stopped(interop_server, source) -> None:
    url = str(interop_server.make_url("/jpip")) + f"?target={IMAGE}"
    async with JPIPClient(url) as client:
        window = {"fsiz": (1024, 1024), "roff": (200, 300), "rsiz": (300, 200)}
        stats = await client.fetch_all(length=3000, max_requests=500, **window)
        assert len(stats) > 3
        assert all(s.eor == 4 for s in stats[:-1]) and stats[-1].eor == 2
        assert all(s.bytes <= 3000 + 3 for s in stats)
        assert client.cache.duplicate_bytes == 0
        got = client.decode(**window)
        assert_same_pixels(reference(source, **window), got, "len-limited")


async def test_dropped_connection_gets_the_rest_and_nothing_twice(interop_server, source) -> None:
    url = str(interop_server.make_url("/jpip")) + f"?target={IMAGE}"
    window = {"fsiz": (2048, 2048), "roff": (512, 512), "rsiz": (1024, 1024)}
    async with JPIPClient(url) as client:
        await client.fetch(fsiz=(256, 256))
        # Read only part of a large response, then close the connection.
        partial = await client.fetch(abort_after=150_000, **window)
        assert partial.eor is None and partial.bytes == 150_000
        stats = await client.fetch_all(**window)
        assert stats[-1].eor == 2
        assert client.cache.duplicate_bytes == 0
        got = client.decode(**window)
        assert_same_pixels(reference(source, **window), got, "after a dropped connection")


async def test_a_long_restated_model_goes_as_a_post_body(interop_server, source,
                                                         monkeypatch) -> None:
    """After a cut the next request restates the whole cache in `model=`, which grows with the
    session (a 10-minute soak reached 64 KiB, past aiohttp's request-line cap; nginx's is
    8 KiB): a long request goes as a form body instead (here the limit is lowered)."""
    monkeypatch.setattr(client_api, "MAX_GET_URL", 300)
    url = str(interop_server.make_url("/jpip")) + f"?target={IMAGE}"
    window = {"fsiz": (2048, 2048), "roff": (512, 512), "rsiz": (1024, 1024)}
    async with JPIPClient(url) as client:
        await client.fetch(fsiz=(512, 512))
        await client.fetch(abort_after=150_000, **window)
        bodies: list[bytes] = []
        post = client._http.post

        def spy(*args, **kwargs):
            bodies.append(kwargs["data"])
            return post(*args, **kwargs)

        monkeypatch.setattr(client._http, "post", spy)
        stats = await client.fetch_all(**window)
        assert len(bodies) == 1 and b"&model=" in bodies[0] and len(bodies[0]) > 300
        assert stats[-1].eor == 2
        assert client.cache.duplicate_bytes == 0
        got = client.decode(**window)
        assert_same_pixels(reference(source, **window), got, "model restated in a POST body")


async def test_a_model_longer_than_a_query_field_in_a_post_body(interop_server) -> None:
    """A restated model past the 64 KiB cap of a query field (the soak's reached 80 KB) is
    read from a POST body: the body's own cap (--max-request-body) bounds it."""
    base = str(interop_server.make_url("/jpip"))
    held = ",".join(f"P{i}" for i in range(20_000))
    assert len(held) > 65536
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}?target={IMAGE}&cnew=http&fsiz=64,64") as r:
            cid = dict(kv.split("=") for kv in r.headers["JPIP-cnew"].split(","))["cid"]
            await r.read()
        body = f"cid={cid}&fsiz=64,64&len=0&model=[0],-P*,{held}"
        async with http.post(base, data=body.encode(), headers={
                "Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert r.status == 200, await r.text()


async def test_two_channels_of_one_session_share_the_model(interop_server) -> None:
    base = str(interop_server.make_url("/jpip"))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}?target={IMAGE}&cnew=http&fsiz=256,256") as r:
            cid1 = dict(kv.split("=") for kv in r.headers["JPIP-cnew"].split(","))["cid"]
            first = await r.read()
        async with http.get(f"{base}?cid={cid1}&cnew=http&fsiz=512,512") as r:
            cid2 = dict(kv.split("=") for kv in r.headers["JPIP-cnew"].split(","))["cid"]
            second = await r.read()
        assert cid1 != cid2
        seen: dict[tuple, set[int]] = {}
        bodies = [first, second]
        for n in range(6):
            cid = (cid1, cid2)[n % 2]
            async with http.get(f"{base}?cid={cid}&fsiz=1024,1024&roff={n * 100},{n * 80}"
                                f"&rsiz=300,300") as r:
                assert r.status == 200
                bodies.append(await r.read())
        for body in bodies:
            for m in parse_stream(body):
                if not hasattr(m, "bin_class"):
                    continue
                key = (m.bin_class, m.csn, m.bin_id)
                got = set(range(m.offset, m.offset + len(m.data)))
                assert not (seen.setdefault(key, set()) & got), f"bytes of {key} sent twice"
                seen[key] |= got
        # Closing one channel keeps the other; closing the last ends the session.
        async with http.get(f"{base}?cclose={cid1}") as r:
            assert r.status == 200
        async with http.get(f"{base}?cid={cid1}&fsiz=64,64") as r:
            assert r.status == 503
        async with http.get(f"{base}?cid={cid2}&fsiz=64,64") as r:
            assert r.status == 200
        async with http.get(f"{base}?cid={cid2}&cclose=*") as r:
            assert r.status == 200
        async with http.get(f"{base}?cid={cid2}&fsiz=64,64") as r:
            assert r.status == 503


async def test_channel_ids_are_bound_to_their_target(interop_server) -> None:
    base = str(interop_server.make_url("/jpip"))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}?target={IMAGE}&cnew=http&fsiz=64,64") as r:
            cid = dict(kv.split("=") for kv in r.headers["JPIP-cnew"].split(","))["cid"]
            assert len(cid) == 32
        async with http.get(f"{base}?target=rgb4096.jp2&cid={cid}&fsiz=64,64") as r:
            assert r.status == 400
            assert "another target" in await r.text()


async def _cnew(http, base: str) -> str:
    async with http.get(f"{base}?target={IMAGE}&cnew=http&fsiz=64,64") as r:
        await r.read()
        return dict(kv.split("=") for kv in r.headers["JPIP-cnew"].split(","))["cid"]


async def test_requests_on_a_channel_are_served_in_qid_order(interop_server) -> None:
    base = str(interop_server.make_url("/jpip"))
    async with aiohttp.ClientSession() as http:
        cid = await _cnew(http, base)
        bodies: dict[int, bytes] = {}

        async def ask(qid: int, delay: float) -> None:
            await asyncio.sleep(delay)
            async with http.get(f"{base}?cid={cid}&qid={qid}&wait=yes&fsiz=512,512") as r:
                assert r.status == 200 and r.headers["JPIP-qid"] == str(qid)
                bodies[qid] = await r.read()

        # qid 2 arrives first and waits (on the channel's condition) for qid 1. Served in
        # that order, qid 1 carries the window and qid 2, over the same model, the EOR alone.
        # (Which body the client finishes reading first is a race between two connections:
        # a 3-byte answer written after a large one can arrive whole before it.)
        await asyncio.gather(ask(2, 0), ask(1, 0.2))
        assert len(bodies[1]) > 1000 and bodies[2] == b"\x00\x02\x00"


def _small_receive_buffer(addr_info) -> socket.socket:
    """A client socket that holds little: the server's writes wait for the client's reads."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_a_newer_request_preempts_the_one_in_flight(interop_server) -> None:
    base = str(interop_server.make_url("/jpip"))
    slow = aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
    async with aiohttp.ClientSession(connector=slow) as http, aiohttp.ClientSession() as fast:
        cid = await _cnew(fast, base)
        async with http.get(f"{base}?cid={cid}&fsiz=2048,2048") as big:  # about 4 MB
            first = await big.content.read(1000)

            async def newer() -> bytes:
                async with fast.get(f"{base}?cid={cid}&fsiz=128,128") as small:
                    assert small.status == 200
                    return await small.read()

            task = asyncio.create_task(newer())
            await asyncio.sleep(0.2)  # the newer request has arrived; the big one is writing
            rest = await big.read()   # ...and ends at its next chunk
            body = await task
        items = parse_stream(first + rest)
        assert items[-1].reason == 3  # window change: ended for the newer request
        assert parse_stream(body)[-1].reason in (1, 2)
        # Nothing was lost: the big window now completes, sending only what is missing.
        async with fast.get(f"{base}?cid={cid}&fsiz=2048,2048") as r:
            assert parse_stream(await r.read())[-1].reason == 1
