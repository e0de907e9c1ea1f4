"""Regression tests, over HTTP, for the protocol defects fixed when the session rules moved
into jpip.machine (one or more per numbered defect; each failed before its fix). The machine's
own table tests (tests/jpip/test_machine.py) cover the same rules without a server."""
from __future__ import annotations

import asyncio
import shutil

import aiohttp
import pytest

from client.api import JPIPClient
from codestream.source import build_source
from jpip.jpp import EndOfResponse, Message, parse_stream
from jpip.window import frame_size
from server.app import create_app
from server.config import ServerConfig
from tests.conftest import CORPUS
from tests.oracle import assert_same_pixels, decode_codestream


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("p0_02.j2k", "p0_05.j2k", "file1.jp2", "heliov.jpx", "MANIFEST.md"):
        shutil.copy(CORPUS / name, root / name)
    return root


async def _serve(aiohttp_server, root, tmp_path, **options):
    config = ServerConfig(root=root, index_cache_dir=tmp_path / "ix", port=0, **options)
    app = create_app(config)
    server = await aiohttp_server(app)
    return app, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def base(aiohttp_server, root, tmp_path):
    _, url = await _serve(aiohttp_server, root, tmp_path)
    return url


async def get(url: str) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, dict(r.headers), await r.read()


def messages(body: bytes) -> tuple[list[Message], int | None]:
    items = parse_stream(body)
    end = items[-1] if items and isinstance(items[-1], EndOfResponse) else None
    return [m for m in items if isinstance(m, Message)], (end.reason if end else None)


def cid_of(headers) -> str:
    return dict(kv.split("=", 1) for kv in headers["JPIP-cnew"].split(","))["cid"]


# --- 1: routing ---------------------------------------------------------------------------------

async def test_1_target_wins_over_a_path_that_is_not_the_endpoint(base) -> None:
    for path in ("/myFCGI", "/jpipp", "/cgi-bin/jpip.cgi"):
        status, h, body = await get(f"{base}{path}?target=p0_02.j2k&fsiz=32,32")
        assert status == 200 and h["Content-Type"] == "image/jpp-stream", (path, body[:200])
        assert messages(body)[1] == 2
    # target= wins over a path that names another served file.
    _, _, body = await get(f"{base}/file1.jp2?target=p0_02.j2k&fsiz=32,32")
    main = [m for m in messages(body)[0] if m.bin_class == 6]
    assert len(main[0].data) == len(build_source(CORPUS / "p0_02.j2k").main_header_bin(0))


async def test_1_a_path_that_is_no_served_file_gets_404_naming_the_endpoint(base) -> None:
    for path in ("/jpipp", "/MANIFEST.md", "/nothing/here.jp2", "/../x.jp2"):
        status, _, body = await get(f"{base}{path}?fsiz=32,32")
        assert status == 404, (path, status, body)
        assert b"/jpip?target=" in body, body


# --- 2: empty data-bins cut by len ----------------------------------------------------------------

async def test_2_an_empty_tile_header_cut_by_len_is_sent_later(base) -> None:
    mh = len(build_source(CORPUS / "p0_02.j2k").main_header_bin(0))
    cut = 5 + 5 + mh  # the empty metadata-bin 0 message, then the main header message
    status, h, body = await get(f"{base}/jpip?target=p0_02.j2k&cnew=http&fsiz=127,126"
                                f"&len={cut}")
    got, eor = messages(body)
    assert eor == 4 and [m.bin_class for m in got] == [8, 6]
    _, _, body = await get(f"{base}/jpip?cid={cid_of(h)}&fsiz=127,126")
    got, eor = messages(body)
    assert 2 in {m.bin_class for m in got}, "the tile header never reached the client"


# --- 3: subtractive model descriptors on header and metadata bins ------------------------------

@pytest.mark.parametrize("model, cls", [("-Hm", 6), ("-H*", 2), ("-M0", 8), ("[0],-Hm:40", 6),
                                        ("-M*", 8)])
async def test_3_subtractive_descriptors_resend_the_bins(base, model, cls) -> None:
    status, h, _ = await get(f"{base}/jpip?target=file1.jp2&cnew=http&fsiz=48,32")
    cid = cid_of(h)
    _, _, body = await get(f"{base}/jpip?cid={cid}&fsiz=48,32")
    assert messages(body)[0] == []
    _, _, body = await get(f"{base}/jpip?cid={cid}&fsiz=48,32&model={model}")
    assert {m.bin_class for m in messages(body)[0]} == {cls}


# --- 4: EOR reasons -----------------------------------------------------------------------------

async def test_4_the_servers_own_cap_ends_with_eor_7(aiohttp_server, root, tmp_path) -> None:
    _, url = await _serve(aiohttp_server, root, tmp_path, max_response_bytes=300,
                          response_cache_bytes=0)
    _, h, body = await get(f"{url}/jpip?target=p0_02.j2k&fsiz=127,126")
    assert messages(body)[1] == 7 and "JPIP-len" not in h


async def test_4_len_0_after_the_metadata_is_not_window_done(base) -> None:
    _, h, _ = await get(f"{base}/jpip?target=file1.jp2&cnew=http&metareq=[*]!!")
    _, _, body = await get(f"{base}/jpip?cid={cid_of(h)}&fsiz=96,64&len=0")
    assert messages(body) == ([], 4)


async def test_4_a_whole_image_delivered_says_image_done(base) -> None:
    _, _, body = await get(f"{base}/jpip?target=p0_02.j2k&fsiz=127,126")
    assert messages(body)[1] == 1
    _, _, body = await get(f"{base}/jpip?target=p0_02.j2k&fsiz=64,64")
    assert messages(body)[1] == 2


