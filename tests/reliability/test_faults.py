"""Faults injected while serving: files replaced or deleted under the server, an index cache
directory that cannot be written or is full, a link out of the root, a file it may not read.

The file-permission faults run a real server process; as root (which reads anything) it runs
without the capabilities that let root ignore file permissions (setpriv), so the kernel refuses
it what it refuses any other user.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from client.api import JPIPClient
from client.bincache import BinCache
from codestream.source import build_source
from jpip.jpp import EOR, EndOfResponse, StreamParser
from jpip.window import frame_size
from tests.conftest import CORPUS, INTEROP
from tests.oracle import assert_same_pixels, decode_codestream
from tests.reliability.harness import running_app
from tests.reliability.soak import held_bins, model_bins
from tests.reliability.soak_server import session_record
from tests.server_process import running_server, server_command


def unprivileged_server() -> list[str]:
    """`jpip-server`, which the kernel holds to file permissions even when run as root."""
    if os.geteuid() != 0:
        return server_command()
    if shutil.which("setpriv") is None:
        pytest.fail("running as root, these tests need setpriv (util-linux) to drop "
                    "CAP_DAC_OVERRIDE from the server")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--",
            *server_command()]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _reference(path: Path, discard: int) -> list:
    with build_source(path) as src:
        ix = src.codestreams[0]
        return decode_codestream(bytes(src.view[ix.offset:ix.offset + ix.length]),
                                 rlevel=discard)


# --------------------------------------------------------------------------- replaced
@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
async def test_a_file_replaced_while_a_session_is_open(tmp_path, how) -> None:
    """The session's next answer names the new file (JPIP-tid), holds nothing of the old one
    (the model starts empty), and decodes to the new file's pixels."""
    root = tmp_path / "root"
    root.mkdir()
    target = root / "img.jp2"
    shutil.copy(CORPUS / "file1.jp2", target)   # 768 x 512
    new = CORPUS / "file3.jp2"                   # 480 x 640
    async with running_app(root, index_cache_dir=tmp_path / "ix") as app:
        async with JPIPClient(f"{app.url}/jpip?target=img.jp2") as client:
            await client.fetch_all(fsiz=(384, 256))
            old_tid, cid = client.tid, client.cid
            if how == "renamed over":
                shutil.copy(new, root / ".img.tmp")
                os.replace(root / ".img.tmp", target)
            else:
                with open(target, "r+b") as f:
                    f.truncate(0)
                    f.write(new.read_bytes())
            await asyncio.sleep(0.01)  # a new mtime even on coarse clocks
            fsiz = frame_size(build_source(new).codestreams[0].siz, 1)
            stats = await client.fetch_all(fsiz=fsiz)
            assert client.cid == cid, "the session goes on"
            assert client.tid != old_tid
            assert stats[0].headers["JPIP-tid"] == client.tid
            # Everything the window needs came again: the client dropped what it held (its
            # tid changed) and decodes the new file exactly.
            assert client.cache.duplicate_bytes == 0
            assert_same_pixels(_reference(new, 1), client.decode(fsiz=fsiz), how)
            # The server's model of the session describes the new file and holds exactly
            # what was sent since.
            state = app.state
            session = await state.sessions.load(cid)
            assert session.target_id == client.tid
            assert model_bins(session_record(state, session)) == held_bins(client.cache)
        assert not app.log.errors()


