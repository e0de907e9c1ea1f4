"""JPIP sessions and channels (ISO 15444-9 Annex B): their state, its changes, and the store.

A session holds one client's cache model for one target; channels (cid) are the names under
which requests reach it. The protocol machine (`jpip.machine`) reads a `SessionState` and
decides; every change it makes is one of the small records below, which the server hands to
the `SessionStore` (`apply`), so that a store kept elsewhere (e.g. Redis, shared by several
worker processes) sees exactly what changed. Nothing here depends on Python object identity:
a session is named by its `session_id`, a channel by its `cid`, a model by its records.

The store's interface is asynchronous, so that a store doing I/O (a network round trip per
operation) plugs into the server unchanged: `cache.redis_sessions.RedisSessionStore` keeps
sessions in Redis for every worker and host (it may refuse a turn another process took first,
`TurnTaken`, and answers StoreUnavailable while Redis is away). `MemorySessionStore` is the
store of one process:
capped in number, idle sessions expire (least recently used first), and an oversized cache
model is reset; its `*_now` methods are the same operations, synchronous, for callers without
an event loop (the machine's tests). The server serialises what must be serialised (one
response at a time per channel) itself.
"""
from __future__ import annotations

import contextlib
import secrets
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from .model import CacheModel, ModelRecord

__all__ = ["AddChannel", "Begin", "Change", "ChannelState", "CloseChannels", "End",
           "MemorySessionStore", "ModelChange", "OpenSession", "OverCapacity", "Preempt",
           "Retarget", "SessionState", "SessionStore", "Skip", "StoreUnavailable", "TurnTaken",
           "apply_change", "new_channel_id"]


class OverCapacity(Exception):
    """No room for another session (HTTP 503 with Retry-After)."""

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class StoreUnavailable(Exception):
    """The session store cannot be reached (a shared store's server is down or refuses
    writes): 503 with Retry-After for requests that need a session, while stateless requests
    are still served. Carries `status`/`reason`/`retry_after`, as the server's errors do."""

    status = 503

    def __init__(self, reason: str, retry_after: int = 2) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TurnTaken(Exception):
    """A shared store refused a `Begin`: between the load the machine decided on and the
    store's write, another process began a response on the channel or pre-empted the request.
    The request waits for its turn again."""


# --- state ------------------------------------------------------------------------------------

@dataclass(slots=True)
class ChannelState:
    """One channel: the order of its requests and whether a response is in progress."""

    cid: str
    last_qid: int = -1       # highest qid whose turn came (-1: none yet)
    generation: int = 0      # bumped by every request that pre-empts the earlier ones
    busy: bool = False       # a response on this channel is being written


@dataclass(slots=True)
class SessionState:
    """What a session is: its target, the client's cache model and its channels."""

    session_id: str
    target: str              # resolved path of the target file
    target_id: str           # JPIP target id of the file the model describes
    model: CacheModel = field(default_factory=CacheModel)
    channels: dict[str, ChannelState] = field(default_factory=dict)
    bytes_sent: int = 0      # bytes written to the client, all responses
    bytes_saved: int = 0     # planned bytes not sent because the model said the client held them
    owner: str | None = None  # the token subject that opened it (None: access control off)
    opened_at: float = 0.0   # when the store opened it (the store's clock)
    stream_type: str = "jpp-stream"  # the return type of requests that name none (C.7.3)

    @property
    def busy(self) -> bool:
        return any(ch.busy for ch in self.channels.values())


def new_channel_id(prefix: str = "") -> str:
    """128 random bits in hex, after `prefix.` when the server has an instance id: a proxy in
    front of several servers then routes the channel back to the server holding its session."""
    token = secrets.token_hex(16)
    return f"{prefix}.{token}" if prefix else token


# --- changes ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OpenSession:
    """A new session with its first channel (busy when the opening request is served on it;
    `qid`: the opening request's, the first in the channel's order); `stream_type` is the
    return type the opening request got, which later requests naming none get too."""

    session_id: str
    target: str
    target_id: str
    cid: str
    busy: bool = True
    owner: str | None = None  # the token subject opening it; its requests must carry the same
    stream_type: str = "jpp-stream"
    qid: int | None = None    # the opening request's qid (it counts on the new channel)

    @property
    def last_qid(self) -> int:
        """The new channel's last qid, as `ChannelState` counts it (-1: none yet)."""
        return -1 if self.qid is None else self.qid


@dataclass(frozen=True, slots=True)
class AddChannel:
    cid: str


@dataclass(frozen=True, slots=True)
class CloseChannels:
    """Closes channels of the session; the session ends with its last channel."""

    cids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Retarget:
    """The file changed on disk: the model described another file and starts empty."""

    target_id: str


