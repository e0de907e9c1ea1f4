"""What planning costs per window, in process: `python -m bench plan [--windows N] [--rounds R]`.

The steps a request's window takes before any byte is read, on the 4096^2 RGB interoperability
image (the windows of `python -m bench request`): `resolve` (jpip.window.resolve_window),
`plan` (jpip.plan.plan_window, the precincts and their bin ends; the kept plans are cleared
each round, so every window is planned), `model` (the session model: what is held of the
planned precincts, then the sent rows raised in two records in delivery order, as the
response builder makes them). Workloads: `fresh` (a 512^2 window at a new random place each
time) and `pan` (a 512^2 window panned by 128 px).

Figures are microseconds per window, the least over rounds (other work on the machine only
adds to them). To compare with another checkout, run the same command there with this
interpreter: `cd /tmp/base && /path/to/.venv/bin/python -m bench plan` (what it imports comes
from the current directory).
"""
from __future__ import annotations

import argparse
import random
import time

import numpy as np

from cache.model import BinKind, CacheModel, ReceivedRows
from codestream.source import build_source
from jpip.plan import plan_window
from jpip.window import resolve_window

from .request_bench import IMAGE, SIZE, WINDOW, add_image_root, image_missing, pan_offsets


def _round(ix, offsets: list[tuple[int, int]]) -> dict[str, float]:
    for kept in ("_windows", "_plans"):
        if hasattr(ix, kept):
            delattr(ix, kept)
    model = CacheModel()
    r = ix.precincts["r"]
    spent = {"resolve": 0.0, "plan": 0.0, "model": 0.0}
    for x, y in offsets:
        t0 = time.perf_counter()
        w = resolve_window(ix, 0, fsiz=(SIZE, SIZE, "closest"), roff=(x, y),
                           rsiz=(WINDOW, WINDOW))
        t1 = time.perf_counter()
        p = plan_window(ix, w)
        t2 = time.perf_counter()
        held = model.stream(0).precincts.get(p.rows)
        need = np.flatnonzero(p.ends > held)
        order = need[np.argsort(r[p.rows[need]], kind="stable")]  # lowest resolution first
        model.apply([ReceivedRows(BinKind.PRECINCT, 0, p.rows[part].astype(np.int32),
                                  p.ends[part]) for part in (order[:1], order[1:])])
        t3 = time.perf_counter()
        spent["resolve"] += t1 - t0
        spent["plan"] += t2 - t1
        spent["model"] += t3 - t2
    return {k: v / len(offsets) * 1e6 for k, v in spent.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_root(ap)
    ap.add_argument("--windows", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    if image_missing(args.root):
        return 2
    rng = random.Random(7)
    workloads = {
        "fresh": [(rng.randrange(SIZE - WINDOW), rng.randrange(SIZE - WINDOW))
                  for _ in range(args.windows)],
        "pan": pan_offsets(args.windows),
    }
    print("microseconds per window (least of rounds)")
    print(f"{'workload':8} {'resolve':>8} {'plan':>8} {'model':>8} {'total':>8}")
    with build_source(args.root / IMAGE) as src:
        ix = src.codestreams[0]
        for name, offsets in workloads.items():
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                for k, v in _round(ix, offsets).items():
                    best[k] = min(best.get(k, v), v)
            print(f"{name:8} {best['resolve']:8.1f} {best['plan']:8.1f} {best['model']:8.1f} "
                  f"{sum(best.values()):8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
