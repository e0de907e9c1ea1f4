"""`jpip fetch` and `jpip info` against a real `jpip-server` process, as a user runs them."""
from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from client.cli import build_parser
from codestream.source import build_source
from tests.conftest import CORPUS, INTEROP
from tests.oracle import assert_same_pixels, decode_codestream
from tests.server_process import free_port, running_server

# A class name in a message (ClientConnectorError, CodestreamError ...) is an internal detail.
CLASS_NAME = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)+(?:Error|Exception)\b")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(INTEROP.parent,
                        index_cache=tmp_path_factory.mktemp("index-cache")) as proc:
        yield proc


@pytest.fixture
def base(server) -> str:
    return server.url


async def jpip(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None})
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


def _one_clean_line(err: str) -> None:
    assert err.count("\n") == 1, err
    assert "Traceback" not in err and not CLASS_NAME.search(err), err


async def test_fetch_without_fsiz_gives_full_resolution(base, tmp_path) -> None:
    out = tmp_path / "full.png"
    code, stdout, err = await jpip("fetch", f"{base}/corpus/file1.jp2", "-o", str(out),
                                   "--stats", "-q")
    assert code == 0, err
    assert json.loads(stdout)["eor"] == 1  # the whole image at full resolution: image done
    want = np.stack(original(CORPUS / "file1.jp2"), axis=-1)
    assert want.shape == (512, 768, 3)
    assert_same_pixels([want], [np.asarray(Image.open(out))], "full resolution")


async def test_window_fields_in_the_url_are_used(base, tmp_path) -> None:
    want = np.stack(original(CORPUS / "file1.jp2", rlevel=2), axis=-1)[8:40, 16:80]
    url = f"{base}/jpip?target=corpus/file1.jp2&fsiz=192,128&roff=16,8&rsiz=64,32"
    code, _, err = await jpip("fetch", url, "-o", str(tmp_path / "a.png"), "-q")
    assert code == 0, err
    assert_same_pixels([want], [np.asarray(Image.open(tmp_path / "a.png"))], "URL window")
    # The command line wins over the URL.
    code, _, err = await jpip("fetch", url.replace("fsiz=192,128", "fsiz=96,64"), "--fsiz",
                              "192,128", "-o", str(tmp_path / "b.png"), "-q")
    assert code == 0, err
    assert_same_pixels([want], [np.asarray(Image.open(tmp_path / "b.png"))], "option wins")
    # A rounding in the URL's fsiz: 200,130 rounded down is the 192x128 frame.
    code, _, err = await jpip("fetch", f"{base}/corpus/file1.jp2?fsiz=200,130,round-down",
                              "-o", str(tmp_path / "c.png"), "-q")
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "c.png")).shape == (128, 192, 3)


@pytest.mark.parametrize(("query", "says"), [
    ("target=corpus/file1.jp2&cid=abc", "cid=, which the client sets itself"),
    ("target=corpus/file1.jp2&quality=5", "quality= is not used by the client"),
    ("target=corpus/file1.jp2&fsiz=0,10", "the URL's fsiz=0,10"),
    ("target=corpus/file1.jp2&type=raw", "the client reads jpp-stream and jpt-stream"),
])
async def test_url_fields_the_client_cannot_use_are_refused(base, tmp_path, query, says) -> None:
    code, _, err = await jpip("fetch", f"{base}/jpip?{query}", "-o", str(tmp_path / "x.png"))
    assert code == 2 and says in err, err
    _one_clean_line(err)


