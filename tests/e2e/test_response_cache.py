"""Responses kept for fresh clients: the same bytes as building them, sessions replay the
model updates with them, a changed file is never answered from the cache."""
from __future__ import annotations

import os
import shutil

import aiohttp

from cache.response_cache import ResponseCache
from client.api import JPIPClient
from server.app import create_app
from server.config import ServerConfig
from server.jpip_handler import STATE_KEY
from tests.conftest import CORPUS, INTEROP

IMAGE = "med2048.jp2"
THUMB = f"/jpip?target={IMAGE}&fsiz=256,256&type=jpp-stream"


async def _server(aiohttp_server, tmp_path, root=INTEROP, **options):
    config = ServerConfig(root=root, index_cache_dir=tmp_path / "ix", port=0, **options)
    app = create_app(config)
    return app, await aiohttp_server(app)


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[bytes, dict]:
    async with http.get(url) as resp:
        assert resp.status == 200
        return await resp.read(), dict(resp.headers)


async def test_a_kept_response_is_byte_identical(aiohttp_server, tmp_path) -> None:
    app, server = await _server(aiohttp_server, tmp_path)
    _, plain = await _server(aiohttp_server, tmp_path / "b", response_cache_bytes=0)
    cache = app[STATE_KEY].responses
    async with aiohttp.ClientSession() as http:
        built, _ = await _get(http, str(plain.make_url(THUMB)))
        first, _ = await _get(http, str(server.make_url(THUMB)))
        assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)
        again, _ = await _get(http, str(server.make_url(THUMB)))
        # A request naming the same window differently hits the same entry.
        other, _ = await _get(http, str(server.make_url(THUMB.replace("256,256", "300,300"))))
        assert cache.hits == 2
    assert built == first == again == other


async def test_a_new_session_replays_the_model_updates(aiohttp_server, tmp_path) -> None:
    app, server = await _server(aiohttp_server, tmp_path)
    url = str(server.make_url("/jpip")) + f"?target={IMAGE}"
    async with JPIPClient(url, stateless=True) as warm:
        await warm.fetch(fsiz=(256, 256))  # kept for the next fresh client
    async with JPIPClient(url) as client:
        raw = bytearray()
        client.raw_sink = raw
        await client.fetch(fsiz=(256, 256))
        assert app[STATE_KEY].responses.hits == 1
        assert len(raw) > 1000
        # The session's model took the kept response's updates: nothing is sent twice.
        raw.clear()
        await client.fetch(fsiz=(256, 256))
        assert bytes(raw) == b"\x00\x02\x00"
        await client.fetch_all(fsiz=(512, 512))
        assert client.cache.duplicate_bytes == 0


async def test_sessions_with_a_model_are_not_answered_from_the_cache(aiohttp_server,
                                                                     tmp_path) -> None:
    app, server = await _server(aiohttp_server, tmp_path)
    cache = app[STATE_KEY].responses
    async with aiohttp.ClientSession() as http:
        full, _ = await _get(http, str(server.make_url(THUMB)))
        body, _ = await _get(http, str(server.make_url(THUMB + "&model=Hm,H0,M0")))
        assert cache.hits == 0 and len(body) < len(full)
        await _get(http, str(server.make_url(THUMB + "&need=r0-1")))
        assert cache.hits == 0


async def test_a_changed_file_is_not_answered_from_the_cache(aiohttp_server, tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(CORPUS / "p0_04.j2k", root / "a.j2k")
    app, server = await _server(aiohttp_server, tmp_path, root=root)
    url = str(server.make_url("/jpip?target=a.j2k&fsiz=64,64"))
    async with aiohttp.ClientSession() as http:
        before, h1 = await _get(http, url)
        shutil.copy(CORPUS / "p0_12.j2k", root / "a.j2k")
        os.utime(root / "a.j2k", ns=(1, 10**18))
        after, h2 = await _get(http, url)
    assert h1.get("JPIP-tid") != h2.get("JPIP-tid") or before != after
    assert before != after


def test_the_cache_is_bounded() -> None:
    cache = ResponseCache(max_bytes=3000, max_entry_bytes=1500)
    for n in range(5):
        rec = cache.recorder()
        rec.add(bytes(1000), [])
        assert cache.put(n, rec)
    assert len(cache) == 3 and cache.nbytes <= 3000
    assert cache.get(0) is None and cache.get(4) is not None
    big = cache.recorder()
    big.add(bytes(1000), [])
    big.add(bytes(1000), [])  # past the entry limit: given up
    assert not cache.put("big", big) and cache.get("big") is None
