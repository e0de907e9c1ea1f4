"""A real server under load while its files are copied over in place (`cp new old`).

Before indexing moved to child processes (cache/isolation.py) and serving to pread, the server
died of SIGBUS within a second of this (2 answers, then exit -7). `make test` runs it for a
few seconds; a longer run (the README's Reliability table) prints its figures:

    JPIP_REWRITE_SECONDS=45 python -m pytest -s tests/reliability/test_rewrite_in_place.py
"""
from __future__ import annotations

import asyncio
import collections
import os
import random
import shutil
import time

import aiohttp

from tests.conftest import CORPUS, INTEROP
from tests.server_process import running_server

SECONDS = float(os.environ.get("JPIP_REWRITE_SECONDS", "8"))
# On a loaded machine the run goes on, up to this many times SECONDS, until it has seen enough
# of both (rewrites, answers) for the assertions to mean something.
ENOUGH_REWRITES, ENOUGH_ANSWERS, MAX_STRETCH = 50, 100, 4
# Each served name alternates between two files: lazily indexed (RLCP, no PLT), JP2, a
# large one with PLT whose responses stream.
PAIRS = [("img0.j2k", CORPUS / "p0_04.j2k", CORPUS / "p0_09.j2k"),
         ("img1.jp2", CORPUS / "file1.jp2", CORPUS / "file3.jp2"),
         ("img2.jp2", INTEROP / "rgb4096.jp2", CORPUS / "file1.jp2")]


async def _load(url: str, root, start: float) -> tuple[collections.Counter, int]:
    statuses: collections.Counter = collections.Counter()
    rewrites = 0

    def running() -> bool:
        elapsed = time.monotonic() - start
        enough = rewrites > ENOUGH_REWRITES and statuses[200] > ENOUGH_ANSWERS
        return elapsed < SECONDS or (not enough and elapsed < SECONDS * MAX_STRETCH)

    async def client(http: aiohttp.ClientSession, k: int) -> None:
        rnd = random.Random(k)
        while running():
            name = rnd.choice(PAIRS)[0]
            size = rnd.choice([64, 256, 1024])
            try:
                async with http.get(f"{url}/jpip?target={name}&fsiz={size},{size}"
                                    "&type=jpp-stream") as r:
                    await r.read()
                    statuses[r.status] += 1
            except aiohttp.ClientPayloadError:
                statuses["cut"] += 1  # the file was cut under a streaming response
            except aiohttp.ClientConnectorError:
                statuses["refused"] += 1  # the server is gone: said below
                return

    async def rewriter(root) -> None:
        nonlocal rewrites
        rnd = random.Random(0)
        while running():
            name, a, b = rnd.choice(PAIRS)
            await asyncio.to_thread(shutil.copyfile, rnd.choice([a, b]), root / name)
            rewrites += 1
            await asyncio.sleep(rnd.uniform(0, 0.03))

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(rewriter(root), *(client(http, k) for k in range(8)))
    return statuses, rewrites


def test_files_copied_over_in_place_under_load(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for name, first, _ in PAIRS:
        shutil.copyfile(first, root / name)
    with running_server(root, index_cache=tmp_path / "ix") as server:
        statuses, rewrites = asyncio.run(_load(server.url, root, time.monotonic()))
        assert server.proc.poll() is None, f"the server died ({server.proc.returncode})"
        log = server.log.read_text(errors="replace")
    print(f"\nat least {SECONDS:.0f} s, 8 clients: {rewrites} files copied over in place; "
          f"answers {dict(statuses)}")
    assert rewrites > ENOUGH_REWRITES and statuses[200] > ENOUGH_ANSWERS, (rewrites, statuses)
    # 503: the file changed while it was read (ask again); 415/422: a request that came while
    # a file was mid-copy read the partial file as it was. Never 500, never a traceback.
    assert set(statuses) <= {200, 503, 415, 422, "cut"}, statuses
    assert "Traceback" not in log and '" 500 ' not in log and "-> 500" not in log, log[-3000:]