@dataclass(frozen=True, slots=True)
class Preempt:
    """A request arrived on `cid` that pre-empts the earlier ones (wait=no)."""

    cid: str


@dataclass(frozen=True, slots=True)
class Begin:
    """A request's turn came on `cid` and its response starts. `generation` is the channel's
    generation the request saw: a store shared by processes refuses the turn (`TurnTaken`)
    when it moved or another response holds the channel by the time the change is written."""

    cid: str
    qid: int | None
    generation: int | None = None


@dataclass(frozen=True, slots=True)
class Skip:
    """A request's turn came on `cid` but it had been pre-empted (202, nothing sent)."""

    cid: str
    qid: int | None


@dataclass(frozen=True, slots=True)
class End:
    """The response on `cid` is over; `sent`/`saved` are added to the session's counts."""

    cid: str
    sent: int = 0
    saved: int = 0


@dataclass(frozen=True, slots=True)
class ModelChange:
    """Cache-model records: a `model=` statement, or bytes written to the client."""

    records: tuple[ModelRecord, ...]


Change = (OpenSession | AddChannel | CloseChannels | Retarget | Preempt | Begin | Skip | End
          | ModelChange)


def _raise_qid(ch: ChannelState, qid: int | None) -> None:
    if qid is not None and qid > ch.last_qid:
        ch.last_qid = qid


def apply_change(session: SessionState, change: Change) -> None:
    """Applies one change to a session's state (the part every store shares). Changes naming
    a channel the session no longer has (closed meanwhile) are ignored."""
    kind = type(change)
    if kind is ModelChange:
        session.model.apply(change.records)
    elif kind is AddChannel:
        session.channels[change.cid] = ChannelState(change.cid)
    elif kind is CloseChannels:
        for cid in change.cids:
            session.channels.pop(cid, None)
    elif kind is Retarget:
        session.target_id = change.target_id
        session.model = CacheModel()
    else:
        ch = session.channels.get(change.cid)
        if ch is None:
            return
        if kind is Preempt:
            ch.generation += 1
        elif kind is Begin:
            ch.busy = True
            _raise_qid(ch, change.qid)
        elif kind is Skip:
            _raise_qid(ch, change.qid)
        elif kind is End:
            ch.busy = False
            session.bytes_sent += change.sent
            session.bytes_saved += change.saved
        else:
            raise TypeError(f"not a session change: {change!r}")


# --- stores -----------------------------------------------------------------------------------

class SessionStore(ABC):
    """Where sessions live. The server loads a session by one of its channel ids, lets the
    machine decide on that state, and hands the machine's changes back through `apply`, which
    also brings the loaded state up to date (so the caller keeps working on it)."""

    idle_timeout: float
    # A store shared by several processes: changes made elsewhere are seen only by loading
    # again, so a waiting request also reloads every `poll_interval` seconds (a missed wake-up,
    # a channel whose holder died and whose lease ran out). None: every change is made here.
    poll_interval: float | None = None

    async def start(self) -> None:  # noqa: B027 (optional: most stores have nothing to start)
        """Connects and starts the store's background work (the server calls it at start)."""

    def on_remote_change(  # noqa: B027 (optional: a store of one process never calls it)
            self, callback: Callable[[str], Awaitable[None]]) -> None:
        """`callback(cid)` is awaited when another process changed a channel that a request of
        this process waits on (see `watching`). A store of one process has no other process."""

    async def flush(self, session: SessionState) -> None:  # noqa: B027 (nothing to defer)
        """Writes changes of `session` that `apply` deferred (a store may hold a change back
        to write it with the next ones, saving a round trip); the server calls it before a
        request waits, since others must see its arrival meanwhile."""

    @contextlib.asynccontextmanager
    async def watching(self, cid: str) -> AsyncIterator[None]:
        """While the block runs, changes other processes make to the channel `cid` are
        reported to the `on_remote_change` callback. Entered before the first load of a
        waiting request, so that no change between that load and the wait goes unseen."""
        yield

    async def ping(self) -> bool | None:
        """Whether the store is reachable: None for a store in this process (always is)."""
        return None

    @abstractmethod
    async def load(self, cid: str) -> SessionState | None:
        """The session the channel belongs to, or None (unknown, closed or expired)."""

    @abstractmethod
    async def open(self, change: OpenSession) -> SessionState:
        """Creates a session; raises OverCapacity when there is no room."""

    @abstractmethod
    async def apply(self, session: SessionState, changes: Iterable[Change]) -> None:
        """Records changes of a loaded session (and applies them to it). A shared store
        also brings the session's channels up to date with what other processes did, and
        raises `TurnTaken` for a `Begin` it refuses (a `Begin` comes alone or first)."""

    @abstractmethod
    async def expire(self) -> int:
        """Drops idle sessions; returns how many."""

    @abstractmethod
    async def close_all(self) -> int:
        """Closes every session (server shutdown); returns how many."""


