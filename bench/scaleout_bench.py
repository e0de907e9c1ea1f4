"""Scale-out benchmark: 1 and 2 worker processes, sessions in memory or in Redis (not a test).

    python -m bench scaleout [--image PATH] [--clients 8] [--requests 300] [--sessions 12]

One run starts a real redis-server (loopback, a temporary directory, nothing saved) and, one
after the other, `jpip-server` as
  memory-1w   --workers 1, sessions in memory (the embedded default: the baseline)
  redis-1w    --workers 1 --session-store redis://...
  redis-2w    --workers 2 --session-store redis://...
(2 workers with sessions in memory is refused by the server: a session's next request may
reach the other worker. Fresh regions never touch the session store, so redis-2w's fresh
figures are what 2 workers serve statelessly either way.)

Each gets two workloads from --clients concurrent clients over keep-alive connections:
  fresh  stateless 512x512 windows at full resolution at seeded random places
  pans   viewer sessions (cnew, zoom in twice, 20 quarter-window pans, zoom out, cclose)
and reports requests/s, latency, MB/s, the server's CPU per request (supervisor and workers
together, from /proc), the session store's round trips per request (the server's own count,
/metrics), and Redis' CPU and commands per request (/proc, INFO). From the Redis figures of one
worker it prints a capacity model for N hosts. On a 2-core machine the load generator and
Redis share the cores with the workers: read CPU per request, not only requests/s.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.redis_server import RedisServer

from . import loadgen
from .procs import cpu_seconds, jpip_server, loadavg, tree_cpu_seconds
from .server_bench import JPIP_PATH, RESULTS_DIR, ROOT, link_into, percentile
from .shared_files import SHARED
from .workloads import Needs, region_requests, viewer_traces

IMAGES = (SHARED / "interop" / "rgb4096.jp2", ROOT / "tests" / "data" / "interop" /
          "rgb4096.jp2")
CONFIGS = (("memory-1w", "memory", 1), ("redis-1w", "redis", 1), ("redis-2w", "redis", 2))


def _metric_sum(base_url: str, prefix: str) -> float:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as r:
        return sum(float(line.rsplit(" ", 1)[1]) for line in r.read().decode().splitlines()
                   if line.startswith(prefix))


class Cell:
    """What one workload did to one server configuration."""

    def __init__(self, server, redis: RedisServer) -> None:
        self.server, self.redis = server, redis
        self.before = self._counters()

    def _counters(self) -> dict[str, float]:
        info = self.redis.info()
        return {"server_cpu": tree_cpu_seconds(self.server.pid),
                "redis_cpu": cpu_seconds(self.redis.proc.pid),
                "redis_commands": float(info.get("total_commands_processed", 0)),
                "round_trips": _metric_sum(self.server.base_url,
                                           "jpip_session_store_round_trips_total")}

    def finish(self, run: loadgen.Run) -> dict[str, Any]:
        after = self._counters()
        d = {k: after[k] - self.before[k] for k in after}
        ok = [s for s in run.samples if s.status == 200]
        n = max(len(run.samples), 1)
        lat = [s.latency * 1e3 for s in ok]
        sent = sum(s.nbytes for s in ok)
        return {
            "requests": len(run.samples), "ok": len(ok),
            "errors": len(run.errors) + len(run.samples) - len(ok),
            "error_examples": run.errors[:3], "wall_s": run.wall,
            "rps": len(ok) / run.wall if run.wall else math.nan,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "mb_per_s": sent / run.wall / 1e6 if run.wall else math.nan,
            "bytes_per_req": sent / len(ok) if ok else math.nan,
            "server_cpu_ms_per_req": d["server_cpu"] * 1e3 / n,
            "server_cores_busy": d["server_cpu"] / run.wall if run.wall else math.nan,
            "client_cpu_ms_per_req": run.client_cpu * 1e3 / n,
            "store_round_trips_per_req": d["round_trips"] / n,
            "redis_commands_per_req": d["redis_commands"] / n,
            "redis_cpu_us_per_req": d["redis_cpu"] * 1e6 / n,
            "resent_bytes": sum(s.resent for s in run.samples),
            "sessions": run.sessions,
        }


def run_config(args, name: str, store: str, workers: int, root: Path, cache: Path,
               target: str, needs: Needs, redis: RedisServer, logs: Path) -> dict[str, Any]:
    extra = ["--workers", str(workers), "--log-level", "WARNING",
             "--response-cache-bytes", "0"]  # every fresh region is built, none replayed
    if store == "redis":
        extra += ["--session-store", redis.url]
    server = jpip_server(root, cache, logs / f"{name}.log", extra_args=extra)
    out: dict[str, Any] = {"config": name, "store": store, "workers": workers}
    with server:
        warm = region_requests(needs, 8 * workers, seed=99)
        asyncio.run(loadgen.run_requests(server.base_url, [
            (f"{JPIP_PATH}?target={target}&{r.query}", r.needed) for r in warm],
            concurrency=2 * workers, keepalive=False, max_requests=len(warm), max_seconds=30))
        fresh = region_requests(needs, args.requests, seed=1)
        cell = Cell(server, redis)
        run = asyncio.run(loadgen.run_requests(
            server.base_url, [(f"{JPIP_PATH}?target={target}&{r.query}", r.needed)
                              for r in fresh],
            concurrency=args.clients, keepalive=True, max_requests=len(fresh),
            max_seconds=args.seconds))
        out["fresh"] = cell.finish(run)
        traces = viewer_traces(needs, args.sessions, seed=2)
        cell = Cell(server, redis)
        run = asyncio.run(loadgen.run_traces(
            server.base_url, JPIP_PATH, target, traces, concurrency=args.clients,
            keepalive=True, max_requests=sum(len(t.steps) for t in traces),
            max_seconds=args.seconds))
        out["pans"] = cell.finish(run)
    return out


def capacity(cells: dict[str, dict[str, Any]]) -> list[str]:
    """A capacity model for N hosts from one worker's figures (its CPU per request)."""
    r1 = cells["redis-1w"]
    lines = []
    per_core = {}
    for w in ("fresh", "pans"):
        c = r1[w]
        rps = 1e3 / c["server_cpu_ms_per_req"]
        per_core[w] = rps
        lines.append(f"  {w:5s}: {rps:6.0f} req/s per core ({c['server_cpu_ms_per_req']:.2f} ms "
                     f"CPU each), {rps * c['bytes_per_req'] / 1e6:6.1f} MB/s per core")
    p = r1["pans"]
    rt, rcpu = p["store_round_trips_per_req"], p["redis_cpu_us_per_req"]
    lines.append(f"  pans : {rt:.2f} session-store round trips and {rcpu:.0f} us of Redis CPU "
                 "per request")
    if rcpu > 0:
        limit = 1e6 / rcpu
        lines.append(f"  one Redis core saturates at ~{limit:,.0f} session req/s "
                     f"(~{limit * rt:,.0f} round trips/s)")
    for hosts, cores in ((1, 8), (4, 8), (16, 8)):
        rps = hosts * cores * per_core["pans"]
        load = rps * rcpu / 1e6
        lines.append(f"  {hosts:2d} hosts x {cores} cores: ~{rps:,.0f} pan req/s, "
                     f"~{rps * p['bytes_per_req'] / 1e6:,.0f} MB/s, "
                     f"~{rps * rt:,.0f} Redis round trips/s ({load:.0%} of one Redis core)")
    return lines


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench scaleout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=next((p for p in IMAGES if p.exists()), None))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=300, help="fresh regions per config")
    ap.add_argument("--sessions", type=int, default=12, help="viewer sessions (25 requests "
                    "each) per config")
    ap.add_argument("--seconds", type=float, default=30.0, help="cap per workload")
    ap.add_argument("--results", type=Path)
    args = ap.parse_args(argv)
    if args.image is None or not args.image.exists():
        print("no image: pass --image (rgb4096.jp2 of shared/interop or tests/data/interop)",
              file=sys.stderr)
        return 2
    if shutil.which("redis-server") is None:
        print("redis-server is missing: scripts/system-deps.sh --test installs it",
              file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = args.results or RESULTS_DIR / f"scaleout-{stamp}.json"
    work = Path(tempfile.mkdtemp(prefix="jpip-scaleout-"))
    try:
        root = work / "root"
        target = link_into(root, args.image)
        cache = work / "index-cache"
        from codestream.source import build_source
        source = build_source(root / target)
        needs = Needs(source)
        report: dict[str, Any] = {
            "when": stamp, "host": platform.node(), "cpus": os.cpu_count(),
            "loadavg_before": loadavg(), "image": str(args.image), "clients": args.clients}
        cells = {}
        with RedisServer(work / "redis") as redis:
            for name, store, workers in CONFIGS:
                print(f"{name} ...", file=sys.stderr, flush=True)
                cells[name] = run_config(args, name, store, workers, root, cache, target,
                                         needs, redis, work / "logs")
        source.close()
        report["cells"] = cells
        report["capacity"] = capacity(cells)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=1))
    print(f"\nresults: {results}")
    bad = [(n, w) for n, c in report["cells"].items() for w in ("fresh", "pans")
           if c[w]["errors"] or c[w]["resent_bytes"]]
    return 1 if bad else 0


