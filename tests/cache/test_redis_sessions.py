"""The Redis session store against a real redis-server: the in-memory store's rules (caps, LRU
eviction, idle expiry, channels, order and pre-emption, model records), and what sharing adds
(two stores stand for two worker processes): a channel held by one is refused to the other, a
dead holder's lease runs out, concurrent model records all arrive, waiting requests are told of
changes, and a Redis that goes away is StoreUnavailable, never another error."""
from __future__ import annotations

import asyncio
import itertools
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from cache.model import BinKind, Received, ReceivedRows
from cache.redis_sessions import RedisSessionStore, redact_url
from cache.sessions import (
    AddChannel,
    Begin,
    CloseChannels,
    End,
    ModelChange,
    OpenSession,
    OverCapacity,
    Preempt,
    Retarget,
    Skip,
    StoreUnavailable,
    TurnTaken,
)
from tests.redis_server import RedisServer, free_port, running_redis

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
async def stores(redis_server) -> AsyncIterator:
    """make(**options): stores sharing one key prefix (one per test), closed afterwards."""
    prefix = f"t{next(_prefixes)}:"
    made: list[RedisSessionStore] = []

    def make(**options) -> RedisSessionStore:
        store = RedisSessionStore(redis_server.url, prefix=prefix, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close_all()


def _opening(n: int, busy: bool = False) -> OpenSession:
    return OpenSession(f"s{n}", "/img/a.jp2", "tid", f"c{n}", busy=busy)


def _rows(*ids: int) -> ReceivedRows:
    rows = np.asarray(ids, np.int32)
    return ReceivedRows(BinKind.PRECINCT, 0, rows, rows.astype(np.int64) * 10 + 10)


async def test_a_session_opened_by_one_process_is_loaded_by_another(stores) -> None:
    a, b = stores(), stores()
    s = await a.open(OpenSession("s", "/img/a.jp2", "tid", "c", busy=True))
    await a.apply(s, [ModelChange((Received(BinKind.MAIN_HEADER, 0, 0, 100), _rows(3, 1))),
                      End("c", sent=500, saved=20)])
    t = await b.load("c")
    assert (t.session_id, t.target, t.target_id) == ("s", "/img/a.jp2", "tid")
    assert (t.bytes_sent, t.bytes_saved) == (500, 20)
    assert t.model.stream(0).main_header == 100
    assert t.model.stream(0).precincts.get(np.array([1, 3, 5])).tolist() == [20, 40, 0]
    assert not t.channels["c"].busy
    assert await b.load("nope") is None


async def test_sessions_are_capped_globally_evicted_and_expire(stores) -> None:
    events: list[str] = []
    a = stores(max_sessions=3, on_event=events.append)
    b = stores(max_sessions=3, on_event=events.append)
    opened = [await (a if n % 2 else b).open(_opening(n)) for n in range(3)]
    await a.apply(opened[0], [Begin("c0", None)])        # in flight: never evicted
    await b.load("c0")
    await b.open(_opening(3))                             # evicts s1, the LRU idle one
    assert events.count("evicted") == 1
    assert await a.load("c1") is None and await a.load("c0") is not None
    for n in (2, 3):
        await b.apply(await b.load(f"c{n}"), [Begin(f"c{n}", None)])
    with pytest.raises(OverCapacity):
        await a.open(_opening(4))
    assert set(events) == {"created", "evicted"}


async def test_idle_sessions_expire_by_ttl_and_busy_ones_are_kept(stores) -> None:
    events: list[str] = []
    store = stores(idle_timeout=0.4, lease=0.3, on_event=events.append)
    await store.start()  # renews the lease of the busy session
    await store.open(_opening(0))
    await store.open(_opening(1, busy=True))
    await asyncio.sleep(0.8)
    assert await store.load("c0") is None
    assert await store.load("c1") is not None
    counts: list[int] = []
    store._on_count = counts.append
    assert await store.expire() == 1 and counts == [1]
    assert events.count("expired") == 1


async def test_the_owner_travels_and_every_ending_is_reported(stores) -> None:
    """The session's owner (the token subject) is carried to every process; the process that
    sees a session end reports it with its owner, target, bytes and age: closed by its last
    channel, evicted over the cap, expired by Redis' TTL (found by a later sweep, whose meta
    outlived the other keys). Nothing is reported twice, and no key is left."""
    ended: list[tuple] = []

    def on_end(session, why, seconds) -> None:
        ended.append((session.session_id, session.owner, session.target, session.bytes_sent,
                      why, seconds))

    a = stores(max_sessions=2, idle_timeout=0.5, on_end=on_end)
    b = stores(max_sessions=2, idle_timeout=0.5, on_end=on_end)
    opened = await a.open(OpenSession("s0", "/img/a.jp2", "tid", "c0", busy=True,
                                      owner="alice", stream_type="jpt-stream"))
    assert opened.owner == "alice" and opened.opened_at > 1.7e9  # Redis' clock, seconds
    await a.apply(opened, [End("c0", sent=1234)])
    seen = await b.load("c0")
    assert (seen.owner, seen.opened_at, seen.bytes_sent, seen.stream_type) == (
        "alice", opened.opened_at, 1234, "jpt-stream")
    await b.apply(seen, [CloseChannels(("c0",))])
    assert ended == [("s0", "alice", "/img/a.jp2", 1234, "closed", pytest.approx(0, abs=1))]
    # Evicted: the third session opened over the cap of two.
    for n in (1, 2):
        await a.open(OpenSession(f"s{n}", "/img/b.jp2", "tid", f"c{n}", busy=False,
                                 owner=f"user{n}"))
    await b.open(_opening(3))
    assert ended[-1][:5] == ("s1", "user1", "/img/b.jp2", 0, "evicted")
    # Expired: Redis drops the session's keys; a sweep by any process reports it once.
    await asyncio.sleep(0.7)
    assert await a.load("c2") is None
    assert await b.expire() == 2 and await a.expire() == 0
    assert sorted(e[:5] for e in ended[2:]) == [("s2", "user2", "/img/b.jp2", 0, "expired"),
                                                ("s3", None, "/img/a.jp2", 0, "expired")]
    assert all(e[5] >= 0.5 for e in ended[2:]) and len(ended) == 4
    assert not await a.client.keys(f"{a.prefix}s:*")


async def test_channels_open_and_close_and_the_session_goes_with_the_last(stores) -> None:
    events: list[str] = []
    a, b = stores(on_event=events.append), stores()
    s = await a.open(_opening(0))
    await a.apply(s, [AddChannel("c9")])
    t = await b.load("c9")
    assert t.session_id == "s0" and set(t.channels) == {"c0", "c9"}
    await b.apply(t, [CloseChannels(("c0",))])
    assert await a.load("c0") is None and set(t.channels) == {"c9"}
    await a.apply(s, [CloseChannels(("c9",))])
    assert await b.load("c9") is None and s.channels == {} and "closed" in events
    await a.apply(s, [ModelChange((_rows(1),)), End("c9")])  # the session ended: nothing
    assert await a.load("c9") is None                           # comes back, no key is left
    assert not await a.client.keys(f"{a.prefix}s:*")


async def test_order_and_preemption_state(stores) -> None:
    store = stores()
    s = await store.open(_opening(0))
    await store.apply(s, [Preempt("c0"), Preempt("c0"), Begin("c0", 4, 2)])
    ch = s.channels["c0"]
    assert (ch.generation, ch.busy, ch.last_qid) == (2, True, 4)
    await store.apply(s, [Skip("c0", 3), End("c0")])  # a lower qid never lowers last_qid
    ch = s.channels["c0"]
    assert (ch.busy, ch.last_qid) == (False, 4)
    await store.apply(s, [Skip("c0", 7)])
    assert s.channels["c0"].last_qid == 7


async def test_a_held_channel_or_a_moved_generation_refuses_begin(stores) -> None:
    a, b = stores(), stores()
    s = await a.open(_opening(0))
    t = await b.load("c0")
    await a.apply(s, [Begin("c0", None, 0)])
    with pytest.raises(TurnTaken):
        await b.apply(t, [Begin("c0", None, 0)])       # a holds it
    assert t.channels["c0"].busy                       # and b now sees that
    await b.apply(t, [Preempt("c0")])                  # a newer request arrives at b
    await b.flush(t)                                   # and waits: its arrival is written
    assert s.channels["c0"].generation == 0
    await a.apply(s, [ModelChange((_rows(1),))])       # a's chunks: each commit writes the
    await a.apply(s, [ModelChange((_rows(2),))])       # one before, and sees the pre-emption
    assert s.channels["c0"].generation == 1
    await a.apply(s, [End("c0")])
    with pytest.raises(TurnTaken):
        await a.apply(s, [Begin("c0", None, 0)])       # decided on generation 0: too old
    await b.apply(t, [Begin("c0", None, 1)])
    assert t.channels["c0"].busy


async def test_a_dead_holders_lease_runs_out(stores) -> None:
    dead, alive = stores(lease=0.3), stores(lease=0.3)  # `dead` never renews (not started)
    s = await dead.open(_opening(0))
    await dead.apply(s, [Begin("c0", 1, 0)])
    t = await alive.load("c0")
    assert t.channels["c0"].busy
    await asyncio.sleep(0.5)
    t = await alive.load("c0")
    assert not t.channels["c0"].busy
    await alive.apply(t, [Begin("c0", 2, 0)])
    # The late End of the dead holder neither frees the channel nor is lost for the counts.
    await dead.apply(s, [End("c0", sent=7)])
    t = await alive.load("c0")
    assert t.channels["c0"].busy and t.bytes_sent == 7


async def test_arrivals_and_chunk_records_go_with_the_next_write(stores) -> None:
    """A request's arrival is written with its turn, a chunk's records with the next chunk's
    or with the response's end: a one-chunk response costs three round trips, load included."""
    trips: list[str] = []
    a, b = stores(on_round_trip=trips.append), stores()
    await a.open(_opening(0))
    trips.clear()
    s = await a.load("c0")
    await a.apply(s, [Preempt("c0")])
    await a.apply(s, [Begin("c0", 1, 1)])
    await a.apply(s, [ModelChange((_rows(1),))])
    assert not (await b.load("c0")).model.stream(0).precincts.rows.size  # not written yet
    await a.apply(s, [End("c0", sent=10)])
    assert trips == ["load", "apply", "apply"]
    t = await b.load("c0")
    assert t.model.stream(0).precincts.rows.tolist() == [1] and t.bytes_sent == 10
    assert t.channels["c0"].generation == 1 and not t.channels["c0"].busy
    # A refused turn still writes the arrival before it: the newer request is seen.
    await b.apply(t, [Begin("c0", 2, 1)])
    await a.apply(s, [Preempt("c0")])
    with pytest.raises(TurnTaken):
        await a.apply(s, [Begin("c0", 3, 2)])
    assert (await b.load("c0")).channels["c0"].generation == 2


async def test_concurrent_records_from_two_processes_all_arrive(stores) -> None:
    a, b = stores(compact_after=4), stores(compact_after=4)
    s = await a.open(_opening(0))
    t = await b.load("c0")

    async def commit(store, session, ids):
        for i in ids:
            await store.apply(session, [ModelChange((_rows(i),))])
            await store.load("c0")  # folds the log into the snapshot now and then

    await asyncio.gather(commit(a, s, range(0, 60, 2)), commit(b, t, range(1, 60, 2)))
    await a.flush(s)
    await b.flush(t)
    final = await a.load("c0")
    assert final.model.stream(0).precincts.rows.tolist() == list(range(60))
    raw = await a.client.llen(f"{a.prefix}s:s0:log")
    assert raw <= 5  # compacted


def _calls(redis_server: RedisServer, command: str) -> int:
    stats = redis_server.command("INFO", "commandstats")
    for line in stats.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_a_worker_reads_only_what_others_appended_since_it_last_saw(
        stores, redis_server) -> None:
    """The model a worker loaded or wrote last is kept: its next load reads the records
    appended since (by anyone), not the snapshot (GET); a compaction or a reset elsewhere makes
    it load the whole model again. Every load equals what Redis holds."""
    a, b = stores(compact_after=100), stores(compact_after=5)
    await a.open(_opening(0))
    gets = _calls(redis_server, "get")

    async def serve(store, i: int) -> None:  # one response of one chunk
        t = await store.load("c0")
        await store.apply(t, [Begin("c0", None, t.channels["c0"].generation)])
        await store.apply(t, [ModelChange((_rows(i),))])
        await store.apply(t, [End("c0")])

    def snapshot_reads() -> int:  # GETs since the last call (loads GET nothing else)
        nonlocal gets
        now = _calls(redis_server, "get")
        delta, gets = now - gets, now
        return delta

    for i in range(5):
        await serve(a, i)
    assert snapshot_reads() == 0  # a knew its own model all along
    await serve(b, 5)                                   # b: a new worker loads it whole
    snapshot_reads()
    s = await a.load("c0")                              # a reads b's one record only
    assert s.model.stream(0).precincts.rows.tolist() == list(range(6))
    assert snapshot_reads() == 0
    await serve(b, 6)                                   # b's load folds the log (compaction)
    snapshot_reads()
    s = await a.load("c0")                              # a's copy is stale: whole again
    assert s.model.stream(0).precincts.rows.tolist() == list(range(7))
    assert snapshot_reads() == 1
    await a.apply(s, [Retarget("tid2")])                # a reset: every copy is stale
    t = await b.load("c0")
    assert t.model.is_empty() and t.target_id == "tid2"


async def test_a_waiting_request_is_told_of_changes_made_elsewhere(stores) -> None:
    a, b = stores(), stores()
    await b.start()
    heard: list[str] = []

    async def changed(cid: str) -> None:
        heard.append(cid)

    b.on_remote_change(changed)
    s = await a.open(_opening(0, busy=True))
    await a.open(_opening(1, busy=True))
    await asyncio.sleep(0.1)  # the listener subscribes
    async with b.watching("c0"):
        await a.apply(s, [End("c0")])
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.01)
    assert heard == ["c0"]
    # Nobody waits any more: nothing is published.
    await a.apply(s, [Preempt("c0")])
    await asyncio.sleep(0.1)
    assert heard == ["c0"]


