"""JPT-streams through a real server and the Python client: sessions cut by `len`, stateless
requests describing the cache (`model=T...`), a saved cache, pixels exact all along."""
from __future__ import annotations

import aiohttp
import pytest

from client.api import JPIPClient
from client.bincache import BinCache
from codestream.source import build_source
from jpip.window import resolve_window
from tests.conftest import CORPUS
from tests.oracle import assert_same_pixels, decode_codestream, window_crops

NAME = "test-card-lossy-tiled.jp2"  # 20 tiles, 6 tile-parts each, interleaved in the file
WINDOWS = [((160, 120), None, None), ((640, 480), (200, 100), (150, 120)),
           ((640, 480), None, None)]


def expected(fsiz, roff, rsiz):
    with build_source(CORPUS / NAME) as src:
        ix = src.codestreams[0]
        w = resolve_window(ix, 0, fsiz=(*fsiz, "round-down"), roff=roff, rsiz=rsiz)
        full = decode_codestream(src.codestream_bytes(0), rlevel=w.discard)
        return window_crops(full, ix.siz, w.discard, w.region)


@pytest.fixture
def url(corpus_server) -> str:
    return str(corpus_server.make_url("/jpip")) + f"?target={NAME}"


async def test_a_session_cut_by_len_decodes_exactly(url) -> None:
    async with JPIPClient(url, stream_type="jpt-stream") as client:
        for fsiz, roff, rsiz in WINDOWS:
            stats = await client.fetch_all(fsiz=fsiz, roff=roff, rsiz=rsiz, length=1500)
            assert stats[-1].eor in (1, 2) and len(stats) > 1
            got = client.decode(fsiz=fsiz, roff=roff, rsiz=rsiz)
            assert_same_pixels(expected(fsiz, roff, rsiz), got, f"{fsiz} {roff} {rsiz}")
        assert client.cache.duplicate_bytes == 0
        assert stats[-1].eor == 1  # the last window is the whole image
        assert len(client.cache.streams[0].tiles) == 20


async def test_stateless_requests_describe_the_tiles_held(url) -> None:
    async with JPIPClient(url, stream_type="jpt-stream", stateless=True) as client:
        first = await client.fetch(fsiz=(160, 120))
        again = await client.fetch(fsiz=(160, 120))
        assert first.eor == again.eor == 2
        assert again.bytes == 3  # the EOR alone: the model (Hm, M..., T...) covered all
        bigger = await client.fetch(fsiz=(640, 480))
        assert bigger.eor == 1 and client.cache.duplicate_bytes == 0
        assert_same_pixels(expected((640, 480), None, None), client.decode(fsiz=(640, 480)))


async def test_a_saved_jpt_cache_is_not_sent_again(url, tmp_path) -> None:
    async with JPIPClient(url, stream_type="jpt-stream") as client:
        await client.fetch_all(fsiz=(320, 240))
        client.cache.save(tmp_path / "card.cache")
    cache = BinCache.load(tmp_path / "card.cache")
    assert len(cache.streams[0].tiles) == 20
    async with JPIPClient(url, stream_type="jpt-stream", cache=cache) as client:
        stats = await client.fetch(fsiz=(320, 240))
        assert stats.bytes == 3 and stats.eor == 2  # the EOR alone
        assert_same_pixels(expected((320, 240), None, None), client.decode(fsiz=(320, 240)))


async def test_type_list_content_type_and_url_type(corpus_server) -> None:
    base = str(corpus_server.make_url("/jpip"))
    async with aiohttp.ClientSession() as http:
        for types, want in (("jpt-stream,jpp-stream", "image/jpt-stream"),
                            ("jpp-stream,jpt-stream", "image/jpp-stream"),
                            ("jpt-stream;ttype=ext", "image/jpt-stream")):
            async with http.get(f"{base}?target={NAME}&fsiz=64,48&type={types}") as r:
                assert r.status == 200 and r.headers["Content-Type"] == want
        async with http.get(f"{base}?target={NAME}&fsiz=64,48&type=raw") as r:
            assert r.status == 415
    async with JPIPClient(f"{base}?target={NAME}&type=jpt-stream") as client:
        assert client.stream_type == "jpt-stream"
        await client.fetch_all(fsiz=(160, 120))
        assert client.cache.streams[0].tiles and not client.cache.streams[0].precincts
