"""Generated requests against a real `jpip-server` process (request_fuzz.py): 5,000 in `make
test`, 100,000 in `make soak` (python -m tests.reliability requests)."""
from __future__ import annotations

from tests.reliability.request_fuzz import check, fuzz, fuzz_root, server_errors
from tests.server_process import running_server

REQUESTS = 5_000


async def test_generated_requests_never_get_500_and_leak_nothing(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    targets, dicom = fuzz_root(root)
    with running_server(root, "--max-sessions", "64", "--response-cache-bytes", str(1 << 20),
                        index_cache=tmp_path / "ix") as server:
        report = await fuzz(server.port, server.proc.pid, REQUESTS, seed=16,
                            targets=targets, dicom_targets=dicom)
        assert server.proc.poll() is None, "the server exited"
        report.server_errors = server_errors(server.log.read_text(errors="replace"))
    print(report.text())
    check(report)
    statuses = report.tally.statuses
    # The mix reaches both sides of the grammar: served windows and refusals.
    assert statuses[200] > REQUESTS // 20 and statuses[400] > REQUESTS // 20, report.text()
