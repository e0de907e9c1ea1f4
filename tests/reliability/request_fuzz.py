"""Generated requests against a real `jpip-server` process, over raw sockets.

Each probe is one TCP connection: one request, or several written at once (pipelining), or raw
bytes that are no request at all, or a request cut short by a client that hangs up. Requests
mix valid and invalid JPIP fields (every field of the grammar, values in and out of range,
hostile targets, long model= lists, channel ids the server issued and made-up ones), encodings
(percent escapes, '+', invalid escapes, raw non-ASCII bytes), methods, HTTP/1.0 and 1.1, odd and
oversized headers, and POST bodies (form fields, wrong or huge lengths, chunked).

What must hold (`check`): no 500 (5xx only as 501 for a feature not implemented, 503 for no
room or an unknown channel, 505 for an HTTP version other than 1.x), no traceback in any body,
every complete request answered, the server still alive, nothing it logged at ERROR, and its
memory (RSS) and open file descriptors flat between the end of a warm-up and the end of the run.

Pipelined requests are all of good HTTP syntax: after a request its parser refuses, aiohttp
answers 400 and closes the connection at once, and the answers still being made for the
requests before it are never sent (an aiohttp behaviour, seen here: not something to check).
"""
from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tests.reliability.harness import process_usage

ALLOWED_5XX = (501, 503, 505)
PROBE_SECONDS = 30.0  # a probe not answered within this is a hang
# "Flat": RSS may grow by at most this much after the warm-up (allocator noise, caches that
# were not yet full), file descriptors not at all (beyond a few sockets still closing).
RSS_SLACK = 12 << 20
FD_SLACK = 4
STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3})")  # aiohttp echoes the version asked
TRACEBACK = re.compile(rb"Traceback \(most recent call last\)|File \"/[^\"]+\.py\", line \d+")


@dataclass
class Request:
    method: str
    head: bool          # no body in the answer (HEAD)
    complete: bool      # a whole request the server must answer
    well_formed: bool = True  # HTTP syntax the parser accepts (any JPIP fields)


@dataclass
class Probe:
    """One connection: what is written, and the requests in it (in order)."""

    kind: str
    payload: bytes
    requests: list[Request] = field(default_factory=list)
    hang_up: bool = False  # close right after writing: a client that vanishes


