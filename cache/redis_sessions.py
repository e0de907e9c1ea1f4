"""Sessions in Redis: any worker process on any host can serve any request of any session.

`RedisSessionStore` implements `cache.sessions.SessionStore` with one Lua script per operation
(cache/redis_scripts.py: the keys, and why each step is atomic):

- `load(cid)`: one round trip (a MULTI/EXEC transaction: a script for the fields and channels,
  GET/LRANGE for the model) returns the session, and renews its idle TTL. A worker keeps the
  models it loaded or wrote last (`model_cache_bytes`), and then reads only the records
  appended since; nginx's consistent hashing sends a channel's requests to one worker, so that
  is the common case, but any worker can always load any session whole.
- `apply(session, changes)`: one round trip records the machine's changes in order. A chunk's
  cache-model records are appended (RPUSH of their encoding, cache/model_codec.py), never a
  rewrite of the model, so two workers never race on it; once the log is long, the worker that
  loads the session folds it into the snapshot (a script that checks nothing replaced the
  model since). The reply carries the channels as they are in Redis, so pre-emption by a
  request on another worker is seen at the next chunk. A `Begin` is refused (`TurnTaken`)
  when another worker holds the channel or pre-empted the request meanwhile. A request's
  arrival and a chunk's records wait for the next write (see `apply`): a response of one
  chunk costs three round trips, its load included.
- A channel being answered holds a lease (`lease` seconds, renewed every `lease / 3` s by this
  process while it writes): a worker that dies mid-response frees its channel when the lease
  runs out, and the next request continues from what was committed, chunk by chunk.
- Idle sessions expire by Redis TTL (`idle_timeout`); the session cap is global (a sorted set
  of sessions by last use; the least recently used idle one is evicted, else 503).
- A session that ends is reported to `on_end` (the audit line: owner, target, bytes, how long
  it lived) by the process that saw it end: closed (its last channel closed, `cclose`),
  evicted (by the process opening a session over the cap), expired (by the next sweep of any
  process: Redis expires the session's keys by itself, but keeps its `meta` for
  `redis_scripts.EPITAPH_MS` more, and the sweep reports and deletes it). Not reported: a
  session lost with Redis' data (a restart without persistence, a flush, an eviction despite
  `noeviction`), or one whose epitaph ran out while no server swept (every server down for
  longer than that). An expired session's duration runs until the sweep saw it (up to one
  sweep period late), like the memory store's.
- A request waiting for its turn on a channel is woken through Redis pub/sub when another
  process changes that channel (published only for channels someone waits on), and reloads
  every `poll_interval` seconds anyway.
- Redis unreachable (down, loading, out of memory, read-only): `StoreUnavailable`, which the
  server answers with 503 and Retry-After; the next request tries again.

Every scalar field of `SessionState` is stored (JSON), so a field added there (and to
`OpenSession`, which creates sessions) is carried without a change here.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import redis_scripts
from .model import CacheModel
from .model_codec import CodecError, decode_model, decode_records, encode_model, encode_records
from .sessions import (
    AddChannel,
    Begin,
    Change,
    ChannelState,
    CloseChannels,
    End,
    ModelChange,
    OpenSession,
    OverCapacity,
    Preempt,
    Retarget,
    SessionState,
    SessionStore,
    Skip,
    StoreUnavailable,
    TurnTaken,
    apply_change,
)

__all__ = ["RedisSessionStore", "redact_url"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "jpip:1:"   # the layout's version: a new layout gets a new prefix
LEASE = 10.0                 # seconds a channel stays busy after its holder was last heard of
POLL_INTERVAL = 0.5          # seconds between reloads of a waiting request
COMPACT_AFTER = 32           # log entries past which a load folds them into the snapshot
MODEL_CACHE_BYTES = 64 << 20  # models a worker keeps of the sessions it served last
TOUCH_SLACK_MS = 1000        # a load renews TTLs renewed longer ago than this
KNOWN_CHANNELS = 1 << 16     # channel -> session ids a worker remembers
CONNECT_TIMEOUT = 1.0
OP_TIMEOUT = 2.0             # one script's round trip, at most
RETRY_AFTER = 2              # seconds told to clients while Redis is unreachable
SWEEP_LIMIT = 256           # expired sessions one sweep reports, at most (one script's work)
DOWN_FOR = 0.5               # after a failure, fail fast for this long (no connect storm)

# Errors meaning "Redis cannot serve this now", as opposed to a defect of ours.
_UNAVAILABLE = (rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, rx.ReadOnlyError,
                OSError)
_UNAVAILABLE_REPLIES = ("OOM", "LOADING", "READONLY", "MASTERDOWN", "MISCONF", "NOREPLICAS",
                        "BUSY", "TRYAGAIN", "CLUSTERDOWN")

# SessionState's stored fields: its scalars (not the id, which names the keys, nor the
# model and channels, which have keys of their own).
_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(SessionState)
                      if f.name not in ("session_id", "model", "channels"))
_OPEN_FIELDS = tuple(f.name for f in dataclasses.fields(OpenSession)
                     if f.name in _STATE_FIELDS)


def redact_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: list | dict) -> Iterable[tuple[str, bytes]]:
    """A hash as a script returns it (a flat list) or as HGETALL does (a dict)."""
    if isinstance(flat, dict):
        return ((_text(k), v) for k, v in flat.items())
    it = iter(flat)
    return ((_text(k), v) for k, v in zip(it, it, strict=True))


def _channels(flat: list, now: int) -> dict[str, ChannelState]:
    out = {}
    for cid, packed in _pairs(flat):
        gen, qid, lease, _owner = _text(packed).split(" ")
        out[cid] = ChannelState(cid, last_qid=int(qid), generation=int(gen),
                                busy=int(lease) > now)
    return out


@dataclass(slots=True)
class _Known:
    """A session's model as Redis holds it: the snapshot of `epoch` with its first `entries`
    log records applied (this process's own copy, never handed out)."""

    epoch: int
    entries: int
    model: CacheModel


@dataclass(slots=True)
class SharedSession(SessionState):
    """A session as one request of this process holds it, with the changes it made that are
    not in Redis yet (see `RedisSessionStore.apply`), and where in Redis its model stands:
    (epoch, log entries), None once it may differ from every such point."""

    deferred: list[Change] = field(default_factory=list)
    synced: tuple[int, int] | None = None


class RedisSessionStore(SessionStore):
    """Sessions in one Redis database, shared by every process that names it."""

    poll_interval = POLL_INTERVAL

    def __init__(self, url: str, *, password: str | None = None, max_sessions: int = 10000,
                 idle_timeout: float = 600.0, max_model_bytes: int = 8 << 20,
                 lease: float = LEASE, prefix: str = DEFAULT_PREFIX,
                 compact_after: int = COMPACT_AFTER,
                 model_cache_bytes: int = MODEL_CACHE_BYTES,
                 on_event: Callable[[str], None] | None = None,
                 on_end: Callable[[SessionState, str, float], None] | None = None,
                 on_round_trip: Callable[[str], None] | None = None,
                 on_count: Callable[[int], None] | None = None) -> None:
        self.url = redact_url(url)
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.max_model_bytes = max_model_bytes
        self.lease = lease
        self.prefix = prefix
        self.compact_after = compact_after
        self.model_cache_bytes = model_cache_bytes
        self._on_event = on_event or (lambda name: None)
        # Called with each session that ends, why, and how long it lived (the audit log).
        self._on_end = on_end
        self._on_round_trip = on_round_trip or (lambda op: None)
        self._on_count = on_count or (lambda n: None)
        self.client = aioredis.Redis.from_url(
            url, password=password or None, socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=OP_TIMEOUT, retry=Retry(NoBackoff(), 1), health_check_interval=10)
        scripts = {name: self.client.register_script(getattr(redis_scripts, name.upper()))
                   for name in ("load", "open", "apply", "renew", "watch", "compact", "sweep")}
        self._scripts = scripts
        self._sessions_of: OrderedDict[str, str] = OrderedDict()  # cid -> session id (LRU)
        self._known: OrderedDict[str, _Known] = OrderedDict()      # session id -> model (LRU)
        self._known_bytes = 0
        # Leases this process holds: (session id, cid) -> owner token.
        self._leases: dict[tuple[str, str], str] = {}
        self._owner = secrets.token_hex(6)
        self._serial = itertools.count()
        self._watched: dict[str, int] = {}  # cid -> requests of this process waiting on it
        self._callback: Callable[[str], Awaitable[None]] | None = None
        self._tasks: list[asyncio.Task] = []
        self._down_until = 0.0

    @property
    def _idle_ms(self) -> int:
        return max(1, int(self.idle_timeout * 1000))

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease * 1000))

    def _cid_key(self, cid: str) -> str:
        return f"{self.prefix}c:{cid}"

    # --- round trips ------------------------------------------------------------------------
    async def _run(self, name: str, keys: list[str], args: list) -> object:
        """One script, one round trip; Redis being unavailable becomes StoreUnavailable."""
        self._check_up()
        try:
            result = await self._scripts[name](keys=keys, args=args)
        except _UNAVAILABLE as e:
            raise self._unreachable(e) from None
        except rx.ResponseError as e:
            self._check_refusal(e)
            raise
        self._on_round_trip(name)
        return result

    async def _transaction(self, op: str, commands: list[tuple]) -> list:
        """Commands in one MULTI/EXEC transaction: atomic, one round trip. Scripts go by
        their digest; after a Redis restart (its scripts forgotten) they are loaded and the
        transaction is sent again (what ran of it twice is idempotent: model records)."""
        self._check_up()
        for attempt in (0, 1):
            pipe = self.client.pipeline(transaction=True)
            for command in commands:
                pipe.execute_command(*command)
            try:
                results = await pipe.execute(raise_on_error=False)
            except _UNAVAILABLE as e:
                raise self._unreachable(e) from None
            errors = [r for r in results if isinstance(r, Exception)]
            if not errors:
                self._on_round_trip(op)
                return results
            if attempt == 0 and all(isinstance(e, rx.NoScriptError) for e in errors):
                for script in self._scripts.values():
                    await self.client.script_load(script.script)
                continue
            e = errors[0]
            if isinstance(e, rx.ResponseError):
                self._check_refusal(e)
            raise e
        raise AssertionError("unreachable")

    def _check_up(self) -> None:
        """Fails fast while Redis was found unreachable in the last DOWN_FOR seconds."""
        if time.monotonic() < self._down_until:
            self._on_event("unavailable")
            raise StoreUnavailable("the session store is unreachable", RETRY_AFTER)

    def _unreachable(self, e: Exception) -> StoreUnavailable:
        """Redis could not be reached: said once, then failing fast for DOWN_FOR seconds."""
        self._down_until = time.monotonic() + DOWN_FOR
        log.warning("session store %s unreachable: %s", self.url, e)
        self._on_event("unavailable")
        return StoreUnavailable("the session store is unreachable", RETRY_AFTER)

    def _check_refusal(self, e: rx.ResponseError) -> None:
        """A reply that means Redis cannot take writes now (a replica, loading, out of
        memory...) is StoreUnavailable; any other error reply is ours."""
        if any(code in str(e) for code in _UNAVAILABLE_REPLIES):
            log.warning("session store %s refused: %s", self.url, e)
            self._on_event("unavailable")
            raise StoreUnavailable("the session store cannot take writes now",
                                   RETRY_AFTER) from None

    def _script(self, name: str, *args: object) -> tuple:
        """A script call inside a transaction (no keys declared: see redis_scripts)."""
        return ("EVALSHA", self._scripts[name].sha, 0, *args)

    def _key(self, sid: str, part: str) -> str:
        return f"{self.prefix}s:{sid}:{part}"

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._renew_leases(), name="jpip-lease-renewer"),
                           asyncio.create_task(self._listen(), name="jpip-turn-listener")]

    async def close_all(self) -> int:
        """Sessions outlive a process (they are shared): nothing is closed, this process only
        lets go of Redis. Returns 0."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(TimeoutError, *_UNAVAILABLE):
            async with asyncio.timeout(OP_TIMEOUT):  # a hung Redis must not hold up a stop
                await self.client.aclose()
        return 0

    async def ping(self) -> bool | None:
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                return bool(await self.client.ping())
        except (TimeoutError, *_UNAVAILABLE, rx.ResponseError):
            return False

    # --- the interface ------------------------------------------------------------------------
    async def load(self, cid: str) -> SessionState | None:
        sid = self._sessions_of.get(cid)
        if sid is None:
            found = await self._transaction("resolve", [("GET", self._cid_key(cid))])
            if found[0] is None:
                return None
            sid = _text(found[0])
        self._remember_channel(cid, sid)
        known = self._known.get(sid)
        log_key = self._key(sid, "log")
        args = (self.prefix, sid, cid, self._idle_ms)
        slack = min(TOUCH_SLACK_MS, self._idle_ms // 10)
        if known is not None:  # the records since this process's copy of the model
            reply = [await self._run("load", [], [*args, known.entries, slack])]
        else:
            reply = await self._transaction("load", [
                self._script("load", *args, -1, slack), ("GET", self._key(sid, "snap")),
                ("LRANGE", log_key, 0, -1)])
        if reply[0] is None:
            self._sessions_of.pop(cid, None)
            self._forget(sid)
            return None
        meta, chans, now, tail = reply[0]
        values = dict(_pairs(meta))
        fields = {name: json.loads(values[name]) for name in _STATE_FIELDS if name in values}
        session = SharedSession(sid, **fields)
        session.channels = _channels(chans, now)
        epoch = int(values["me"])
        try:
            if known is not None and known.epoch == epoch:
                model, entries, start = known.model.copy(), tail, known.entries
            else:
                if known is not None:  # the model was replaced or compacted elsewhere
                    epoch, snap, entries = await self._transaction("load", [
                        ("HGET", self._key(sid, "meta"), "me"), ("GET", self._key(sid, "snap")),
                        ("LRANGE", log_key, 0, -1)])
                    epoch = int(epoch or 0)
                else:
                    snap, entries = reply[1], reply[2]
                model, start = decode_model(snap) if snap else CacheModel(), 0
            for entry in entries:
                model.apply(decode_records(entry))
        except CodecError as e:
            # Not ours to read (another version's layout): the client is sent data again.
            log.warning("session %s: unreadable cache model (%s); starting it empty", sid, e)
            self._forget(sid)
            await self.apply(session, [Retarget(session.target_id)])
            return session
        session.model = model
        position = start + len(entries)
        if position > self.compact_after and await self._compact(sid, epoch, position, model):
            epoch, position = epoch + 1, 0
        self._remember_model(sid, epoch, position, model)
        session.synced = (epoch, position)
        return session

    async def open(self, change: OpenSession) -> SessionState:
        session = SharedSession(change.session_id,
                               **{name: getattr(change, name) for name in _OPEN_FIELDS})
        owner = "-"
        if change.busy:
            owner = self._new_owner()
            self._leases[(change.session_id, change.cid)] = owner
        args: list = [self.prefix, self._idle_ms, self.max_sessions, change.session_id,
                      change.cid, self._lease_ms, owner, change.last_qid]
        for name in _STATE_FIELDS:
            args += [name, json.dumps(getattr(session, name))]
        try:
            reply = await self._run("open", [], args)
        except BaseException:
            self._leases.pop((change.session_id, change.cid), None)
            raise
        if reply[0] < 0:
            _, pruned, ended, now = reply
            self._expired(pruned, ended, now)
            self._leases.pop((change.session_id, change.cid), None)
            raise OverCapacity(f"{self.max_sessions} sessions are open and busy")
        _, pruned, evicted, now, ended = reply
        self._expired(pruned, ended, now)
        if evicted:
            self._forget(_text(evicted[0]))
            self._ended(_text(evicted[0]), evicted[1], "evicted", now)
        session.opened_at = now / 1000
        session.channels[change.cid] = ChannelState(change.cid, busy=change.busy,
                                                    last_qid=change.last_qid)
        self._remember_channel(change.cid, change.session_id)
        self._remember_model(change.session_id, 0, 0, session.model)
        session.synced = (0, 0)
        self._on_event("created")
        return session

    async def apply(self, session: SessionState, changes: Iterable[Change]) -> None:
        """Records `changes` in one round trip, with those deferred before them.

        Two kinds of change alone are deferred to the session's next write, which saves a
        round trip per request: a request's arrival (`Preempt`), since its next step writes
        its turn (`Begin`, refused as it should be if a newer request arrived meanwhile) or,
        if it must wait, `watching` writes it first; and a written chunk's model records,
        which then go with the next chunk's or the response's `End` (a process dying between
        the two costs the client that chunk again, never a byte missing). So a response of one
        chunk costs a load, [Preempt, Begin] and [records, End]: three round trips."""
        changes = list(changes)
        if not changes:
            return
        if isinstance(session, SharedSession):
            if (len(changes) == 1 and type(changes[0]) in _DEFERRABLE
                    and session.model.nbytes <= self.max_model_bytes):
                # Held back until the next change; one held already goes now (a response's
                # chunks: each commit writes the one before, and sees pre-emption).
                apply_change(session, changes[0])
                deferred, session.deferred = session.deferred, changes
                if deferred or session.model.nbytes > self.max_model_bytes:
                    session.deferred = []
                    await self._write(session, [], [*deferred, *changes])
                return
            if session.deferred:
                deferred, session.deferred = session.deferred, []
                await self._write(session, changes, deferred)
                return
        await self._write(session, changes, [])

    async def flush(self, session: SessionState) -> None:
        """Writes the changes `apply` deferred."""
        if isinstance(session, SharedSession) and session.deferred:
            deferred, session.deferred = session.deferred, []
            await self._write(session, [], deferred)

    async def _write(self, session: SessionState, changes: list[Change],
                     done: list[Change]) -> None:
        """One round trip: `done` (already applied to `session`) and `changes`, in order: the
        apply script for the session's state and, when there are model records, RPUSHes of
        them between calls of the script, in one transaction (the last call reports)."""
        sid = session.session_id
        log_key = self._key(sid, "log")
        commands: list[tuple] = []
        ops: list = []
        appended = 0
        began = None

        def call_script() -> None:
            commands.append(self._script("apply", self.prefix, sid, self._lease_ms, *ops))
            ops.clear()

        for change in (*done, *changes):
            kind = type(change)
            if kind is ModelChange:
                if began is not None:
                    raise ValueError("model records after a Begin in one write")
                if ops:
                    call_script()
                commands.append(("RPUSH", log_key, encode_records(change.records)))
                appended += 1
            elif kind is Preempt:
                ops += ["P", change.cid]
            elif kind is Begin:
                began = (sid, change.cid)
                owner = self._leases[began] = self._new_owner()
                ops += ["B", change.cid, _opt(change.qid), _opt(change.generation), owner]
            elif kind is Skip:
                ops += ["S", change.cid, _opt(change.qid)]
            elif kind is End:
                owner = self._leases.pop((sid, change.cid), "-")
                ops += ["E", change.cid, change.sent, change.saved, owner]
            elif kind is AddChannel:
                ops += ["A", change.cid]
                self._remember_channel(change.cid, sid)
            elif kind is CloseChannels:
                ops += ["C", len(change.cids), *change.cids]
                for cid in change.cids:
                    self._leases.pop((sid, cid), None)
                    self._sessions_of.pop(cid, None)
            elif kind is Retarget:
                ops += ["R", json.dumps(change.target_id)]
            else:
                raise TypeError(f"not a session change: {change!r}")
        call_script()  # the last command is a script call: it reports the session's state
        try:
            if len(commands) == 1:
                outcomes = [await self._run("apply", [], list(commands[0][3:]))]
            else:
                results = await self._transaction("apply", commands)
                outcomes = [r for r, c in zip(results, commands, strict=True)
                            if c[0] == "EVALSHA"]
        except BaseException:
            if began is not None:
                self._leases.pop(began, None)
            raise
        if any(o[0] == 2 for o in outcomes):
            self._leases.pop(began, None)
            session.channels = _channels(outcomes[-1][2], outcomes[-1][1])
            raise TurnTaken(f"channel {began[1]} was taken by another request")
        for change in changes:
            apply_change(session, change)
        status, now, chans, ended, length, epoch = outcomes[-1]
        if ended or any(o[0] == 0 for o in outcomes):
            self._forget(sid)
            if ended:  # by these changes: no channel is left (chans: its meta as it was)
                session.channels = {}
                self._ended(sid, chans, "closed", now)
            return  # the session ended: its state is the caller's alone
        session.channels = _channels(chans, now)
        self._note_position(session, epoch, length, appended)
        if appended and session.model.nbytes > self.max_model_bytes:
            # Caps a session's size: the client re-receives data instead.
            await self._run("apply", [], [self.prefix, sid, self._lease_ms, "Z"])
            session.model = CacheModel()
            self._forget(sid)
            self._on_event("model_reset")

    async def expire(self) -> int:
        pruned, count, now, ended = await self._run("sweep", [], [self.prefix, self._idle_ms,
                                                                  SWEEP_LIMIT])
        self._expired(pruned, ended, now)
        self._on_count(count)
        return pruned

    # --- waiting for a channel's turn ----------------------------------------------------------
    def on_remote_change(self, callback: Callable[[str], Awaitable[None]]) -> None:
        self._callback = callback

    @contextlib.asynccontextmanager
    async def watching(self, cid: str) -> AsyncIterator[None]:
        key = self._cid_key(cid)
        self._watched[cid] = self._watched.get(cid, 0) + 1
        try:
            await self._run("watch", [key], [self.prefix, cid, 1])
            yield
        finally:
            left = self._watched[cid] - 1
            if left:
                self._watched[cid] = left
            else:
                del self._watched[cid]
            with contextlib.suppress(StoreUnavailable):
                await self._run("watch", [key], [self.prefix, cid, -1])

    async def _listen(self) -> None:
        """Turns published by other processes, for the channels requests here wait on."""
        channel = f"{self.prefix}turns"
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    cid = _text(message["data"])
                    if cid in self._watched and self._callback is not None:
                        await self._callback(cid)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis went away: waiting requests poll meanwhile
                log.debug("turn listener: %s; subscribing again", e)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # --- internals ---------------------------------------------------------------------------
    def _new_owner(self) -> str:
        return f"{self._owner}.{next(self._serial)}"

    def _expired(self, count: int, ended: list, now: int) -> None:
        """Sessions a script found expired: `count` of them, `ended` the {sid, meta} of
        those whose meta was still there."""
        for _ in range(count - len(ended)):
            self._on_event("expired")  # expired long ago: nothing left to report
        for sid, meta in ended:
            self._forget(_text(sid))
            self._ended(_text(sid), meta, "expired", now)

    def _ended(self, sid: str, meta: list, why: str, now_ms: int) -> None:
        """A session ended: counted, and reported to `on_end` from its `meta` as Redis held
        it (owner, target, byte counts, when it opened)."""
        self._on_event(why)
        if self._on_end is None or not meta:
            return
        values = dict(_pairs(meta))
        try:
            fields = {name: json.loads(values[name]) for name in _STATE_FIELDS if name in values}
            state = SessionState(sid, **fields)
        except (ValueError, TypeError) as e:  # another version's layout: counted, not logged
            log.warning("an ended session's record is unreadable: %s", e)
            return
        self._on_end(state, why, max(0.0, now_ms / 1000 - state.opened_at))

    async def _compact(self, sid: str, epoch: int, entries: int, model: CacheModel) -> bool:
        """Folds the first `entries` log records into the snapshot, `model` being the snapshot
        of `epoch` with them applied; False when the model was replaced meanwhile."""
        snapshot = encode_model(model)
        return bool(await self._run("compact", [], [self.prefix, sid, epoch, entries,
                                                    snapshot, self._idle_ms]))

    def _note_position(self, session: SessionState, epoch: int, length: int,
                       appended: int) -> None:
        """After a write: if the session's model stood at a point of Redis' log and only this
        write appended since, the model is now what Redis holds, and is remembered."""
        sid = session.session_id
        synced = getattr(session, "synced", None)
        if isinstance(session, SharedSession):
            session.synced = None
        known = self._known.get(sid)
        if known is not None and known.epoch != epoch:
            self._forget(sid)  # replaced (a changed file, a reset): loaded whole next time
        elif synced is not None and synced[0] == epoch and length == synced[1] + appended:
            self._remember_model(sid, epoch, length, session.model)
            session.synced = (epoch, length)

    def _remember_channel(self, cid: str, sid: str) -> None:
        self._sessions_of[cid] = sid
        self._sessions_of.move_to_end(cid)
        while len(self._sessions_of) > KNOWN_CHANNELS:
            self._sessions_of.popitem(last=False)

    def _remember_model(self, sid: str, epoch: int, entries: int, model: CacheModel) -> None:
        """Keeps a copy of what Redis holds of a session's model (the least recently used
        go first once they pass `model_cache_bytes`)."""
        self._forget(sid)
        if self.model_cache_bytes <= 0:
            return
        known = self._known[sid] = _Known(epoch, entries, model.copy())
        self._known_bytes += known.model.nbytes
        while self._known_bytes > self.model_cache_bytes and self._known:
            _, old = self._known.popitem(last=False)
            self._known_bytes -= old.model.nbytes

    def _forget(self, sid: str) -> None:
        known = self._known.pop(sid, None)
        if known is not None:
            self._known_bytes -= known.model.nbytes

    async def _renew_leases(self) -> None:
        """Keeps the channels this process is answering busy while it writes."""
        period = self.lease / 3
        while True:
            await asyncio.sleep(period)
            if not self._leases:
                continue
            args: list = [self.prefix, self._idle_ms, self._lease_ms]
            for (sid, cid), owner in list(self._leases.items()):
                args += [sid, cid, owner]
            try:
                await self._run("renew", [], args)
            except StoreUnavailable:
                pass  # logged by _run; the leases lapse if Redis stays away


_DEFERRABLE = (Preempt, ModelChange)


def _opt(value: int | None) -> str | int:
    return "" if value is None else value
