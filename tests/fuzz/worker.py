"""One coverage-guided fuzzing process: `python -m tests.fuzz.worker TARGET [libFuzzer args]`.

Started by `python -m tests.fuzz` (tests/fuzz/__main__.py), which passes the corpus
directories, the dictionary and the time budget as libFuzzer arguments. The project's modules
are imported under atheris' instrumentation, so libFuzzer sees their branch coverage.

Each input is run once. What escapes the target (an untyped exception, a failed consistency
check) or breaks a limit (1 s of CPU or 100 MB for inputs under 1 MB) is a finding: the input
is saved under FUZZ_FINDINGS/<target>/ with a text file holding the traceback, the smallest
input kept per distinct failure (exception type and the project line it came from), and the
fuzzer goes on, so one run reports every class it meets. With FUZZ_STRICT=1 a finding is
raised instead, which hands it to libFuzzer (stop, minimise with -minimize_crash=1, ...).
Memory is cheap to watch per input through the process's peak RSS: when an input raises it,
the input is run again under tracemalloc to measure its own peak.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import atheris

PROJECT_DIRS = ("codestream", "jpip", "cache", "server", "tests/fuzz")
RSS_STEP_KB = 16 * 1024  # a rise of the peak RSS by this much gets the input measured
STATS_EVERY = 2.0  # seconds between stats files
REPLAY_TIMEOUT = 60


def _peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def signature(exc: BaseException) -> str:
    """What makes two failures the same: the exception type and the innermost project line."""
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        path = frame.filename.replace(os.sep, "/")
        if any(f"/{d}/" in path for d in PROJECT_DIRS):
            where = f"{'/'.join(path.split('/')[-2:])}:{frame.lineno}"
    kind = type(exc).__name__
    if kind == "Violation":  # our own checks: the message's first words say which rule
        words = [w.strip(":,") for w in str(exc).split()[:4] if not any(c.isdigit() for c in w)]
        kind += "-" + "-".join(words[:2])
    return f"{kind}@{where}"


class Recorder:
    def __init__(self, target: str, out: Path, strict: bool) -> None:
        self.target = target
        self.out = out
        self.strict = strict
        self.execs = 0
        self.findings: dict[str, dict] = {}
        self.slowest = 0.0
        self.peak_traced = 0
        self.started = time.monotonic()
        self.last_stats = 0.0
        out.mkdir(parents=True, exist_ok=True)
        self.stats_path = out / f".stats-{os.getpid()}.json"

    def finding(self, exc: BaseException, data: bytes) -> None:
        sig = signature(exc)
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in sig)[:80]
        digest = hashlib.sha256(sig.encode()).hexdigest()[:8]
        known = self.findings.get(sig)
        if known is None:
            # A finding from an earlier run of this target (same signature) counts as known.
            path = self.out / f"{slug}-{digest}"
            prior = path.stat().st_size if path.exists() else None
            known = self.findings[sig] = {"count": 0, "size": prior, "file": str(path)}
        known["count"] += 1
        if known["size"] is None or len(data) < known["size"]:
            known["size"] = len(data)
            Path(known["file"]).write_bytes(data)
            Path(known["file"] + ".txt").write_text(
                f"target: {self.target}\nsignature: {sig}\nsize: {len(data)}\n\n"
                + "".join(traceback.format_exception(exc)))
        self.stats(force=True)

    def stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_stats < STATS_EVERY:
            return
        self.last_stats = now
        report = {"target": self.target, "execs": self.execs,
                  "seconds": round(now - self.started, 1), "slowest_cpu_s": round(self.slowest, 3),
                  "peak_traced_mb": round(self.peak_traced / 1e6, 1),
                  "findings": {k: {"count": v["count"], "size": v["size"], "file": v["file"]}
                               for k, v in self.findings.items()}}
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(self.stats_path)


def check_time_uninstrumented(target: str, data: bytes, seconds: float) -> None:
    """Instrumented code runs many times slower than the product: an input over the time
    limit here is timed again in a plain interpreter (tests/fuzz/replay.py)."""
    from tests.fuzz.targets import Violation

    with tempfile.NamedTemporaryFile(prefix="fuzz-slow-") as f:
        f.write(data)
        f.flush()
        try:
            r = subprocess.run([sys.executable, "-m", "tests.fuzz.replay", target, f.name],
                               capture_output=True, text=True, timeout=REPLAY_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Violation(f"still running after {REPLAY_TIMEOUT} s uninstrumented "
                            f"({seconds:.1f} s instrumented)") from None
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    if rep["outcome"] != "ok":
        raise Violation(f"{rep['outcome']} (uninstrumented; {seconds:.1f} s instrumented)")


def main() -> None:
    target_name = sys.argv.pop(1)
    strict = os.environ.get("FUZZ_STRICT") == "1"
    out = Path(os.environ.get("FUZZ_FINDINGS", "fuzz-work/findings")) / target_name
    with atheris.instrument_imports(include=["codestream", "jpip", "cache", "tests.fuzz"]):
        from tests.fuzz import targets
    target = targets.TARGETS[target_name]
    logging.getLogger("codestream").setLevel(logging.ERROR)  # "PLT does not match", per input
    targets.warm_up(target_name)
    rec = Recorder(target_name, out, strict)
    state = {"rss": _peak_rss_kb()}

    def one_input(data: bytes) -> None:
        rec.execs += 1
        try:
            got = targets.measure(target, data, trace=False)
            rss = _peak_rss_kb()
            if rss - state["rss"] > RSS_STEP_KB:
                state["rss"] = rss
                peak = targets.measure(target, data).peak_bytes
                rec.peak_traced = max(rec.peak_traced, peak)
                targets.check_limits(target, data, targets.Measured(0.0, peak))
            if got.seconds > targets.MAX_SECONDS and len(data) < targets.MAX_INPUT:
                check_time_uninstrumented(target_name, data, got.seconds)
            rec.slowest = max(rec.slowest, got.seconds)
        except Exception as exc:  # noqa: BLE001 - every escape is a finding
            rec.finding(exc, data)
            if strict:
                raise
        rec.stats()

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