async def test_session_cache_file_sends_nothing_twice(base, tmp_path) -> None:
    cache = tmp_path / "c.jpipcache"
    url = f"{base}/jpip?target=corpus/p0_04.j2k"
    runs = []
    for name in ("a.png", "b.png"):
        code, out, err = await jpip("fetch", url, "--fsiz", "160,120", "--cache", str(cache),
                                    "--stats", "-o", str(tmp_path / name))
        assert code == 0, err
        runs.append(json.loads(out))
    first, second = runs
    assert first["bytes"] > 10_000
    assert second["bytes"] <= 16 and second["duplicate_bytes"] == 0, second
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert np.array_equal(np.asarray(a), np.asarray(b))
    # A larger window with the same cache: only the new bytes, and exact pixels.
    code, out, err = await jpip("fetch", url, "--fsiz", "640,480", "--cache", str(cache),
                                "--stats", "-o", str(tmp_path / "c.png"))
    assert code == 0, err
    assert json.loads(out)["duplicate_bytes"] == 0
    want = np.stack(original(CORPUS / "p0_04.j2k"), axis=-1)
    assert_same_pixels([want], [np.asarray(Image.open(tmp_path / "c.png"))], "cache + more")


@pytest.mark.parametrize(("args", "says"), [
    (("--fsiz", "768,512", "--roff", "800,0", "--rsiz", "10,10"),
     "the region at 800,0 is outside the 768×512 frame"),
    (("--fsiz", "192,128", "--roff", "0,128"), "the region at 0,128 is outside the 192×128 frame"),
    (("--fsiz", "192,128", "--comps", "5"), "component 5 out of range (3 components: 0-2)"),
    (("--fsiz", "192,128", "--comps", "1-5"),
     "components 3-5 out of range (3 components: 0-2)"),
])
async def test_empty_windows_are_explained(base, tmp_path, args, says) -> None:
    code, _, err = await jpip("fetch", f"{base}/corpus/file1.jp2", *args,
                              "-o", str(tmp_path / "x.png"))
    assert code == 1 and says in err, err
    _one_clean_line(err)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("args", "says"), [
    (("-o", "{tmp}/x"), "-o {tmp}/x: the extension chooses the format; use .png"),
    (("-o", "{tmp}/x.jpg"), "-o {tmp}/x.jpg: the extension chooses the format"),
    (("-o", "{tmp}/missing/x.png"), "the folder '{tmp}/missing' does not exist"),
    (("-o", "{tmp}/x.png", "--save-stream", "{tmp}/nope/s.jpp"),
     "--save-stream {tmp}/nope/s.jpp: the folder '{tmp}/nope' does not exist"),
    (("--fsiz", "-5,10"), "--fsiz: expected a size W,H of integers from 1, got '-5,10'"),
    (("--roff", "-1,0"), "--roff: expected an offset X,Y of integers from 0, got '-1,0'"),
    (("--comps", "red"), "expected component numbers such as 0-2 or 0,3"),
])
async def test_usage_mistakes_are_found_before_the_download(tmp_path, args, says) -> None:
    # No server is listening: a mistake reported as such was found before connecting.
    url = f"http://127.0.0.1:{free_port()}/corpus/file1.jp2"
    args = tuple(a.format(tmp=tmp_path) for a in args)
    code, _, err = await jpip("fetch", url, *args)
    assert code == 2 and says.format(tmp=tmp_path) in err, err
    assert "Traceback" not in err and not CLASS_NAME.search(err), err
    assert "connect" not in err


async def test_url_without_scheme_and_server_not_running(tmp_path) -> None:
    port = free_port()
    code, _, err = await jpip("fetch", f"127.0.0.1:{port}/x.jp2", "-o", str(tmp_path / "a.png"))
    assert code == 2 and f"did you mean 'http://127.0.0.1:{port}/x.jp2'" in err, err
    _one_clean_line(err)
    code, _, err = await jpip("fetch", f"http://127.0.0.1:{port}/x.jp2", "--fsiz", "8,8")
    assert code == 1
    assert f"cannot connect to 127.0.0.1:{port}: is the server running?" in err, err
    _one_clean_line(err)
    code, _, err = await jpip("info", f"http://127.0.0.1:{port}/x.jp2")
    assert code == 1 and "is the server running?" in err, err