# --------------------------------------------------------------------------- generation
class Generator:
    """Seeded: the same seed makes the same probes (a failure names its seed and number)."""

    def __init__(self, seed: int, targets: list[str], dicom_targets: list[str]) -> None:
        self.rng = random.Random(seed)
        self.targets = targets
        self.dicom = dicom_targets
        self.cids: list[str] = []   # channel ids the server gave out (JPIP-cnew)
        self.tids: list[str] = []

    # --- values ---------------------------------------------------------------------------
    def _int(self) -> str:
        r = self.rng
        return str(r.choice([0, 1, 2, 3, 7, 16, 64, 128, 255, 256, 511, 640, 1023, 4096,
                             65535, 2**31 - 1, 2**31, 2**32, 2**63, 10**30, -1, -(2**31)]
                            + [r.randrange(0, 5000) for _ in range(4)]))

    def _pair(self, suffix: bool = False) -> str:
        r = self.rng
        k = r.random()
        if k < 0.7:
            v = f"{r.randrange(1, 3000)},{r.randrange(1, 3000)}"
        elif k < 0.85:
            v = f"{self._int()},{self._int()}"
        else:
            v = r.choice(["", ",", "1", "1,", ",1", "1,2,3", "a,b", "1.5,2", " 1,2", "1, 2",
                          "0x10,1", "１,２", "1;2"])
        if suffix and r.random() < 0.3:
            v += "," + r.choice(["round-up", "closest", "round-down", "bogus", ""])
        return v

    def _target(self) -> str:
        r = self.rng
        k = r.random()
        if k < 0.75:
            return r.choice(self.targets + self.dicom)
        return r.choice([
            "../etc/passwd", "..%2f..%2fetc%2fpasswd", "/etc/passwd", "a\\b.jp2", "%00.jp2",
            "x" * r.randrange(200, 5000) + ".jp2", "sub/", ".", "", "nothere.jp2", "MANIFEST.md",
            "p0_01.j2k/../p0_01.j2k", "./p0_01.j2k", "P0_01.J2K", "p0_01.j2k%00", "\u00e9.jp2",
            "link_out.jp2", "%2e%2e/%2e%2e/etc/passwd", "....//....//etc/passwd",
        ])

    def _model(self) -> str:
        r = self.rng
        items = ["Hm", "H0", "H*", "P0", "P1:20", "P0-5", "P*", "M0", "M*", "*", "t0c0r1p2",
                 "t0c0r0p0:L1", "[0]", "[0-1]", "[1]", "-Hm", "-P*", "-H0", "P99999999999",
                 "Pz", "H-1", "[", "]", ":", "P1:", "t*c*r*p*", "0", "P0:L5"]
        n = r.choice([1, 2, 5, 20]) if r.random() < 0.95 else r.randrange(500, 3000)
        return ",".join(r.choice(items) for _ in range(n))

    def _fields(self) -> list[tuple[str, str]]:
        r = self.rng
        out: list[tuple[str, str]] = []
        if r.random() < 0.85:
            out.append(("target", self._target()))
        choices = {
            "fsiz": lambda: self._pair(suffix=True), "roff": self._pair, "rsiz": self._pair,
            "comps": lambda: r.choice(["0", "0-2", "1,3", "5-", "-1", "0-99999999", "a", "",
                                       "0,0,0", "2-1"]),
            "layers": self._int, "len": lambda: r.choice(["0", "1", "100", "2000", "65536",
                                                          self._int(), "x"]),
            "stream": lambda: r.choice(["0", "1", "2", "1-2", "0-100:2", "-1", "x", "0-0",
                                        "3-1", self._int()]),
            "context": lambda: r.choice(["jpxl<0-1>", "jpxl<0>", "jpxl<", "mj2t<1>", "x"]),
            "metareq": lambda: r.choice(["[*]", "!!", "[ftyp]R", "[jp2h/colr]", "[*]!!", "[",
                                         "[*]/0", "[xml_]2"]),
            "model": self._model, "need": self._model,
            "cnew": lambda: r.choice(["http", "http-tcp", "http,http-tcp", "udp", ""]),
            "cid": lambda: (r.choice(self.cids) if self.cids and r.random() < 0.7
                            else r.choice(["abc", "0" * 32, "x" * 300, "", "a.b", "%20"])),
            "cclose": lambda: (r.choice(self.cids) if self.cids and r.random() < 0.5
                               else r.choice(["*", "abc", "", "*,*"])),
            "qid": lambda: r.choice(["0", "1", "2", "-1", "99999999999", "x"]),
            "tid": lambda: (r.choice(self.tids) if self.tids and r.random() < 0.5
                            else r.choice(["0", "abc", "", "x" * 200])),
            "type": lambda: r.choice(["jpp-stream", "jpt-stream", "image/jpp-stream",
                                      "jpp-stream;ptype=ext", "jpp-stream,jpt-stream", "png", ""]),
            "pref": lambda: r.choice(["fvsc", "fvsc/r", "pmax", "x/r", "", "fullwindow"]),
            "handled": lambda: r.choice(["", "1", "x"]),
            "quality": lambda: r.choice(["0", "50", "100", "101", "-1", "x"]),
            "wait": lambda: r.choice(["yes", "no", "maybe"]),
            "align": lambda: r.choice(["yes", "no", "x"]),
            "srate": lambda: r.choice(["1", "0.5", "x"]),
            "drate": lambda: r.choice(["1", "-1"]),
            "roi": lambda: r.choice(["dynamic", "x", ""]),
            "mset": lambda: r.choice(["1", "0-3", "x"]),
            "cap": lambda: r.choice(["tp=1", "x"]), "csf": lambda: r.choice(["1", "x"]),
            "tpmodel": lambda: r.choice(["0.0", "*.*", "x"]), "tpneed": lambda: "0.0",
            "upload": lambda: "jpp-stream", "subtarget": lambda: r.choice(["0-100", "10-", "x"]),
            "bogusfield": lambda: "1", "FSIZ": lambda: "1,1",
        }
        names = list(choices)
        for name in r.sample(names, r.choice([0, 1, 2, 3, 4, 6, 10])):
            out.append((name, choices[name]()))
        if r.random() < 0.05 and out:
            out.append(r.choice(out))  # a duplicated field
        return out

    def _encode(self, fields: list[tuple[str, str]]) -> bytes:
        r = self.rng
        parts = []
        for name, value in fields:
            k = r.random()
            if k < 0.6:
                v = quote(value, safe=",:[]-*/<>!;")
            elif k < 0.75:
                v = quote(value, safe="")  # everything escaped
            elif k < 0.85:
                v = quote(value, safe=",:[]-*/<>!;").replace("%20", "+")
            elif k < 0.92:
                v = value  # raw: spaces, non-ASCII, control characters as they are
            else:
                v = quote(value) + r.choice(["%", "%G1", "%e9", "%ff%fe", "%2", "%%"])
            parts.append(f"{name}={v}" if r.random() > 0.02 else name)
        sep = "&" if r.random() > 0.03 else r.choice([";", "&&", "&=&"])
        return sep.join(parts).encode("utf-8", "surrogateescape")

    # --- requests -------------------------------------------------------------------------
    def _request(self, last: bool) -> tuple[bytes, Request]:
        r = self.rng
        method = r.choices(["GET", "HEAD", "POST", "OPTIONS", "PUT", "DELETE", "PATCH",
                            "get", "FOO"], [70, 5, 12, 3, 2, 2, 2, 2, 2])[0]
        version = r.choices(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTX/1.1"],
                            [78, 18, 1, 2, 1])[0]
        path = r.choices(["/jpip", "/", "/p0_01.j2k", "/basn6a08.jp2", "/viewer", "/api/info",
                          "/api/targets", "/dicom-json", "/healthz", "/metrics", "/nothere",
                          "/%2e%2e/etc/passwd", "//jpip", "/jpip/", "*"],
                         [50, 10, 8, 4, 3, 3, 2, 3, 2, 1, 2, 2, 1, 1, 1])[0]
        query = self._encode(self._fields())
        body = b""
        headers = ["Host: 127.0.0.1", f"User-Agent: fuzz/{r.randrange(10)}"]
        if method == "POST" and r.random() < 0.7:
            body, query = query, (b"" if r.random() < 0.8 else self._encode(self._fields()))
            headers.append("Content-Type: application/x-www-form-urlencoded")
        target = path.encode() + (b"?" + query if query and path != "*" else b"")
        if r.random() < 0.01:
            target = b"/jpip?" + b"a" * r.randrange(70_000, 140_000)  # past --max-field-size
        keep = not last or r.random() < 0.2
        if version == "HTTP/1.0":
            headers.append("Connection: keep-alive" if keep else "Connection: close")
        elif not keep:
            headers.append("Connection: close")
        k = r.random()
        complete = True
        if k < 0.02:
            headers.append("X-Long: " + "v" * r.randrange(70_000, 100_000))
        elif k < 0.04:
            headers.append(r.choice(["NoColonHere", "Bad Name: 1", "X-Nul: a\x00b",
                                     "X-Cr: a\rb", ": empty-name", "Content-Length: -5",
                                     "Content-Length: 5\r\nContent-Length: 6"]))
        elif k < 0.05:
            headers += [f"X-H{i}: {i}" for i in range(r.randrange(100, 300))]
        elif k < 0.06:
            headers.append("Transfer-Encoding: chunked")
            body = r.choice([b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\nbad\r\n\r\n",
                             b"3\r\nfsi\r\n0\r\n\r\n"])
        elif k < 0.07 and method == "POST":
            headers.append(f"Content-Length: {r.choice([2 << 20, 10**12])}")  # > max body
            complete = False  # the server answers 413 without waiting for the body
        if body and not any(h.startswith(("Content-Length", "Transfer-Encoding"))
                            for h in headers):
            wrong = r.random() < 0.03
            headers.append(f"Content-Length: {len(body) + (r.choice([-3, 7]) if wrong else 0)}")
            complete = complete and not wrong
        elif method == "POST" and not any(h.startswith("Content-Length") for h in headers):
            headers.append("Content-Length: 0")
        head = method.encode() + b" " + target + b" " + version.encode() + b"\r\n"
        raw = head + "".join(h + "\r\n" for h in headers).encode("utf-8", "surrogateescape")
        raw += b"\r\n" + body
        well_formed = (method in ("GET", "HEAD", "POST", "OPTIONS", "PUT", "DELETE", "PATCH")
                       and version in ("HTTP/1.1", "HTTP/1.0") and k >= 0.07 and path != "*"
                       and len(target) < 60_000 and all(0x21 <= b < 0x7F for b in target))
        return raw, Request(method, method == "HEAD", complete, well_formed)

    def probe(self) -> Probe:
        r = self.rng
        k = r.random()
        if k < 0.08:
            return self._garbage()
        if k < 0.11:
            raw, _ = self._request(last=True)
            return Probe("cut", raw[:r.randrange(1, max(2, len(raw)))], hang_up=True)
        if k < 0.85:
            raw, req = self._request(last=True)
            return Probe("request", raw, [req], hang_up=r.random() < 0.03)
        # Pipelining: requests of good HTTP syntax only. After a malformed one aiohttp's
        # parser answers 400 and closes at once, dropping the answers still being made for
        # the requests before it (they are never sent), so nothing could be checked.
        payload, requests = b"", []
        count = r.randrange(2, 5)
        while len(requests) < count:
            raw, req = self._request(last=len(requests) == count - 1)
            if req.well_formed and req.complete:
                payload += raw
                requests.append(req)
        return Probe("pipelined", payload, requests, hang_up=r.random() < 0.03)

    def _garbage(self) -> Probe:
        r = self.rng
        k = r.random()
        if k < 0.4:
            data = r.randbytes(r.randrange(0, 4096))
        elif k < 0.55:
            data = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + r.randbytes(200)  # TLS
        elif k < 0.7:
            data = b"GET /" + b"a" * r.randrange(70_000, 140_000) + b" HTTP/1.1\r\n\r\n"
        elif k < 0.8:
            data = b"\r\n" * r.randrange(1, 50) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        elif k < 0.9:
            data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + r.randbytes(64)  # HTTP/2 preface
        else:
            data = bytes(r.choice([0, 0xFF, 0x0A, 0x20]) for _ in range(r.randrange(1, 2000)))
        return Probe("garbage", data, hang_up=r.random() < 0.5)

    def learn(self, headers: dict[str, str]) -> None:
        """Keeps channel and target ids the server gave out, to use them in later requests."""
        cnew = headers.get("jpip-cnew")
        if cnew:
            for kv in cnew.split(","):
                if kv.startswith("cid="):
                    self.cids.append(kv[4:])
            del self.cids[:-64]
        tid = headers.get("jpip-tid")
        if tid and tid not in self.tids:
            self.tids.append(tid)
            del self.tids[:-16]