class MemorySessionStore(SessionStore):
    """All live sessions of this process, capped in number and idle time, LRU-evicted."""

    def __init__(self, *, max_sessions: int = 10000, idle_timeout: float = 600.0,
                 max_model_bytes: int = 8 << 20,
                 on_event: Callable[[str], None] | None = None,
                 on_end: Callable[[SessionState, str, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.max_model_bytes = max_model_bytes
        self._channels: dict[str, str] = {}  # cid -> session id
        self._sessions: OrderedDict[str, SessionState] = OrderedDict()  # least recent first
        self._last_used: dict[str, float] = {}
        self._on_event = on_event or (lambda name: None)
        # Called with each session that ends, why, and how long it lived (the audit log).
        self._on_end = on_end
        self._clock = clock

    # The interface: the in-memory operations never wait.
    async def load(self, cid: str) -> SessionState | None:
        return self.load_now(cid)

    async def open(self, change: OpenSession) -> SessionState:
        return self.open_now(change)

    async def apply(self, session: SessionState, changes: Iterable[Change]) -> None:
        self.apply_now(session, changes)

    async def expire(self) -> int:
        return self.expire_now()

    async def close_all(self) -> int:
        return self.close_all_now()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def sessions(self) -> list[SessionState]:
        return list(self._sessions.values())

    def load_now(self, cid: str) -> SessionState | None:
        sid = self._channels.get(cid)
        if sid is None:
            return None
        session = self._sessions[sid]
        now = self._clock()
        if now - self._last_used[sid] > self.idle_timeout and not session.busy:
            self._drop(sid, "expired")
            return None
        self._last_used[sid] = now
        self._sessions.move_to_end(sid)
        return session

    def open_now(self, change: OpenSession) -> SessionState:
        self.expire_now()
        if len(self._sessions) >= self.max_sessions:
            self._evict_one()
        session = SessionState(change.session_id, change.target, change.target_id,
                               owner=change.owner, opened_at=self._clock(),
                               stream_type=change.stream_type)
        session.channels[change.cid] = ChannelState(change.cid, busy=change.busy,
                                                    last_qid=change.last_qid)
        self._sessions[change.session_id] = session
        self._channels[change.cid] = change.session_id
        self._touch(change.session_id)
        self._on_event("created")
        return session

    def apply_now(self, session: SessionState, changes: Iterable[Change]) -> None:
        # (Use is counted by load(): a session is touched once per request.)
        sid = session.session_id
        live = self._sessions.get(sid) is session
        for change in changes:
            apply_change(session, change)
            if not live:
                continue  # the session ended meanwhile: its state is the caller's alone
            kind = type(change)
            if kind is AddChannel:
                self._channels[change.cid] = sid
            elif kind is CloseChannels:
                for cid in change.cids:
                    if self._channels.get(cid) == sid:
                        del self._channels[cid]
                if not session.channels:
                    self._drop(sid, "closed")
                    live = False
            elif kind is ModelChange and session.model.nbytes > self.max_model_bytes:
                # Caps a session's memory: the client re-receives data instead.
                session.model = CacheModel()
                self._on_event("model_reset")

    def expire_now(self) -> int:
        """Sessions are kept in order of last use, so the scan stops at the first one still
        fresh: the cost follows the sessions that expire, not the sessions open."""
        now = self._clock()
        gone = []
        for sid, session in self._sessions.items():  # least recently used first
            if now - self._last_used[sid] <= self.idle_timeout:
                break
            if not session.busy:
                gone.append(sid)
        for sid in gone:
            self._drop(sid, "expired")
        return len(gone)

    def close_all_now(self) -> int:
        count = len(self._sessions)
        for sid in list(self._sessions):
            self._drop(sid, "closed")
        return count

    def _touch(self, sid: str) -> None:
        self._last_used[sid] = self._clock()
        self._sessions.move_to_end(sid)

    def _evict_one(self) -> None:
        for sid, session in self._sessions.items():  # least recently used first
            if not session.busy:
                self._drop(sid, "evicted")
                return
        raise OverCapacity(f"{self.max_sessions} sessions are open and busy")

    def _drop(self, sid: str, why: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is None:
            return
        self._last_used.pop(sid, None)
        for cid in session.channels:
            if self._channels.get(cid) == sid:
                del self._channels[cid]
        self._on_event(why)
        if self._on_end is not None:
            self._on_end(session, why, self._clock() - session.opened_at)
