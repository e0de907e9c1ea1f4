"""Ctrl-C at any moment of a `jpip-server` run, as a terminal sends it (SIGINT to the whole
process group: the server, its fork server and indexing children): one line or none, exit
status 130 before the server serves and 0 once it serves, never a traceback or an asyncio
ERROR (from any process of the group), and no process of the group left behind."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CORPUS, PROJECT_ROOT
from tests.server_process import free_port, server_command, wait_healthy


def _interrupt(root: Path, tmp_path: Path, delay: float | None) -> tuple[int, str]:
    """Starts the server, sends SIGINT to its group after `delay` seconds (None: once it
    serves), returns its exit status and everything the group wrote on stderr."""
    port = free_port()
    log = tmp_path / f"stderr-{delay}.log"
    env = {**os.environ, "JPIP_INDEX_CACHE_DIR": str(tmp_path / "ix")}
    with log.open("wb") as err:
        proc = subprocess.Popen([*server_command(), "--root", str(root), "--port", str(port)],
                                cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    try:
        if delay is None:
            wait_healthy(port, proc, log)
        else:
            time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        status = proc.wait(timeout=60)
        deadline = time.monotonic() + 10  # the fork server ends as its parent goes
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("a process of the server's group outlived it")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return status, log.read_text(errors="replace")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    shutil.copy(CORPUS / "p0_01.j2k", root)
    return root


# 0.1-0.6 s: Python and the server's modules load; 1-3 s on a busy machine: the app starts
# (the fork server imports the server); a quiet machine may be serving by then (status 0).
@pytest.mark.parametrize("delay", [0.1, 0.3, 0.6, 1.0, 1.6, 2.4, None])
def test_ctrl_c_is_quiet_at_every_moment(root: Path, tmp_path: Path,
                                         delay: float | None) -> None:
    status, err = _interrupt(root, tmp_path, delay)
    assert "Traceback" not in err and "ERROR" not in err, err
    assert "KeyboardInterrupt" not in err and "Error" not in err, err
    if delay is None:
        assert status == 0, err
        assert "stopped" in err
    else:
        assert status in (0, 130), err
        if status == 130:
            assert err.count("jpip-server: interrupted") == 1, err
