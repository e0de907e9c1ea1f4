"""Serving benchmark: our server against a bare aiohttp server, on loopback (not a test).

    python -m bench [server] [--size N] [--profile] [--workloads thumbnail,region,viewer] ...

Images: the make_large.py rgb16k mosaic at --size (built into --out on demand, default
large-images/, which git ignores; 4096 keeps a run quick, 16384 gives the full figures), and
shared/interop rgb4096.jp2 and med2048.jp2. They are hard-linked (or copied) into
--out/bench-root, the server's image root.

Every server runs as a child process on 127.0.0.1 so that its CPU time (/proc/PID schedstat,
else utime+stime of /proc/PID/stat) and RSS (VmRSS) are its own. The load generator is this
process (asyncio, aiohttp client, uvloop); its own CPU use is reported beside the server's, as
on 2 cores the two compete.

Workloads, each with --concurrency clients (default 1, 8, 64), over keep-alive connections and
with a new connection per request, each cell capped at --requests requests and --seconds s:
  thumbnail  a stateless client asks for the whole image at fsiz=256,256
  region     a 512x512 window at full resolution at a seeded random place (stateless)
  viewer     a session (cnew): overview thumbnail, zoom in twice towards a point, pan 20 steps
             of a quarter window, zoom out twice (cclose on the last request)
After each cell of ours the baseline server (bench/baseline_server.py) is asked for exactly the
sizes we sent, with the same concurrency and connection handling: our req/s and latency are
reported as ratios to it (the framework's ceiling on this machine).

Also: cold start (first thumbnail with an empty index cache, then with the index cached on disk
after a restart) and memory per idle session (--sessions sessions, one small window each).
--profile runs our server under pyinstrument (one server, hence one profile, per workload) and
writes the profiles next to the JSON results in bench/results/.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from . import loadgen
from .loadgen import Run
from .procs import ServerProcess, baseline_server, jpip_server, loadavg
from .shared_files import interop_image, require_make_large
from .workloads import (
    Needs,
    region_requests,
    thumbnail_requests,
    viewer_traces,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
JPIP_PATH = "/jpip"
WORKLOADS = ("thumbnail", "region", "viewer")
MODES = {"keepalive": True, "new": False}
TARGETS = {  # the brief's goals, checked at the end (reported, never enforced)
    "rps_ratio_min": 0.5, "region_p99_ms_c8": 20.0, "bytes_ratio_max": 1.05, "resent": 0,
    "cold_s": 1.0, "cached_s": 0.1, "kib_per_session": 64.0,
}


# --------------------------------------------------------------------------- images
def ensure_large(out: Path, size: int, threads: int) -> Path:
    path = out / f"rgb16k_{size}x{size}.jp2"
    if not path.exists():
        make_large = require_make_large(
            "server", "pass --image FILE (e.g. tests/data/interop/rgb4096.jp2, made by "
            "`python -m tests.data.generate`)")
        print(f"building {path.name} with make_large.py ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(make_large), "rgb16k", "--out", str(out),
                        "--size", str(size), "--threads", str(threads)], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def link_into(root: Path, path: Path) -> str:
    """Puts `path` under the server root (hard link, else copy) and returns its target name.

    Not a symlink: the server refuses targets whose real path leaves its root."""
    root.mkdir(parents=True, exist_ok=True)
    dst = root / path.name
    src_st = path.stat()
    if dst.exists():
        st = dst.stat()
        if (st.st_ino, st.st_dev) == (src_st.st_ino, src_st.st_dev) or (
                st.st_size == src_st.st_size and st.st_mtime_ns >= src_st.st_mtime_ns):
            return dst.name
        dst.unlink()
    try:
        os.link(path, dst)
    except OSError:
        shutil.copy2(path, dst)
    return dst.name


def load_needs(path: Path, cache_dir: Path) -> Needs:
    from cache.index_cache import load_index
    from codestream.source import build_source

    src = load_index(path, cache_dir) or build_source(path)
    return Needs(src)  # the Source stays open for the run (its arrays may map the cache file)


# --------------------------------------------------------------------------- figures
def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def summarise(run: Run) -> dict[str, Any]:
    ok = [s for s in run.samples if s.status == 200]
    n = len(run.samples)
    lat = [s.latency * 1e3 for s in ok]
    ttfb = [s.ttfb * 1e3 for s in ok]
    sent = sum(s.nbytes for s in ok)
    needed = sum(s.needed for s in ok)
    eors: dict[str, int] = {}
    for s in run.samples:
        eors[str(s.eor)] = eors.get(str(s.eor), 0) + 1
    return {
        "requests": n, "ok": len(ok), "errors": len(run.errors) + n - len(ok),
        "error_examples": run.errors[:3], "wall_s": run.wall,
        "rps": len(ok) / run.wall if run.wall else math.nan,
        "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else math.nan,
        "ttfb_p50_ms": percentile(ttfb, 50), "ttfb_p99_ms": percentile(ttfb, 99),
        "mb_per_s": sent / run.wall / 1e6 if run.wall else math.nan,
        "sent_per_req": sent / len(ok) if ok else math.nan,
        "needed_per_req": needed / len(ok) if ok else math.nan,
        "sent_over_needed": sent / needed if needed else math.nan,
        "client_cpu_s": run.client_cpu,
        "client_cpu_ms_per_req": run.client_cpu * 1e3 / n if n else math.nan,
        "client_cpu_util": run.client_cpu / run.wall if run.wall else math.nan,
        "resent_bytes": sum(s.resent for s in run.samples),
        "sessions": run.sessions, "eor_reasons": eors,
    }


class Bench:
    """One benchmark run: its options, the event loop of the load generator, its results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.results_path: Path = args.results or RESULTS_DIR / f"server-{self.stamp}.json"
        self.logs = self.results_path.parent / f"server-{self.stamp}-logs"
        self.out: Path = args.out.resolve()
        self.root = self.out / "bench-root"
        self.cache = self.out / "bench-index-cache"
        self.runner = asyncio.Runner(loop_factory=_loop_factory())
        self.cells: list[dict[str, Any]] = []
        self.report: dict[str, Any] = {}

    def run_async(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.runner.run(coro)

    # ----------------------------------------------------------------------- servers
    def our_server(self, name: str, *, cache: Path | None = None, profile: Path | None = None,
                   env: dict[str, str] | None = None) -> ServerProcess:
        return jpip_server(self.root, cache or self.cache, self.logs / f"{name}.log",
                           profile=profile, extra_env=env)

    def get(self, base: str, path: str) -> loadgen.Sample:
        async def one() -> loadgen.Sample:
            async with aiohttp.ClientSession(timeout=loadgen.CLIENT_TIMEOUT) as s:
                sample, _, _ = await loadgen._get(s, base + path, 0)
                return sample
        return self.run_async(one())

    # ----------------------------------------------------------------------- workloads
    def workloads(self, target: str, needs: Needs, base: ServerProcess | None) -> None:
        a = self.args
        max_c = max(a.concurrency)
        reqs = {
            "thumbnail": thumbnail_requests(needs, a.requests),
            "region": region_requests(needs, a.requests, a.seed),
        }
        traces = viewer_traces(needs, max_c + a.requests // 25 + 2, a.seed)
        for workload in a.workloads:
            profile = (self.results_path.parent / f"server-{self.stamp}-profile-{workload}"
                       if a.profile else None)
            with self.our_server(f"workload-{workload}", profile=profile) as srv:
                # Warm: the index in memory, the code paths taken once.
                for r in (reqs["thumbnail"][0], reqs["region"][0]):
                    self.get(srv.base_url, f"{JPIP_PATH}?target={target}&{r.query}")
                if profile is not None:
                    srv.signal(signal.SIGUSR1)  # sample from here on: the warm server only
                    time.sleep(0.1)
                for mode in a.modes:
                    for c in a.concurrency:
                        def ours(c: int = c, mode: str = mode, workload: str = workload
                                 ) -> Coroutine[Any, Any, Run]:
                            kw = dict(concurrency=c, keepalive=MODES[mode],
                                      max_requests=a.requests, max_seconds=a.seconds)
                            if workload == "viewer":
                                return loadgen.run_traces(srv.base_url, JPIP_PATH, target,
                                                          traces, **kw)
                            return loadgen.run_requests(
                                srv.base_url,
                                loadgen.stateless_paths(JPIP_PATH, target, reqs[workload]), **kw)
                        self.cell(workload, mode, c, srv, base, ours)
            if profile is not None:
                print(f"profile of {workload}: {profile}.txt / .html / .top.txt",
                      file=sys.stderr)

    def cell(self, workload: str, mode: str, c: int, srv: ServerProcess,
             base: ServerProcess | None, ours: Callable[[], Coroutine[Any, Any, Run]]) -> None:
        cpu0 = srv.cpu()
        run = self.run_async(ours())
        cpu = srv.cpu() - cpu0
        row: dict[str, Any] = {"workload": workload, "conn": mode, "clients": c}
        row.update(summarise(run))
        row["server_cpu_ms_per_req"] = cpu * 1e3 / row["requests"] if row["requests"] else 0
        row["server_cpu_util"] = cpu / run.wall if run.wall else math.nan
        row["server_rss_mb"] = srv.rss_kib() / 1024
        if base is not None and run.samples:
            b0 = base.cpu()
            brun = self.run_async(loadgen.run_requests(
                base.base_url, loadgen.baseline_paths(run.samples), concurrency=c,
                keepalive=MODES[mode], max_requests=len(run.samples),
                max_seconds=max(self.args.seconds * 2, 5.0)))
            bcpu = base.cpu() - b0
            b = summarise(brun)
            b["server_cpu_ms_per_req"] = bcpu * 1e3 / b["requests"] if b["requests"] else 0
            row["baseline"] = b
            row["rps_ratio"] = row["rps"] / b["rps"] if b["rps"] else math.nan
            row["p50_ratio"] = row["p50_ms"] / b["p50_ms"] if b["p50_ms"] else math.nan
            row["p99_ratio"] = row["p99_ms"] / b["p99_ms"] if b["p99_ms"] else math.nan
            # Server CPU per request is the figure least disturbed by other load on the machine.
            row["cpu_ratio"] = (row["server_cpu_ms_per_req"] / b["server_cpu_ms_per_req"]
                                if b["server_cpu_ms_per_req"] else math.nan)
        self.cells.append(row)
        print(format_row(row), file=sys.stderr, flush=True)

    # ----------------------------------------------------------------------- cold start
    def cold_start(self, images: dict[str, Path]) -> list[dict[str, Any]]:
        """First thumbnail with no index (empty cache dir), then after a restart with the
        index cached on disk. The file itself is in the page cache either way."""
        out = []
        thumb = "fsiz=256,256&type=jpp-stream"
        with tempfile.TemporaryDirectory(prefix="jpip-bench-cache-") as tmp:
            cache = Path(tmp)
            rows = {name: {"target": name, "file_mb": p.stat().st_size / 1e6}
                    for name, p in images.items()}
            with self.our_server("cold", cache=cache) as srv:
                for name in images:
                    s = self.get(srv.base_url, f"{JPIP_PATH}?target={name}&{thumb}")
                    w = self.get(srv.base_url, f"{JPIP_PATH}?target={name}&{thumb}")
                    rows[name].update(cold_s=s.latency, cold_ttfb_s=s.ttfb,
                                      cold_status=s.status, warm_s=w.latency, bytes=s.nbytes)
                rss_cold = srv.rss_kib() / 1024
            with self.our_server("cached", cache=cache) as srv:
                for name in images:
                    s = self.get(srv.base_url, f"{JPIP_PATH}?target={name}&{thumb}")
                    rows[name].update(cached_s=s.latency, cached_ttfb_s=s.ttfb,
                                      cached_status=s.status)
                rss_cached = srv.rss_kib() / 1024
            from cache.index_cache import load_index

            for name, row in rows.items():
                row.update(rss_after_cold_mb=rss_cold, rss_after_cached_mb=rss_cached)
                src = load_index(self.root / name, cache)  # what the server saved
                if src is not None:
                    ix = src.codestreams[0]
                    row.update(width=ix.siz.xsiz - ix.siz.xosiz, height=ix.siz.ysiz - ix.siz.yosiz,
                               index_source=ix.source, precincts=len(ix.precincts["id"]))
                    src.close()
                out.append(row)
        return out

    # ----------------------------------------------------------------------- memory
    def memory(self, target: str, needs: Needs, sessions: int) -> dict[str, Any]:
        """RSS growth per idle session: `sessions` sessions, one 64x64 window each at 512."""
        import random

        w, h = needs.frame((512, 512))
        rng = random.Random(self.args.seed)
        paths = [(f"{JPIP_PATH}?target={target}&cnew=http&tid=0&fsiz=512,512"
                  f"&roff={rng.randrange(max(w - 64, 1))},{rng.randrange(max(h - 64, 1))}"
                  "&rsiz=64,64&type=jpp-stream", 0) for _ in range(sessions)]
        env = {"JPIP_MAX_SESSIONS": str(max(10000, sessions + 100))}
        with self.our_server("memory", env=env) as srv:
            warm = f"{JPIP_PATH}?target={target}&fsiz=256,256&type=jpp-stream"
            self.get(srv.base_url, warm)
            # One session opened and closed: its code paths and lazy imports before the count.
            self.run_async(loadgen.run_requests(srv.base_url, paths[:1], concurrency=1,
                                                keepalive=True, max_requests=1, max_seconds=10))
            time.sleep(0.3)
            rss0 = srv.rss_kib()
            run = self.run_async(loadgen.run_requests(
                srv.base_url, paths[1:], concurrency=16, keepalive=True,
                max_requests=sessions - 1, max_seconds=max(60.0, sessions / 50)))
            time.sleep(0.5)
            rss1 = srv.rss_kib()
            opened = sum(1 for s in run.samples if s.status == 200)
            return {"target": target, "sessions": opened, "rss_before_mb": rss0 / 1024,
                    "rss_after_mb": rss1 / 1024,
                    "kib_per_session": (rss1 - rss0) / opened if opened else math.nan,
                    "open_rps": opened / run.wall if run.wall else math.nan,
                    "errors": len(run.errors) + len(run.samples) - opened,
                    "bytes_per_session": (sum(s.nbytes for s in run.samples) / opened
                                          if opened else math.nan)}

    # ----------------------------------------------------------------------- the run
    def run(self) -> int:
        a = self.args
        t_start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        work_path = a.image.resolve() if a.image else ensure_large(self.out, a.size, a.threads)
        target = link_into(self.root, work_path)
        cold_paths = a.cold_image or [work_path, interop_image("rgb4096.jp2"),
                                          interop_image("med2048.jp2")]
        cold = {link_into(self.root, p.resolve()): p for p in cold_paths}
        mem_path = (a.memory_image or interop_image("rgb4096.jp2")).resolve()
        mem_target = link_into(self.root, mem_path)
        self.report["meta"] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": sys.version.split()[0],
            "aiohttp": aiohttp.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "loadavg_start": loadavg(), "profiled": a.profile,
            "image": str(work_path), "target": target, "requests_cap": a.requests,
            "seconds_cap": a.seconds, "concurrency": a.concurrency, "modes": a.modes,
            "targets": TARGETS,
        }
        if loadavg() > 0.5:
            print(f"warning: load average {loadavg():.2f} before the run: something else is "
                  "using the CPU, figures will be lower", file=sys.stderr)
        # The index (for the bytes-needed figures) from the server's cache once it is built.
        with self.our_server("index") as srv:
            self.get(srv.base_url, f"{JPIP_PATH}?target={target}&fsiz=64,64&type=jpp-stream")
        needs = load_needs(self.root / target, self.cache)
        w, h = needs.size
        self.report["meta"].update(width=w, height=h, precincts=needs.nprec,
                                   file_mb=work_path.stat().st_size / 1e6)
        print(f"workload image {target} ({w}x{h}, {needs.nprec} precincts); "
              f"caps {a.requests} requests / {a.seconds:g} s per cell", file=sys.stderr)
        base = None
        if a.workloads:
            print(HEADER, file=sys.stderr)
            base = baseline_server(self.logs / "baseline.log") if not a.no_baseline else None
            if base is not None:
                base.start()
                self.run_async(loadgen.run_requests(base.base_url, [("/bytes?n=1000", 0)] * 50,
                                                    concurrency=4, keepalive=True,
                                                    max_requests=50, max_seconds=5))
            try:
                self.workloads(target, needs, base)
            finally:
                if base is not None:
                    base.stop()
        self.report["cells"] = self.cells
        if not a.no_cold:
            self.report["cold_start"] = self.cold_start(cold)
        if a.sessions > 0:
            mem_needs = needs if mem_path == work_path else load_needs(
                self.root / mem_target, self.cache)
            self.report["memory"] = self.memory(mem_target, mem_needs, a.sessions)
        self.report["meta"]["loadavg_end"] = loadavg()
        self.report["meta"]["total_s"] = time.perf_counter() - t_start
        self.report["verdicts"] = verdicts(self.report)
        self.runner.close()

        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        self.results_path.write_text(json.dumps(self.report, indent=2, default=_json) + "\n")
        print(render(self.report))
        print(f"results: {self.results_path}")
        if a.profile:
            for workload in a.workloads:
                top = self.results_path.parent / f"server-{self.stamp}-profile-{workload}.top.txt"
                if top.exists():
                    print(f"\n--- profile {workload} ({top}) ---")
                    print("\n".join(top.read_text().splitlines()[:24]))
        return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
        return uvloop.new_event_loop
    except ImportError:
        return asyncio.new_event_loop


def _json(o: object) -> object:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


# --------------------------------------------------------------------------- output
HEADER = ("workload  conn       c     n   req/s   p50ms   p95ms   p99ms  ttfb50  MB/s "
          " KB/req  need KB  sent/need  srv ms/req  cli ms/req  RSS MB | base r/s  r/s x "
          " p50 x  p99 x  cpu x | resent err")


def _f(v: float, fmt: str) -> str:
    return fmt.format(v) if v == v else fmt.format(float("nan"))


def format_row(r: dict[str, Any]) -> str:
    b = r.get("baseline")
    base = (f"{b['rps']:9.0f}  {r['rps_ratio']:5.2f}  {r['p50_ratio']:5.2f}  "
            f"{r['p99_ratio']:5.2f}  {r['cpu_ratio']:5.1f}"
            if b else f"{'-':>9}  {'-':>5}  {'-':>5}  {'-':>5}  {'-':>5}")
    resent = str(r["resent_bytes"]) if r["workload"] == "viewer" else "-"
    return (f"{r['workload']:<9} {r['conn']:<9} {r['clients']:>2} {r['requests']:>5} "
            f"{r['rps']:7.0f} {r['p50_ms']:7.2f} {r['p95_ms']:7.2f} {r['p99_ms']:7.2f} "
            f"{r['ttfb_p50_ms']:7.2f} {r['mb_per_s']:5.0f} {r['sent_per_req'] / 1e3:7.1f} "
            f"{r['needed_per_req'] / 1e3:8.1f} {_f(r['sent_over_needed'], '{:10.4f}')} "
            f"{r['server_cpu_ms_per_req']:11.2f} {r['client_cpu_ms_per_req']:11.2f} "
            f"{r['server_rss_mb']:7.1f} | {base} | {resent:>6} {r['errors']:>3}")


def verdicts(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issue against what was measured ('n/a' when not measured here)."""
    cells = rep.get("cells", [])
    out: list[dict[str, Any]] = []

    def add(goal: str, value: Any, ok: bool | None, note: str = "") -> None:
        out.append({"goal": goal, "measured": value,
                    "verdict": "n/a" if ok is None else ("met" if ok else "NOT met"),
                    "note": note})

    for wl in ("thumbnail", "region"):
        ratios = [c["rps_ratio"] for c in cells if c["workload"] == wl and "rps_ratio" in c]
        if ratios:
            add(f"{wl} req/s >= {TARGETS['rps_ratio_min']:.0%} of bare aiohttp (every cell)",
                f"{min(ratios):.2f}..{max(ratios):.2f}", min(ratios) >= TARGETS["rps_ratio_min"])
    p99 = [c for c in cells if c["workload"] == "region" and c["clients"] == 8]
    for c in p99:
        add(f"region p99 <= {TARGETS['region_p99_ms_c8']:g} ms with 8 clients ({c['conn']})",
            f"{c['p99_ms']:.1f} ms", c["p99_ms"] <= TARGETS["region_p99_ms_c8"])
    ratios = [c["sent_over_needed"] for c in cells if c["sent_over_needed"] == c[
        "sent_over_needed"]]
    if ratios:
        add(f"bytes sent <= {TARGETS['bytes_ratio_max']}x strictly needed (every cell)",
            f"{max(ratios):.4f}", max(ratios) <= TARGETS["bytes_ratio_max"])
    viewer = [c for c in cells if c["workload"] == "viewer"]
    if viewer:
        resent = sum(c["resent_bytes"] for c in viewer)
        add("0 bytes resent within a session", resent, resent == 0)
    for row in rep.get("cold_start", []):
        big = min(row.get("width", 0), row.get("height", 0)) >= 16384 and row.get(
            "index_source") == "plt"
        note = "" if big else "the goal is for a 16384^2 PLT file: run --size 16384"
        add(f"cold first thumbnail of {row['target']} <= {TARGETS['cold_s']:g} s",
            f"{row['cold_s']:.3f} s", (row["cold_s"] <= TARGETS["cold_s"]) if big else None,
            note)
        add(f"cached-index first thumbnail of {row['target']} <= "
            f"{TARGETS['cached_s'] * 1e3:g} ms", f"{row['cached_s'] * 1e3:.1f} ms",
            (row["cached_s"] <= TARGETS["cached_s"]) if big else None, note)
    mem = rep.get("memory")
    if mem:
        add(f"RSS <= {TARGETS['kib_per_session']:g} KiB per idle session",
            f"{mem['kib_per_session']:.1f} KiB", mem["kib_per_session"]
            <= TARGETS["kib_per_session"])
    return out


def render(rep: dict[str, Any]) -> str:
    meta = rep["meta"]
    lines = [f"\n== JPIP server benchmark: {meta['target']} ({meta.get('width')}x"
             f"{meta.get('height')}, {meta.get('file_mb', 0):.1f} MB), {meta['cpus']} CPUs, "
             f"load {meta['loadavg_start']:.2f} -> {meta['loadavg_end']:.2f}, "
             f"{meta['total_s']:.0f} s" + (", PROFILED (slower)" if meta["profiled"] else "")]
    if rep.get("cells"):
        lines += ["latencies in ms; KB/req = bytes sent, need KB = strictly needed (from the "
                  "index); srv/cli ms/req = CPU of the server / of this load generator; "
                  "x = ours / bare aiohttp (r/s: throughput, p50/p99: latency, cpu: server CPU "
                  "per request)", HEADER]
        lines += [format_row(r) for r in rep["cells"]]
    busy = [r for r in rep.get("cells", []) if r["client_cpu_util"] > 0.8]
    if busy:
        lines.append(f"note: the load generator used > 80% of a core in {len(busy)} cell(s): "
                     "those figures may be client-bound")
    if rep.get("cold_start"):
        lines += ["", "cold start (first thumbnail fsiz=256,256, index not built / cached on disk "
                  "after a restart; ms):",
                  f"{'target':<28} {'size':>11} {'via':>7} {'MB':>7} {'no index':>9} {'ttfb':>8} "
                  f"{'cached':>8} {'ttfb':>8} {'warm':>7}"]
        for r in rep["cold_start"]:
            size = f"{r.get('width', '?')}x{r.get('height', '?')}"
            lines.append(f"{r['target']:<28} {size:>11} {r.get('index_source', '?'):>7} "
                         f"{r['file_mb']:7.1f} {r['cold_s'] * 1e3:9.1f} "
                         f"{r['cold_ttfb_s'] * 1e3:8.1f} {r['cached_s'] * 1e3:8.1f} "
                         f"{r['cached_ttfb_s'] * 1e3:8.1f} {r['warm_s'] * 1e3:7.1f}")
    mem = rep.get("memory")
    if mem:
        lines += ["", f"memory: {mem['sessions']} idle sessions on {mem['target']}: RSS "
                  f"{mem['rss_before_mb']:.1f} -> {mem['rss_after_mb']:.1f} MB, "
                  f"{mem['kib_per_session']:.1f} KiB per session "
                  f"({mem['open_rps']:.0f} sessions opened/s, {mem['errors']} errors)"]
    lines += ["", "goals:"]
    for v in rep.get("verdicts", []):
        note = f"  ({v['note']})" if v["note"] else ""
        lines.append(f"  {v['verdict']:>7}  {v['goal']}: {v['measured']}{note}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        bad = [n for n in names if n not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return names
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096,
                    help="side of the make_large image (4096 quick, 16384 full figures)")
    ap.add_argument("--out", type=Path, default=ROOT / "large-images",
                    help="where images, the server root and its index cache live")
    ap.add_argument("--image", type=Path, help="workload image instead of the make_large one")
    ap.add_argument("--cold-image", type=Path, action="append",
                    help="image for the cold-start figures (repeatable; default: the workload "
                    "image, rgb4096.jp2, med2048.jp2)")
    ap.add_argument("--memory-image", type=Path, help="image for the idle-session figure "
                    "(default interop rgb4096.jp2)")
    ap.add_argument("--workloads", type=_names(WORKLOADS), default=list(WORKLOADS),
                    help="comma-separated, from thumbnail,region,viewer ('' for none)")
    ap.add_argument("--concurrency", type=_ints, default=[1, 8, 64])
    ap.add_argument("--modes", type=_names(tuple(MODES)), default=list(MODES),
                    help="keepalive and/or new (a connection per request)")
    ap.add_argument("--requests", type=int, default=200, help="request cap per cell")
    ap.add_argument("--seconds", type=float, default=10.0, help="time cap per cell")
    ap.add_argument("--sessions", type=int, default=2000, help="idle sessions (0: skip)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-start figures")
    ap.add_argument("--no-baseline", action="store_true", help="skip the bare aiohttp server")
    ap.add_argument("--profile", action="store_true",
                    help="run our server under pyinstrument; profiles go next to the results")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="encoder threads when building images")
    ap.add_argument("--results", type=Path, help="JSON file (default "
                    "bench/results/server-<time>.json)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return Bench(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
