"""Replays fuzz inputs without instrumentation: `python -m tests.fuzz.replay TARGET FILE...`.

Prints one JSON line per file: the outcome ("ok" or the escaping exception), CPU seconds (best
of three when the first run is over the limit) and the traced memory peak. Exit status 1 when
any file breaks its target's rules. The fuzzer's worker uses it to time a slow input as the
product runs it (atheris' instrumentation makes pure-Python loops many times slower).
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from .targets import MAX_SECONDS, TARGETS, check_limits, measure, warm_up


def replay(target: str, data: bytes) -> dict:
    fn = TARGETS[target]
    out: dict = {"size": len(data)}
    try:
        got = measure(fn, data)
        out.update(seconds=round(got.seconds, 3), peak_mb=round(got.peak_bytes / 1e6, 1))
        if got.seconds > MAX_SECONDS:
            best = min([got.seconds] + [measure(fn, data, trace=False).seconds for _ in range(2)])
            out["seconds"] = round(best, 3)
        check_limits(fn, data, got)
        out["outcome"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not handled
        out["outcome"] = f"{type(exc).__name__}: {exc}"[:500]
        out["where"] = traceback.format_exception(exc)[-2].strip()[:300]
    return out


def main(argv: list[str]) -> int:
    target, files = argv[0], argv[1:]
    warm_up(target)
    bad = 0
    for name in files:
        t0 = time.monotonic()
        rep = replay(target, Path(name).read_bytes())
        rep["file"] = name
        rep["wall_s"] = round(time.monotonic() - t0, 2)
        bad += rep["outcome"] != "ok"
        print(json.dumps(rep), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