def print_report(report: dict[str, Any]) -> None:
    cells = report["cells"]
    print(f"scale-out, {report['clients']} clients, {report['cpus']} CPUs, "
          f"image {Path(report['image']).name}")
    head = (f"{'config':10s} {'work':5s} {'req/s':>7s} {'x base':>6s} {'p50 ms':>7s} "
            f"{'p99 ms':>7s} {'MB/s':>6s} {'cpu ms':>7s} {'cores':>5s} {'trips':>5s} "
            f"{'redis cmds':>10s} {'redis us':>8s} {'errors':>6s} {'resent':>6s}")
    print(head)
    base = cells["memory-1w"]
    for name, c in cells.items():
        for w in ("fresh", "pans"):
            x = c[w]
            print(f"{name:10s} {w:5s} {x['rps']:7.0f} {x['rps'] / base[w]['rps']:6.2f} "
                  f"{x['p50_ms']:7.1f} {x['p99_ms']:7.1f} {x['mb_per_s']:6.1f} "
                  f"{x['server_cpu_ms_per_req']:7.2f} {x['server_cores_busy']:5.2f} "
                  f"{x['store_round_trips_per_req']:5.2f} {x['redis_commands_per_req']:10.1f} "
                  f"{x['redis_cpu_us_per_req']:8.0f} {x['errors']:6d} {x['resent_bytes']:6d}")
    print("(cpu ms: server CPU per request, workers and supervisor; cores: server CPU / wall; "
          "trips: session-store round trips per request; redis cmds/us: Redis commands and "
          "CPU per request)")
    print("capacity model (from redis-1w):")
    for line in report["capacity"]:
        print(line)