async def test_model_records_retarget_and_the_size_cap(stores) -> None:
    events: list[str] = []
    store = stores(max_model_bytes=2000, on_event=events.append)
    s = await store.open(_opening(0))
    await store.apply(s, [ModelChange((_rows(1, 2),)), Retarget("tid2")])
    t = await store.load("c0")
    assert t.target_id == "tid2" and t.model.is_empty()
    await store.apply(t, [ModelChange((_rows(*range(500)),))])
    assert t.model.is_empty() and "model_reset" in events
    assert (await store.load("c0")).model.is_empty()


async def test_an_unreadable_model_starts_empty(stores, redis_server) -> None:
    store = stores()
    s = await store.open(_opening(0))
    await store.apply(s, [ModelChange((_rows(1),))])
    redis_server.command("RPUSH", f"{store.prefix}s:s0:log", "junk")
    t = await store.load("c0")
    assert t.model.is_empty() and t.target_id == "tid"
    assert (await store.load("c0")).model.is_empty()


async def test_redis_going_away_is_store_unavailable_then_it_resumes() -> None:
    with running_redis(appendonly=True) as server:
        store = RedisSessionStore(server.url, prefix="down:")
        try:
            s = await store.open(_opening(0))
            await store.apply(s, [ModelChange((_rows(5),))])
            await store.flush(s)
            assert await store.ping() is True
            server.stop()
            for attempt in (store.load("c0"), store.apply(s, [End("c0")]),
                            store.open(_opening(1))):
                with pytest.raises(StoreUnavailable) as info:
                    await attempt
                assert info.value.status == 503 and info.value.retry_after > 0
            assert await store.ping() is False
            server.start()
            await asyncio.sleep(0.6)  # past the fail-fast pause
            t = await store.load("c0")
            assert t.model.stream(0).precincts.rows.tolist() == [5]
        finally:
            await store.close_all()


