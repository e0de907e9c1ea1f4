"""The soak (soak.py) for 60 seconds in `make test`; `make soak` runs it for ten minutes."""
from __future__ import annotations

import asyncio

from tests.reliability.soak import soak

SECONDS = 60


def test_64_clients_for_a_minute(tmp_path) -> None:
    report = asyncio.run(soak(SECONDS, tmp_path))
    print(report.text())
    report.check()
    # Every kind of client did its part.
    for kind in ("session", "fresh", "thumbnail", "slow", "vanish", "storm"):
        assert report.stats.requests[kind] > 0, report.text()
    assert report.stats.events["vanished mid-response"] > 0, report.text()
    assert report.stats.events["cclose in a storm"] > 0, report.text()
