"""In-process cost of one request, per workload: `python -m bench request [--requests N]`.

One event loop runs the server app (aiohttp's test server on loopback) and a client that sends
the requests one after another on a keep-alive connection. Beside it, in the same run, a bare
aiohttp handler answers the same request sequence with bodies of the same sizes; the difference
is what the JPIP server itself costs per request (parsing, target, session, plan, model,
messages, logging, metrics). Workloads, on the 4096^2 RGB interoperability image:

- `fresh`: a 512^2 region at full resolution, stateless, at a new place on every request
  (never answered from the response cache);
- `pan`: a session (cnew), then a 512^2 window panned by 128 px on every request;
- `repeat`: a session asking again for a window it holds (the answer is the EOR alone).

One more line: a `model=` of 100,000 explicit precinct descriptors (`P<id>`, ids drawn at
random), parsed and resolved into cache-model records (what a stateless client describing a
large cache costs).

Figures are per request, in microseconds, over `--rounds` rounds of `--requests` requests: the
least CPU time of the process in a round (what the server costs: other work on the machine
only adds to it) and, beside it, the median wall-clock time.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from codestream.source import build_source
from jpip.model import parse_model
from jpip.modelspec import model_records
from server.app import create_app
from server.config import ServerConfig

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = HERE.parent / "tests" / "data" / "interop"
IMAGE = "rgb4096.jp2"
SIZE = 4096
WINDOW = 512
STEP = 128


def fresh_queries(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x, y = rng.randrange(0, SIZE - WINDOW), rng.randrange(0, SIZE - WINDOW)
        out.append(f"target={IMAGE}&fsiz={SIZE},{SIZE}&roff={x},{y}&rsiz={WINDOW},{WINDOW}"
                   "&type=jpp-stream")
    return out


def pan_offsets(n: int) -> list[tuple[int, int]]:
    """A boustrophedon walk of 128 px steps over the image, `n` steps long."""
    per_row = (SIZE - WINDOW) // STEP
    out = []
    for i in range(n):
        row, k = divmod(i, per_row)
        x = k * STEP if row % 2 == 0 else (per_row - k) * STEP
        out.append((x, (row * STEP) % (SIZE - WINDOW)))
    return out


async def _bare_server(sizes: list[int]) -> TestServer:
    """Answers the i-th request with sizes[i] bytes, streamed like the JPIP server."""
    bodies = {n: b"\0" * n for n in set(sizes)}
    counter = iter(range(1 << 62))

    async def handler(request: web.Request) -> web.StreamResponse:
        body = bodies[sizes[next(counter) % len(sizes)]]
        resp = web.StreamResponse(headers={"Content-Type": "image/jpp-stream",
                                           "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    return server


async def _run(http: aiohttp.ClientSession, urls: list[str]
               ) -> tuple[tuple[float, float], list[int]]:
    """(CPU seconds, wall seconds) per request, and the body sizes."""
    sizes = []
    c0, t0 = time.process_time(), time.perf_counter()
    for url in urls:
        async with http.get(url) as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: {r.status} {body[:200]!r}")
            sizes.append(len(body))
    n = len(urls)
    return ((time.process_time() - c0) / n, (time.perf_counter() - t0) / n), sizes


async def _workload(name: str, base: str, http: aiohttp.ClientSession, n: int,
                    round_no: int) -> list[str]:
    if name == "fresh":
        return [f"{base}/jpip?{q}" for q in fresh_queries(n, seed=round_no)]
    # A new session per round, opened outside the timed requests.
    async with http.get(f"{base}/jpip?target={IMAGE}&cnew=http&tid=0&fsiz=64,64"
                        "&type=jpp-stream") as r:
        await r.read()
        cid = dict(kv.split("=", 1) for kv in r.headers["JPIP-cnew"].split(","))["cid"]
    win = f"fsiz={SIZE},{SIZE}&rsiz={WINDOW},{WINDOW}&type=jpp-stream"
    if name == "pan":
        return [f"{base}/jpip?cid={cid}&{win}&roff={x},{y}" for x, y in pan_offsets(n)]
    url = f"{base}/jpip?cid={cid}&{win}&roff=1024,1024"
    async with http.get(url) as r:  # fills the session: every timed answer is the EOR alone
        await r.read()
    return [url] * n


async def bench(root: Path, requests: int, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = ServerConfig(root=root, index_cache_dir=Path(tmp) / "ix", port=0,
                              max_sessions=100000)
        server = TestServer(create_app(config))
        await server.start_server()
        base = str(server.make_url("")).rstrip("/")
        try:
            async with aiohttp.ClientSession() as http:
                await _run(http, [f"{base}/jpip?target={IMAGE}&fsiz=64,64"])  # index built
                for name in ("fresh", "pan", "repeat"):
                    ours, bare = [], []
                    avg_bytes = 0.0
                    for round_no in range(rounds):
                        urls = await _workload(name, base, http, requests, round_no)
                        gc.collect()
                        per, sizes = await _run(http, urls)
                        ours.append(per)
                        avg_bytes = statistics.fmean(sizes)
                        plain = await _bare_server(sizes)
                        try:
                            pbase = str(plain.make_url("")).rstrip("/")
                            gc.collect()
                            per_bare, _ = await _run(http, [u.replace(base, pbase)
                                                            for u in urls])
                            bare.append(per_bare)
                        finally:
                            await plain.close()
                    # The least CPU of the rounds: other load on the machine only adds to it.
                    cpu = min(c for c, _ in ours) * 1e6
                    cpu_bare = min(c for c, _ in bare) * 1e6
                    wall = statistics.median(w for _, w in ours) * 1e6
                    wall_bare = statistics.median(w for _, w in bare) * 1e6
                    results[name] = {"cpu_us": cpu, "bare_cpu_us": cpu_bare,
                                     "server_cpu_us": cpu - cpu_bare, "wall_us": wall,
                                     "bare_wall_us": wall_bare, "bytes": avg_bytes}
        finally:
            await server.close()
    return results


def model_cost(root: Path, count: int = 100_000) -> tuple[float, float]:
    """Seconds to parse and to resolve a `model=` of `count` explicit precinct descriptors."""
    with build_source(root / IMAGE) as src:
        ids = src.codestreams[0].precincts["id"]
        rng = random.Random(8)
        text = ",".join(f"P{int(ids[rng.randrange(len(ids))])}" for _ in range(count))
        t0 = time.perf_counter()
        spec = parse_model(text)
        t1 = time.perf_counter()
        model_records(spec, src, 0)
        return t1 - t0, time.perf_counter() - t1


def add_image_root(ap: argparse.ArgumentParser) -> None:
    """--root: the directory holding IMAGE, for the in-process benchmarks."""
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                    help=f"directory holding {IMAGE} (default: the test data)")


def image_missing(root: Path) -> bool:
    """True, and says how to make it, when `root` has no IMAGE."""
    if (root / IMAGE).exists():
        return False
    print(f"{root / IMAGE} missing: run `python -m tests.data.generate`", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench request", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_root(ap)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if image_missing(args.root):
        return 2
    results = asyncio.run(bench(args.root, args.requests, args.rounds))
    print("microseconds per request (CPU of this process; wall clock in brackets)")
    print(f"{'workload':8} {'ours':>14} {'bare':>14} {'server':>7} {'bytes':>8}")
    for name, r in results.items():
        print(f"{name:8} {r['cpu_us']:6.0f} ({r['wall_us']:5.0f}) "
              f"{r['bare_cpu_us']:6.0f} ({r['bare_wall_us']:5.0f}) "
              f"{r['server_cpu_us']:7.0f} {r['bytes']:8.0f}")
    parse_s, resolve_s = model_cost(args.root)
    print(f"model= of 100,000 precinct descriptors: parsed in {parse_s * 1000:.0f} ms, "
          f"resolved in {resolve_s * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
