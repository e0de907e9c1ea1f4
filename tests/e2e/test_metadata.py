"""Metadata-bins through a real server: the boxes a client reads back equal the file's bytes,
JHelioviewer's request sequence gets every frame's XML, `jpip meta` lists and writes boxes."""
from __future__ import annotations

import asyncio
import mmap

import aiohttp
import pytest

from client.api import JPIPClient
from client.bincache import BinCache
from client.cli import main as jpip_main
from client.metadata import box_bytes, box_tree, find_boxes, walk_tree
from codestream.boxes import SUPERBOXES, read_layout, walk_boxes
from jpip.jpp import METADATA, EndOfResponse, Message, parse_stream
from server.app import create_app
from server.config import ServerConfig
from tests.conftest import CORPUS, corpus_files
from tests.data.jpx import frame_xml, frame_xml_jpx

BOXED = [p for p in corpus_files() if p.suffix in (".jp2", ".jpx")]
FRAMES = ("p0_01.j2k", "p0_12.j2k", "p0_09.j2k", "p0_01.j2k")


def _file_boxes(buf, start, end):
    for b in walk_boxes(buf, start, end):
        yield b
        if b.box_type in SUPERBOXES:
            yield from _file_boxes(buf, b.content_offset, b.end)


@pytest.mark.parametrize("path", BOXED, ids=lambda p: p.name)
async def test_every_box_read_back_through_the_server_is_the_files(corpus_server, path) -> None:
    url = str(corpus_server.make_url("/jpip")) + f"?target={path.name}"
    async with JPIPClient(url) as client:
        tree = await client.boxes("[*/a]")
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        layout = read_layout(mm)
        want = list(_file_boxes(mm, 0, layout.top_boxes[-1].end))
        got = list(walk_tree(tree))
        assert [b.box_type for b in got] == [b.box_type for b in want]
        for mine, theirs in zip(got, want, strict=True):
            if any(b.codestream is not None for b in walk_tree([mine])):
                continue
            assert box_bytes(mine) == bytes(mm[theirs.offset:theirs.end]), mine.path


@pytest.fixture
async def movies(aiohttp_server, tmp_path):
    """A server over two JPX movies of four frames with one XML box per frame: the frame
    associations grouped in one (as helioviewer's movies are), and each at the top level."""
    root = tmp_path / "movies"
    root.mkdir()
    streams = [(CORPUS / n).read_bytes() for n in FRAMES]
    frame_xml_jpx(root / "grouped.jpx", streams, grouped=True)
    frame_xml_jpx(root / "flat.jpx", streams, grouped=False)
    server = await aiohttp_server(create_app(
        ServerConfig(root=root, index_cache_dir=tmp_path / "ix", port=0)))
    return str(server.make_url("")).rstrip("/")


async def _get(http, url: str) -> tuple[int, dict, list]:
    async with http.get(url) as r:
        body = await r.read()
        return r.status, r.headers, parse_stream(body) if r.status == 200 else []


async def jhelioviewer(base: str, name: str, frames: int) -> BinCache:
    """JHelioviewer's requests (protocol note 1.3): a short cnew, the metadata until EOR 1 or
    2, each frame, cclose. Returns what it received."""
    cache = BinCache()
    async with aiohttp.ClientSession() as http:
        status, h, items = await _get(http, f"{base}/{name}?cnew=http&type=jpp-stream&tid=0"
                                            "&len=512")
        assert status == 200 and h["Content-Type"] == "image/jpp-stream"
        fields = dict(kv.split("=", 1) for kv in h["JPIP-cnew"].split(","))
        channel, cid = f"{base}/{fields['path']}", fields["cid"]
        for item in items:
            cache.add(item)
        for _ in range(20):
            status, h, items = await _get(http, f"{channel}?cid={cid}&stream=0&metareq=[*]!!"
                                                "&len=2000000")
            assert status == 200 and h["Content-Type"] == "image/jpp-stream"
            assert all(m.bin_class == METADATA for m in items if isinstance(m, Message))
            for item in items:
                cache.add(item)
            if items[-1].reason in (1, 2):
                break
        else:
            pytest.fail("the metadata never completed")
        for k in range(frames):
            for _ in range(20):
                status, h, items = await _get(http, f"{channel}?cid={cid}&stream={k}"
                                                    "&fsiz=128,128,closest&rsiz=129,129"
                                                    "&len=2097152")
                assert status == 200
                for item in items:
                    cache.add(item)
                if isinstance(items[-1], EndOfResponse) and items[-1].reason in (1, 2):
                    break
        status, _, _ = await _get(http, f"{channel}?cclose={cid}&len=0")
        assert status == 200
    assert cache.duplicate_bytes == 0
    return cache


