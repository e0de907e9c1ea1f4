"""Soak: 64 clients at once against a real server process, for a set time.

The clients (asyncio, in this process, each on its own keep-alive connection over raw sockets):
sessions panning and zooming (some with `len=` limits, some opening a second channel), fresh
stateless windows, the same thumbnails again and again, slow readers (a few KiB/s through a
small receive buffer), clients that vanish mid-response (they close the socket, then go on in
their session stating what they really hold, as client.api.JPIPClient does), and cclose storms
(sessions opened in bursts and closed all at once). The server runs with a small
--max-sessions, so sessions are evicted (a client whose session went away gets 503 and starts
a new one) and openings are refused while every session is busy.

Checked: no 5xx but 503, every response not cut by its client ends with an EOR, nothing a
session client received was inconsistent with what it held, nothing logged at ERROR, the
server alive; at the end every session's model (read from the server through the test-only
hook of soak_server.py) equals what its client holds, bin for bin; RSS and open file
descriptors flat: at the start (every target opened once, no client yet) and at the end (every
client gone). Reported: requests, errors by kind,
p99 latency per tenth of the run, RSS and fds at the start and the end.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from client.api import MAX_GET_URL
from client.bincache import BinCache, StreamError
from jpip.jpp import StreamParser
from tests.conftest import CORPUS, INTEROP, PROJECT_ROOT
from tests.reliability.harness import process_usage
from tests.server_process import free_port, stop_process, wait_healthy

CLIENTS = {"session": 24, "fresh": 12, "thumbnail": 10, "slow": 8, "vanish": 6, "storm": 4}
MAX_SESSIONS = 40
SLOW_RATE = 4096        # bytes per second a slow reader takes
SLOW_RCVBUF = 4096      # its socket's receive buffer (so the server feels it)
STORM_SIZE = 6
RSS_SLACK = 48 << 20          # growth from the start (sessions, models, caches filling)
RSS_SETTLED_SLACK = 12 << 20  # growth from a quarter of the run to the end
FD_SLACK = 4
REQUEST_SECONDS = 120.0


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Stream:
    csn: int
    width: int
    height: int
    levels: int


@dataclass(frozen=True)
class Target:
    name: str
    streams: tuple[Stream, ...]


def soak_root(root: Path) -> list[Target]:
    """The images served: the interoperability images, a tiled file, a JPX of three
    codestreams, a DICOM object of three frames."""
    from tests.data.dicom import build_dicom, codestream_of

    for path in (INTEROP / "rgb4096.jp2", INTEROP / "med2048.jp2", CORPUS / "p1_05.j2k",
                 CORPUS / "heliov.jpx", CORPUS / "file1.jp2"):
        shutil.copy(path, root / path.name)
    frames = [codestream_of((CORPUS / n).read_bytes())
              for n in ("CT1.j2k", "693_J2KR.j2k", "TOSHIBA_J2K_SIZ1_PixRep0.j2k")]
    build_dicom(root / "ct3.dcm", [[f[:-1] if len(f) % 2 else f] for f in frames])
    out = []
    for path in sorted(root.iterdir()):
        with _open(path) as src:
            out.append(Target(path.name, tuple(
                Stream(i + src.first_codestream, ix.siz.width, ix.siz.height,
                       min(ix.max_discard, 5))
                for i, ix in enumerate(src.codestreams))))
    return out


def _open(path: Path):
    from cache.index_cache import open_source

    src = open_source(path)
    src.index_codestreams(src.unindexed())
    return src


def random_window(rng: random.Random, stream: Stream, *, small: bool = False) -> dict[str, str]:
    d = rng.randrange(0, stream.levels + 1)
    s = 1 << d
    fw, fh = -(-stream.width // s), -(-stream.height // s)
    top = 128 if small else 512
    w, h = min(fw, rng.randrange(32, top + 1)), min(fh, rng.randrange(32, top + 1))
    x, y = rng.randrange(0, fw - w + 1), rng.randrange(0, fh - h + 1)
    fields = {"fsiz": f"{fw},{fh}", "roff": f"{x},{y}", "rsiz": f"{w},{h}"}
    if stream.csn:
        fields["stream"] = str(stream.csn)
    return fields


# --------------------------------------------------------------------------- HTTP
class Vanished(Exception):
    """The client closed the connection mid-response on purpose."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    ttfb: float
    seconds: float


