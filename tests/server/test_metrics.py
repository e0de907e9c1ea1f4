"""Request figures of several workers summed into one /metrics (server/metrics.py): each
worker's RequestStats written to the shared directory, the answering worker's own live."""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest

from server.metrics import STATS_FILE, RequestStats, SharedRequestStats, share_stats


def _lines(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_every_workers_request_figures_are_summed(tmp_path) -> None:
    own, other, dead = RequestStats("0"), RequestStats("1"), RequestStats("1")
    own.request(200, 0.003, 1000)
    own.first_byte.observe(0.001)
    own.index_cache["hit"] += 2
    for _ in range(3):
        other.request(200, 0.2, 500)
    other.request(404, 0.0005, 10)
    other.bytes_saved += 7
    dead.request(503, 2.0, 1)  # a worker that died: its last figures still count
    share_stats(other, str(tmp_path))
    os.replace(tmp_path / STATS_FILE.format(pid=os.getpid()), tmp_path / "requeststats_1.json")
    share_stats(dead, str(tmp_path))
    os.replace(tmp_path / STATS_FILE.format(pid=os.getpid()), tmp_path / "requeststats_2.json")
    share_stats(own, str(tmp_path))  # this process's file: its live numbers are used instead
    own.request(200, 0.003, 1000)
    registry = CollectorRegistry()
    registry.register(SharedRequestStats(own, str(tmp_path)))
    m = _lines(registry)
    assert m['jpip_requests_total{status="200"}'] == 5
    assert m['jpip_requests_total{status="404"}'] == 1
    assert m['jpip_requests_total{status="503"}'] == 1
    assert m["jpip_response_bytes_total"] == 2000 + 1500 + 10 + 1
    assert m['jpip_request_duration_seconds_bucket{le="0.005"}'] == 3  # 2 x 3 ms, 0.5 ms
    assert m['jpip_request_duration_seconds_bucket{le="+Inf"}'] == 7
    assert m["jpip_request_duration_seconds_count"] == 7
    assert m['jpip_time_to_first_byte_seconds_bucket{le="+Inf"}'] == 1
    assert m['jpip_index_cache_total{result="hit"}'] == 2
    assert m["jpip_bytes_saved_by_model_total"] == 7
    assert m['jpip_worker_requests_total{worker="0"}'] == 2
    assert m['jpip_worker_requests_total{worker="1"}'] == 5  # before and after a restart
    assert not list(tmp_path.glob("*.tmp"))
