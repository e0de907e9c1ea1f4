"""`make fuzz`: coverage-guided fuzzing (atheris + libFuzzer) of the parsers, time-bounded.

    python -m tests.fuzz [--seconds N] [--targets codestream,boxes,request,model] [--strict]

Each target runs in its own process (tests/fuzz/worker.py) for N seconds (FUZZ_SECONDS, default
180), seeded from the test suite (tests/fuzz/seeds.py) and helped by a dictionary of markers,
box types and field names (tests/fuzz/dict/). Under fuzz-work/ (not committed): corpus/<target>
keeps what the fuzzer learnt, so later runs start from there; findings/<target> holds each
distinct failure's smallest input with its traceback; report.json the figures. A finding
becomes a regression: copy the input to tests/fuzz/regressions/<target>/<name>, fix the code,
and `make test` replays it (tests/fuzz/test_regressions.py).

Exit status 1 when this run met any finding.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import PROJECT_ROOT

from .seeds import SEEDS
from .targets import MAX_INPUT, TARGETS

HERE = Path(__file__).resolve().parent
MAX_LEN = {"codestream": MAX_INPUT - 1, "boxes": 256 * 1024, "request": 16 * 1024,
           "model": 16 * 1024}
HANG_SECONDS = 20     # libFuzzer's own per-input timeout: a hang ends the process
RSS_LIMIT_MB = 2048   # libFuzzer's own memory ceiling
MAX_RESTARTS = 20
REPLAY_TIMEOUT = 120


def _write_seeds(target: str, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    seeds = SEEDS[target]()
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
    return len(seeds)


def _executed(log_path: Path) -> int:
    """Inputs run, from libFuzzer's final stats in the log (summed over its processes)."""
    key = "stat::number_of_executed_units:"
    return sum(int(line.split(":")[-1]) for line in log_path.read_text(errors="replace")
               .splitlines() if line.startswith(key))


def _replay(target: str, path: Path, env: dict) -> dict:
    try:
        r = subprocess.run([sys.executable, "-m", "tests.fuzz.replay", target, str(path)],
                           cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                           timeout=REPLAY_TIMEOUT)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"outcome": f"still running after {REPLAY_TIMEOUT} s"}
    except (ValueError, IndexError):
        return {"outcome": "replay failed"}


def run_target(target: str, seconds: float, work: Path, strict: bool) -> dict:
    corpus = work / "corpus" / target
    seeds = work / "seeds" / target
    findings = work / "findings"
    corpus.mkdir(parents=True, exist_ok=True)
    (findings / target).mkdir(parents=True, exist_ok=True)
    for stale in (findings / target).glob(".stats-*.json"):
        stale.unlink()
    nseeds = _write_seeds(target, seeds)
    artifacts_before = set((findings / target).glob("libfuzzer-*"))
    env = dict(os.environ, FUZZ_FINDINGS=str(findings), PYTHONPATH=str(PROJECT_ROOT),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if strict:
        env["FUZZ_STRICT"] = "1"
    deadline = time.monotonic() + seconds
    runs, log_path = 0, work / f"{target}.log"
    with open(log_path, "w") as log:
        while runs <= MAX_RESTARTS:
            left = int(deadline - time.monotonic())
            if left < 5:
                break
            cmd = [sys.executable, "-m", "tests.fuzz.worker", target,
                   str(corpus), str(seeds),
                   f"-max_total_time={left}", f"-max_len={MAX_LEN[target]}",
                   f"-timeout={HANG_SECONDS}", f"-rss_limit_mb={RSS_LIMIT_MB}",
                   f"-dict={HERE / 'dict' / (target + '.dict')}",
                   f"-artifact_prefix={findings / target}/libfuzzer-",
                   "-print_final_stats=1", "-use_value_profile=1"]
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
            runs += 1
            if proc.returncode == 0 or strict:
                break
            # libFuzzer stopped on a hang, an out-of-memory or a crash it caught itself: the
            # input is saved as an artifact; go on with the time left.
    stats = [json.loads(p.read_text()) for p in (findings / target).glob(".stats-*.json")]
    merged: dict[str, dict] = {}
    for s in stats:
        for sig, f in s["findings"].items():
            m = merged.setdefault(sig, {"count": 0, "size": f["size"], "file": f["file"]})
            m["count"] += f["count"]
            m["size"] = min(m["size"], f["size"])
    slow_ok = 0
    for art in sorted(set((findings / target).glob("libfuzzer-*")) - artifacts_before):
        # libFuzzer's own artifacts: a hang, an out-of-memory, or a "slow unit" (over 10 s
        # instrumented). Each is replayed in a plain interpreter; a slow unit that is within
        # the limits there is only instrumentation overhead.
        kind = art.name.split("-")[1]
        replayed = _replay(target, art, env)
        if kind == "slow" and replayed.get("outcome") == "ok":
            slow_ok += 1
            art.unlink()
            continue
        merged[f"libFuzzer-{kind}"] = {"count": 1, "size": art.stat().st_size, "file": str(art),
                                       "replayed": replayed}
    return {"target": target, "seconds": round(seconds), "processes": runs, "seeds": nseeds,
            "execs": max(_executed(log_path), sum(s["execs"] for s in stats)),
            "corpus": sum(1 for _ in corpus.iterdir()),
            "slowest_cpu_s": max((s["slowest_cpu_s"] for s in stats), default=0),
            "peak_traced_mb": max((s["peak_traced_mb"] for s in stats), default=0),
            "slow_units_within_limits": slow_ok, "findings": merged, "log": str(log_path)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 180)),
                    help="time per target (default: $FUZZ_SECONDS or 180)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets")
    ap.add_argument("--work", type=Path, default=PROJECT_ROOT / "fuzz-work")
    ap.add_argument("--strict", action="store_true",
                    help="stop a target at its first finding (libFuzzer keeps the input)")
    args = ap.parse_args(argv)
    names = [t for t in args.targets.split(",") if t]
    unknown = set(names) - set(TARGETS)
    if unknown:
        ap.error(f"unknown targets {sorted(unknown)}; known: {sorted(TARGETS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        print(f"fuzzing {name} for {args.seconds:.0f} s ...", flush=True)
        r = run_target(name, args.seconds, args.work, args.strict)
        results.append(r)
        print(f"  {r['execs']} inputs in {r['seconds']} s ({r['processes']} process(es)), "
              f"{r['seeds']} seeds, corpus {r['corpus']}, slowest {r['slowest_cpu_s']} s CPU, "
              f"peak {r['peak_traced_mb']} MB traced; {len(r['findings'])} finding(s)",
              flush=True)
        for sig, f in r["findings"].items():
            print(f"    {sig}: {f['count']}x, smallest {f['size']} bytes: {f['file']}")
    (args.work / "report.json").write_text(json.dumps(results, indent=1))
    total = sum(len(r["findings"]) for r in results)
    print(f"{sum(r['execs'] for r in results)} inputs over {len(results)} target(s); "
          f"{total} finding(s); report: {args.work / 'report.json'}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