class Connection:
    """One keep-alive HTTP/1.1 connection, reading at a set rate if asked."""

    def __init__(self, port: int, *, rcvbuf: int | None = None) -> None:
        self.port = port
        self.rcvbuf = rcvbuf
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock,
                                                                 limit=1 << 20)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self.reader = self.writer = None

    async def get(self, query: str, *, path: str = "/jpip", rate: int | None = None,
                  vanish_after: int | None = None) -> Answer:
        if self.writer is None:
            await self._open()
        assert self.reader is not None and self.writer is not None
        t0 = time.perf_counter()
        if len(query) <= MAX_GET_URL:  # longer: a POST form body, as client.api sends it
            self.writer.write(f"GET {path}?{query} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
        else:  # a long restated model: as a form body, as client.api and the viewer do
            self.writer.write(f"POST {path} HTTP/1.1\r\nHost: soak\r\nContent-Type: "
                              "application/x-www-form-urlencoded\r\nContent-Length: "
                              f"{len(query)}\r\n\r\n{query}".encode())
        try:
            return await asyncio.wait_for(self._read(t0, rate, vanish_after), REQUEST_SECONDS)
        except BaseException:
            await self.close()  # whatever was left of the response cannot be read any more
            raise

    async def _read(self, t0: float, rate: int | None, vanish_after: int | None) -> Answer:
        reader = self.reader
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("closed before answering")
        ttfb = time.perf_counter() - t0
        status = int(line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while (h := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = bytearray()
        piece = 1024 if rate else 1 << 16

        async def take(n: int) -> None:
            while n > 0:
                data = await reader.readexactly(min(n, piece))
                body.extend(data)
                n -= len(data)
                if vanish_after is not None and len(body) >= vanish_after:
                    raise Vanished
                if rate:
                    await asyncio.sleep(len(data) / rate)

        if headers.get("transfer-encoding") == "chunked":
            while (size := int((await reader.readline()).split(b";")[0] or b"0", 16)) > 0:
                await take(size)
                await reader.readexactly(2)
            await reader.readline()
        else:
            await take(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Answer(status, headers, bytes(body), ttfb, time.perf_counter() - t0)


# --------------------------------------------------------------------------- the run
@dataclass
class Stats:
    t0: float = field(default_factory=time.perf_counter)
    requests: Counter = field(default_factory=Counter)     # by client kind
    statuses: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)       # vanished, evicted, resync, ...
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    failures: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(text)

    def answered(self, kind: str, answer: Answer, t_start: float, timed: bool = True) -> None:
        self.requests[kind] += 1
        self.statuses[answer.status] += 1
        if answer.status >= 500 and answer.status != 503:
            self.fail(f"{kind}: status {answer.status}: {answer.body[:200]!r}")
        if timed:
            self.latencies.append((t_start - self.t0, answer.seconds))


def _parse(answer: Answer, cache: BinCache, stats: Stats, what: str) -> bool:
    """Feeds a complete 200/202 answer to `cache`; False (and a failure) if it is broken."""
    if answer.headers.get("content-type") != "image/jpp-stream":
        stats.fail(f"{what}: {answer.status} with Content-Type "
                   f"{answer.headers.get('content-type')!r}")
        return False
    parser = StreamParser()
    try:
        for item in parser.feed(answer.body):
            cache.add(item)
        parser.close()
    except (StreamError, ValueError) as e:
        stats.fail(f"{what}: {type(e).__name__}: {e}")
        return False
    if parser.end is None:
        stats.fail(f"{what}: the response has no EOR")
        return False
    return True


class SessionClient:
    """A viewer in a session: windows on its channel, a new session when its own went away."""

    def __init__(self, name: str, port: int, targets: list[Target], rng: random.Random,
                 stats: Stats, *, slow: bool = False, vanish: bool = False) -> None:
        self.name, self.rng, self.stats = name, rng, stats
        self.kind = "slow" if slow else "vanish" if vanish else "session"
        self.slow, self.vanish = slow, vanish
        self.conn = Connection(port, rcvbuf=SLOW_RCVBUF if slow else None)
        self.port = port
        self.targets = targets
        self.target = rng.choice(targets)
        self.cache = BinCache()
        self.cid: str | None = None
        self.resync: set[int] = set()  # codestreams whose holdings must be stated again

    def _query(self) -> tuple[str, Stream]:
        stream = self.rng.choice(self.target.streams)
        fields = random_window(self.rng, stream, small=self.slow)
        if self.slow:
            # A few seconds at SLOW_RATE each: the window comes in several responses.
            fields["len"] = str(self.rng.choice([4000, 8000, 16000]))
        elif self.rng.random() < 0.15:
            fields["len"] = str(self.rng.choice([1, 500, 4000, 30000]))
        q = "&".join(f"{k}={v}" for k, v in fields.items()) + "&type=jpp-stream"
        if self.cid is None:
            return f"target={quote(self.target.name)}&cnew=http&tid=0&{q}", stream
        q = f"cid={self.cid}&{q}"
        if self.resync:
            q += "&model=" + quote(self.restatement(), safe="[],:-*")
        return q, stream

    def restatement(self) -> str:
        """model=: forget every bin of the codestreams a cut response was for, then name what
        is held of them (client.api.JPIPClient resynchronises the same way)."""
        parts = []
        for cs in sorted(self.resync):
            held = self.cache.model_string(cs)
            parts.append(f"[{cs}],-Hm,-H*,-P*" + ("," + held.split(",", 1)[1] if held else ""))
        return ",".join(parts)

    async def step(self) -> None:
        query, stream = self._query()
        vanish_after = (self.rng.randrange(100, 40_000)
                        if self.vanish and self.rng.random() < 0.3 else None)
        t = time.perf_counter()
        try:
            answer = await self.conn.get(query, rate=SLOW_RATE if self.slow else None,
                                         vanish_after=vanish_after)
        except Vanished:
            self.stats.requests[self.kind] += 1
            self.stats.events["vanished mid-response"] += 1
            # Whole messages received are kept (the parser takes only those); the server's
            # model may claim more: the next request states what is held.
            if self.cid is not None:
                self.resync.add(stream.csn)
            return
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as e:
            self.stats.requests[self.kind] += 1
            self.stats.fail(f"{self.name}: {type(e).__name__} {e} on {query[:200]}")
            return
        self.stats.answered(self.kind, answer, t, timed=not self.slow)
        if answer.status == 503:
            # The session was evicted or ended (or no room for a new one): start again.
            self.stats.events["503 " + ("open refused" if self.cid is None
                                        else "session gone")] += 1
            self.cid, self.cache = None, BinCache()
            self.resync.clear()
            await asyncio.sleep(min(1.0, float(answer.headers.get("retry-after", 1))))
            return
        if answer.status not in (200, 202):
            self.stats.fail(f"{self.name}: {answer.status} {answer.body[:200]!r} for {query}")
            return
        before = self.cache.duplicate_bytes
        if not _parse(answer, self.cache, self.stats, f"{self.name} {query[:200]}"):
            return
        if self.cache.duplicate_bytes > before:
            self.stats.fail(f"{self.name}: {self.cache.duplicate_bytes - before} bytes "
                            "received twice in a session")
        if self.resync:
            self.stats.events["model restated after a cut"] += 1
            self.resync.clear()
        cnew = answer.headers.get("jpip-cnew")
        if cnew:
            self.cid = dict(kv.split("=", 1) for kv in cnew.split(","))["cid"]
        if self.cid and not self.slow and self.rng.random() < 0.03:
            await self._second_channel()

    async def _second_channel(self) -> None:
        """A second channel of the session: one window on it, then it is closed."""
        conn = Connection(self.port)
        try:
            stream = self.rng.choice(self.target.streams)
            q = "&".join(f"{k}={v}" for k, v in random_window(self.rng, stream).items())
            t = time.perf_counter()
            a = await conn.get(f"cid={self.cid}&cnew=http&{q}&type=jpp-stream")
            self.stats.answered(self.kind, a, t)
            if a.status != 200 or not _parse(a, self.cache, self.stats, f"{self.name} cnew"):
                return
            cid2 = dict(kv.split("=", 1) for kv in a.headers["jpip-cnew"].split(","))["cid"]
            t = time.perf_counter()
            a = await conn.get(f"cid={cid2}&cclose={cid2}&len=0&type=jpp-stream")
            self.stats.answered(self.kind, a, t)
            self.stats.events["second channel opened and closed"] += 1
        finally:
            await conn.close()


async def stateless_client(name: str, port: int, targets: list[Target], rng: random.Random,
                           stats: Stats, thumbnails: bool, until: float) -> None:
    conn = Connection(port)
    kind = "thumbnail" if thumbnails else "fresh"
    while time.perf_counter() < until:
        target = rng.choice(targets)
        stream = rng.choice(target.streams)
        if thumbnails:
            q = f"fsiz=256,256&stream={stream.csn}" if stream.csn else "fsiz=256,256"
        else:
            q = "&".join(f"{k}={v}" for k, v in random_window(rng, stream).items())
        query = f"target={quote(target.name)}&{q}&type=jpp-stream"
        t = time.perf_counter()
        try:
            answer = await conn.get(query)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as e:
            stats.requests[kind] += 1
            stats.fail(f"{name}: {type(e).__name__} {e} on {query[:200]}")
            continue
        stats.answered(kind, answer, t)
        if answer.status == 200:
            _parse(answer, BinCache(), stats, f"{name} {query[:200]}")
        else:
            stats.fail(f"{name}: {answer.status} {answer.body[:200]!r} for {query}")
    await conn.close()


async def storm_client(name: str, port: int, targets: list[Target], rng: random.Random,
                       stats: Stats, until: float) -> None:
    """Opens STORM_SIZE sessions at once (a small window each), then closes them all at
    once: some by their own cid, some by cclose=* on the channel."""
    while time.perf_counter() < until:
        conns = [Connection(port) for _ in range(STORM_SIZE)]

        async def open_one(conn: Connection) -> str | None:
            target = rng.choice(targets)
            t = time.perf_counter()
            a = await conn.get(f"target={quote(target.name)}&cnew=http&fsiz=64,64&len=2000"
                               "&type=jpp-stream")
            stats.answered("storm", a, t)
            if a.status == 503:
                stats.events["503 open refused"] += 1
                return None
            if a.status != 200 or not _parse(a, BinCache(), stats, f"{name} open"):
                return None
            return dict(kv.split("=", 1) for kv in a.headers["jpip-cnew"].split(","))["cid"]

        async def close_one(conn: Connection, cid: str) -> None:
            t = time.perf_counter()
            which = "*" if rng.random() < 0.5 else cid
            a = await conn.get(f"cid={cid}&cclose={which}&len=0&type=jpp-stream")
            stats.answered("storm", a, t)
            stats.events["cclose in a storm"] += 1

        try:
            cids = await asyncio.gather(*(open_one(c) for c in conns))
            await asyncio.gather(*(close_one(c, cid) for c, cid in zip(conns, cids, strict=True)
                                   if cid is not None))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as e:
            stats.fail(f"{name}: {type(e).__name__} {e}")
        finally:
            for c in conns:
                await c.close()
        await asyncio.sleep(rng.uniform(0.2, 1.0))


# --------------------------------------------------------------------------- checks
def compare_models(dump: dict, clients: list[SessionClient]) -> tuple[Counter, list[str]]:
    """Every session a client still holds: the server's model equals the client's cache."""
    by_cid = {cid: s for s in dump["sessions"] for cid in s["cids"]}
    counts: Counter = Counter()
    problems: list[str] = []
    for client in clients:
        if client.cid is None:
            continue
        session = by_cid.get(client.cid)
        if session is None:
            counts["evicted since its last request"] += 1
            continue
        mine, theirs = held_bins(client.cache), model_bins(session)
        if mine == theirs:
            counts["model equals what the client holds"] += 1
        else:
            diff = sorted(set(mine.items()) ^ set(theirs.items()))[:6]
            problems.append(f"{client.name} (cid {client.cid}, {client.target.name}): the "
                            f"server's model differs from the client's cache: {diff}")
            counts["model differs"] += 1
    return counts, problems


Bins = dict[tuple[str, int, int], int]  # (kind, CSn, bin id) -> bytes held


def model_bins(session: dict) -> Bins:
    """The bins a session's model says its client holds (a soak_server.session_record)."""
    out: Bins = {}
    for cs, st in session["streams"].items():
        if st["main"]:
            out[("Hm", int(cs), 0)] = st["main"]
        out.update({("H", int(cs), int(t)): n for t, n in st["tiles"].items()})
        out.update({("P", int(cs), int(i)): n for i, n in st["precincts"].items()})
    out.update({("M", 0, int(i)): n for i, n in session["metadata"].items()})
    return out


def held_bins(cache: BinCache) -> Bins:
    """The bins a client holds: the prefix it has of each."""
    out: Bins = {}
    for cs, s in cache.streams.items():
        if s.main_header.data:
            out[("Hm", cs, 0)] = len(s.main_header.data)
        for t, b in s.tile_headers.items():
            out[("H", cs, t)] = len(b.data)
        for i, b in s.precincts.items():
            out[("P", cs, i)] = len(b.data)
    for i, b in cache.metadata.items():
        out[("M", 0, i)] = len(b.data)
    return out


# --------------------------------------------------------------------------- driver
@dataclass
class SoakReport:
    seconds: float
    stats: Stats
    usage: list[tuple[float, int, int]]   # (when, RSS, fds) during the run
    usage_start: tuple[int, int]          # every target opened once, no client yet
    usage_end: tuple[int, int]            # every client gone
    models: Counter
    model_problems: list[str]
    server_errors: list[str]
    alive: bool

    def p99_by_tenth(self) -> list[float]:
        out = []
        for k in range(10):
            lo, hi = self.seconds * k / 10, self.seconds * (k + 1) / 10
            xs = [s for when, s in self.stats.latencies if lo <= when < hi]
            out.append(float(np.percentile(xs, 99)) if xs else float("nan"))
        return out

    def text(self) -> str:
        s = self.stats
        (r0, f0), (r1, f1) = self.usage_start, self.usage_end
        p99 = " ".join(f"{v * 1000:.0f}" for v in self.p99_by_tenth())
        rss = " ".join(f"{r / 2**20:.0f}" for _, r, _ in self.usage[::max(1, len(self.usage)
                                                                         // 10)])
        return (f"soak {self.seconds:.0f} s, {sum(s.requests.values())} requests "
                f"({dict(s.requests)}); statuses {dict(sorted(s.statuses.items()))}; events "
                f"{dict(s.events)}; p99 latency per tenth of the run (ms): {p99}; server RSS "
                f"{r0 / 2**20:.1f} -> {r1 / 2**20:.1f} MiB, open fds {f0} -> {f1}; sessions "
                f"checked: {dict(self.models)}; {len(s.failures)} failures, "
                f"{len(self.model_problems)} model mismatches, {len(self.server_errors)} "
                f"errors logged; server RSS during the run (MiB): {rss}; server "
                f"{'alive' if self.alive else 'DEAD'}")

    def check(self) -> None:
        assert self.alive, self.text()
        assert not self.stats.failures, "\n".join(self.stats.failures[:20])
        assert not self.model_problems, "\n".join(self.model_problems[:10])
        assert not self.server_errors, "\n".join(self.server_errors[:20])
        assert self.models["model equals what the client holds"] > 0, self.text()
        assert self.usage_end[1] <= self.usage_start[1] + FD_SLACK, self.text()
        # Sessions, models and caches fill in the first part of the run; from then on RSS
        # stays flat (a leak grows with the requests served).
        settled = next((r for when, r, _ in self.usage if when >= self.seconds / 4),
                       self.usage_start[0])
        assert self.usage_end[0] <= settled + RSS_SETTLED_SLACK, self.text()
        assert self.usage_end[0] <= self.usage_start[0] + RSS_SLACK, self.text()


async def soak(seconds: float, work: Path, *, seed: int = 64) -> SoakReport:
    root = work / "root"
    root.mkdir(parents=True, exist_ok=True)
    targets = soak_root(root)
    dump = work / "models.json"
    port = free_port()
    log = work / "server.log"
    env = {**os.environ, "SOAK_DUMP": str(dump), "JPIP_INDEX_CACHE_DIR": str(work / "ix")}
    cmd = [sys.executable, "-m", "tests.reliability.soak_server", "--root", str(root),
           "--port", str(port), "--max-sessions", str(MAX_SESSIONS),
           "--response-cache-bytes", str(4 << 20), "--log-level", "WARNING"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=fh)
    try:
        wait_healthy(port, proc, log)
        return await _drive(proc, port, targets, seconds, seed, dump, log)
    finally:
        stop_process(proc, timeout=15)


async def _drive(proc: subprocess.Popen, port: int, targets: list[Target], seconds: float,
                 seed: int, dump: Path, log: Path) -> SoakReport:
    rng = random.Random(seed)
    # Every target opened once first: the start is a server with its indexes loaded.
    warm = Connection(port)
    for target in targets:
        for stream in target.streams:
            q = f"stream={stream.csn}&" if stream.csn else ""
            await warm.get(f"target={quote(target.name)}&{q}fsiz=64,64&type=jpp-stream")
    await warm.close()
    await asyncio.sleep(0.5)
    start = process_usage(proc.pid)
    stats = Stats()
    until = stats.t0 + seconds
    usage: list[tuple[float, int, int]] = []

    async def sample() -> None:
        while time.perf_counter() < until:
            usage.append((time.perf_counter() - stats.t0, *process_usage(proc.pid)))
            await asyncio.sleep(max(0.5, seconds / 100))

    session_clients = []
    tasks = [sample()]
    n = 0
    for kind, count in CLIENTS.items():
        for _ in range(count):
            n += 1
            name = f"{kind}-{n}"
            sub = random.Random(rng.random())
            if kind in ("session", "slow", "vanish"):
                client = SessionClient(name, port, targets, sub, stats,
                                       slow=kind == "slow", vanish=kind == "vanish")
                session_clients.append(client)
                tasks.append(_loop(client, until))
            elif kind in ("fresh", "thumbnail"):
                tasks.append(stateless_client(name, port, targets, sub, stats,
                                              kind == "thumbnail", until))
            else:
                tasks.append(storm_client(name, port, targets, sub, stats, until))
    await asyncio.gather(*tasks)
    for client in session_clients:
        await client.conn.close()
    elapsed = time.perf_counter() - stats.t0
    await asyncio.sleep(1.0)  # let the server see every connection closed
    alive = proc.poll() is None
    end = process_usage(proc.pid) if alive else (0, 0)
    models, problems = Counter(), []
    if alive:
        proc.send_signal(signal.SIGUSR1)
        for _ in range(200):
            if dump.exists():
                break
            await asyncio.sleep(0.05)
        models, problems = compare_models(json.loads(dump.read_text()), session_clients)
    errors = [line for line in log.read_text(errors="replace").splitlines()
              if " ERROR " in line or "Traceback" in line]
    return SoakReport(elapsed, stats, usage, start, end, models, problems, errors, alive)


async def _loop(client: SessionClient, until: float) -> None:
    while time.perf_counter() < until:
        await client.step()
        await asyncio.sleep(client.rng.uniform(0.0, 0.05))
    if client.cid is not None and client.resync:
        # The last response was cut: state what is held, so the session's model can be
        # checked against it (len=0: nothing is sent, the statement is recorded).
        q = (f"cid={client.cid}&fsiz=1,1&len=0&type=jpp-stream&model="
             + quote(client.restatement(), safe="[],:-*"))
        t = time.perf_counter()
        a = await client.conn.get(q)
        client.stats.answered(client.kind, a, t)
        if a.status == 200:
            client.resync.clear()
        else:
            client.cid = None  # evicted meanwhile: nothing to compare


def run(seconds: float, *, seed: int = 64) -> SoakReport:
    with tempfile.TemporaryDirectory(prefix="jpip-soak-") as tmp:
        return asyncio.run(soak(seconds, Path(tmp), seed=seed))
