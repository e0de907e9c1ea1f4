"""JPIPClient: asks a JPIP server for view-windows and returns pixels.

Works in a session (cnew=http, then cid=...) or stateless (each request describes the cache
with model=). Responses are parsed incrementally as they arrive. Image data comes as a
JPP-stream (precinct data-bins, the default) or a JPT-stream (tile data-bins:
`stream_type="jpt-stream"`).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np

from jpip.jpp import StreamParser

from .bincache import BinCache, StreamError
from .decode import HeaderInfo, Region, decode_region, header_info, window_region
from .metadata import MetaBox, box_tree
from .url import JPIPURL, URLError, parse_url

STREAM_TYPES = {"jpp-stream": "image/jpp-stream", "jpt-stream": "image/jpt-stream"}
# The smallest window there is (one sample of the lowest resolution, one layer): it brings the
# main header at the cost of a few precinct bytes, which every larger window needs anyway.
# Longer request URLs go as a POST form body (`JPIPClient._send`).
MAX_GET_URL = 6000
SMALLEST_WINDOW = {"fsiz": (1, 1), "rsiz": (1, 1), "layers": 1}


class WindowError(ValueError):
    """The window asked for holds no samples: a region outside the frame, components the
    image does not have. The message says which, in the terms of the request."""


@dataclass
class FetchStats:
    status: int = 0
    messages: int = 0
    bytes: int = 0
    eor: int | None = None
    ttfb: float = 0.0
    seconds: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def _fmt_pair(p) -> str:
    return f"{p[0]},{p[1]}"


class JPIPClient:
    """An asyncio JPIP client over aiohttp; use `async with JPIPClient(url) as c:`.

    `url` names the target either in the path (http://host/images/a.jp2) or with a target
    field (http://host/jpip?target=a.jp2). View-window fields belong in the calls of fetch() and
    window(), not in the URL (URLError; `client.url.parse_url` separates them).

    A `cache` loaded from a file (BinCache.load) is described to the server on the first
    request, in a session (with cnew) as without one, so nothing it holds is sent again.
    `stream_type` is the return type asked for: "jpp-stream" or "jpt-stream" (default: the
    URL's type=, else "jpp-stream").

    `token`: an access token for a server with access control, sent with every request as
    `Authorization: Bearer` (default: an `access_token=` of the URL, if any).
    """

    def __init__(self, url: str | JPIPURL, *, stateless: bool = False,
                 cache: BinCache | None = None, timeout: float = 120.0,
                 token: str | None = None, stream_type: str | None = None) -> None:
        parsed = parse_url(url) if isinstance(url, str) else url
        stream_type = stream_type or parsed.stream_type or "jpp-stream"
        if stream_type not in STREAM_TYPES:
            raise ValueError(f"stream_type must be one of {', '.join(STREAM_TYPES)}")
        self.stream_type = stream_type
        if parsed.window:
            raise URLError(f"the URL holds view-window fields ({', '.join(parsed.window)}): "
                           "pass them to fetch() or window() instead")
        self.url = parsed
        self._base = parsed.base
        self._target_query = parsed.target_query
        self._origin = parsed.origin
        self.stateless = stateless
        self.cache = cache if cache is not None else BinCache()
        self.cid: str | None = None
        self._channel_url: str | None = None
        self.tid: str | None = self.cache.tid
        self.answered: dict[str, str] = {}  # the JPIP headers of the last response ...
        self._answered_window: tuple | None = None  # ... and the window it was for
        self._http: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        token = token or parsed.token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._qid = 0
        self.raw_sink: bytearray | None = None  # set to a bytearray to keep the raw JPP-stream
        # After a response broke off, the server's model may claim bytes that never arrived:
        # the next session request restates the whole cache (subtract all, add what is held).
        self._resync = False

    async def __aenter__(self) -> JPIPClient:
        self._http = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is None:
            return
        try:
            if self.cid:
                try:
                    await self._get(f"cclose={self.cid}&len=0", use_channel=True)
                except (TimeoutError, aiohttp.ClientError, StreamError):
                    # Nothing in the answer matters to us. opj_server answers cclose with an
                    # empty body and no Content-Type (no JPP-stream, no EOR).
                    pass
                self.cid = None
        finally:
            await self._http.close()
            self._http = None

    # --- requests --------------------------------------------------------------------------
    def _url(self, query: str, use_channel: bool) -> str:
        if use_channel and self._channel_url:
            return f"{self._channel_url}?{query}"
        q = f"{self._target_query}&{query}" if self._target_query else query
        return f"{self._base}?{q}"

    def _send(self, url: str) -> Any:
        """GET the URL, or POST its query as a form body when it is long: servers and proxies
        cap request lines (aiohttp at 64 KiB, nginx at 8 KiB by default) and a session's
        restated model grows with what it holds (the viewer does the same)."""
        assert self._http is not None
        if len(url) <= MAX_GET_URL:
            return self._http.get(url)
        base, _, query = url.partition("?")
        return self._http.post(base, data=query.encode(), headers={
            "Content-Type": "application/x-www-form-urlencoded"})

    async def _get(self, query: str, *, use_channel: bool = False,
                   progress: Callable[[int], None] | None = None,
                   abort_after: int | None = None) -> FetchStats:
        assert self._http is not None, "use `async with JPIPClient(...)`"
        stats = FetchStats()
        t0 = time.perf_counter()
        parser = StreamParser()
        async with self._send(self._url(query, use_channel)) as resp:
            stats.status = resp.status
            stats.headers = {k: v for k, v in resp.headers.items()}
            if resp.status not in (200, 202):
                text = (await resp.text(errors="replace"))[:300]
                raise StreamError(f"server answered {resp.status}: {text.strip()}")
            ctype = resp.headers.get("Content-Type", "")
            if ctype not in STREAM_TYPES.values():
                raise StreamError(f"unexpected Content-Type {ctype!r}")
            self._check_target(stats.headers)
            first = True
            chunks = _broken_off_noted(self, resp.content.iter_any())
            async for chunk in chunks:
                if first:
                    stats.ttfb = time.perf_counter() - t0
                    first = False
                if abort_after is not None and stats.bytes + len(chunk) >= abort_after:
                    # Simulates a dropped connection: keep the whole messages received so far.
                    chunk = chunk[:abort_after - stats.bytes]
                    stats.bytes += len(chunk)
                    for item in parser.feed(chunk):
                        self.cache.add(item)
                        stats.messages += 1
                    resp.close()
                    self._resync = True
                    self._note_headers(stats.headers)
                    stats.seconds = time.perf_counter() - t0
                    return stats
                stats.bytes += len(chunk)
                if self.raw_sink is not None:
                    self.raw_sink += chunk
                for item in parser.feed(chunk):
                    self.cache.add(item)
                    stats.messages += 1
                if progress:
                    progress(stats.bytes)
            parser.close()
        end = parser.end
        stats.eor = end.reason if end is not None else None
        if end is None:
            raise StreamError("response ended without an EOR message")
        stats.seconds = time.perf_counter() - t0
        self._note_headers(stats.headers)
        return stats

    def _check_target(self, headers: dict[str, str]) -> None:
        """A target id other than the one the cache was filled from: the file changed on the
        server, which then ignored our model and sends everything; what we hold is stale."""
        tid = headers.get("JPIP-tid")
        if tid and self.cache.tid is not None and tid != self.cache.tid:
            self.cache.clear()
        if tid:
            self.cache.tid = tid

    def _note_headers(self, headers: dict[str, str]) -> None:
        self.answered = {k: v for k, v in headers.items() if k.lower().startswith("jpip-")}
        if "JPIP-tid" in headers:
            self.tid = headers["JPIP-tid"]
        cnew = headers.get("JPIP-cnew")
        if cnew:
            fields = dict(kv.split("=", 1) for kv in cnew.split(",") if "=" in kv)
            self.cid = fields.get("cid")
            path = fields.get("path")
            # `path` is optional in practice: opj_server's JPIP-cnew carries only cid and
            # transport, so the channel then lives at the request's own path.
            if path:
                self._channel_url = f"{self._origin}/{path.lstrip('/')}"
            else:
                self._channel_url = self._base

    async def fetch(self, *, fsiz: tuple[int, int] | None = None, round: str = "round-down",
                    roff: tuple[int, int] | None = None, rsiz: tuple[int, int] | None = None,
                    layers: int | None = None, comps: str | None = None,
                    length: int | None = None, stream: int | None = None,
                    metareq: str | None = None,
                    progress: Callable[[int], None] | None = None,
                    abort_after: int | None = None) -> FetchStats:
        """One request for a view-window; the bytes go into `self.cache`."""
        fsiz, roff, rsiz = _pair(fsiz), _pair(roff), _pair(rsiz)
        q = []
        if fsiz is not None:
            q.append(f"fsiz={fsiz[0]},{fsiz[1]}" + ("" if round == "round-down" else f",{round}"))
        if roff is not None:
            q.append(f"roff={_fmt_pair(roff)}")
        if rsiz is not None:
            q.append(f"rsiz={_fmt_pair(rsiz)}")
        if layers is not None:
            q.append(f"layers={layers}")
        if comps is not None:
            q.append(f"comps={comps}")
        if length is not None:
            q.append(f"len={length}")
        if stream is not None:  # None: the target's first codestream (DICOM: frame 1)
            q.append(f"stream={stream}")
        if metareq is not None:
            q.append(f"metareq={metareq}")
        q.append(f"type={self.stream_type}")
        use_channel = False
        if self.stateless or self.cid is None:
            # Without a session, and on the request opening one, the model says what is held
            # (a cache loaded from a file); the tid makes the server ignore a model of an
            # older version of the file.
            if not self.stateless:
                q.append("cnew=http")
            model = self.cache.model_string(self.codestream_id(stream))
            if model:
                q.append("model=" + quote(model, safe="[],:-*"))
            if self.tid:
                q.append(f"tid={self.tid}")
            elif not self.stateless:
                q.append("tid=0")
        else:
            q.append(f"cid={self.cid}")
            use_channel = True
            if self._resync:
                cs = self.codestream_id(stream)
                held = self.cache.model_string(cs)
                restate = f"[{cs}],-Hm,-H*,-P*,-T*,-M*" + (
                    "," + held.split(",", 1)[1] if held else "")
                q.append("model=" + quote(restate, safe="[],:-*"))
                self._resync = False
        self._qid += 1
        self._answered_window = None
        stats = await self._get("&".join(q), use_channel=use_channel, progress=progress,
                               abort_after=abort_after)
        self._answered_window = (fsiz, round, roff, rsiz, comps, stream)
        return stats

    async def fetch_all(self, max_requests: int = 100, **window) -> list[FetchStats]:
        """Repeats a request until the server says the window is complete (EOR 1 or 2)."""
        out = []
        for _ in range(max_requests):
            st = await self.fetch(**window)
            out.append(st)
            if st.eor in (1, 2):
                break
        return out

    async def window(self, *, fsiz: tuple[int, int], round: str = "round-down",
                     roff: tuple[int, int] | None = None, rsiz: tuple[int, int] | None = None,
                     layers: int | None = None, comps: str | None = None,
                     stream: int | None = None,
                     length: int | None = None) -> list[np.ndarray]:
        """Fetches a window (until complete) and decodes it: one array per component."""
        await self.fetch_all(fsiz=fsiz, round=round, roff=roff, rsiz=rsiz, layers=layers,
                             comps=comps, stream=stream, length=length)
        return self.decode(fsiz=fsiz, round=round, roff=roff, rsiz=rsiz, layers=layers,
                           stream=stream, comps=comps)

    async def boxes(self, metareq: str = "[*:0/a]", *, stream: int | None = None,
                    max_requests: int = 100) -> list[MetaBox]:
        """The box tree the server exposes (client.metadata), after fetching the metadata
        `metareq` names (metadata only: `!!` is added). The default asks for every box with
        none of its contents beyond what leads to the others: the tree, not the payloads."""
        for _ in range(max_requests):
            st = await self.fetch(metareq=f"{metareq}!!", stream=stream)
            if st.eor in (1, 2):
                break
        return box_tree(self.cache.metadata)

    async def header_info(self, stream: int | None = None,
                          metareq: str | None = None) -> HeaderInfo:
        """What the main header of codestream `stream` says, asking the server if need be."""
        s = self.cache.streams.get(self.codestream_id(stream))
        if s is None or not s.main_header.complete or metareq is not None:
            await self.fetch(**SMALLEST_WINDOW, stream=stream, metareq=metareq)
            s = self.cache.streams.get(self.codestream_id(stream))
            if s is None or not s.main_header.complete:
                raise StreamError(f"the server sent no main header for codestream {stream}")
        return header_info(bytes(s.main_header.data))

    def check_window(self, *, fsiz, round: str = "round-down", roff=None, rsiz=None,
                     comps: str | None = None, stream: int | None = None) -> None:
        """Raises WindowError when the window holds no samples (needs the main header).

        The server clips a window silently (JPIP-rsiz: 0,0, or no component left) and answers
        with headers only; the client says what went wrong instead of failing to decode."""
        info = header_info(bytes(self.cache.stream(self.codestream_id(stream))
                                 .main_header.data))
        if comps is not None:
            count = info.siz.num_components
            outside = sorted(c for c in parse_comps(comps) if c >= count)
            if outside:
                which = (f"component {outside[0]}" if len(outside) == 1
                         else f"components {_ranges(outside)}")
                raise WindowError(f"{which} out of range ({count} component"
                                  f"{'s' if count > 1 else ''}: {_ranges(range(count))})")
        # The server's answer to this very window, if the last request asked for it.
        fsiz, roff, rsiz = _pair(fsiz), _pair(roff), _pair(rsiz)
        answered = self.answered if self._answered_window == (
            fsiz, round, roff, rsiz, comps, stream) else {}
        x0, y0, x1, y1 = window_region(info, (fsiz[0], fsiz[1], round), roff, rsiz).region
        if x0 >= x1 or y0 >= y1 or 0 in _numbers(answered.get("JPIP-rsiz", "")):
            at = f" at {roff[0]},{roff[1]}" if roff is not None else ""
            raise WindowError(f"the region{at} is outside the {fsiz[0]}×{fsiz[1]} frame")

    def codestream_id(self, stream: int | None = None) -> int:
        """The CSn under which the server delivers codestream `stream` of the target.

        Normally `stream` itself. None means the target's first codestream, which the server
        picks: 0 for a JPEG 2000 file, 1 (frame 1) for a DICOM file; the one codestream the
        cache holds then. opj_server (OpenJPEG's openjpip) numbers codestreams per
        server process, in the order it first opened targets, so the one codestream of a JP2
        target can arrive as CSn 1, 2, ... although the request means codestream 0. When the
        asked-for id was never received and the cache (one client = one target) holds exactly
        one codestream, that one is meant.
        """
        streams = self.cache.streams
        if stream:  # a codestream named by its number is that one
            return stream
        if 0 in streams or len(streams) != 1:
            return 0
        return next(iter(streams))

    def region(self, fsiz, round="round-down", roff=None, rsiz=None,
               stream: int | None = None) -> Region:
        info = header_info(bytes(self.cache.stream(self.codestream_id(stream)).main_header.data))
        return window_region(info, (fsiz[0], fsiz[1], round), roff, rsiz)

    def decode(self, *, fsiz, round="round-down", roff=None, rsiz=None, layers=None,
               stream: int | None = None, comps: str | None = None) -> list[np.ndarray]:
        self.check_window(fsiz=fsiz, round=round, roff=roff, rsiz=rsiz, comps=comps,
                          stream=stream)
        reg = self.region(fsiz, round, roff, rsiz, stream)
        wanted = tuple(sorted(parse_comps(comps))) if comps is not None else None
        return decode_region(self.cache, reg, self.codestream_id(stream), layers or 0, wanted)


async def _broken_off_noted(client: JPIPClient, chunks):
    """The chunks of a response; one that breaks off (the server died, the connection was
    cut) leaves the server's model possibly claiming bytes that never arrived, so the next
    request restates the cache."""
    try:
        async for chunk in chunks:
            yield chunk
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        client._resync = True
        raise


def parse_comps(comps: str) -> set[int]:
    """The component numbers of a `comps` value such as "0-2" or "0,3"."""
    wanted: set[int] = set()
    for part in comps.split(","):
        lo, _, hi = part.partition("-")
        wanted.update(range(int(lo), int(hi or lo) + 1))
    return wanted


def _ranges(numbers) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    out: list[tuple[int, int]] = []
    for n in sorted(numbers):
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


def _pair(value) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


def _numbers(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")[:2]]
    except ValueError:
        return []


class SyncJPIPClient:
    """A blocking wrapper for scripts and notebooks."""

    def __init__(self, url: str, **kw) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = JPIPClient(url, **kw)
        self._loop.run_until_complete(self._client.__aenter__())

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if asyncio.iscoroutinefunction(attr):
            return lambda *a, **k: self._loop.run_until_complete(attr(*a, **k))
        return attr

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()

    def __enter__(self) -> SyncJPIPClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
