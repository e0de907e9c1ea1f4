"""Speed per request against a bare aiohttp server, on the workloads below (not a test).

    python -m bench speed [--requests N] [--seconds S] [--clients C] [--profile]
                          [--workloads thumbnail,pan,fresh,repeat] [--compare CHECKOUT]

The server is started as a user would start it (`jpip-server --root DIR`, every other option
at its default; its index cache goes to a temporary XDG_CACHE_HOME), serving the 4096² RGB
interoperability image (../shared/interop/rgb4096.jp2, else the repository's equivalent
tests/data/interop/rgb4096.jp2). --clients clients (default 8), each on its own keep-alive
connection, every cell bounded by --requests requests and --seconds seconds:

  thumbnail  the same thumbnail (fsiz=256,256) again and again, stateless
  pan        a session per client: cnew, then pans of a 512² window by 128 px at full
             resolution (a walk over the image, each client starting elsewhere)
  fresh      a fresh random 512² window at full resolution on every request, stateless, never
             repeating (no response can come from a cache of whole responses)
  repeat     a session per client asking again for the window it holds (the answer is the EOR
             alone): the fixed cost of a request

Right after each workload, in the same run, a bare aiohttp+uvloop server (bench/
baseline_server.py) answers the same request sequence with bodies of the same sizes, with the
same clients and connections; "x bare" is our req/s over its req/s. The goals: every
workload >= 0.5x, above the best open C++ JPIP server's ratios measured with the same harness
(thumbnail 0.68, pan 0.44, fresh 0.42), fresh p99 <= 10 ms, repeat >= 0.6x; bytes sent <= 1.01x
what the windows strictly need (bench/workloads.py), nothing resent in sessions.

--compare CHECKOUT also runs each workload, in the same run, against the server of another
checkout (`python -m server.cli` from there, its own index cache), e.g. a worktree of main:
its rows are marked * and left out of the goals (before/after in one run).

--profile runs the server under pyinstrument (bench/profiled_server.py; sampling starts once it
is warm) and prints the top of each workload's profile. Results go to bench/results/speed-*.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import loadgen
from .procs import ServerProcess, baseline_server, free_port, loadavg
from .server_bench import RESULTS_DIR, _json, _loop_factory, link_into, summarise
from .shared_files import REPO_INTEROP, SHARED_INTEROP
from .workloads import Needs, Request, SessionNeeds, Trace, Window, thumbnail_requests, window_query

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IMAGE = "rgb4096.jp2"
JPIP_PATH = "/jpip"
WINDOW = 512
STEP = 128
WORKLOADS = ("thumbnail", "pan", "fresh", "repeat")
# The goals (ratios of req/s to the bare aiohttp server in the same run).
CPP_RATIOS = {"thumbnail": 0.68, "pan": 0.44, "fresh": 0.42}
MIN_RATIO = 0.5
REPEAT_RATIO = 0.6
FRESH_P99_MS = 10.0
BYTES_RATIO = 1.01


def find_image() -> Path:
    for d in (SHARED_INTEROP, REPO_INTEROP):
        if (d / IMAGE).exists():
            return d / IMAGE
    raise SystemExit(f"no {IMAGE}: run `python -m tests.data.generate` (or provide ../shared)")


# --------------------------------------------------------------------------- requests
def full_window(needs: Needs, x: int, y: int) -> Window:
    w, h = needs.size
    return ((w, h), (x, y), (min(WINDOW, w), min(WINDOW, h)))


def fresh_requests(needs: Needs, count: int, seed: int) -> list[Request]:
    """`count` distinct random windows (a repeat would let a response cache answer it)."""
    w, h = needs.size
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    out = []
    while len(out) < count:
        x, y = rng.randrange(w - WINDOW + 1), rng.randrange(h - WINDOW + 1)
        if (x, y) in seen:
            continue
        seen.add((x, y))
        win = full_window(needs, x, y)
        out.append(Request(window_query(win), needs.stateless(win)))
    return out


def pan_walk(needs: Needs, steps: int, start: int) -> list[tuple[int, int]]:
    """A boustrophedon walk of STEP px over the image, from step `start` of the whole walk."""
    w, h = needs.size
    per_row = (w - WINDOW) // STEP + 1
    rows = (h - WINDOW) // STEP + 1
    out = []
    for i in range(start, start + steps):
        row, k = divmod(i, per_row)
        row %= 2 * rows  # down the image, then back up
        row = row if row < rows else 2 * rows - 1 - row
        x = k * STEP if row % 2 == 0 else (per_row - 1 - k) * STEP
        out.append((x, row * STEP))
    return out


def pan_traces(needs: Needs, clients: int, steps: int) -> list[Trace]:
    w, h = needs.size
    per_row = (w - WINDOW) // STEP + 1
    total = per_row * ((h - WINDOW) // STEP + 1)
    traces = []
    for c in range(clients):
        session = SessionNeeds(needs)
        walk = pan_walk(needs, steps, c * total // clients)
        traces.append(Trace([Request(window_query(full_window(needs, x, y)),
                                     session.step(full_window(needs, x, y))) for x, y in walk]))
    return traces


def repeat_traces(needs: Needs, clients: int, steps: int) -> list[Trace]:
    w, h = needs.size
    traces = []
    for c in range(clients):
        session = SessionNeeds(needs)
        x = (c * 397) % (w - WINDOW)
        y = (c * 811) % (h - WINDOW)
        win = full_window(needs, x, y)
        first = Request(window_query(win), session.step(win))
        traces.append(Trace([first] + [Request(first.query, 0)] * (steps - 1)))
    return traces


# --------------------------------------------------------------------------- servers
def our_server(root: Path, cache_home: Path, log: Path, profile: Path | None,
               code: Path | None = None) -> ServerProcess:
    """`jpip-server --root DIR` with its defaults (the port is ours to pick); `code`: the
    server of another checkout (`python -m server.cli` run from there)."""
    port = free_port()
    args = ["--root", str(root), "--host", "127.0.0.1", "--port", str(port)]
    exe = Path(sys.executable).with_name("jpip-server")
    if code is not None:
        return ServerProcess([sys.executable, "-m", "server.cli", *args], port, log,
                             env={"XDG_CACHE_HOME": str(cache_home), "PYTHONPATH": str(code)},
                             cwd=code)
    if profile is not None:
        argv = [sys.executable, "-m", "bench.profiled_server", "--profile-out", str(profile),
                "--on-signal", "--", *args]
    else:
        argv = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "server.cli",
                                                      *args]
    return ServerProcess(argv, port, log, env={"XDG_CACHE_HOME": str(cache_home)})


class SpeedBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.results = args.results or RESULTS_DIR / f"speed-{self.stamp}.json"
        self.logs = self.results.parent / f"speed-{self.stamp}-logs"
        self.runner = asyncio.Runner(loop_factory=_loop_factory())
        self.rows: list[dict[str, Any]] = []

    def run_async(self, coro):
        return self.runner.run(coro)

    def warm(self, srv: ServerProcess, target: str, queries: list[str]) -> None:
        async def go() -> None:
            await loadgen.run_requests(
                srv.base_url, [(f"{JPIP_PATH}?target={target}&{q}", 0) for q in queries],
                concurrency=1, keepalive=True, max_requests=len(queries), max_seconds=60)
        self.run_async(go())

    def cell(self, name: str, srv: ServerProcess, base: ServerProcess, target: str,
             reqs: list[Request] | None, traces: list[Trace] | None) -> dict[str, Any]:
        a = self.args
        kw = dict(concurrency=a.clients, keepalive=True, max_requests=a.requests,
                  max_seconds=a.seconds)
        cpu0 = srv.cpu()
        if traces is not None:
            run = self.run_async(loadgen.run_traces(srv.base_url, JPIP_PATH, target, traces,
                                                    **kw))
        else:
            run = self.run_async(loadgen.run_requests(
                srv.base_url, loadgen.stateless_paths(JPIP_PATH, target, reqs), **kw))
        cpu = srv.cpu() - cpu0
        row: dict[str, Any] = {"workload": name, "clients": a.clients}
        row.update(summarise(run))
        row["server_cpu_us_per_req"] = cpu * 1e6 / max(row["requests"], 1)
        b0 = base.cpu()
        brun = self.run_async(loadgen.run_requests(
            base.base_url, loadgen.baseline_paths(run.samples), concurrency=a.clients,
            keepalive=True, max_requests=len(run.samples), max_seconds=max(a.seconds * 2, 5)))
        bcpu = base.cpu() - b0
        b = summarise(brun)
        b["server_cpu_us_per_req"] = bcpu * 1e6 / max(b["requests"], 1)
        row["baseline"] = b
        row["rps_ratio"] = row["rps"] / b["rps"] if b["rps"] else math.nan
        row["cpu_ratio"] = (b["server_cpu_us_per_req"] / row["server_cpu_us_per_req"]
                            if row["server_cpu_us_per_req"] else math.nan)
        self.rows.append(row)
        print(format_row(row), file=sys.stderr, flush=True)
        return row

    def run(self) -> int:
        a = self.args
        image = (a.image or find_image()).resolve()
        t0 = time.perf_counter()
        if loadavg() > 0.5:
            print(f"warning: load average {loadavg():.2f} before the run: other work shares the "
                  "CPU; read the ratios (same run), not the absolute figures", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="jpip-speed-") as tmp:
            root, cache_home = Path(tmp) / "root", Path(tmp) / "xdg-cache"
            target = link_into(root, image)
            from codestream.source import build_source

            with build_source(image) as src:
                needs = Needs(src)
                steps = a.requests // a.clients + 1
                plan = {
                    "thumbnail": (thumbnail_requests(needs, a.requests), None),
                    "fresh": (fresh_requests(needs, a.requests, a.seed), None),
                    "pan": (None, pan_traces(needs, a.clients, steps)),
                    "repeat": (None, repeat_traces(needs, a.clients, steps)),
                }
                warmup = [thumbnail_requests(needs, 1)[0].query,
                          *(r.query for r in fresh_requests(needs, 20, a.seed + 1000))]
                base = baseline_server(self.logs / "baseline.log").start()
                print(HEADER, file=sys.stderr)
                try:
                    for name in a.workloads:
                        profile = (self.results.parent / f"speed-{self.stamp}-profile-{name}"
                                   if a.profile else None)
                        for code in [None, *([a.compare] if a.compare else [])]:
                            # each checkout its own index cache (their formats may differ)
                            home = cache_home if code is None else cache_home.with_name(
                                "xdg-cache-compare")
                            log = self.logs / f"{name}{'' if code is None else '-compare'}.log"
                            with our_server(root, home, log, profile, code) as srv:
                                self.warm(srv, target, warmup)
                                if profile is not None and code is None:
                                    srv.signal(signal.SIGUSR1)
                                    time.sleep(0.1)
                                reqs, traces = plan[name]
                                row = self.cell(name, srv, base, target, reqs, traces)
                                if code is not None:
                                    row["server"] = str(code)
                finally:
                    base.stop()
        report = {"meta": {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "image": str(image),
                           "clients": a.clients, "requests_cap": a.requests,
                           "seconds_cap": a.seconds, "cpus": os.cpu_count(),
                           "profiled": a.profile, "loadavg_end": loadavg(),
                           "total_s": time.perf_counter() - t0},
                  "cells": self.rows, "verdicts": verdicts(self.rows)}
        self.runner.close()
        self.results.parent.mkdir(parents=True, exist_ok=True)
        self.results.write_text(json.dumps(report, indent=2, default=_json) + "\n")
        print(render(report))
        print(f"results: {self.results}")
        if a.profile:
            for name in a.workloads:
                top = self.results.parent / f"speed-{self.stamp}-profile-{name}.top.txt"
                if top.exists():
                    print(f"\n--- profile {name} ({top}) ---")
                    print("\n".join(top.read_text().splitlines()[:30]))
        return 0


# --------------------------------------------------------------------------- output
HEADER = ("workload     n   req/s  p50 ms  p99 ms  KB/req  sent/need resent  srv us/req | "
          "bare r/s  bare us/req  x bare  cpu x  err")


def format_row(r: dict[str, Any]) -> str:
    b = r["baseline"]
    name = r["workload"] + ("*" if "server" in r else "")
    return (f"{name:<9} {r['requests']:>5} {r['rps']:7.0f} {r['p50_ms']:7.2f} "
            f"{r['p99_ms']:7.2f} {r['sent_per_req'] / 1e3:7.1f} "
            f"{r['sent_over_needed']:10.4f} {r['resent_bytes']:>6} "
            f"{r['server_cpu_us_per_req']:11.0f} | {b['rps']:8.0f} "
            f"{b['server_cpu_us_per_req']:12.0f} {r['rps_ratio']:7.2f} {r['cpu_ratio']:6.2f} "
            f"{r['errors']:>4}")


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []

    def add(goal: str, value: str, ok: bool) -> None:
        out.append({"goal": goal, "measured": value, "verdict": "met" if ok else "NOT met"})

    for r in rows:
        if "server" in r:
            continue  # a comparison, not this checkout
        wl, ratio = r["workload"], r["rps_ratio"]
        bar = max(MIN_RATIO, CPP_RATIOS.get(wl, 0.0), REPEAT_RATIO if wl == "repeat" else 0.0)
        add(f"{wl}: req/s >= {bar:.2f}x bare aiohttp", f"{ratio:.2f}", ratio >= bar)
        if r["sent_over_needed"] == r["sent_over_needed"]:
            add(f"{wl}: bytes sent <= {BYTES_RATIO}x strictly needed",
                f"{r['sent_over_needed']:.4f}", r["sent_over_needed"] <= BYTES_RATIO)
        if wl == "fresh":
            add(f"fresh: p99 <= {FRESH_P99_MS:g} ms", f"{r['p99_ms']:.1f} ms",
                r["p99_ms"] <= FRESH_P99_MS)
        if wl in ("pan", "repeat"):
            add(f"{wl}: 0 bytes resent", str(r["resent_bytes"]), r["resent_bytes"] == 0)
        if r["errors"]:
            add(f"{wl}: no errors", str(r["errors"]), False)
    return out


def render(rep: dict[str, Any]) -> str:
    m = rep["meta"]
    lines = [f"\n== speed per request: {Path(m['image']).name}, {m['clients']} clients on "
             f"keep-alive connections, {m['cpus']} CPUs, load at the end "
             f"{m['loadavg_end']:.2f}" + (", PROFILED (slower)" if m["profiled"] else ""),
             "x bare = our req/s / bare aiohttp req/s (same sequence and sizes, same run); "
             "cpu x = bare server CPU per request / ours", HEADER]
    lines += [format_row(r) for r in rep["cells"]]
    if any("server" in r for r in rep["cells"]):
        lines.append("* the server of " + next(r["server"] for r in rep["cells"] if "server" in r))
    lines += ["", "goals:"]
    lines += [f"  {v['verdict']:>7}  {v['goal']}: {v['measured']}" for v in rep["verdicts"]]
    return "\n".join(lines)


def _names(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in WORKLOADS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(WORKLOADS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench speed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", type=_names, default=list(WORKLOADS))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4000, help="request cap per workload")
    ap.add_argument("--seconds", type=float, default=10.0, help="time cap per workload")
    ap.add_argument("--image", type=Path, help=f"another {WINDOW}+ px image than {IMAGE}")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--compare", type=Path, help="also run each workload against the server "
                    "of another checkout (e.g. a worktree of main), in the same run")
    ap.add_argument("--results", type=Path)
    args = ap.parse_args(argv)
    return SpeedBench(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
