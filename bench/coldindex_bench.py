"""Cold start on the worst case for the index (a benchmark, not a test):

    python -m bench coldindex [--size N] [--out DIR] [--windows K] [--direct-runs R]
                              [--only-direct]

The image: the make_large rgb mosaic at N x N (default 16384) re-encoded in RPCL with 64x64
precincts at every resolution, its PLT removed (bench/index_bench.py builds it into --out,
default large-images/, which git ignores): 2.1M packets at 16384², whose packet headers must all
be decoded to index the whole file. The server is started as a user would
(`jpip-server --root DIR`, defaults) with an empty index cache; then, timed from the request:

1. the first thumbnail (fsiz=256,256), the index not built;
2. K stateless 512² windows at every resolution from the thumbnail's up to the full one, at
   seeded random places, the first ones while the rest of the index is still being built in
   the background (each resolution a window needs is indexed before it is answered);
3. how long until the whole index was built and persisted (the cache entry appears);
4. after a restart, the first thumbnail from the persisted index;
5. a new server with an empty index cache whose first request is a 512² window at full
   resolution (a viewer opening there), R times (a new server and cache each time, at a new
   place; its verdict is the worst run). --only-direct runs this step alone.

Beside it, in the same run: the time to index the whole file at once (build_source in a child
process), what a first request cost before indexes were built by resolution. Results go to
bench/results/coldindex-*.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .index_bench import ensure_p64, strip_plt
from .procs import ServerProcess, free_port
from .server_bench import RESULTS_DIR, link_into

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIRST_THUMBNAIL_S = 1.0  # the bars
ANY_WINDOW_S = 2.0


def server(root: Path, cache_home: Path, log: Path) -> ServerProcess:
    port = free_port()
    exe = Path(sys.executable).with_name("jpip-server")
    argv = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else
                                                             ["-m", "server.cli"]),
            "--root", str(root), "--host", "127.0.0.1", "--port", str(port)]
    return ServerProcess(argv, port, log, env={"XDG_CACHE_HOME": str(cache_home)})


def get(base: str, query: str) -> tuple[float, int, int]:
    """(seconds, status, bytes) of one GET, read to its end."""
    import urllib.error
    import urllib.request

    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(f"{base}/jpip?{query}", timeout=600) as r:
            body = r.read()
            return time.perf_counter() - t0, r.status, len(body)
    except urllib.error.HTTPError as e:
        return time.perf_counter() - t0, e.code, len(e.read())


def whole_index_seconds(path: Path) -> float:
    code = ("import sys, time; from codestream.source import build_source; t = time.perf_counter();"
            " s = build_source(sys.argv[1]); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, check=True,
                         capture_output=True, text=True, env={**os.environ,
                                                              "PYTHONPATH": str(ROOT)})
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench coldindex", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--out", type=Path, default=ROOT / "large-images")
    ap.add_argument("--image", type=Path, help="an RPCL/RLCP file without PLT instead")
    ap.add_argument("--windows", type=int, default=3, help="windows per resolution")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--direct-runs", type=int, default=3,
                    help="cold servers whose first request is a full-resolution window")
    ap.add_argument("--only-direct", action="store_true",
                    help="step 5 alone (no thumbnail, windows, persistence or baseline)")
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-index baseline")
    ap.add_argument("--results", type=Path)
    a = ap.parse_args(argv)
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.image:
        image = a.image.resolve()
    else:
        p64 = ensure_p64(out, a.size, a.threads)
        image = strip_plt(p64, out / f"{p64.stem}-noplt.jp2")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = a.results or RESULTS_DIR / f"coldindex-{stamp}.json"
    logs = results.parent / f"coldindex-{stamp}-logs"
    rep: dict = {"image": str(image), "file_mb": image.stat().st_size / 1e6}
    rng = random.Random(a.seed)
    from codestream.source import build_source

    with build_source(image, lazy=True) as src:
        ix = src.codestreams[0]
        w, h = ix.siz.xsiz - ix.siz.xosiz, ix.siz.ysiz - ix.siz.yosiz
        levels = int(ix.tcr["levels"].max())
    rep.update(width=w, height=h, levels=levels)
    with tempfile.TemporaryDirectory(prefix="jpip-coldindex-") as tmp:
        root, cache_home = Path(tmp) / "root", Path(tmp) / "xdg"
        target = link_into(root, image)
        if not a.only_direct:
            cold_start(rep, a, rng, root, target, cache_home, logs)
        # A viewer that opens straight at full resolution: the first request of a server with
        # an empty index cache is a 512² window at discard 0.
        rep["direct_full_windows"] = []
        for k in range(a.direct_runs):
            with server(root, Path(tmp) / f"xdg-direct-{k}", logs / f"direct-{k}.log").start(
                    ) as srv:
                side = min(512, w, h)
                x, y = rng.randrange(w - side + 1), rng.randrange(h - side + 1)
                s, status, n = get(srv.base_url, f"target={target}&fsiz={w},{h}&roff={x},{y}"
                                   f"&rsiz={side},{side}&type=jpp-stream")
            rep["direct_full_windows"].append({"s": s, "status": status, "bytes": n,
                                               "roff": [x, y]})
            print(f"first request at full resolution: {s:.3f} s ({status}, {n} bytes)",
                  file=sys.stderr)
    if not a.no_whole and not a.only_direct:
        rep["whole_index_s"] = whole_index_seconds(image)
    direct = [x["s"] for x in rep["direct_full_windows"]]
    worst = max([x["s"] for x in rep.get("windows", [])] + direct, default=0.0)
    rep["verdicts"] = {}
    if "first_thumbnail" in rep:
        rep["verdicts"][f"first thumbnail <= {FIRST_THUMBNAIL_S} s"] = \
            rep["first_thumbnail"]["s"] <= FIRST_THUMBNAIL_S
    rep["verdicts"][f"every window <= {ANY_WINDOW_S} s"] = worst <= ANY_WINDOW_S
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(rep, indent=2) + "\n")
    print(f"\n== cold start, {image.name} ({rep['width']}x{rep['height']}, "
          f"{rep['file_mb']:.0f} MB, no PLT)")
    if "first_thumbnail" in rep:
        print(f"first thumbnail, nothing indexed: {rep['first_thumbnail']['s']:.3f} s")
        for d in sorted({x["discard"] for x in rep["windows"]}, reverse=True):
            times = [x["s"] for x in rep["windows"] if x["discard"] == d]
            print(f"  512² windows at discard {d}: " + ", ".join(f"{t:.3f}" for t in times)
                  + " s")
    if direct:
        print("first request of a cold server at full resolution (512² at discard 0): "
              + ", ".join(f"{t:.3f}" for t in direct) + " s")
    if "first_thumbnail" in rep:
        print(f"whole index persisted after {rep['persisted_after_s']} s; thumbnail after a "
              f"restart {rep['cached_thumbnail']['s'] * 1e3:.1f} ms")
    if "whole_index_s" in rep:
        print(f"baseline: indexing the whole file at once {rep['whole_index_s']:.2f} s")
    for goal, ok in rep["verdicts"].items():
        print(f"  {'met' if ok else 'NOT met':>7}  {goal}")
    print(f"results: {results}")
    return 0


def cold_start(rep: dict, a: argparse.Namespace, rng: random.Random, root: Path, target: str,
               cache_home: Path, logs: Path) -> None:
    """Steps 1 to 4 (see the module docstring), into `rep`."""
    w, h, levels = rep["width"], rep["height"], rep["levels"]
    cache_dir = cache_home / "jpip-server"
    with server(root, cache_home, logs / "cold.log").start() as srv:
        t_start = time.perf_counter()
        s, status, n = get(srv.base_url, f"target={target}&fsiz=256,256&type=jpp-stream")
        rep["first_thumbnail"] = {"s": s, "status": status, "bytes": n}
        print(f"first thumbnail: {s:.3f} s ({status}, {n} bytes)", file=sys.stderr)
        windows = []
        for d in range(levels, -1, -1):
            fw, fh = -(-w >> d), -(-h >> d)
            for _ in range(a.windows):
                side = min(512, fw, fh)
                x, y = rng.randrange(fw - side + 1), rng.randrange(fh - side + 1)
                q = (f"target={target}&fsiz={fw},{fh}&roff={x},{y}&rsiz={side},{side}"
                     "&type=jpp-stream")
                s, status, n = get(srv.base_url, q)
                since = time.perf_counter() - t_start
                windows.append({"discard": d, "frame": [fw, fh], "roff": [x, y], "s": s,
                                "status": status, "bytes": n, "since_start_s": since})
                print(f"window at discard {d} ({fw}x{fh}) {x},{y}: {s:.3f} s ({status}, "
                      f"{n} bytes), {since:.1f} s after the first request", file=sys.stderr)
        rep["windows"] = windows
        from cache.index_cache import entry_path

        entry = entry_path(root / target, cache_dir)
        deadline = time.perf_counter() + 600
        while time.perf_counter() < deadline and not entry.exists():
            time.sleep(0.1)
        rep["persisted_after_s"] = (time.perf_counter() - t_start if entry.exists()
                                    else None)
        print(f"index persisted {rep['persisted_after_s']} s after the first request",
              file=sys.stderr)
    with server(root, cache_home, logs / "cached.log").start() as srv:
        s, status, n = get(srv.base_url, f"target={target}&fsiz=256,256&type=jpp-stream")
        rep["cached_thumbnail"] = {"s": s, "status": status, "bytes": n}


if __name__ == "__main__":
    raise SystemExit(main())
