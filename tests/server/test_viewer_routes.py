"""The viewer's routes: the page, its files, the listing at `/` (while `/` with a query stays
JPIP), /api/targets and /api/info, with the access hook deciding what a request may see."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from codestream.source import build_source
from jpip.jpp import EndOfResponse, parse_stream
from server import access, viewer
from server.app import create_app
from server.config import ServerConfig
from tests.conftest import CORPUS


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "viewer").mkdir(parents=True)  # a folder named like the viewer's prefix
    for name in ("file1.jp2", "HTJ2KLossless_08_RGB.j2k", "heliov.jpx", "CT1.j2k"):
        shutil.copy(CORPUS / name, root / name)
    shutil.copy(CORPUS / "p0_12.j2k", root / "viewer" / "p0_12.j2k")
    (root / "readme.txt").write_text("not an image")
    return root


@pytest.fixture
async def client(aiohttp_client, root: Path, tmp_path: Path):
    app = create_app(ServerConfig(root=root, index_cache_dir=tmp_path / "ix"))
    return await aiohttp_client(app)


@pytest.fixture
def built(tmp_path: Path, monkeypatch) -> Path:
    """A stand-in bundle (the real one is built by `make viewer`; its content is not at issue
    here)."""
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>viewer</title>")
    (static / "viewer.js").write_text("console.log(1)")
    (static / "openjpegwasm_decode.wasm").write_bytes(b"\0asm\1\0\0\0")
    (static / ".hidden.js").write_text("")
    monkeypatch.setattr(viewer, "STATIC_DIR", static)
    return static


async def test_root_without_a_query_lists_and_with_one_stays_jpip(client) -> None:
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    assert 'href="/viewer?target=file1.jp2"' in page and "readme.txt" not in page
    assert 'href="/viewer/browse?dir=viewer"' in page
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    jpip = await client.get("/?target=file1.jp2&fsiz=64,64&type=jpp-stream")
    assert jpip.status == 200 and jpip.content_type == "image/jpp-stream"
    items = parse_stream(await jpip.read())
    assert isinstance(items[-1], EndOfResponse) and items[-1].reason == 2
    head = await client.head("/")
    assert head.status == 200


async def test_browse_pages_and_json(client) -> None:
    resp = await client.get("/viewer/browse?dir=viewer")
    assert resp.status == 200 and 'href="/viewer?target=viewer/p0_12.j2k"' in await resp.text()
    body = await (await client.get("/api/targets")).json()
    assert [e["name"] for e in body["entries"]] == [
        "viewer", "CT1.j2k", "file1.jp2", "heliov.jpx", "HTJ2KLossless_08_RGB.j2k"]
    assert body["entries"][2]["size"] == (CORPUS / "file1.jp2").stat().st_size
    for bad, status in (("/api/targets?dir=..", 404), ("/api/targets?dir=nothere", 404),
                        ("/api/targets?page=0", 400), ("/api/targets?page=x", 400),
                        ("/viewer/browse?dir=../..", 404)):
        assert (await client.get(bad)).status == status, bad


async def test_info(client, root: Path) -> None:
    body = await (await client.get("/api/info?target=file1.jp2")).json()
    with build_source(root / "file1.jp2") as src:
        ix = src.codestreams[0]
        assert body["target_id"] == src.identity.target_id
    assert (body["width"], body["height"], body["levels"], body["layers"]) == (
        ix.siz.width, ix.siz.height, ix.max_discard, ix.max_layers)
    assert body["codestreams"] == 1 and body["first_codestream"] == 0
    assert body["components"][0] == {"precision": 8, "signed": False, "dx": 1, "dy": 1}
    assert not body["htj2k"] and body["reversible"] and body["mct"]
    assert body["jpip_path"] == "/jpip" and body["dicom"] is False and body["dicom_json"] is None
    ht = await (await client.get("/api/info?target=HTJ2KLossless_08_RGB.j2k")).json()
    assert ht["htj2k"] and ht["progression"] == "RPCL"
    jpx = await (await client.get("/api/info?target=heliov.jpx")).json()
    assert jpx["codestreams"] == 3
    ct = await (await client.get("/api/info?target=CT1.j2k")).json()
    assert ct["bit_depth"] == 16 and ct["signed"]
    for bad, status in (("/api/info", 400), ("/api/info?target=nothere.jp2", 404),
                        ("/api/info?target=readme.txt", 415),
                        ("/api/info?target=../x.jp2", 404)):
        assert (await client.get(bad)).status == status, bad


async def test_page_and_files(client, built: Path) -> None:
    resp = await client.get("/viewer?target=file1.jp2&fsiz=64,64")
    assert resp.status == 200 and "<title>viewer" in await resp.text()
    assert "script-src 'self' 'wasm-unsafe-eval'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    wasm = await client.get("/viewer/openjpegwasm_decode.wasm")
    assert wasm.status == 200 and wasm.headers["Content-Type"] == "application/wasm"
    js = await client.get("/viewer/viewer.js")
    assert js.headers["Content-Type"].startswith("text/javascript")
    assert (await client.get("/viewer/.hidden.js")).status in (404, 415)
    assert (await client.get("/viewer?target=nothere.jp2")).status == 404
    assert (await client.get("/viewer?target=readme.txt")).status == 415
    no_target = await client.get("/viewer", allow_redirects=False)
    assert no_target.status == 302 and no_target.headers["Location"] == "/"
    # /viewer/<name> that is not one of ours: a path-form JPIP request for viewer/<name>.
    jpip = await client.get("/viewer/p0_12.j2k?fsiz=8,8&type=jpp-stream")
    assert jpip.status == 200 and jpip.content_type == "image/jpp-stream"


async def test_not_built(client, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(viewer, "STATIC_DIR", tmp_path / "missing")
    resp = await client.get("/viewer?target=file1.jp2")
    assert resp.status == 503 and "make viewer" in await resp.text()
    assert (await client.get("/viewer/viewer.js")).status == 503


async def test_the_access_hook_decides(client, built: Path, monkeypatch) -> None:
    monkeypatch.setattr(access, "may_see", lambda request, target: target == "CT1.j2k")
    body = await (await client.get("/api/targets")).json()
    assert [e["name"] for e in body["entries"]] == ["CT1.j2k"]
    assert (await client.get("/api/info?target=file1.jp2")).status == 403
    assert (await client.get("/viewer?target=file1.jp2")).status == 403
    assert (await client.get("/api/info?target=CT1.j2k")).status == 200
    assert (await client.get("/api/targets?dir=viewer")).status == 403
    assert "file1.jp2" not in await (await client.get("/")).text()
