"""A newcomer's clone has no ../shared: the benchmarks that build their images with its
make_large.py say so in one line (not a traceback), and the reports name no internal issue."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.speed_bench import render
from tests.conftest import PROJECT_ROOT


@pytest.mark.parametrize(("bench", "options", "instead"), [
    ("index", ("--threads", "1"), ""),
    ("server", ("--no-cold", "--no-baseline"),
     ", or pass --image FILE (e.g. tests/data/interop/rgb4096.jp2"),
])
def test_without_the_shared_folder(tmp_path, bench, options, instead) -> None:
    missing = tmp_path / "no-shared"
    done = subprocess.run([sys.executable, "-m", "bench", bench, "--size", "256", "--out",
                           str(tmp_path / "images"), *options],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JPIP_SHARED": str(missing)})
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(
        f"python -m bench {bench}: its images are built by {missing}/corpus/make_large.py, "
        "which is not there (the project's shared folder beside the repository, not part of "
        "a clone): set JPIP_SHARED to a copy of that folder" + instead), done.stderr


def test_speed_report_names_no_issue() -> None:
    rep = {"meta": {"image": "rgb4096.jp2", "clients": 8, "cpus": 2, "loadavg_end": 1.0,
                    "profiled": False}, "cells": [],
           "verdicts": [{"verdict": "met", "goal": "fresh: p99 <= 10 ms", "measured": "3 ms"}]}
    text = render(rep)
    assert "\ngoals:\n" in text and "issue" not in text