# --------------------------------------------------------------------------- deleted
async def test_a_file_deleted_while_a_response_is_in_flight(tmp_path) -> None:
    """A large response is being written when the file is deleted (the next request gets
    404), then a new file takes its name and is asked for (the cache drops the old file's open
    copy): the first response still ends whole."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(INTEROP / "rgb4096.jp2", root / "big.jp2")
    async with running_app(root, index_cache_dir=tmp_path / "ix") as app:
        async with aiohttp.ClientSession() as http:
            url = f"{app.url}/jpip?target=big.jp2&fsiz=4096,4096&type=jpp-stream"
            async with http.get(url) as r:
                assert r.status == 200
                body = bytearray(await r.content.readexactly(1 << 16))
                await asyncio.sleep(0.2)  # the server fills the socket buffers and waits
                (root / "big.jp2").unlink()
                async with http.get(url) as again:
                    assert again.status == 404, await again.text()
                shutil.copy(CORPUS / "p0_01.j2k", root / "big.jp2")
                async with http.get(url) as new:
                    assert new.status == 200, await new.text()
                    await new.read()
                body += await r.content.read()
        cache = BinCache()
        parser = StreamParser()
        for item in parser.feed(bytes(body)):
            cache.add(item)
        parser.close()
        assert parser.end == EndOfResponse(EOR.IMAGE_DONE), parser.end
        assert len(body) > 4 << 20, "the response was not in flight when the file went"
        assert not app.log.errors(), app.log.errors()


# --------------------------------------------------------------------------- index cache
CACHE_TARGETS = ("rgb4096.jp2", "med2048.jp2", "heliov.jpx")


def _cache_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    for name in CACHE_TARGETS:
        shutil.copy((INTEROP if name.startswith(("rgb", "med")) else CORPUS) / name, root / name)
    return root


@pytest.mark.parametrize("fault", ["unwritable", "full"])
def test_an_index_cache_that_cannot_be_written(tmp_path, fault) -> None:
    """Every window is served (indexes are kept in memory); the log says so once."""
    root = _cache_root(tmp_path)
    cache = tmp_path / "ix"
    cache.mkdir()
    command = unprivileged_server()
    if fault == "unwritable":
        cache.chmod(0o555)
    else:
        # A full disk: no write may take a file past 8 KiB (EFBIG, as ENOSPC would: an
        # OSError from the write), and every index entry is larger; the log, at WARNING,
        # stays below that. Python ignores SIGXFSZ, so the write just fails.
        command = ["prlimit", f"--fsize={8 << 10}", "--", *command]
    with running_server(root, "--index-cache-entries", "1", "--log-level", "WARNING",
                        index_cache=cache, command=command) as server:
        for _ in range(3):  # one open index at a time: each file is built again every time
            for name in CACHE_TARGETS:
                status, body = _get(f"{server.url}/jpip?target={name}&fsiz=64,64")
                assert status == 200, body
        log = server.log.read_text()
    warnings = [line for line in log.splitlines() if "index cache" in line]
    assert len(warnings) == 1, log
    assert "WARNING" in warnings[0] and "cannot save" in warnings[0], warnings
    assert not [p for p in cache.iterdir() if p.suffix == ".jpidx"]


# --------------------------------------------------------------------------- the root
def test_a_directory_link_out_of_the_root_is_refused(tmp_path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copy(CORPUS / "p0_01.j2k", outside / "secret.j2k")
    shutil.copy(CORPUS / "p0_01.j2k", root / "inside.j2k")
    (root / "out").symlink_to(outside, target_is_directory=True)
    with running_server(root, index_cache=tmp_path / "ix") as server:
        for url in ("/jpip?target=out/secret.j2k&fsiz=8,8", "/out/secret.j2k?fsiz=8,8",
                    "/api/info?target=out/secret.j2k", "/api/targets?dir=out"):
            status, body = _get(server.url + url)
            assert status == 404, (url, status, body)
            assert b"outside" in body or b"no such" in body, body
        status, body = _get(f"{server.url}/api/targets")
        assert status == 200 and b"inside.j2k" in body and b"out" not in body, body
        status, _ = _get(f"{server.url}/jpip?target=inside.j2k&fsiz=8,8")
        assert status == 200


def test_a_file_the_server_may_not_read(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(CORPUS / "p0_01.j2k", root / "locked.j2k")
    shutil.copy(CORPUS / "p0_01.j2k", root / "open.j2k")
    (root / "locked.j2k").chmod(0)
    (root / "closed").mkdir()
    shutil.copy(CORPUS / "p0_01.j2k", root / "closed" / "inner.j2k")
    (root / "closed").chmod(0)
    try:
        with running_server(root, index_cache=tmp_path / "ix",
                            command=unprivileged_server()) as server:
            status, body = _get(f"{server.url}/jpip?target=locked.j2k&fsiz=8,8")
            assert status == 403, body
            assert body == b"the target cannot be read\n"
            status, body = _get(f"{server.url}/jpip?target=closed/inner.j2k&fsiz=8,8")
            assert 400 <= status < 500, body
            status, _ = _get(f"{server.url}/jpip?target=open.j2k&fsiz=8,8")
            assert status == 200
            log = server.log.read_text()
        assert "Traceback" not in log and " ERROR " not in log, log
    finally:
        (root / "closed").chmod(0o755)
