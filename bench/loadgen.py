"""The load generator: asyncio + aiohttp clients, bounded in requests and in seconds.

Keep-alive runs share one ClientSession whose TCPConnector holds `concurrency` connections;
connection-per-request runs use `force_close=True`, so every request opens (and closes) its
own TCP connection. Response bodies are only counted, except in viewer traces, where they are
parsed with jpip.jpp.StreamParser to count data-bin bytes received twice in a session.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from jpip.jpp import EXT_PRECINCT, EXT_TILE, EndOfResponse, StreamParser

from .procs import self_cpu_seconds
from .workloads import Request, Trace

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=120)


@dataclass
class Sample:
    latency: float      # request sent -> last body byte, seconds
    ttfb: float         # request sent -> first body byte
    nbytes: int         # response body bytes
    needed: int         # bytes the window strictly needed (0 for baseline requests)
    status: int         # HTTP status, -1 for a failed request
    eor: int = -1       # EOR reason code at the end of the body, -1 if none
    resent: int = 0     # data-bin bytes this response repeated (viewer traces only)


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0
    client_cpu: float = 0.0
    errors: list[str] = field(default_factory=list)
    sessions: int = 0


def _tail_eor(body_tail: bytes) -> int:
    # An EOR with an empty body is 00 <reason> 00: the last three bytes of a JPP response.
    if len(body_tail) >= 3 and body_tail[-3] == 0 and body_tail[-1] == 0:
        return body_tail[-2]
    return -1


def _connector(concurrency: int, keepalive: bool) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency,
                                force_close=not keepalive, enable_cleanup_closed=False)


async def _get(session: aiohttp.ClientSession, url: str, needed: int,
               parser: StreamParser | None = None) -> tuple[Sample, Any, list]:
    """One GET; returns the sample, the response headers and the parsed messages."""
    t0 = time.perf_counter()
    ttfb = 0.0
    nbytes = 0
    tail = b""
    messages: list = []
    async with session.get(url) as resp:
        async for chunk in resp.content.iter_any():
            if not nbytes:
                ttfb = time.perf_counter() - t0
            nbytes += len(chunk)
            tail = (tail + chunk[-3:])[-3:]
            if parser is not None:
                messages.extend(parser.feed(chunk))
        latency = time.perf_counter() - t0
        if not nbytes:
            ttfb = latency
        return (Sample(latency, ttfb, nbytes, needed, resp.status, _tail_eor(tail)),
                resp.headers, messages)


async def _timed(concurrency: int, keepalive: bool,
                 worker: Callable[[aiohttp.ClientSession, Run], Coroutine[Any, Any, None]]
                 ) -> Run:
    run = Run()
    cpu0 = self_cpu_seconds()
    async with aiohttp.ClientSession(connector=_connector(concurrency, keepalive),
                                     timeout=CLIENT_TIMEOUT, auto_decompress=False) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session, run) for _ in range(concurrency)))
        run.wall = time.perf_counter() - t0
    run.client_cpu = self_cpu_seconds() - cpu0
    return run


async def run_requests(base_url: str, paths: list[tuple[str, int]], *, concurrency: int,
                       keepalive: bool, max_requests: int, max_seconds: float) -> Run:
    """Independent requests (path?query, needed) in order, `concurrency` at a time."""
    next_i = 0
    deadline = time.perf_counter() + max_seconds
    limit = min(max_requests, len(paths))

    async def worker(session: aiohttp.ClientSession, run: Run) -> None:
        nonlocal next_i
        while next_i < limit and time.perf_counter() < deadline:
            path, needed = paths[next_i]
            next_i += 1
            try:
                sample, _, _ = await _get(session, base_url + path, needed)
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                run.errors.append(f"{type(e).__name__}: {e}")
                continue
            run.samples.append(sample)

    return await _timed(concurrency, keepalive, worker)


def _bin_key(msg) -> tuple[int, int, int]:
    cls = msg.bin_class
    if cls in (EXT_PRECINCT, EXT_TILE):  # same data-bins as classes 0 and 4
        cls -= 1
    return cls, msg.csn, msg.bin_id


def _add_range(ranges: list[list[int]], a: int, b: int) -> int:
    """Adds [a, b) to disjoint ranges; returns how many of its bytes were there already."""
    overlap = 0
    merged = [a, b]
    keep = []
    for x, y in ranges:
        overlap += max(0, min(b, y) - max(a, x))
        if y < merged[0] or x > merged[1]:
            keep.append([x, y])
        else:
            merged = [min(x, merged[0]), max(y, merged[1])]
    keep.append(merged)
    ranges[:] = keep
    return overlap


async def run_traces(base_url: str, jpip_path: str, target: str, traces: list[Trace], *,
                     concurrency: int, keepalive: bool, max_requests: int,
                     max_seconds: float) -> Run:
    """Viewer sessions, each trace's steps one after the other; `concurrency` sessions at once.

    New traces start while fewer than `max_requests` requests were made (a started trace runs
    to its end); the time cap stops a trace between two steps (its channel is then closed).
    """
    next_trace = 0
    started = 0
    deadline = time.perf_counter() + max_seconds
    url = base_url + jpip_path + "?"

    async def one(session: aiohttp.ClientSession, run: Run, trace: Trace) -> None:
        nonlocal started
        held: dict[tuple[int, int, int], list[list[int]]] = {}
        cid = None
        run.sessions += 1
        last = len(trace.steps) - 1
        for i, step in enumerate(trace.steps):
            if i and time.perf_counter() >= deadline:
                break
            if cid is None:
                q = f"target={target}&cnew=http&tid=0&{step.query}"
            else:
                q = f"cid={cid}&{step.query}" + (f"&cclose={cid}" if i == last else "")
            started += 1
            parser = StreamParser()
            sample, headers, messages = await _get(session, url + q, step.needed, parser)
            if cid is None:
                cnew = headers.get("JPIP-cnew", "")
                fields = dict(p.split("=", 1) for p in cnew.split(",") if "=" in p)
                cid = fields.get("cid")
                if cid is None:
                    run.errors.append(f"no JPIP-cnew in the answer (status {sample.status})")
                    run.samples.append(sample)
                    return
            for m in messages:
                if isinstance(m, EndOfResponse):
                    sample.eor = int(m.reason)
                elif m.data:
                    ranges = held.setdefault(_bin_key(m), [])
                    sample.resent += _add_range(ranges, m.offset, m.offset + len(m.data))
            run.samples.append(sample)
            if i == last:
                return
        if cid is not None:  # cut by the time cap: do not leave the session open
            async with session.get(url + f"cclose={cid}") as resp:
                await resp.read()

    async def worker(session: aiohttp.ClientSession, run: Run) -> None:
        nonlocal next_trace
        while (next_trace < len(traces) and started < max_requests
               and time.perf_counter() < deadline):
            trace = traces[next_trace]
            next_trace += 1
            try:
                await one(session, run, trace)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
                run.errors.append(f"{type(e).__name__}: {e}")

    return await _timed(concurrency, keepalive, worker)


def baseline_paths(samples: list[Sample]) -> list[tuple[str, int]]:
    """The baseline's requests: one per sample of ours, asking for as many bytes."""
    return [(f"/bytes?n={s.nbytes}", 0) for s in samples]


def stateless_paths(jpip_path: str, target: str, reqs: list[Request]) -> list[tuple[str, int]]:
    return [(f"{jpip_path}?target={target}&{r.query}", r.needed) for r in reqs]
