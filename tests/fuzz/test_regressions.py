"""Every committed fuzz finding (tests/fuzz/regressions/<target>/<file>) replayed through its
target: success or the project's typed error, within the limits (100 MB, and twice the
fuzzer's 1 s of CPU: a replay runs beside the rest of `make test`, and CPU time itself grows
under load: 62500-one-pixel-tiles.j2k, 0.61-0.67 s quiet, took 1.27 s at load 5. The defects
these files found cost 8 s and more)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import MAX_SECONDS, TARGETS, regression_files, run_within_limits, warm_up

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
CASES = regression_files(REGRESSIONS)
REPLAY_SECONDS = 2 * MAX_SECONDS


def test_every_target_has_a_regression_folder() -> None:
    assert {d.name for d in REGRESSIONS.iterdir() if d.is_dir()} == set(TARGETS)


@pytest.mark.parametrize("target,path", CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_fuzz_regression(target: str, path: Path) -> None:
    warm_up(target)
    run_within_limits(target, path.read_bytes(), max_seconds=REPLAY_SECONDS)