# --- 5: JPIP-len --------------------------------------------------------------------------------

async def test_5_len_clamped_is_reported(aiohttp_server, root, tmp_path) -> None:
    _, url = await _serve(aiohttp_server, root, tmp_path, max_response_bytes=400)
    _, h, body = await get(f"{url}/jpip?target=p0_02.j2k&fsiz=127,126&len=100000")
    assert h["JPIP-len"] == "400" and len(body) <= 400 + 3


async def test_5_a_len_below_one_message_header_still_progresses(base) -> None:
    _, h, _ = await get(f"{base}/jpip?target=p0_02.j2k&cnew=http&len=0")
    cid = cid_of(h)
    for _ in range(400):
        _, h, body = await get(f"{base}/jpip?cid={cid}&fsiz=127,126&len=1")
        got, eor = messages(body)
        assert got and "JPIP-len" in h
        if eor in (1, 2):
            break
    assert eor == 1


# --- 6: HTTP/1.0 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n"])
async def test_6_http_1_0_gets_a_whole_response(base, connection) -> None:
    """The body ends when the server closes the connection, even if the client asked to keep
    it alive (found by tests/reliability: such a client waited for the keep-alive timeout)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /jpip?target=p0_02.j2k&fsiz=32,32 HTTP/1.0\r\nHost: x\r\n" + connection
                 + b"\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)  # the server closes: the body's end
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert b"chunked" not in head.lower()
    assert messages(body)[1] == 2


# --- 7: the largest discard level ----------------------------------------------------------------

async def test_7_discard_levels_are_bounded_by_the_fewest_over_components(base) -> None:
    src = build_source(CORPUS / "p0_05.j2k")  # COC: components with 3 and 6 levels
    levels = src.codestreams[0].tcr["levels"]
    assert (levels.min(), levels.max()) == (3, 6)
    _, h, _ = await get(f"{base}/jpip?target=p0_05.j2k&fsiz=1,1")
    assert h["JPIP-fsiz"] == "{},{}".format(*frame_size(src.codestreams[0].siz, 3))


# --- 9: bytes saved by the model -------------------------------------------------------------

async def test_9_bytes_saved_are_counted(aiohttp_server, root, tmp_path) -> None:
    app, url = await _serve(aiohttp_server, root, tmp_path)
    _, h, _ = await get(f"{url}/jpip?target=file1.jp2&cnew=http&fsiz=96,64")
    await get(f"{url}/jpip?cid={cid_of(h)}&fsiz=96,64")
    _, _, text = await get(f"{url}/metrics")
    line = [x for x in text.decode().splitlines()
            if x.startswith("jpip_bytes_saved_by_model_total")][0]
    assert float(line.split()[-1]) > 0


# --- 10: fields that change the answer ---------------------------------------------------------

async def test_10_fields_honoured_or_refused(base, root) -> None:
    size = (root / "p0_02.j2k").stat().st_size
    q = f"{base}/jpip?target=p0_02.j2k&fsiz=32,32"
    status, h, _ = await get(f"{q}&pref=fullwindow/r")
    assert status == 501 and h["JPIP-pref"] == "fullwindow/r"
    status, h, _ = await get(f"{q}&handled")
    assert status == 200 and h["JPIP-handled"] == "target,fsiz,handled"
    assert (await get(f"{q}&subtarget=0-{size - 1}"))[0] == 200
    assert (await get(f"{q}&subtarget=5-100"))[0] == 501
    status, _, body = await get(f"{q}&type=jpp-stream;ptype=ext")
    assert status == 415 and b"extended precinct" in body
    assert (await get(f"{q}&type=jpp-stream;ptype=ext,jpp-stream"))[0] == 200
    status, h, _ = await get(f"{base}/jpip?target=heliov.jpx&fsiz=16,16&stream=0-99")
    assert h["JPIP-stream"] == "0-2"
    status, _, body = await get(f"{base}/jpip?target=heliov.jpx&fsiz=16,16&stream=5")
    assert status == 404 and b"codestream" in body


# --- 11: files that are not JPEG 2000, and trailing bytes -----------------------------------------

async def test_11_files_that_cannot_be_served_get_4xx(base, root) -> None:
    (root / "text.jp2").write_text("not an image at all\n")
    (root / "empty.j2k").write_bytes(b"")
    (root / "cut.jp2").write_bytes((CORPUS / "file1.jp2").read_bytes()[:3000])
    # Not JPEG 2000 at all: 415; a damaged JPEG 2000 file: 422.
    for name, word, want in (("text.jp2", b"not a JPEG 2000", 415),
                             ("empty.j2k", b"too short", 415), ("cut.jp2", b"runs past", 422)):
        status, h, body = await get(f"{base}/jpip?target={name}&fsiz=32,32")
        assert status == want, (name, status, body)
        assert word in body and b"internal" not in body


@pytest.mark.parametrize("tail", [b"\0", b"\0junk after the last box\r\n", b"\0" * 64])
async def test_11_trailing_bytes_are_served_as_openjpeg_decodes_them(base, root, tail) -> None:
    data = (CORPUS / "file1.jp2").read_bytes()
    (root / "tail.jp2").write_bytes(data + tail)
    with build_source(CORPUS / "file1.jp2") as src:
        ix = src.codestreams[0]
        expect = decode_codestream(bytes(src.view[ix.offset:ix.offset + ix.length]), rlevel=1)
    async with JPIPClient(f"{base}/jpip?target=tail.jp2") as client:
        stats = await client.fetch_all(fsiz=(384, 256))
        assert stats[-1].eor in (1, 2)
        assert_same_pixels(expect, client.decode(fsiz=(384, 256)), "trailing bytes")
