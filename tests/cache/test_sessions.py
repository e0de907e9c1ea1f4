"""The in-memory session store: state changes as records, caps, LRU eviction, idle expiry.
(Its `*_now` methods; the async interface the server uses is checked at the end.)"""
from __future__ import annotations

import numpy as np
import pytest

from cache.model import BinKind, Received, ReceivedRows
from cache.sessions import (
    AddChannel,
    Begin,
    CloseChannels,
    End,
    MemorySessionStore,
    ModelChange,
    OpenSession,
    OverCapacity,
    Preempt,
    Retarget,
    Skip,
)


def _open(store: MemorySessionStore, n: int, busy: bool = False):
    return store.open_now(OpenSession(f"s{n}", "/img/a.jp2", "tid", f"c{n}", busy=busy))


def test_sessions_are_capped_evicted_and_expire() -> None:
    now = [0.0]
    events: list[str] = []
    store = MemorySessionStore(max_sessions=3, idle_timeout=10, clock=lambda: now[0],
                               on_event=events.append)
    sessions = [_open(store, n) for n in range(3)]
    store.apply_now(sessions[0], [Begin("c0", None)])  # in flight: never evicted
    _open(store, 3)  # evicts the least recently used idle session (s1)
    assert events.count("evicted") == 1
    assert store.load_now("c1") is None and store.load_now("c0") is sessions[0]
    for n, s in ((2, sessions[2]), (3, store.load_now("c3"))):
        store.apply_now(s, [Begin(f"c{n}", None)])
    with pytest.raises(OverCapacity):
        _open(store, 4)
    for n in (0, 2, 3):
        s = store.load_now(f"c{n}")
        store.apply_now(s, [End(f"c{n}", sent=10, saved=5)])
        assert s.bytes_sent == 10 and s.bytes_saved == 5
    now[0] = 100.0
    assert store.expire_now() == 3 and len(store) == 0 and store.channel_count == 0
    assert set(events) == {"created", "evicted", "expired"}


def test_a_busy_session_does_not_expire() -> None:
    now = [0.0]
    store = MemorySessionStore(idle_timeout=10, clock=lambda: now[0])
    _open(store, 0, busy=True)
    now[0] = 100.0
    assert store.expire_now() == 0 and store.load_now("c0") is not None


def test_channels_open_and_close_and_the_session_goes_with_the_last() -> None:
    store = MemorySessionStore()
    s = _open(store, 0)
    store.apply_now(s, [AddChannel("c9")])
    assert store.load_now("c9") is s and store.channel_count == 2
    store.apply_now(s, [CloseChannels(("c0",))])
    assert store.load_now("c0") is None and store.load_now("c9") is s and len(store) == 1
    store.apply_now(s, [CloseChannels(("c9",))])
    assert len(store) == 0 and store.channel_count == 0


def test_order_and_preemption_state() -> None:
    store = MemorySessionStore()
    s = _open(store, 0)
    ch = s.channels["c0"]
    store.apply_now(s, [Preempt("c0"), Preempt("c0"), Begin("c0", 4)])
    assert (ch.generation, ch.busy, ch.last_qid) == (2, True, 4)
    store.apply_now(s, [Skip("c0", 3), End("c0")])  # a lower qid never lowers last_qid
    assert (ch.busy, ch.last_qid) == (False, 4)
    store.apply_now(s, [Skip("c0", 7)])
    assert ch.last_qid == 7


def test_model_changes_and_retarget() -> None:
    store = MemorySessionStore(max_model_bytes=1 << 20)
    s = _open(store, 0)
    store.apply_now(s, [ModelChange((Received(BinKind.MAIN_HEADER, 0, 0, 100),
                                 ReceivedRows(BinKind.PRECINCT, 0, np.array([3, 1], np.int32),
                                              np.array([50, 60], np.int64))))])
    assert s.model.stream(0).main_header == 100
    assert s.model.stream(0).precincts.get(np.array([1, 3, 5])).tolist() == [60, 50, 0]
    store.apply_now(s, [Retarget("tid2")])
    assert s.target_id == "tid2" and s.model.is_empty()


def test_an_oversized_model_is_reset() -> None:
    events: list[str] = []
    store = MemorySessionStore(max_model_bytes=1000, on_event=events.append)
    s = _open(store, 0)
    rows = np.arange(500, dtype=np.int32)
    store.apply_now(s, [ModelChange((ReceivedRows(BinKind.PRECINCT, 0, rows,
                                              np.ones(500, np.int64)),))])
    assert s.model.is_empty() and "model_reset" in events


async def test_the_async_interface_is_the_same_store() -> None:
    store = MemorySessionStore()
    s = await store.open(OpenSession("s", "/img/a.jp2", "tid", "c", busy=False))
    assert await store.load("c") is s
    await store.apply(s, [AddChannel("d")])
    assert await store.load("d") is s and await store.expire() == 0
    assert await store.close_all() == 1 and await store.load("c") is None


def test_the_owner_is_part_of_the_record_and_each_end_is_reported() -> None:
    now = [100.0]
    ended: list[tuple[str, str | None, str, int, float]] = []
    store = MemorySessionStore(idle_timeout=10, clock=lambda: now[0],
                               on_end=lambda s, why, secs: ended.append(
                                   (s.session_id, s.owner, why, s.bytes_sent, secs)))
    s = store.open_now(OpenSession("s", "/img/a.jp2", "tid", "c", busy=False, owner="alice"))
    assert s.owner == "alice" and s.opened_at == 100.0
    assert store.open_now(OpenSession("t", "/img/b.jp2", "tid", "d", busy=False)).owner is None
    store.apply_now(s, [Begin("c", None), End("c", sent=1234)])
    now[0] = 104.5
    store.apply_now(s, [CloseChannels(("c",))])
    assert ended == [("s", "alice", "closed", 1234, 4.5)]
    now[0] = 200.0
    assert store.expire_now() == 1 and ended[-1][:3] == ("t", None, "expired")