async def test_https_against_a_plain_http_server(base) -> None:
    url = base.replace("http://", "https://") + "/corpus/file1.jp2"
    host_port = base.removeprefix("http://")
    for command in (("info", url), ("fetch", url, "--fsiz", "8,8")):
        code, _, err = await jpip(*command)
        assert code == 1, err
        assert f"the TLS handshake with {host_port} failed: if the server speaks plain HTTP, " \
            "use http:// instead of https://" in err, err
        _one_clean_line(err)


async def test_fetch_without_an_output_says_so(base) -> None:
    code, out, err = await jpip("fetch", f"{base}/corpus/file1.jp2", "--fsiz", "192,128")
    assert code == 0 and out == "", err
    assert err == ("jpip fetch: fetched and decoded 192x128 samples, saved nothing: give "
                   "-o FILE to save them\n"), err
    code, out, err = await jpip("fetch", f"{base}/corpus/file1.jp2", "--fsiz", "192,128",
                                "--stats")
    assert code == 0 and json.loads(out)["eor"] == 2 and err == "", err


def test_closed_output_pipe_is_quiet(server) -> None:
    # `jpip info URL | head -0`: the reader is gone before anything is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "client.cli", "info",
                               f"{server.url}/corpus/file1.jp2"],
                              stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == b"", done.stderr.decode()


async def test_version_and_help_for_every_option() -> None:
    version = importlib.metadata.version("jpip-server")
    code, out, _ = await jpip("--version")
    assert code == 0 and out.strip() == f"jpip {version}"
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"jpip {name} {'/'.join(action.option_strings) or action.dest}"


# --- a server with access control -------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    from tests.tokens import hs_secret
    keys = tmp_path_factory.mktemp("keys")
    secret = hs_secret(keys / "hs.key")
    with running_server(INTEROP.parent, "--auth-jwt-key", str(keys / "hs.key"),
                        index_cache=tmp_path_factory.mktemp("index-cache")) as proc:
        yield proc, secret


async def test_fetch_and_info_with_a_token(guarded, tmp_path) -> None:
    from tests.tokens import mint
    proc, secret = guarded
    token = mint(secret, aud=None, targets=["corpus/file1.jp2"])
    url = f"{proc.url}/jpip?target=corpus/file1.jp2"
    no_token = {"JPIP_TOKEN": None}
    code, _, err = await jpip("fetch", url, "--fsiz", "64,64", env=no_token)
    assert code == 1 and "401" in err and "access token is required" in err, err
    assert "give --token TOKEN or set $JPIP_TOKEN" in err and "access_token=" not in err, err
    _one_clean_line(err)
    for args, env in ((["--token", token], no_token), ([], {"JPIP_TOKEN": token})):
        out = tmp_path / "t.png"
        code, _, err = await jpip("fetch", url, "--fsiz", "64,64", "-o", str(out), *args,
                                  env=env)
        assert code == 0 and out.is_file(), err
        code, stdout, err = await jpip("info", url, *args, env=env)
        assert code == 0 and json.loads(stdout)["width"] == 768, err
    # A viewer's URL with its token works as it is (the client sends it as a header).
    code, _, err = await jpip("fetch", f"{url}&access_token={token}", "--fsiz", "64,64",
                              "-o", str(tmp_path / "u.png"), env=no_token)
    assert code == 0, err
    code, _, err = await jpip("fetch", f"{proc.url}/jpip?target=corpus/p0_01.j2k", "--token",
                              token, "--fsiz", "8,8", env=no_token)
    assert code == 1 and "403" in err and "does not allow" in err and token not in err
    assert token not in proc.log.read_text()  # nor in the server's log


# --- outputs that cannot hold the samples -----------------------------------------------------

