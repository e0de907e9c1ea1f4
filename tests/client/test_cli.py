"""`jpip fetch` and `jpip info` against a real server."""
from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from codestream.source import build_source
from server.app import create_app
from server.config import ServerConfig
from tests.conftest import CORPUS, INTEROP
from tests.oracle import assert_same_pixels, decode_codestream


@pytest.fixture
async def base(aiohttp_server, tmp_path):
    server = await aiohttp_server(create_app(
        ServerConfig(root=INTEROP.parent, index_cache_dir=tmp_path / "ix", port=0)))
    return str(server.make_url("")).rstrip("/")


async def jpip(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


def original(path, rlevel=0):
    with build_source(path) as src:
        ix = src.codestreams[0]
        return decode_codestream(bytes(src.view[ix.offset:ix.offset + ix.length]), rlevel=rlevel)


async def test_fetch_png_with_stats_and_saved_stream(base, tmp_path) -> None:
    out, jpp = tmp_path / "thumb.png", tmp_path / "thumb.jpp"
    code, stdout, err = await jpip("fetch", f"{base}/jpip?target=corpus/file1.jp2",
                                   "--fsiz", "192,128", "-o", str(out), "--save-stream", str(jpp),
                                   "--stats")
    assert code == 0, err
    stats = json.loads(stdout)
    assert stats["eor"] == 2 and stats["duplicate_bytes"] == 0 and stats["bytes"] > 0
    assert jpp.stat().st_size == stats["bytes"]
    got = np.asarray(Image.open(out))
    want = np.stack(original(CORPUS / "file1.jp2", rlevel=2), axis=-1)
    assert_same_pixels([want], [got], "jpip fetch PNG")


async def test_fetch_keeps_16_bits_in_tiff_and_npy(base, tmp_path) -> None:
    url = f"{base}/interop/med2048.jp2"
    for name in ("region.tiff", "region.npy"):
        out = tmp_path / name
        code, _, err = await jpip("fetch", url, "--fsiz", "512,512", "--roff", "100,120",
                                  "--rsiz", "64,48", "-o", str(out), "-q")
        assert code == 0, err
        got = tifffile.imread(out) if name.endswith("tiff") else np.load(out)
        assert got.dtype == np.uint16 and got.shape == (48, 64)
        want = original(INTEROP / "med2048.jp2", rlevel=2)[0][120:168, 100:164]
        assert np.array_equal(got, want)


async def test_stateless_fetch_with_a_saved_cache(base, tmp_path) -> None:
    cache = tmp_path / "c.jpipcache"
    url = f"{base}/jpip?target=corpus/p0_04.j2k"
    code, out1, err = await jpip("fetch", url, "--fsiz", "160,120", "--stateless", "--cache",
                                 str(cache), "--stats", "-o", str(tmp_path / "a.png"))
    assert code == 0, err
    code, out2, err = await jpip("fetch", url, "--fsiz", "160,120", "--stateless", "--cache",
                                 str(cache), "--stats", "-o", str(tmp_path / "b.png"))
    assert code == 0, err
    first, second = json.loads(out1), json.loads(out2)
    assert second["bytes"] < first["bytes"] // 10  # everything came from the saved cache
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert np.array_equal(np.asarray(a), np.asarray(b))


async def test_info(base) -> None:
    code, out, err = await jpip("info", f"{base}/jpip?target=corpus/p1_05.j2k")
    assert code == 0, err
    info = json.loads(out)
    assert (info["width"], info["height"], info["components"]) == (512, 512, 3)
    assert info["tiles"] == 225 and info["levels"] == 7 and info["progression"] == "PCRL"


async def test_errors_are_one_line(base) -> None:
    code, _, err = await jpip("fetch", f"{base}/jpip?target=corpus/nothere.jp2", "--fsiz", "8,8")
    assert code == 1 and "404" in err and err.count("\n") == 1
