"""JPT-streams beside JPP-streams, and metadata-bins: `python -m bench jpt`.

Serving, in one process (aiohttp's test server on loopback, one keep-alive client, requests one
after another), on the interoperability image re-encoded with 512x512 tiles cut into tile-parts
by resolution (`-TP R`, built once into --out with Debian's opj_decompress/opj_compress):

- `thumb`: the whole image at 256x256, stateless;
- `region`: a 512^2 region at full resolution at a new place each request, stateless;
- `pan`: a session panning a 512^2 window by 128 px per request.

Each workload runs as a JPP-stream and as a JPT-stream in the same run: CPU time of the process
per request and bytes per response (JPT sends whole tile-parts: more bytes for a region than
its precincts, fewer messages).

Metadata: a JPX movie of --frames frames (tiny codestreams, one XML box per frame grouped in
one association, as helioviewer's movies), made in a temporary directory: time to partition
its boxes, size of metadata-bin 0, and the CPU time of planning `metareq=[*]!!` and the
default metadata of a request (kept per target after the first).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from codestream.boxes import read_layout
from codestream.metabins import partition_metadata
from codestream.source import build_source
from jpip.metareq import plan_metadata
from jpip.request import parse_query
from jpip.window import resolve_window
from server.app import create_app
from server.config import ServerConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
INTEROP = ROOT / "tests" / "data" / "interop"
IMAGE = "rgb4096_t512.jp2"
WINDOW, STEP = 512, 128


def ensure_tiled(out: Path) -> Path:
    path = out / IMAGE
    if path.exists():
        return path
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pixels = Path(tmp) / "pixels.tif"
        subprocess.run(["opj_decompress", "-i", str(INTEROP / "rgb4096.jp2"), "-o",
                        str(pixels)], check=True, capture_output=True)
        subprocess.run(["opj_compress", "-i", str(pixels), "-o", str(path), "-t", "512,512",
                        "-p", "RPCL", "-n", "5", "-r", "320,160,80,40,20,10", "-TP", "R",
                        "-PLT"], check=True, capture_output=True)
    return path


def queries(name: str, image: str, size: int, n: int, stream_type: str,
            seed: int) -> list[str]:
    """The workload's queries on a square image of `size` (at least 2 windows wide)."""
    rng = random.Random(seed)
    typ = f"type={stream_type}"
    win = min(WINDOW, size // 2)
    if name == "thumb":
        return [f"target={image}&fsiz=256,256&{typ}"] * n
    if name == "region":
        return [f"target={image}&fsiz={size},{size}&roff={rng.randrange(size - win)},"
                f"{rng.randrange(size - win)}&rsiz={win},{win}&{typ}" for _ in range(n)]
    step = max(1, min(STEP, win // 4))
    per_row = (size - win) // step
    out = []
    for i in range(n):
        row, k = divmod(i, per_row)
        x = k * step if row % 2 == 0 else (per_row - k) * step
        out.append(f"fsiz={size},{size}&roff={x},{(row * step) % (size - win)}"
                   f"&rsiz={win},{win}")
    return out


async def _run(http, urls: list[str]) -> tuple[float, float]:
    sizes = []
    c0 = time.process_time()
    for url in urls:
        async with http.get(url) as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: {r.status} {body[:200]!r}")
            sizes.append(len(body))
    return (time.process_time() - c0) / len(urls), statistics.fmean(sizes)


async def serving(path: Path, requests: int, rounds: int) -> dict:
    results: dict = {}
    root, image = path.parent, path.name
    with build_source(path) as src:
        size = min(src.codestreams[0].siz.width, src.codestreams[0].siz.height)
    with tempfile.TemporaryDirectory() as tmp:
        server = TestServer(create_app(ServerConfig(root=root, index_cache_dir=Path(tmp) / "ix",
                                                    port=0, response_cache_bytes=0)))
        await server.start_server()
        base = str(server.make_url("/jpip"))
        try:
            async with aiohttp.ClientSession() as http:
                await _run(http, [f"{base}?target={image}&fsiz=64,64"])  # index built
                for name in ("thumb", "region", "pan"):
                    for stream_type in ("jpp-stream", "jpt-stream"):
                        cpu, sizes = [], []
                        for r in range(rounds):
                            qs = queries(name, image, size, requests, stream_type, r)
                            if name == "pan":
                                async with http.get(f"{base}?target={image}&cnew=http"
                                                    f"&fsiz=64,64&type={stream_type}") as resp:
                                    await resp.read()
                                    cid = resp.headers["JPIP-cnew"].split(",")[0][4:]
                                qs = [f"cid={cid}&{q}" for q in qs]
                            gc.collect()
                            c, s = await _run(http, [f"{base}?{q}" for q in qs])
                            cpu.append(c)
                            sizes.append(s)
                        results[(name, stream_type)] = (statistics.median(cpu) * 1e6,
                                                        statistics.median(sizes))
        finally:
            await server.close()
    return results


def metadata(frames: int) -> dict:
    from tests.data.jpx import frame_xml_jpx  # the tests' movie maker

    code = (ROOT / "tests" / "data" / "corpus" / "p0_12.j2k").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = frame_xml_jpx(Path(tmp) / "movie.jpx", [code] * frames)
        data = path.read_bytes()
        t0 = time.perf_counter()
        meta = partition_metadata(data, read_layout(data))
        partition_s = time.perf_counter() - t0
        with build_source(path) as src:
            w = [resolve_window(src.codestreams[0], 0, fsiz=(3, 5, "round-down"))]
            star = parse_query("metareq=[*]!!").metareq
            t0 = time.process_time()
            for _ in range(20):
                everything = plan_metadata(src.metadata, star, w, True)
            star_s = (time.process_time() - t0) / 20
            plan_metadata(src.metadata, None, w, False)
            t0 = time.process_time()
            for _ in range(1000):
                plan_metadata(src.metadata, None, w, False)
            default_s = (time.process_time() - t0) / 1000
        return {"frames": frames, "file_bytes": len(data), "bins": meta.count,
                "boxes": len(meta.nodes["type"]), "bin0_bytes": meta.length(0),
                "partition_ms": partition_s * 1e3, "star_plan_ms": star_s * 1e3,
                "star_bins": len(everything.last), "default_plan_us": default_s * 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench jpt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "large-images")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--image", type=Path,
                    help="serve this (square-ish, tiled) image instead of building one")
    args = ap.parse_args(argv)
    if args.image is None and not (INTEROP / "rgb4096.jp2").exists():
        print("tests/data/interop/rgb4096.jp2 missing: run `python -m tests.data.generate`",
              file=sys.stderr)
        return 2
    image = args.image or ensure_tiled(args.out)
    res = asyncio.run(serving(image, args.requests, args.rounds))
    print(f"{image.name}: CPU microseconds per request, bytes per response")
    print(f"{'workload':8} {'JPP us':>8} {'JPT us':>8} {'JPP bytes':>10} {'JPT bytes':>10}")
    for name in ("thumb", "region", "pan"):
        (pc, pb), (tc, tb) = res[(name, "jpp-stream")], res[(name, "jpt-stream")]
        print(f"{name:8} {pc:8.0f} {tc:8.0f} {pb:10.0f} {tb:10.0f}")
    m = metadata(args.frames)
    print(f"JPX of {m['frames']} frames ({m['file_bytes']} bytes, {m['boxes']} boxes): "
          f"{m['bins']} metadata-bins, bin 0 {m['bin0_bytes']} bytes, partitioned in "
          f"{m['partition_ms']:.1f} ms; metareq=[*]!! planned in {m['star_plan_ms']:.2f} ms "
          f"({m['star_bins']} bins), the default metadata in {m['default_plan_us']:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
