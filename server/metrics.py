"""Prometheus metrics, one registry per application (so tests and several apps never collide).

The app's one middleware (server.middleware) sees every request, including errors and the
router's 404/405, finishes the response itself (so the byte count and duration are exact), and
counts it here by status.

What happens on every request (its status, duration, time to first byte, bytes, index and
response cache lookups, bytes a model saved) is counted in plain numbers by `RequestStats`, on
the event loop, and turned into Prometheus metric families only when /metrics is scraped: a
request costs a few additions, not a lock and a label lookup per metric. Rare events (sessions,
index builds) use prometheus_client's own metrics.

Worker processes (`jpip-server --workers N`, server/workers.py) share what they count, and
`/metrics`, whichever worker answers it, adds up all of them: prometheus_client's metrics run
in its multiprocess mode (the supervisor gives the workers a shared directory,
PROMETHEUS_MULTIPROC_DIR; gauges by their mode below), and each worker writes its
`RequestStats` there too, every STATS_SHARE_PERIOD seconds and when it stops (a file per
process, replaced whole), which the answering worker adds to its own live numbers. A worker
killed outright loses at most its last period's counts; a dead worker's file keeps counting
(counters never go down). `worker` labels where telling workers apart is the point.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from bisect import bisect_left
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from server.access import DENIAL_REASONS
from server.logs import INFO_KEY
from server.workers import MULTIPROC_ENV

# 1 ms .. 10 s: a cached thumbnail answers in a few ms, a large region in seconds.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INDEX_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)
STATS_SHARE_PERIOD = 1.0      # seconds between a worker's writes of its RequestStats
STATS_FILE = "requeststats_{pid}.json"


def multiprocess_dir() -> str | None:
    """The directory workers share their metrics through, when this is a worker."""
    return os.environ.get(MULTIPROC_ENV) or None


class _Buckets:
    """A histogram's counts as plain numbers (one bisect and two additions per value)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add(self, counts: list[int], total: float) -> None:
        """Adds another process's counts (the same bounds)."""
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.sum += total

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            cumulative.append((bound, total))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.sum)


