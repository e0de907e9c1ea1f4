"""Every committed fuzz finding (tests/fuzz/regressions/<target>/<file>) replayed through its
target: success or the project's typed error, within the limits (1 s of CPU, 100 MB)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS, regression_files, run_within_limits, warm_up

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
CASES = regression_files(REGRESSIONS)


def test_every_target_has_a_regression_folder() -> None:
    assert {d.name for d in REGRESSIONS.iterdir() if d.is_dir()} == set(TARGETS)


@pytest.mark.parametrize("target,path", CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_fuzz_regression(target: str, path: Path) -> None:
    warm_up(target)
    run_within_limits(target, path.read_bytes())
