"""The wire protocol as real clients use it: request sequences, headers, statuses."""
from __future__ import annotations

import aiohttp
import pytest

from jpip.jpp import EndOfResponse, Message, parse_stream
from server.app import create_app
from server.config import ServerConfig
from tests.conftest import CORPUS


@pytest.fixture
async def base(aiohttp_server, tmp_path):
    server = await aiohttp_server(create_app(
        ServerConfig(root=CORPUS, index_cache_dir=tmp_path / "ix", port=0)))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def cnew_fields(headers) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in headers["JPIP-cnew"].split(","))


def check_jpp(body: bytes) -> list:
    """Every response: first message with class and codestream (bb=3), ends with an EOR."""
    items = parse_stream(body)
    assert items and isinstance(items[-1], EndOfResponse)
    if len(items) > 1:
        assert body[0] & 0x60 == 0x60, "first message must carry class and CSn"
    return items


async def get(http, url: str) -> tuple[int, dict, bytes]:
    async with http.get(url) as r:
        return r.status, r.headers, await r.read()


async def test_jhelioviewer_sequence(base, http) -> None:
    status, h, body = await get(http, f"{base}/heliov.jpx?cnew=http&type=jpp-stream&tid=0&len=512")
    assert status == 200 and h["Content-Type"] == "image/jpp-stream"
    f = cnew_fields(h)
    assert f["transport"] == "http" and f["path"] and len(f["cid"]) == 32
    assert h["JPIP-tid"] and len(body) <= 512 + 3
    check_jpp(body)
    channel = f"{base}/{f['path']}"
    for _ in range(20):  # metadata until EOR 1 or 2
        status, h, body = await get(http, f"{channel}?cid={f['cid']}&stream=0&metareq=[*]!!"
                                          "&len=2000000")
        assert status == 200 and h["Content-Type"] == "image/jpp-stream"
        items = check_jpp(body)
        assert all(m.bin_class == 8 for m in items[:-1] if isinstance(m, Message))
        if items[-1].reason in (1, 2):
            break
    else:
        pytest.fail("metadata never completed")
    for frame in range(3):
        for _ in range(50):
            status, h, body = await get(http, f"{channel}?cid={f['cid']}&stream={frame}"
                                              "&fsiz=512,512,closest&rsiz=600,600&len=2097152")
            assert status == 200
            items = check_jpp(body)
            assert {m.csn for m in items if isinstance(m, Message) and m.bin_class != 8} <= {frame}
            if items[-1].reason in (1, 2):
                break
        assert h.get("JPIP-rsiz")  # the region was clipped to the frame
    status, h, body = await get(http, f"{channel}?cclose={f['cid']}&len=0")
    assert status == 200
    status, _, _ = await get(http, f"{channel}?cid={f['cid']}&fsiz=64,64")
    assert status == 503


async def test_opj_viewer_sequence(base, http) -> None:
    status, h, body = await get(http, f"{base}/jpip?target=file1.jp2&fsiz=170,170&cnew=http"
                                      "&type=jpp-stream")
    assert status == 200 and h["JPIP-fsiz"] == "96,64"  # round-down to a resolution level
    cid = cnew_fields(h)["cid"]
    check_jpp(body)
    status, h, body = await get(http, f"{base}/jpip?cid={cid}&fsiz=384,256&roff=100,50"
                                      "&rsiz=200,100")
    assert status == 200
    check_jpp(body)
    status, h, body = await get(http, f"{base}/jpip?cid={cid}&metareq=[xml_]")
    assert status == 200
    check_jpp(body)
    status, h, body = await get(http, f"{base}/jpip?cclose={cid}")
    assert status == 200


