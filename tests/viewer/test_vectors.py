"""The vectors shared with the viewer's JavaScript client: still what the Python code says, and
the JavaScript side (node's own test runner) agrees with them."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import PROJECT_ROOT
from tests.viewer.vectors import VECTORS, build_vectors, render


def test_committed_vectors_are_what_the_python_code_produces() -> None:
    assert VECTORS.read_text() == render(build_vectors()), (
        "viewer/test/vectors.json is out of date with the Python client: regenerate it with "
        "`python -m tests.viewer.vectors` and make the JavaScript client agree (node --test)")


def test_javascript_client_passes_its_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed (scripts/system-deps.sh installs Debian's nodejs)")
    run = subprocess.run([node, "--test", "test/"], cwd=PROJECT_ROOT / "viewer",
                         capture_output=True, text=True, timeout=120)
    summary = "\n".join(line for line in run.stdout.splitlines()
                        if line.startswith(("not ok", "# pass", "# fail")))
    assert run.returncode == 0, f"node --test failed:\n{summary}\n{run.stdout[-3000:]}{run.stderr}"
    assert "# fail 0" in run.stdout