async def test_a_redis_that_asks_for_a_password() -> None:
    with running_redis(password="s3cret") as server:
        url = server.url.replace("redis://", "redis://:s3cret@")
        for store in (RedisSessionStore(server.url, password="s3cret", prefix="pw:"),
                      RedisSessionStore(url, prefix="pw:")):
            try:
                await store.open(_opening(0))
                assert (await store.load("c0")).session_id == "s0"
                assert "s3cret" not in store.url
            finally:
                await store.close_all()
        wrong = RedisSessionStore(server.url, password="guess", prefix="pw:")
        try:
            with pytest.raises(StoreUnavailable):
                await wrong.load("c0")
            assert await wrong.ping() is False
        finally:
            await wrong.close_all()


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it (openssl)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=jpip-test-ca")
    run("req", *key, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext.cnf")
    return folder / "ca.crt", folder / "srv.crt", folder / "srv.key"


async def test_a_redis_over_tls(tmp_path) -> None:
    """rediss:// with the CA named in the URL (redis' own URL parameter ssl_ca_certs)."""
    ca, cert, key = _tls_files(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
         str(ca), "--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = RedisSessionStore(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", prefix="tls:")
    try:
        for _ in range(200):  # until it listens
            if await store.ping():
                break
            await asyncio.sleep(0.05)
        await store.open(_opening(0))
        assert (await store.load("c0")).session_id == "s0"
        plain = RedisSessionStore(f"redis://127.0.0.1:{port}/0", prefix="tls:")
        try:  # the same server without TLS: refused, as unreachable
            assert await plain.ping() is False
        finally:
            await plain.close_all()
    finally:
        await store.close_all()
        proc.terminate()
        proc.wait(10)


def test_passwords_never_appear_in_the_url_shown() -> None:
    assert redact_url("redis://:s3cret@db:6379/2") == "redis://:***@db:6379/2"
    assert redact_url("rediss://user:pw@[::1]:6380/0") == "rediss://user:***@[::1]:6380/0"
    assert redact_url("redis://db:6379/0") == "redis://db:6379/0"