# --------------------------------------------------------------------------- reading
class Closed(Exception):
    """The server closed the connection before (or while) answering."""


class Unreadable(Exception):
    """What came back is not an HTTP/1.x response where one should start."""


async def read_response(reader: asyncio.StreamReader, head: bool
                        ) -> tuple[int, dict[str, str], bytes]:
    line = await reader.readline()
    if not line:
        raise Closed
    m = STATUS_LINE.match(line)
    if m is None:
        raise Unreadable(f"not a status line: {line[:100]!r}")
    status = int(m.group(1))
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if head or status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise Closed  # cut: a response that broke off
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return status, headers, bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    return status, headers, await reader.read()  # delimited by closing the connection


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    requests: int = 0
    answered: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(text)


async def run_probe(port: int, probe: Probe, gen: Generator, tally: Tally, label: str) -> None:
    tally.kinds[probe.kind] += 1
    tally.requests += max(1, len(probe.requests))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    except OSError as e:
        tally.fail(f"{label}: cannot connect: {e}")
        return
    try:
        writer.write(probe.payload)
        await writer.drain()
        if probe.hang_up:
            return
        if not probe.requests:
            # Garbage: whatever comes back (usually 400, or nothing) must not be a 500.
            try:
                data = await asyncio.wait_for(reader.read(1 << 20), 5.0)
            except (TimeoutError, ConnectionError):
                return
            m = STATUS_LINE.match(data)
            if m:
                _judge(int(m.group(1)), data, tally, label)
            return
        for req in probe.requests:
            # An incomplete request (a body shorter than its Content-Length) may be answered
            # at once (413 for a length over the limit) or wait for bytes that never come.
            wait = PROBE_SECONDS if req.complete else 2.0
            try:
                status, headers, body = await asyncio.wait_for(
                    read_response(reader, req.head), wait)
            except Unreadable as e:
                tally.fail(f"{label}: {e} (sent {probe.payload[:600]!r})")
                return
            except Closed:
                # The server may close after an error it cannot recover from (a malformed
                # request line or header): then later pipelined requests are never read.
                if req is probe.requests[0] and req.complete:
                    tally.statuses["closed"] += 1
                return
            except TimeoutError:
                if not req.complete:
                    return
                tally.fail(f"{label}: no answer in {PROBE_SECONDS:g} s to {req.method} "
                           f"(sent {probe.payload[:400]!r})")
                return
            tally.answered += 1
            _judge(status, body, tally, label)
            gen.learn(headers)
            if headers.get("connection", "").lower() == "close":
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return  # the server hung up on garbage: allowed
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def _judge(status: int, body: bytes, tally: Tally, label: str) -> None:
    tally.statuses[status] += 1
    if status >= 500 and status not in ALLOWED_5XX:
        tally.fail(f"{label}: status {status}: {body[:200]!r}")
    if TRACEBACK.search(body):
        tally.fail(f"{label}: a traceback in the body: {body[:300]!r}")


