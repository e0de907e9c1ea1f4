"""The serving benchmark runs end to end on a small image in a few seconds (keeps it working)."""
from __future__ import annotations

import json
import subprocess
import sys

from bench.loadgen import _add_range
from tests.conftest import INTEROP, PROJECT_ROOT

IMAGE = INTEROP / "med2048.jp2"


def test_overlap_counting() -> None:
    ranges: list[list[int]] = []
    assert _add_range(ranges, 0, 10) == 0
    assert _add_range(ranges, 10, 20) == 0
    assert _add_range(ranges, 5, 25) == 15
    assert ranges == [[0, 25]]


def test_bench_smoke(tmp_path) -> None:
    results = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "bench", "server", "--image", str(IMAGE),
           "--cold-image", str(IMAGE), "--memory-image", str(IMAGE), "--out", str(tmp_path),
           "--concurrency", "1,2", "--requests", "6", "--seconds", "1", "--sessions", "10",
           "--results", str(results)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "goals:" in proc.stdout
    rep = json.loads(results.read_text())
    cells = rep["cells"]
    assert {(c["workload"], c["conn"], c["clients"]) for c in cells} == {
        (w, m, n) for w in ("thumbnail", "region", "viewer") for m in ("keepalive", "new")
        for n in (1, 2)}
    for c in cells:
        assert c["errors"] == 0, c
        assert c["ok"] > 0 and c["baseline"]["ok"] == c["ok"]
        # A complete window carries at least the bytes it needs (plus message headers).
        assert c["sent_over_needed"] >= 1.0
        assert set(c["eor_reasons"]) <= {"1", "2"}, c["eor_reasons"]
        assert c["server_cpu_ms_per_req"] >= 0 and c["server_rss_mb"] > 0
    assert sum(c["resent_bytes"] for c in cells if c["workload"] == "viewer") == 0
    cold = rep["cold_start"][0]
    assert cold["cold_status"] == 200 and cold["cached_status"] == 200
    assert rep["memory"]["sessions"] == 9 and rep["memory"]["errors"] == 0


def test_request_bench_smoke() -> None:
    cmd = [sys.executable, "-m", "bench", "request", "--rounds", "1", "--requests", "5"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for word in ("fresh", "pan", "repeat", "100,000 precinct descriptors"):
        assert word in proc.stdout


def test_auth_bench_smoke() -> None:
    cmd = [sys.executable, "-m", "bench", "auth", "--rounds", "1", "--requests", "5"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for words in ("repeat", "stateless", "verify RS256", "a request's whole check"):
        assert words in proc.stdout


def test_speed_bench_smoke(tmp_path) -> None:
    """Issue 14's workloads, and --compare running them against a checkout's server (this
    one, as `python -m server.cli` from there) in the same run."""
    results = tmp_path / "speed.json"
    cmd = [sys.executable, "-m", "bench", "speed", "--image", str(IMAGE), "--clients", "2",
           "--requests", "12", "--seconds", "2", "--workloads", "pan,fresh",
           "--compare", str(PROJECT_ROOT), "--results", str(results)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\ngoals:\n" in proc.stdout and "issue" not in proc.stdout
    rep = json.loads(results.read_text())
    cells = rep["cells"]
    assert [(c["workload"], "server" in c) for c in cells] == [
        ("pan", False), ("pan", True), ("fresh", False), ("fresh", True)]
    for c in cells:
        assert c["errors"] == 0 and c["requests"] > 0, c
        assert c["baseline"]["requests"] == c["requests"]
        assert c["sent_over_needed"] >= 1.0
    assert all(c["resent_bytes"] == 0 for c in cells if c["workload"] == "pan")
    # The comparison's rows are not judged against the goals.
    assert len([v for v in rep["verdicts"] if v["goal"].startswith("pan: req/s")]) == 1


def test_scaleout_bench_smoke(tmp_path) -> None:
    """`python -m bench scaleout` end to end on a small image: every configuration answers
    every request, sessions resend nothing, and only Redis-backed sessions count round trips."""
    results = tmp_path / "scaleout.json"
    cmd = [sys.executable, "-m", "bench", "scaleout", "--image", str(IMAGE), "--requests", "6",
           "--sessions", "1", "--clients", "2", "--seconds", "10", "--results", str(results)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "capacity model" in proc.stdout
    cells = json.loads(results.read_text())["cells"]
    assert set(cells) == {"memory-1w", "redis-1w", "redis-2w"}
    for name, cell in cells.items():
        for work in ("fresh", "pans"):
            c = cell[work]
            assert c["ok"] > 0 and c["errors"] == 0 and c["resent_bytes"] == 0, (name, work, c)
            assert c["server_cpu_ms_per_req"] > 0
        assert cell["fresh"]["store_round_trips_per_req"] == 0
    assert cells["memory-1w"]["pans"]["store_round_trips_per_req"] == 0
    # About three a request (cache.redis_sessions: a load, [Preempt, Begin], [records, End]
    # for a response of one chunk; cclose and answers with nothing new cost fewer).
    assert cells["redis-1w"]["pans"]["store_round_trips_per_req"] >= 2.5


def test_plan_bench_smoke() -> None:
    cmd = [sys.executable, "-m", "bench", "plan", "--rounds", "1", "--windows", "5"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for word in ("fresh", "pan", "resolve", "plan", "model"):
        assert word in proc.stdout


def test_coldindex_bench_smoke(tmp_path) -> None:
    """The cold-start benchmark on a small RLCP file without PLT: every step answers 200."""
    from tests.conftest import CORPUS

    results = tmp_path / "coldindex.json"
    cmd = [sys.executable, "-m", "bench", "coldindex", "--image", str(CORPUS / "p0_04.j2k"),
           "--windows", "1", "--no-whole", "--direct-runs", "2", "--results", str(results)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(results.read_text())
    steps = [rep["first_thumbnail"], *rep["windows"], rep["cached_thumbnail"],
             *rep["direct_full_windows"]]
    assert len(rep["direct_full_windows"]) == 2
    assert {s["status"] for s in steps} == {200} and all(s["bytes"] > 0 for s in steps)
    assert rep["persisted_after_s"] is not None
    # Step 5 alone (before/after comparisons of a cold server's first full-resolution window).
    only = tmp_path / "direct.json"
    cmd = [sys.executable, "-m", "bench", "coldindex", "--image", str(CORPUS / "p0_04.j2k"),
           "--only-direct", "--direct-runs", "1", "--results", str(only)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(only.read_text())
    assert "first_thumbnail" not in rep and rep["direct_full_windows"][0]["status"] == 200
