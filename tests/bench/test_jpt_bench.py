"""The JPT/metadata benchmark runs end to end on a small tiled corpus image (keeps it working)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import CORPUS, PROJECT_ROOT


def test_jpt_bench_smoke(tmp_path) -> None:
    cmd = [sys.executable, "-m", "bench", "jpt", "--image",
           str(CORPUS / "test-card-lossy-tiled.jp2"), "--requests", "3", "--rounds", "1",
           "--frames", "20", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("test-card-lossy-tiled.jp2: CPU")
    assert [ln.split()[0] for ln in lines[2:5]] == ["thumb", "region", "pan"]
    assert "JPX of 20 frames" in lines[5] and "metadata-bins" in lines[5]