@pytest.mark.parametrize("window", [(), ("--fsiz", "128,128")])
async def test_signed_samples_are_not_written_as_png(base, tmp_path, window) -> None:
    # PNG holds unsigned samples only: -1000 would be written as 64536 (an inverted picture).
    out = tmp_path / "ct.png"
    code, _, err = await jpip("fetch", f"{base}/corpus/693_J2KR.j2k", *window, "-o", str(out))
    assert code == 2, err
    assert f"-o {out}: the image has signed samples" in err and "use .tif or .npy" in err, err
    _one_clean_line(err)
    assert not out.exists()
    # TIFF keeps them.
    tif = tmp_path / "ct.tif"
    code, _, err = await jpip("fetch", f"{base}/corpus/693_J2KR.j2k", *window, "-o", str(tif),
                              "-q")
    assert code == 0, err
    got = tifffile.imread(tif)
    want = original(CORPUS / "693_J2KR.j2k", rlevel=2 if window else 0)[0]
    assert got.dtype.kind == "i" and got.min() < 0 and np.array_equal(got, want)


def test_save_array_refuses_what_png_cannot_hold(tmp_path) -> None:
    from client.cli import UsageError, save_array
    for arrays, says in (([np.array([[-1000, 5]], np.int16)], "signed samples"),
                         ([np.zeros((2, 2), np.uint16)] * 3, "16-bit grey")):
        with pytest.raises(UsageError, match=says):
            save_array(tmp_path / "x.png", arrays)
        assert not (tmp_path / "x.png").exists()
    save_array(tmp_path / "g.png", [np.array([[0, 65535]], np.uint16)])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), [[0, 65535]])


# --- a server-only install (the Docker image's wheel): no client or tools extra ----------------

SERVER_ONLY = ("import sys\n"
               "for name in ('glymur', 'PIL', 'tifffile'):\n"
               "    sys.modules[name] = None  # import fails: ModuleNotFoundError\n"
               "from client.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize(("args", "extra"), [
    (("fetch", "{url}", "-o", "{tmp}/x.png"), "client"),
    (("info", "{url}"), "client"),
    (("meta", "{url}"), "client"),
    (("prepare", str(CORPUS / "file1.jp2"), "{tmp}/x.jp2"), "tools"),
])
def test_a_missing_extra_is_one_line(tmp_path, args, extra) -> None:
    url = f"http://127.0.0.1:{free_port()}/corpus/file1.jp2"
    args = [a.format(url=url, tmp=tmp_path) for a in args]
    done = subprocess.run([sys.executable, "-c", SERVER_ONLY, *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"jpip {args[0]}: needs the {extra} extra (no module named "
                           f"'glymur'): pip install 'jpip-server[{extra}]'\n"), done.stderr


# --- byte and request limits -------------------------------------------------------------------

async def test_request_limits_name_themselves(base, tmp_path) -> None:
    url, out = f"{base}/corpus/CT1.j2k", tmp_path / "ct.tif"
    window = ("--fsiz", "512,512", "-o", str(out), "-q")
    # 100 bytes do not even hold the main header: an error naming the limit, nothing written.
    code, _, err = await jpip("fetch", url, "--len", "100", "--once", *window)
    assert code == 1, err
    assert "the window is not complete after 1 request (--once, --len 100): " in err, err
    assert "too little to decode; leave out --once, or raise --len" in err, err
    _one_clean_line(err)
    assert not out.exists()
    # Enough to decode, not the whole window: written, with a warning and exit status 3.
    code, _, err = await jpip("fetch", url, "--len", "1000", "--max-requests", "3", *window)
    assert code == 3, err
    assert err.startswith("jpip fetch: warning: the window is not complete after 3 requests "
                          "(--max-requests 3, --len 1000): "), err
    assert "raise --max-requests or --len" in err and err.count("\n") == 1, err
    assert tifffile.imread(out).shape == (512, 512)
    # Enough requests: complete, exact, status 0.
    code, _, err = await jpip("fetch", url, "--len", "20000", *window)
    assert code == 0 and err == "", err
    assert np.array_equal(tifffile.imread(out), original(CORPUS / "CT1.j2k")[0])