class RequestStats(Collector):
    """What every request adds to the metrics, as plain numbers; exported at scrape time."""

    def __init__(self, worker: str = "0") -> None:
        self.worker = worker  # its `worker` label (requests by worker, with several)
        self.statuses: dict[int, int] = {}
        self.response_bytes = 0
        self.duration = _Buckets(REQUEST_BUCKETS)
        self.first_byte = _Buckets(REQUEST_BUCKETS)
        self.index_cache = {"hit": 0, "miss": 0, "build": 0}
        self.response_cache = {"hit": 0, "miss": 0}
        self.bytes_saved = 0

    def request(self, status: int, seconds: float, nbytes: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.duration.observe(seconds)
        self.response_bytes += nbytes

    def snapshot(self) -> dict:
        """The numbers, as JSON values (what a worker shares with the others)."""
        return {"worker": self.worker, "statuses": self.statuses,
                "response_bytes": self.response_bytes,
                "duration": [self.duration.counts, self.duration.sum],
                "first_byte": [self.first_byte.counts, self.first_byte.sum],
                "index_cache": self.index_cache, "response_cache": self.response_cache,
                "bytes_saved": self.bytes_saved}

    def add(self, snap: dict) -> None:
        """Adds another process's snapshot (the numbers of several workers, summed)."""
        for status, n in snap["statuses"].items():
            self.statuses[int(status)] = self.statuses.get(int(status), 0) + n
        self.response_bytes += snap["response_bytes"]
        self.duration.add(*snap["duration"])
        self.first_byte.add(*snap["first_byte"])
        for mine, theirs in ((self.index_cache, snap["index_cache"]),
                             (self.response_cache, snap["response_cache"])):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        self.bytes_saved += snap["bytes_saved"]

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("jpip_requests", "HTTP requests answered, by status",
                                       labels=["status"])
        for status, n in sorted(self.statuses.items()):
            requests.add_metric([str(status)], n)
        yield requests
        yield CounterMetricFamily("jpip_response_bytes",
                                  "Bytes written in responses (headers included)",
                                  value=self.response_bytes)
        yield self.duration.family("jpip_request_duration_seconds",
                                   "Time from request to the response's end")
        yield self.first_byte.family("jpip_time_to_first_byte_seconds",
                                     "Time from request to the response headers")
        yield CounterMetricFamily(
            "jpip_bytes_saved_by_model",
            "Data-bin bytes not sent because the client's cache model held them",
            value=self.bytes_saved)
        for name, doc, counts in (
                ("jpip_index_cache", "Index cache lookups by result", self.index_cache),
                ("jpip_response_cache", "Lookups of responses kept for fresh clients, by result",
                 self.response_cache)):
            family = CounterMetricFamily(name, doc, labels=["result"])
            for result, n in counts.items():
                family.add_metric([result], n)
            yield family


class SharedRequestStats(Collector):
    """Every worker's RequestStats, summed: this process's live numbers and what the others
    wrote last to the shared directory; with requests by worker."""

    def __init__(self, own: RequestStats, directory: str) -> None:
        self.own = own
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        total = RequestStats()
        own = self.own.snapshot()
        by_worker: dict[str, int] = {}
        mine = STATS_FILE.format(pid=os.getpid())
        snaps = [own]
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith("requeststats_") and entry.name != mine:
                    with contextlib.suppress(OSError, ValueError):  # gone meanwhile
                        with open(entry.path, encoding="utf-8") as fh:
                            snaps.append(json.load(fh))
        for snap in snaps:
            total.add(snap)
            worker = str(snap["worker"])
            by_worker[worker] = by_worker.get(worker, 0) + sum(snap["statuses"].values())
        yield from total.collect()
        family = CounterMetricFamily("jpip_worker_requests",
                                     "HTTP requests answered, by worker process",
                                     labels=["worker"])
        for worker, n in sorted(by_worker.items()):
            family.add_metric([worker], n)
        yield family


def share_stats(stats: RequestStats, directory: str) -> None:
    """Writes this process's RequestStats for the other workers' /metrics (replaced whole:
    a reader never sees half a file)."""
    path = os.path.join(directory, STATS_FILE.format(pid=os.getpid()))
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as fh:
        json.dump(stats.snapshot(), fh)
    os.replace(temporary, path)


class Metrics:
    """The server's metrics. Attribute names are what the rest of the server increments.

    `shared_sessions`: sessions live in a store shared by processes, so the open-session
    gauge is the store's global count (set by the session sweeper), not this process's tally.
    `worker`: this worker's number (its label on the per-worker metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 shared_sessions: bool = False, worker: str = "0") -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.shared_sessions = shared_sessions
        self.worker = worker
        self.stats = RequestStats(worker)
        r.register(self.stats)
        # One process's own sessions (summed over live workers), or the shared store's count
        # (the highest any live worker read last).
        self.sessions = Gauge("jpip_sessions", "JPIP sessions open", registry=r,
                              multiprocess_mode="livemax" if shared_sessions else "livesum")
        self.sessions_created = Counter(
            "jpip_sessions_created", "JPIP sessions created", registry=r)
        self.sessions_expired = Counter(
            "jpip_sessions_expired", "JPIP sessions closed for being idle", registry=r)
        self.sessions_evicted = Counter(
            "jpip_sessions_evicted", "JPIP sessions closed to make room", registry=r)
        self.index_build_seconds = Histogram(
            "jpip_index_build_seconds", "Time to index a file", buckets=INDEX_BUCKETS,
            registry=r)
        self.auth_denials = Counter(
            "jpip_auth_denials", "Requests refused by access control, by reason", ["reason"],
            registry=r)
        for reason in DENIAL_REASONS:
            self.auth_denials.labels(reason=reason)
        self.session_model_resets = Counter(
            "jpip_session_model_resets", "Session cache models reset for exceeding the cap",
            registry=r)
        self.session_store_round_trips = Counter(
            "jpip_session_store_round_trips", "Round trips to a shared session store, by "
            "operation", ["op"], registry=r)
        self.session_store_unavailable = Counter(
            "jpip_session_store_unavailable", "Session store operations that failed because "
            "the store could not be reached (answered 503)", registry=r)
        self.worker_starts = Counter(
            "jpip_worker_starts", "Worker process starts, by worker (more than one: restarted)",
            ["worker"], registry=r)
        self.worker_starts.labels(worker=worker).inc()

    # ----- hooks for the session store and the index cache (thread-safe) -----

    def session_event(self, kind: str) -> None:
        """SessionStore events: created, expired, evicted, closed, model_reset."""
        if kind == "created":
            self.sessions_created.inc()
            if not self.shared_sessions:
                self.sessions.inc()
        elif kind in ("expired", "evicted", "closed"):
            if not self.shared_sessions:
                self.sessions.dec()
            if kind == "expired":
                self.sessions_expired.inc()
            elif kind == "evicted":
                self.sessions_evicted.inc()
        elif kind == "model_reset":
            self.session_model_resets.inc()
        elif kind == "unavailable":
            self.session_store_unavailable.inc()

    def session_count(self, count: int) -> None:
        """The shared store's count of open sessions (from its periodic sweep)."""
        self.sessions.set(count)

    def store_round_trip(self, op: str) -> None:
        self.session_store_round_trips.labels(op=op).inc()

    def index_event(self, kind: str, seconds: float) -> None:
        """IndexCache events: hit, miss (with the wait), build (with the build time). Index
        builds end in worker threads: a plain += is atomic enough under the GIL for a count
        that only grows (a lost increment in a race would be the worst case)."""
        counts = self.stats.index_cache
        if kind in counts:
            counts[kind] += 1
        if kind == "build":
            self.index_build_seconds.observe(seconds)

    def auth_denied(self, reason: str) -> None:
        """A request refused by access control (reason: one of access.DENIAL_REASONS)."""
        self.auth_denials.labels(reason=reason).inc()

    def bytes_saved(self, count: int) -> None:
        """Bytes a client's cache model spared us from sending."""
        if count > 0:
            self.stats.bytes_saved += count

    def response_cache_lookup(self, result: str) -> None:
        """A lookup in the cache of whole responses: "hit" or "miss"."""
        self.stats.response_cache[result] += 1

    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry, or of every worker's values when
        this is one of several workers."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        registry.register(SharedRequestStats(self.stats, directory))
        return generate_latest(registry)

    def share(self) -> None:
        """A worker's periodic write of its RequestStats (nothing to do for a lone server)."""
        directory = multiprocess_dir()
        if directory is not None:
            share_stats(self.stats, directory)

    def headers_sent(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """The response's headers are being sent now (from the app's on_response_prepare
        hook, server.middleware): the time to first byte."""
        info = request.get(INFO_KEY)
        if info is None:
            return
        now = time.perf_counter()
        info.response = response
        info.first_byte = now
        self.stats.first_byte.observe(now - info.start)
