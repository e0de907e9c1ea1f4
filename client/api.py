"""JPIPClient: asks a JPIP server for view-windows and returns pixels.

Works in a session (cnew=http, then cid=...) or stateless (each request describes the cache
with model=). Responses are parsed incrementally as they arrive.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import numpy as np

from jpip.jpp import StreamParser

from .bincache import BinCache, StreamError
from .decode import Region, decode_region, header_info, window_region


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
    field (http://host/jpip?target=a.jp2).
    """

    def __init__(self, url: str, *, stateless: bool = False, cache: BinCache | None = None,
                 timeout: float = 120.0) -> None:
        parts = urlsplit(url)
        self._base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self._target_query = parts.query
        self._origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self.stateless = stateless
        self.cache = cache or BinCache()
        self.cid: str | None = None
        self._channel_url: str | None = None
        self.tid: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._qid = 0
        self.raw_sink: bytearray | None = None  # set to a bytearray to keep the raw JPP-stream
        # After a response broke off, the server's model may claim bytes that never arrived:
        # the next session request restates the whole cache (subtract all, add what is held).
        self._resync = False

    async def __aenter__(self) -> JPIPClient:
        self._http = aiohttp.ClientSession(timeout=self._timeout)
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

    async def _get(self, query: str, *, use_channel: bool = False,
                   progress: Callable[[int], None] | None = None,
                   abort_after: int | None = None) -> FetchStats:
        assert self._http is not None, "use `async with JPIPClient(...)`"
        stats = FetchStats()
        t0 = time.perf_counter()
        parser = StreamParser()
        async with self._http.get(self._url(query, use_channel)) as resp:
            stats.status = resp.status
            stats.headers = {k: v for k, v in resp.headers.items()}
            if resp.status not in (200, 202):
                text = (await resp.text())[:300]
                raise StreamError(f"server answered {resp.status}: {text.strip()}")
            ctype = resp.headers.get("Content-Type", "")
            if ctype != "image/jpp-stream":
                raise StreamError(f"unexpected Content-Type {ctype!r}")
            first = True
            async for chunk in resp.content.iter_any():
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

    def _note_headers(self, headers: dict[str, str]) -> None:
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
                    length: int | None = None, stream: int = 0, metareq: str | None = None,
                    progress: Callable[[int], None] | None = None,
                    abort_after: int | None = None) -> FetchStats:
        """One request for a view-window; the bytes go into `self.cache`."""
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
        if stream:
            q.append(f"stream={stream}")
        if metareq is not None:
            q.append(f"metareq={metareq}")
        q.append("type=jpp-stream")
        use_channel = False
        if self.stateless:
            model = self.cache.model_string(self.codestream_id(stream))
            if model:
                q.append("model=" + quote(model, safe="[],:-*"))
            if self.tid:
                q.append(f"tid={self.tid}")
        elif self.cid is None:
            q.append("cnew=http")
            q.append("tid=0")
        else:
            q.append(f"cid={self.cid}")
            use_channel = True
            if self._resync:
                cs = self.codestream_id(stream)
                held = self.cache.model_string(cs)
                restate = f"[{cs}],-Hm,-H*,-P*" + ("," + held.split(",", 1)[1] if held else "")
                q.append("model=" + quote(restate, safe="[],:-*"))
                self._resync = False
        self._qid += 1
        return await self._get("&".join(q), use_channel=use_channel, progress=progress,
                               abort_after=abort_after)

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
                     layers: int | None = None, comps: str | None = None, stream: int = 0,
                     length: int | None = None) -> list[np.ndarray]:
        """Fetches a window (until complete) and decodes it: one array per component."""
        await self.fetch_all(fsiz=fsiz, round=round, roff=roff, rsiz=rsiz, layers=layers,
                             comps=comps, stream=stream, length=length)
        return self.decode(fsiz=fsiz, round=round, roff=roff, rsiz=rsiz, layers=layers,
                           stream=stream, comps=comps)

    def codestream_id(self, stream: int = 0) -> int:
        """The CSn under which the server delivers codestream `stream` of the target.

        Normally `stream` itself. opj_server (OpenJPEG's openjpip) numbers codestreams per
        server process, in the order it first opened targets, so the one codestream of a JP2
        target can arrive as CSn 1, 2, ... although the request means codestream 0. When the
        asked-for id was never received and the cache (one client = one target) holds exactly
        one codestream, that one is meant.
        """
        streams = self.cache.streams
        if stream in streams or len(streams) != 1:
            return stream
        return next(iter(streams))

    def region(self, fsiz, round="round-down", roff=None, rsiz=None, stream: int = 0) -> Region:
        info = header_info(bytes(self.cache.stream(self.codestream_id(stream)).main_header.data))
        return window_region(info, (fsiz[0], fsiz[1], round), roff, rsiz)

    def decode(self, *, fsiz, round="round-down", roff=None, rsiz=None, layers=None,
               stream: int = 0, comps: str | None = None) -> list[np.ndarray]:
        reg = self.region(fsiz, round, roff, rsiz, stream)
        wanted = None
        if comps is not None:
            wanted = set()
            for part in comps.split(","):
                lo, _, hi = part.partition("-")
                wanted.update(range(int(lo), int(hi or lo) + 1))
        return decode_region(self.cache, reg, self.codestream_id(stream), layers or 0,
                             tuple(sorted(wanted)) if wanted is not None else None)


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
