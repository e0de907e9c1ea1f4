"""What a newcomer runs first: the Makefile's setup on a fresh machine, the README's examples,
and a test run that prints no warnings of ours."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
SYSTEM_DEPS = PROJECT_ROOT / "scripts" / "system-deps.sh"
# Options of the README's commands that name a file the command writes.
OUTPUT_OPTIONS = ("-o", "--output", "--save-stream", "--cache", "-D")


def test_debian_packages_come_before_the_venv(tmp_path: Path) -> None:
    # A fresh Debian lacks python3-venv: system-deps.sh must run before `python3 -m venv`.
    venv = tmp_path / "venv"
    plan = subprocess.run(["make", "-n", "--no-print-directory", "setup", f"VENV={venv}"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                          check=True).stdout.splitlines()
    deps = next(i for i, line in enumerate(plan) if "system-deps.sh" in line)
    make_venv = next(i for i, line in enumerate(plan) if f"-m venv {venv}" in line)
    assert deps < make_venv, plan


def test_system_deps_installs_python3_venv_when_venv_cannot_work(tmp_path: Path) -> None:
    # A Python whose `import ensurepip, venv` fails, as Debian's without python3-venv.
    no_venv = tmp_path / "python3"
    no_venv.write_text("#!/bin/sh\nexit 1\n")
    no_venv.chmod(0o755)
    env = {**os.environ, "PYTHON": str(no_venv)}
    missing = subprocess.run([str(SYSTEM_DEPS), "--print"], env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
    assert "python3-venv" in missing
    env["PYTHON"] = sys.executable  # this one makes venvs
    missing = subprocess.run([str(SYSTEM_DEPS), "--print"], env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
    assert "python3-venv" not in missing


def test_system_deps_installs_python3_dev_when_python_has_no_headers(tmp_path: Path) -> None:
    # The C packet-header decoder is built at install (codestream/_headers.c): it needs
    # Python.h of the Python that makes the venv, and a compiler.
    no_headers = tmp_path / "python3"
    no_headers.write_text("#!/bin/sh\nexit 1\n")  # as a Python without Python.h answers
    no_headers.chmod(0o755)
    env = {**os.environ, "PYTHON": str(no_headers)}
    missing = subprocess.run([str(SYSTEM_DEPS), "--print"], env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
    assert "python3-dev" in missing
    env["PYTHON"] = sys.executable  # built with its headers (the extension was built by it)
    missing = subprocess.run([str(SYSTEM_DEPS), "--print"], env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
    assert "python3-dev" not in missing and "gcc" not in missing


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's ```sh blocks (continuation lines joined)."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def test_readme_examples_leave_nothing_to_commit() -> None:
    outputs = []
    for argv in readme_commands():
        for option, value in zip(argv, argv[1:], strict=False):
            if option in OUTPUT_OPTIONS and value != "-":
                outputs.append(value)
    assert len(outputs) >= 5, outputs  # the fetch examples are still there
    for path in outputs:
        if os.path.isabs(path):
            assert path.startswith("/tmp/") or path == "/dev/null", path
        else:
            ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=PROJECT_ROOT)
            assert ignored.returncode == 0, f"the README writes {path}, which git would list"


def test_a_test_run_prints_no_warnings() -> None:
    # pytest's own configuration warnings (pytest-asyncio's loop scope) and any warning of a
    # server request (aiohttp's NotAppKeyWarning on a string key) would show here.
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/server/test_app.py::test_healthz",
                           "tests/jpip/test_jpp.py"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "Warning" not in output and "warnings summary" not in output, output
