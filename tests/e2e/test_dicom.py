"""End to end: DICOM files served in place by the real app. Every frame's windows, rebuilt by our
client, decode exactly as OpenJPEG decodes that frame's codestream; frame N is `stream=N` and a
request without `stream` gets frame 1; DICOM JSON; clear 4xx for what is not served; lazy
per-frame indexing observed through the index cache."""
from __future__ import annotations

import asyncio
import json
import shutil

import aiohttp
import pydicom
import pytest

from cache.index_cache import IndexCache, entry_path
from client.api import JPIPClient
from dicom.source import DicomSource
from jpip.window import frame_size, resolve_window
from server.app import create_app
from server.config import ServerConfig
from server.jpip_handler import STATE_KEY
from tests.conftest import CORPUS
from tests.data.dicom import (
    build_dicom,
    build_jpip_referenced,
    build_uncompressed,
)
from tests.dicom.cases import PIXEL_CASES
from tests.oracle import assert_same_pixels, decode_codestream, window_crops

CT1 = (CORPUS / "CT1.j2k").read_bytes()
SMALL = (CORPUS / "p0_01.j2k").read_bytes()  # 128x128, 7 kB
MANY = 200


@pytest.fixture(scope="module")
def served(dicom_root, tmp_path_factory):
    """The test DICOM objects plus files that are not served, in one root."""
    folder, cases = dicom_root
    root = tmp_path_factory.mktemp("dicom-served")
    for name in cases:
        shutil.copy(folder / name, root / name)
    build_uncompressed(root / "plain.dcm")
    build_dicom(root / "part2.dcm", [[CT1]], transfer_syntax="1.2.840.10008.1.2.4.92")
    build_jpip_referenced(root / "ref.dcm", "http://archive.example/jpip?target=ct1.dcm")
    build_dicom(root / "broken2.dcm", [[CT1], [CT1[:4] + b"\x00\x01" + CT1[6:]]])
    whole = (root / "ct_bot.dcm").read_bytes()
    (root / "truncated.dcm").write_bytes(whole[:len(whole) // 2])
    (root / "fake.dcm").write_bytes(CT1)
    shutil.copy(CORPUS / "CT1.j2k", root / "CT1.j2k")
    build_dicom(root / "many.dcm", [[SMALL]] * MANY, table="none")
    return root, cases


async def _server(aiohttp_server, root, cache_dir, background=True):
    app = create_app(ServerConfig(root=root, index_cache_dir=cache_dir, port=0))
    app[STATE_KEY].index_cache.background = background
    return await aiohttp_server(app)


@pytest.fixture
async def server(aiohttp_server, served, tmp_path):
    return await _server(aiohttp_server, served[0], tmp_path / "ix")


_REFS: dict = {}


def expected(case, i, ix, fsiz, roff, rsiz, layers):
    w = resolve_window(ix, i + 1, fsiz=(fsiz[0], fsiz[1], "round-down"), roff=roff, rsiz=rsiz,
                       layers=layers)
    nl = w.layers if w.layers < ix.max_layers else 0
    key = (case.name, i, w.discard, nl)
    if key not in _REFS:
        try:
            _REFS[key] = decode_codestream(case.expected[i], rlevel=w.discard, layers=nl)
        except Exception:
            _REFS[key] = None  # OpenJPEG itself cannot decode the original at this level
    ref = _REFS[key]
    return None if ref is None else window_crops(ref, ix.siz, w.discard, w.region)


@pytest.mark.parametrize("name", PIXEL_CASES)
async def test_every_frame_window_is_pixel_exact(server, served, name) -> None:
    root, cases = served
    case = cases[name]
    url = str(server.make_url("/jpip")) + f"?target={name}"
    source = await server.app[STATE_KEY].index_cache.aget(root / name)
    assert isinstance(source, DicomSource)
    checked = 0
    for i in range(len(case.files)):
        stream = i + 1  # DICOM: frame N is JPIP codestream N
        async with JPIPClient(url) as client:
            ix = source.codestreams[i]
            for d in range(min(int(ix.tcr["levels"].min()), 3) + 1):
                fw, fh = frame_size(ix.siz, d)
                windows = [(None, None), ((fw // 3, fh // 3), (max(1, fw // 3), max(1, fh // 4))),
                           ((fw - 1, fh - 1), (1, 1)), ((0, fh // 2), (max(1, fw // 2), fh))]
                for roff, rsiz in windows:
                    for layers in ((None, 1) if ix.max_layers > 1 else (None,)):
                        want = expected(case, i, ix, (fw, fh), roff, rsiz, layers)
                        await client.fetch_all(fsiz=(fw, fh), roff=roff, rsiz=rsiz,
                                               layers=layers, stream=stream)
                        if want is None:
                            continue
                        got = client.decode(fsiz=(fw, fh), roff=roff, rsiz=rsiz, layers=layers,
                                            stream=stream)
                        assert_same_pixels(want, got, f"{name} frame {stream} {(fw, fh)} "
                                                      f"{roff} {rsiz} layers={layers}")
                        checked += 1
            assert set(client.cache.streams) == {stream}
            assert client.cache.duplicate_bytes == 0
    assert checked >= 4 * len(case.files)


@pytest.mark.parametrize("name", PIXEL_CASES)
async def test_frames_as_jpt_streams_are_pixel_exact(server, served, name) -> None:
    """Tile data-bins of frames, also of frames split over fragments (tile-parts cut
    anywhere): the whole frame and a region at one level down."""
    root, cases = served
    case = cases[name]
    url = str(server.make_url("/jpip")) + f"?target={name}"
    source = await server.app[STATE_KEY].index_cache.aget(root / name)
    for i in range(len(case.files)):
        ix = source.codestreams[i]
        async with JPIPClient(url, stream_type="jpt-stream") as client:
            d = min(int(ix.tcr["levels"].min()), 1)
            fw, fh = frame_size(ix.siz, d)
            for roff, rsiz in ((None, None), ((fw // 4, fh // 4), (fw // 2, fh // 3))):
                want = expected(case, i, ix, (fw, fh), roff, rsiz, None)
                await client.fetch_all(fsiz=(fw, fh), roff=roff, rsiz=rsiz, stream=i + 1)
                if want is not None:
                    got = client.decode(fsiz=(fw, fh), roff=roff, rsiz=rsiz, stream=i + 1)
                    assert_same_pixels(want, got, f"{name} frame {i + 1} {roff} {rsiz} (JPT)")
            held = client.cache.streams[i + 1]
            assert held.tiles and not held.precincts and client.cache.duplicate_bytes == 0
            assert [k for k, b in client.cache.metadata.items()] == [0]  # no boxes: one empty


async def test_without_stream_the_first_frame_is_served(server, served) -> None:
    url = str(server.make_url("/jpip")) + "?target=ct_bot.dcm"
    async with JPIPClient(url) as client:
        await client.fetch_all(fsiz=(128, 128))
        assert set(client.cache.streams) == {1}
        got = client.decode(fsiz=(128, 128), stream=1)
    ref = decode_codestream(CT1, rlevel=2)
    assert_same_pixels(ref, got, "default stream")


async def test_path_form_and_frame_selection(server, served) -> None:
    """The frames of ct_bot.dcm are CT1, 693, TOSHIBA: each stream decodes to its own."""
    _, cases = served
    case = cases["ct_bot.dcm"]
    for n in (3, 2):
        async with JPIPClient(str(server.make_url("/ct_bot.dcm"))) as client:
            got = await client.window(fsiz=(64, 64), stream=n)
        assert_same_pixels(decode_codestream(case.expected[n - 1], rlevel=3), got, f"frame {n}")


async def test_dicom_json_matches_pydicom(server, served) -> None:
    root, _ = served
    for name in ("ct_eot.dcm", "CT1_EMPTY_BOT", "plain.dcm"):
        async with aiohttp.ClientSession() as http:
            r = await http.get(server.make_url("/dicom-json"), params={"target": name})
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"].startswith("application/dicom+json")
            body = json.loads(await r.read())
            etag = r.headers["ETag"]
            again = await http.get(server.make_url("/dicom-json"), params={"target": name},
                                   headers={"If-None-Match": etag})
            assert again.status == 304
        ds = pydicom.dcmread(root / name)
        del ds.PixelData
        want = ds.to_json_dict()
        assert body == want
        assert "7FE00010" not in body and not any(k.startswith("0002") for k in body)
        attrs = body
        assert attrs["00280010"] == {"vr": "US", "Value": [ds.Rows]}
        if name != "plain.dcm":
            assert attrs["00281050"]["Value"] == [40] and attrs["00281051"]["Value"] == [400]
            assert attrs["00280030"]["Value"] == [0.5, 0.25]


@pytest.mark.parametrize("params, status", [
    ({"target": "CT1.j2k"}, 404),          # served over JPIP, but not DICOM
    ({"target": "fake.dcm"}, 404),         # named .dcm, not DICOM
    ({"target": "nothere.dcm"}, 404),
    ({"target": "../etc/passwd"}, 404),
    ({}, 400),
])
async def test_dicom_json_refusals(server, params, status) -> None:
    async with aiohttp.ClientSession() as http:
        r = await http.get(server.make_url("/dicom-json"), params=params)
        assert r.status == status, await r.text()


@pytest.mark.parametrize("target, status, words", [
    ("plain.dcm", 415, ["Explicit VR Little Endian", "jpip prepare"]),
    ("part2.dcm", 415, ["multi-component", "jpip prepare"]),
    ("ref.dcm", 415, ["JPIP-referenced", "http://archive.example/jpip?target=ct1.dcm"]),
    ("truncated.dcm", 422, ["truncated"]),
    ("fake.dcm", 415, ["DICOM"]),
    ("broken2.dcm&stream=2", 422, ["frame 2"]),
])
async def test_what_is_not_served_gets_a_clear_4xx(server, target, status, words) -> None:
    async with aiohttp.ClientSession() as http:
        r = await http.get(str(server.make_url("/jpip")) + f"?target={target}&fsiz=64,64")
        text = await r.text()
        assert r.status == status, text
        for w in words:
            assert w in text


async def test_a_corrupt_frame_does_not_spoil_the_others(server) -> None:
    async with JPIPClient(str(server.make_url("/jpip")) + "?target=broken2.dcm") as client:
        got = await client.window(fsiz=(64, 64), stream=1)
    assert_same_pixels(decode_codestream(CT1, rlevel=3), got, "frame 1 of broken2")


async def test_first_frame_is_served_before_the_others_are_indexed(aiohttp_server, served,
                                                                   tmp_path) -> None:
    root, _ = served
    path = root / "many.dcm"
    server = await _server(aiohttp_server, root, tmp_path / "ix", background=False)
    cache: IndexCache = server.app[STATE_KEY].index_cache
    async with JPIPClient(str(server.make_url("/jpip")) + "?target=many.dcm") as client:
        got = await client.window(fsiz=(128, 128))
        assert_same_pixels(decode_codestream(SMALL), got, "frame 1 of 200")
        source = cache.get(path)
        assert isinstance(source, DicomSource) and len(source.codestreams) == MANY
        assert source.indexed_count == 1 and source.unindexed()[:2] == [1, 2]
        got = await client.window(fsiz=(32, 32), stream=MANY)
        assert source.indexed_count == 2 and MANY - 1 not in source.unindexed()
    assert not entry_path(path, tmp_path / "ix").exists()  # persisted once complete only
    await asyncio.to_thread(cache.complete, path)
    assert source.complete and source.indexed_count == MANY
    assert entry_path(path, tmp_path / "ix").exists()
    # A new cache (a restart) loads every frame's index from disk, building nothing.
    events = []
    fresh = IndexCache(tmp_path / "ix", on_event=lambda kind, s: events.append(kind))
    loaded = fresh.get(path)
    assert isinstance(loaded, DicomSource) and loaded.complete and "build" not in events
    assert loaded.first_codestream == 1
    for i in (0, MANY - 1):
        assert loaded.codestream_bytes(i) == SMALL
    fresh.close()


async def test_the_background_completes_and_persists(aiohttp_server, served, tmp_path) -> None:
    root, _ = served
    path = root / "many.dcm"
    server = await _server(aiohttp_server, root, tmp_path / "ix")
    async with JPIPClient(str(server.make_url("/many.dcm"))) as client:
        await client.window(fsiz=(16, 16))
    entry = entry_path(path, tmp_path / "ix")
    for _ in range(600):  # waits for the background thread (not a timing assertion)
        if entry.exists():
            break
        await asyncio.sleep(0.05)
    assert entry.exists()
    assert server.app[STATE_KEY].index_cache.get(path).complete
