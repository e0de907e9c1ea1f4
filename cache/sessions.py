"""JPIP sessions and channels (ISO 15444-9 Annex B): ids, caps, idle expiry, LRU eviction.

A session holds one client's cache model for one target; channels (cid) are the names under
which requests reach it. Channel ids are 128 random bits from `secrets`, bound to the target
they were opened on. The store is in memory; `SessionStore` is the interface a shared store
(e.g. Redis, for several workers) would implement.
"""
from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .model import CacheModel


class UnknownChannel(Exception):
    """The cid is unknown, closed or expired (HTTP 503 per ISO 15444-9 Annex F)."""


class OverCapacity(Exception):
    """No room for another session (HTTP 503 with Retry-After)."""

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(eq=False)
class Channel:
    cid: str
    session: Session
    last_qid: int = -1
    busy: int = 0              # requests in flight or queued on this channel
    generation: int = 0        # bumped by every request that may pre-empt the previous ones
    lock: object = None        # an asyncio.Lock set by the server layer


@dataclass(eq=False)
class Session:
    target: str                # resolved path of the target file
    target_id: str
    model: CacheModel = field(default_factory=CacheModel)
    channels: dict[str, Channel] = field(default_factory=dict)
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    bytes_sent: int = 0
    bytes_saved: int = 0

    @property
    def busy(self) -> bool:
        return any(ch.busy for ch in self.channels.values())


def new_channel_id(prefix: str = "") -> str:
    """128 random bits in hex, after `prefix.` when the server has an instance id: a proxy in
    front of several servers then routes the channel back to the server holding its session."""
    token = secrets.token_hex(16)
    return f"{prefix}.{token}" if prefix else token


class SessionStore:
    """All live sessions, capped in number and idle time, evicting the least recently used."""

    def __init__(self, *, max_sessions: int = 10000, idle_timeout: float = 600.0,
                 max_model_bytes: int = 8 << 20,
                 on_event: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, cid_prefix: str = "") -> None:
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.max_model_bytes = max_model_bytes
        self._channels: dict[str, Channel] = {}
        self._sessions: OrderedDict[int, Session] = OrderedDict()  # LRU order by id()
        self._on_event = on_event or (lambda name: None)
        self._clock = clock
        self.cid_prefix = cid_prefix

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def open(self, target: str, target_id: str) -> Channel:
        """A new session with one channel on `target`."""
        self.expire()
        if len(self._sessions) >= self.max_sessions:
            self._evict_one()
        session = Session(target, target_id, created=self._clock(), last_used=self._clock())
        self._sessions[id(session)] = session
        self._on_event("created")
        return self.add_channel(session)

    def add_channel(self, session: Session) -> Channel:
        cid = new_channel_id(self.cid_prefix)
        ch = Channel(cid, session)
        session.channels[cid] = ch
        self._channels[cid] = ch
        return ch

    def get(self, cid: str) -> Channel:
        ch = self._channels.get(cid)
        if ch is None:
            raise UnknownChannel(f"unknown or closed channel {cid[:64]!r}")
        session = ch.session
        if not session.busy and self._clock() - session.last_used > self.idle_timeout:
            self._drop(session, "expired")
            raise UnknownChannel(f"channel {cid[:64]!r} expired")
        self.touch(session)
        return ch

    def touch(self, session: Session) -> None:
        session.last_used = self._clock()
        key = id(session)
        if key in self._sessions:
            self._sessions.move_to_end(key)

    def close(self, cids: list[str]) -> int:
        """Closes channels; a session goes with its last channel. Returns channels closed."""
        closed = 0
        for cid in cids:
            ch = self._channels.pop(cid, None)
            if ch is None:
                continue
            closed += 1
            ch.session.channels.pop(cid, None)
            if not ch.session.channels:
                self._drop(ch.session, "closed")
        return closed

    def expire(self) -> int:
        """Drops sessions idle for longer than the timeout; returns how many.

        Sessions are kept in order of last use, so the scan stops at the first one still
        fresh: the cost follows the sessions that expire, not the sessions open."""
        now = self._clock()
        gone = []
        for s in self._sessions.values():  # least recently used first
            if now - s.last_used <= self.idle_timeout:
                break
            if not s.busy:
                gone.append(s)
        for s in gone:
            self._drop(s, "expired")
        return len(gone)

    def close_all(self) -> int:
        """Closes every session (server shutdown); returns how many."""
        count = len(self._sessions)
        for s in list(self._sessions.values()):
            self._drop(s, "closed")
        return count

    def check_model_size(self, session: Session) -> None:
        """Caps a session's memory: an oversized model is reset (the client re-receives data)."""
        if session.model.nbytes > self.max_model_bytes:
            session.model = CacheModel()
            self._on_event("model_reset")

    def _evict_one(self) -> None:
        for session in self._sessions.values():  # least recently used first
            if not session.busy:
                self._drop(session, "evicted")
                return
        raise OverCapacity(f"{self.max_sessions} sessions are open and busy")

    def _drop(self, session: Session, why: str) -> None:
        if self._sessions.pop(id(session), None) is None:
            return
        for cid in list(session.channels):
            self._channels.pop(cid, None)
        session.channels.clear()
        self._on_event(why)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())
