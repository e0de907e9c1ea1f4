"""The DICOM prepare benchmark runs end to end on a tiny object (keeps it working)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import PROJECT_ROOT


def test_prepare_dicom_bench_smoke(tmp_path) -> None:
    results = tmp_path / "prepare_dicom.json"
    cmd = [sys.executable, "-m", "bench", "prepare_dicom", "--frames", "3", "--size", "64",
           "--out", str(tmp_path), "--results", str(results)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(results.read_text())
    assert [r["encoder"] for r in rep["rows"]] == ["jpip prepare", "pydicom compress"]
    assert all(r["python_peak_mb"] > 0 and r["output_mb"] > 0 for r in rep["rows"])
    assert not list(tmp_path.glob("*.dcm"))  # removed without --keep