@dataclass
class FuzzReport:
    requests: int
    seconds: float
    tally: Tally
    usage_after_warmup: tuple[int, int]
    usage_end: tuple[int, int]
    server_errors: list[str]
    samples: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def rss_growth(self) -> int:
        return self.usage_end[0] - self.usage_after_warmup[0]

    @property
    def fd_growth(self) -> int:
        return self.usage_end[1] - self.usage_after_warmup[1]

    def text(self) -> str:
        t = self.tally
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(t.statuses.items(), key=str))
        (r0, f0), (r1, f1) = self.usage_after_warmup, self.usage_end
        return (f"{t.requests} requests in {sum(t.kinds.values())} connections "
                f"({dict(t.kinds)}) in {self.seconds:.0f} s, {t.answered} answered; statuses "
                f"{statuses}; server RSS {r0 / 2**20:.1f} -> {r1 / 2**20:.1f} MiB, open fds "
                f"{f0} -> {f1}; {len(t.failures)} failures, {len(self.server_errors)} errors "
                "logged; RSS MiB by requests sent: "
                + " ".join(f"{n}:{rss / 2**20:.0f}" for n, rss, _ in self.samples))


async def fuzz(port: int, pid: int, requests: int, *, seed: int, targets: list[str],
               dicom_targets: list[str], connections: int = 16,
               warmup: float = 0.25) -> FuzzReport:
    """Runs probes until `requests` requests were sent; usage is measured after the warm-up
    share of them and again at the end, once every connection is closed."""
    gen = Generator(seed, targets, dicom_targets)
    tally = Tally()
    usage_warm: tuple[int, int] | None = None
    warm_at = int(requests * warmup)
    n = 0
    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal n
        while tally.requests < requests:
            n += 1
            await run_probe(port, gen.probe(), gen, tally, f"seed {seed} probe {n}")

    samples: list[tuple[int, int, int]] = []  # (requests sent, RSS, fds) every tenth

    async def sampler() -> None:
        nonlocal usage_warm
        step = max(1, requests // 10)
        while tally.requests < requests:
            if usage_warm is None and tally.requests >= warm_at:
                usage_warm = process_usage(pid)
            if tally.requests >= step * (len(samples) + 1):
                samples.append((tally.requests, *process_usage(pid)))
            await asyncio.sleep(0.05)

    await asyncio.gather(sampler(), *(worker() for _ in range(connections)))
    await asyncio.sleep(1.0)  # let the server close what it closes last
    end = process_usage(pid)
    samples.append((tally.requests, *end))
    return FuzzReport(tally.requests, time.perf_counter() - t0, tally,
                      usage_warm or end, end, [], samples)


def server_errors(log_text: str) -> list[str]:
    """Lines of the server's log that mean a defect of ours (an unhandled exception)."""
    return [line for line in log_text.splitlines()
            if " ERROR " in line or "Traceback" in line or "-> 500" in line]


def check(report: FuzzReport) -> None:
    assert not report.tally.failures, "\n".join(report.tally.failures[:20])
    assert not report.server_errors, "\n".join(report.server_errors[:20])
    assert report.fd_growth <= FD_SLACK, report.text()
    assert report.rss_growth <= RSS_SLACK, report.text()


def fuzz_root(root: Path) -> tuple[list[str], list[str]]:
    """Fills `root` with a few small served files (and things that must not be served);
    returns the JPEG 2000 and DICOM target names."""
    import shutil

    from tests.conftest import CORPUS
    from tests.data.dicom import build_dicom, codestream_of

    names = ["p0_01.j2k", "basn6a08.jp2", "liver_j2k.j2k", "p0_10.j2k", "heliov.jpx",
             "p1_05.j2k"]
    for name in names:
        shutil.copy(CORPUS / name, root / name)
    (root / "sub").mkdir(exist_ok=True)
    shutil.copy(CORPUS / "p0_12.j2k", root / "sub" / "tiny.j2k")
    (root / "MANIFEST.md").write_text("not an image\n")
    (root / "cut.jp2").write_bytes((CORPUS / "file3.jp2").read_bytes()[:5000])
    p0 = codestream_of((CORPUS / "p0_01.j2k").read_bytes())
    build_dicom(root / "two.dcm", [[p0], [p0]])
    outside = root.parent / "outside.jp2"
    shutil.copy(CORPUS / "p0_12.j2k", outside)
    (root / "link_out.jp2").symlink_to(outside)
    return names + ["sub/tiny.j2k", "cut.jp2"], ["two.dcm"]