async def test_kakadu_style_stateless_requests(base, http) -> None:
    url = (f"{base}/jpip?target=p0_04.j2k&fsiz=300,200,round-up&roff=10,10&rsiz=100,100"
           "&type=jpp-stream&pref=fullwindow&mset=0&wait=yes&qid=3&tid=0")
    status, h, body = await get(http, url)
    assert status == 200 and h["JPIP-qid"] == "3" and h["JPIP-fsiz"] == "320,240"
    items = check_jpp(body)
    got = sum(len(m.data) for m in items if isinstance(m, Message) and m.bin_class == 0)
    tid = h["JPIP-tid"]
    # Stateless again, saying what we hold: nothing of the image data comes back.
    ids = sorted({m.bin_id for m in items if isinstance(m, Message) and m.bin_class == 0})
    model = "Hm,H0,M0," + ",".join(f"P{i}" for i in ids)
    status, h, body = await get(http, url.replace("tid=0", f"tid={tid}") + f"&model={model}")
    items = check_jpp(body)
    assert got > 0 and not [m for m in items if isinstance(m, Message) and m.bin_class == 0]
    # need= restricts what is sent to the named precincts.
    status, h, body = await get(http, url + f"&need=P{ids[0]}")
    items = check_jpp(body)
    assert {m.bin_id for m in items if isinstance(m, Message) and m.bin_class == 0} == {ids[0]}
    # A stale tid: the model is ignored and the current tid is announced.
    status, h, body = await get(http, url.replace("tid=0", "tid=stale") + f"&model={model}")
    assert h["JPIP-tid"] == tid
    assert [m for m in check_jpp(body) if isinstance(m, Message) and m.bin_class == 0]


async def test_raw_and_encoded_reserved_characters(base, http) -> None:
    for q in ("metareq=[xml_]!!", "metareq=%5Bxml_%5D%21%21"):
        status, _, body = await get(http, f"{base}/jpip?target=file1.jp2&{q}")
        assert status == 200
        check_jpp(body)
    status, _, _ = await get(http, f"{base}/jpip?target=file1.jp2&fsiz=64,64&model=[0],Hm,P0:L1")
    assert status == 200


async def test_post_form_body(base, http) -> None:
    async with http.post(f"{base}/jpip", data="target=p0_01.j2k&fsiz=64,64",
                         headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert r.status == 200
        check_jpp(await r.read())


@pytest.mark.parametrize("query,status,word", [
    ("target=p0_01.j2k&fsiz=abc", 400, "fsiz"),
    ("target=p0_01.j2k&fsiz=-1,5", 400, "fsiz"),
    ("target=p0_01.j2k&fsiz=1000000000000,5", 400, "fsiz"),
    ("target=p0_01.j2k&fsiz=64,64&fsiz=64,64", 400, "fsiz"),
    ("target=p0_01.j2k&bogus=1", 400, "bogus"),
    ("target=p0_01.j2k&layers=" + "9" * 70000, 400, "layers"),
    ("target=nothere.jp2&fsiz=64,64", 404, ""),
    ("target=../corpus/p0_01.j2k", 404, ""),
    ("target=%2e%2e/x.jp2", 404, ""),
    ("target=MANIFEST.md", 415, ""),
    ("target=p0_01.j2k&type=raw", 415, "type"),
    ("target=p0_01.j2k&type=jpt-stream;ttype=x", 415, "type"),
    ("target=p0_01.j2k&upload=1", 501, "upload"),
    ("target=p0_01.j2k&cnew=http-tcp", 501, "cnew"),
    ("cid=0123456789abcdef0123456789abcdef&fsiz=64,64", 503, "cid"),
    ("fsiz=64,64", 400, "target"),
])
async def test_error_statuses(base, http, query, status, word) -> None:
    code, h, body = await get(http, f"{base}/jpip?{query}")
    assert code == status, body
    text = body.decode()
    assert text.count("\n") <= 1 and "Traceback" not in text
    assert word in text


async def test_first_message_and_content_type_on_every_response(base, http) -> None:
    status, h, body = await get(http, f"{base}/jpip?target=heliov.jpx&stream=1-2&fsiz=128,128")
    assert status == 200 and h["Content-Type"] == "image/jpp-stream"
    items = check_jpp(body)
    assert {m.csn for m in items if isinstance(m, Message) and m.bin_class == 6} == {1, 2}
    status, h, body = await get(http, f"{base}/jpip?target=heliov.jpx&stream=1-9&fsiz=64,64")
    assert h["JPIP-stream"] == "1-2"  # ranges, never one value per codestream
