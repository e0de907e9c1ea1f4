"""`jpip prepare` and `jpip add-plt` refuse an output they cannot write, before any work, and
name that output (not the input, not their hidden temporary file)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filetools.outputs import OutputError, check_output, output_problem
from tests.conftest import CORPUS, PROJECT_ROOT


def jpip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def small_ppm(tmp_path: Path) -> Path:
    path = tmp_path / "small.ppm"
    pixels = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_prepare_into_a_missing_folder(small_ppm: Path, tmp_path: Path) -> None:
    out = tmp_path / "nonexistent" / "out.jp2"
    done = jpip("prepare", str(small_ppm), str(out))
    assert done.returncode == 2
    assert done.stderr == (f"jpip prepare: cannot write {out}: the folder "
                           f"'{out.parent}' does not exist\n")
    assert not out.parent.exists()


def test_add_plt_into_a_missing_folder(tmp_path: Path) -> None:
    out = tmp_path / "nonexistent" / "x.jp2"
    done = jpip("add-plt", str(CORPUS / "file1.jp2"), str(out))
    assert done.returncode == 2
    assert done.stderr == (f"jpip add-plt: cannot write {out}: the folder "
                           f"'{out.parent}' does not exist\n")
    assert ".part" not in done.stderr and "file1.jp2" not in done.stderr


def test_add_plt_onto_a_folder(tmp_path: Path) -> None:
    done = jpip("add-plt", str(CORPUS / "file1.jp2"), str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith(f"jpip add-plt: cannot write {tmp_path}: ")
    assert "is a folder" in done.stderr


def test_output_problems(tmp_path: Path) -> None:
    assert output_problem(tmp_path / "a.jp2") is None
    assert "does not exist" in output_problem(tmp_path / "x" / "a.jp2")
    (tmp_path / "file").write_bytes(b"")
    assert "is not a folder" in output_problem(tmp_path / "file" / "a.jp2")
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path)