def _frame_xmls(cache: BinCache) -> list[bytes]:
    return [box_bytes(b)[8:] for b in find_boxes(box_tree(cache.metadata), b"xml ")
            if box_bytes(b) is not None]


async def test_jhelioviewer_gets_every_frames_xml(movies) -> None:
    """The frame associations grouped in one association, which the first frame's opens: a
    metadata request at stream 0 reaches every frame's XML (as Kakadu's server scopes it)."""
    cache = await jhelioviewer(movies, "grouped.jpx", 4)
    assert _frame_xmls(cache) == [frame_xml(k) for k in range(4)]
    assert sorted(cache.streams) == [0, 1, 2, 3]
    assert all(s.main_header.complete for s in cache.streams.values())


async def test_jhelioviewer_on_glymurs_helioviewer_movie(corpus_server) -> None:
    base = str(corpus_server.make_url("")).rstrip("/")
    cache = await jhelioviewer(base, "heliov.jpx", 3)
    xmls = _frame_xmls(cache)
    assert len(xmls) == 2 and all(x.startswith(b"<meta>") for x in xmls)


async def test_frame_metadata_at_the_top_level(movies) -> None:
    """Each frame association at the top level: a request at stream k gets frame k's XML;
    one for every stream, or /a, gets them all."""
    url = f"{movies}/jpip?target=flat.jpx"
    async with JPIPClient(url) as client:
        await client.boxes("[xml_]", stream=2)
        assert _frame_xmls(client.cache) == [frame_xml(2)]
    async with JPIPClient(url) as client:
        await client.boxes("[xml_/a]")
        assert _frame_xmls(client.cache) == [frame_xml(k) for k in range(4)]
    cache = await jhelioviewer(movies, "flat.jpx", 1)
    assert _frame_xmls(cache) == [frame_xml(0)]


def _run_cli(args: list[str]) -> int:
    return jpip_main(args)


async def test_jpip_meta_lists_boxes_and_writes_one(corpus_server, tmp_path, capsys) -> None:
    url = str(corpus_server.make_url("/jpip")) + "?target=small_world_non_consecutive_" \
                                                  "tilepart_tlm.jp2"
    loop = asyncio.get_running_loop()
    status = await loop.run_in_executor(None, _run_cli, ["meta", url])
    out = capsys.readouterr().out
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("'jP  '") and any("'xml '" in ln for ln in lines)
    assert any(ln.startswith("    'xml '   1894 bytes") for ln in lines), out
    assert any("codestream 0" in ln for ln in lines)
    target = tmp_path / "gml.xml"
    status = await loop.run_in_executor(None, _run_cli, ["meta", url, "--box", "xml",
                                                         "-o", str(target)])
    assert status == 0
    data = (CORPUS / "small_world_non_consecutive_tilepart_tlm.jp2").read_bytes()
    start = data.index(b"<gml:FeatureCollection")
    assert target.read_bytes() == data[start:start + 1894 - 8]
    status = await loop.run_in_executor(None, _run_cli, ["meta", url, "--box", "xml",
                                                         "--index", "3"])
    assert status == 2 and "the target has 1 such box" in capsys.readouterr().err
    status = await loop.run_in_executor(None, _run_cli, ["meta", url, "--box", "jp2c"])
    assert status == 2 and "codestream 0" in capsys.readouterr().err


async def test_metadata_of_a_raw_codestream_is_one_empty_bin(corpus_server) -> None:
    url = str(corpus_server.make_url("/jpip")) + "?target=p0_12.j2k&metareq=[*]!!"
    async with aiohttp.ClientSession() as http:
        status, h, items = await _get(http, url)
    messages = [m for m in items if isinstance(m, Message)]
    assert [(m.bin_class, m.bin_id, m.offset, m.data, m.is_last) for m in messages] == [
        (METADATA, 0, 0, b"", True)]
