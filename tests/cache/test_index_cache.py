"""The index cache: disk round trips equal fresh builds, staleness, corruption, LRU, coalescing."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cache.index_cache import IndexCache, entry_path, load_index, save_index
from codestream.source import Source, build_source
from codestream.tilebins import tile_bins, tile_part_pieces
from tests.conftest import CORPUS

ROUND_TRIP = [
    "2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2",  # PLT (Kakadu)
    "p1_05.j2k",                        # PPM, 225 tiles, SOP/EPH
    "heliov.jpx",                       # JPX with 3 codestreams
    "test-card-lossy-tiled.jp2",        # 20 tiles, interleaved tile-parts
    "p1_02.j2k",                        # PPT
]


def assert_same_index(a: Source, b: Source) -> None:
    assert a.identity == b.identity
    assert a.layout == b.layout
    assert a.metadata0 == b.metadata0
    # The whole partition of the boxes into metadata-bins: clients see the same bins.
    ma, mb = a.metadata.to_arrays(), b.metadata.to_arrays()
    assert ma.keys() == mb.keys()
    for k in ma:
        assert ma[k].dtype == mb[k].dtype and np.array_equal(ma[k], mb[k]), k
    for k in range(a.metadata.count):
        assert a.metadata.bin_bytes(k, a.view) == b.metadata.bin_bytes(k, b.view)
    assert len(a.codestreams) == len(b.codestreams)
    for x, y in zip(a.codestreams, b.codestreams, strict=True):
        for f in dataclasses.fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, np.ndarray):
                assert u.dtype == v.dtype and u.shape == v.shape, f.name
                assert np.array_equal(u, v), f.name
            elif isinstance(u, dict):
                assert u.keys() == v.keys(), f.name
                for k in u:
                    assert u[k].dtype == v[k].dtype and u[k].shape == v[k].shape, (f.name, k)
                    assert np.array_equal(u[k], v[k]), (f.name, k)
            else:
                assert type(u) is type(v) and u == v, f.name


def assert_same_bins(a: Source, b: Source) -> None:
    for cs, ix in enumerate(a.codestreams):
        assert a.main_header_bin(cs) == b.main_header_bin(cs)
        ta, tb = tile_bins(ix), tile_bins(b.codestreams[cs])
        assert np.array_equal(ta.bin_length, tb.bin_length)
        for q in range(len(ta.rows)):  # tile data-bins (JPT), tile-part by tile-part
            n = int(ta.end[q] - ta.start[q])
            assert b"".join(bytes(p) for p in tile_part_pieces(a, cs, ta, q, 0, n)) == \
                b"".join(bytes(p) for p in tile_part_pieces(b, cs, tb, q, 0, n))
        for t in range(ix.num_tiles):
            assert a.tile_header_bin(cs, t) == b.tile_header_bin(cs, t)
        for row in range(len(ix.precincts["id"])):
            assert a.precinct_bin(cs, row) == b.precinct_bin(cs, row)
            n = int(ix.precincts["bin_length"][row])
            if n > 2:
                part = b"".join(bytes(p) for p in b.bin_range(cs, row, 1, n - 1))
                assert part == a.precinct_bin(cs, row)[1:n - 1]


def copy_of(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / "images" / name
    dst.parent.mkdir(exist_ok=True)
    shutil.copyfile(CORPUS / name, dst)
    return dst


class Events:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, name: str, seconds: float) -> None:
        assert seconds >= 0
        with self.lock:
            self.counts[name] += 1


# --------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_equals_a_fresh_build(name, tmp_path) -> None:
    path = CORPUS / name
    with build_source(path) as fresh:
        entry = save_index(fresh, tmp_path)
        assert entry == entry_path(path, tmp_path) and entry.is_file()
        loaded = load_index(path, tmp_path)
        assert loaded is not None
        with loaded:
            assert_same_index(fresh, loaded)
            assert_same_bins(fresh, loaded)
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_loaded_arrays_are_read_only_views(tmp_path) -> None:
    path = CORPUS / "heliov.jpx"
    with build_source(path) as src:
        save_index(src, tmp_path)
    with load_index(path, tmp_path) as src:
        arr = src.codestreams[0].packets["offset"]
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 1


def test_no_entry_is_a_miss(tmp_path) -> None:
    assert load_index(CORPUS / "p0_01.j2k", tmp_path) is None
    assert load_index(CORPUS / "p0_01.j2k", tmp_path / "missing-dir") is None


def test_entry_names_are_per_resolved_path(tmp_path) -> None:
    a = entry_path(CORPUS / "p0_01.j2k", tmp_path)
    b = entry_path(CORPUS / "sub" / ".." / "p0_01.j2k", tmp_path)
    c = entry_path(CORPUS / "p0_09.j2k", tmp_path)
    assert a == b != c
    assert len(a.stem) == 64


def test_a_changed_file_is_not_loaded(tmp_path) -> None:
    path = copy_of("p0_10.j2k", tmp_path)
    cache = tmp_path / "cache"
    with build_source(path) as src:
        entry = save_index(src, cache)
    st = path.stat()
    # Same size and mtime, different bytes in the first 64 KiB: only the header hash differs.
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns
    assert load_index(path, cache) is None
    assert not entry.exists(), "a stale entry is removed"
    # A touched file (new mtime, same bytes) is stale too.
    with build_source(path) as src:
        save_index(src, cache)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load_index(path, cache) is None


def test_an_entry_moved_to_another_name_is_ignored(tmp_path) -> None:
    with build_source(CORPUS / "p0_01.j2k") as src:
        entry = save_index(src, tmp_path)
    other = entry_path(CORPUS / "p0_09.j2k", tmp_path)
    os.replace(entry, other)
    assert load_index(CORPUS / "p0_09.j2k", tmp_path) is None
    assert not other.exists()


def _corruptions(data: bytes) -> dict[str, bytes]:
    mid = len(data) // 2
    flipped_tail = bytearray(data)
    flipped_tail[-1] ^= 0xFF
    flipped_head = bytearray(data)
    flipped_head[40] ^= 0x20
    return {
        "empty": b"",
        "prefix only": data[:20],
        "cut in half": data[:mid],
        "one byte short": data[:-1],
        "one byte more": data + b"\0",
        "data byte flipped": bytes(flipped_tail),
        "header byte flipped": bytes(flipped_head),
        "garbage": os.urandom(len(data)),
        "other magic": b"NOTANIDX" + data[8:],
    }


@pytest.mark.parametrize("kind", list(_corruptions(b"x" * 100)))
def test_a_corrupt_entry_is_ignored_removed_and_rebuilt(kind, tmp_path) -> None:
    path = CORPUS / "p0_10.j2k"
    with build_source(path) as src:
        entry = save_index(src, tmp_path)
    entry.write_bytes(_corruptions(entry.read_bytes())[kind])
    assert load_index(path, tmp_path) is None
    assert not entry.exists()
    # Through the cache: rebuilt from the file and saved again.
    entry.write_bytes(_corruptions(entry_path(path, tmp_path).name.encode() * 10)["garbage"])
    events = Events()
    cache = IndexCache(tmp_path, on_event=events)
    src = cache.get(path)
    assert events.counts == {"miss": 1, "build": 1}
    assert entry.is_file()
    with build_source(path) as fresh:
        assert_same_index(fresh, src)
    cache.close()


def test_a_cache_dir_that_cannot_be_written_does_not_fail_gets(tmp_path, caplog) -> None:
    """Served from memory; one warning, not one per file; said again once it works again."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    cache = IndexCache(blocker, max_entries=1)
    with caplog.at_level(logging.DEBUG, logger="cache.index_cache"):
        # Files indexed whole when opened (not lazily), so each get saves at once.
        for name in ("p0_09.j2k", "p0_12.j2k", "p0_09.j2k", "p0_12.j2k"):
            src = cache.get(CORPUS / name)
            assert src.codestreams[0].num_tiles == 1
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "cannot save" in warnings[0].getMessage()
        assert sum("cannot save" in r.getMessage() for r in caplog.records) == 4
        blocker.unlink()
        cache.get(CORPUS / "p0_09.j2k")
        assert any("saving works again" in r.getMessage() for r in caplog.records)
    assert entry_path(CORPUS / "p0_09.j2k", blocker).is_file()
    cache.close()


def test_reload_of_a_million_packet_index_is_fast(tmp_path) -> None:
    """A real file's Source with its arrays scaled up to ~1M packets (what a 16k x 16k image
    with small precincts has): reload is dominated by mapping and the data CRC."""
    path = CORPUS / "p0_01.j2k"
    n, layers = 1_048_576, 8
    rng = np.random.default_rng(1)
    with build_source(path) as src:
        ix = src.codestreams[0]
        nprec = n // layers
        packets = {k: rng.integers(0, 1 << 20, n).astype(v.dtype) for k, v in ix.packets.items()}
        precincts = {k: rng.integers(0, 1 << 20, nprec).astype(v.dtype)
                     for k, v in ix.precincts.items()}
        src.codestreams[0] = dataclasses.replace(ix, packets=packets, precincts=precincts)
        entry = save_index(src, tmp_path)
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            loaded = load_index(path, tmp_path)
            times.append(time.perf_counter() - t0)
            assert loaded is not None
            assert np.array_equal(loaded.codestreams[0].packets["bin_end"], packets["bin_end"])
            loaded.close()
    best = min(times[1:])
    print(f"\n1M-packet index: {entry.stat().st_size / 1e6:.1f} MB on disk, reload "
          f"first {times[0] * 1e3:.1f} ms, best {best * 1e3:.1f} ms")
    assert best < 0.05 * 4  # target 50 ms; slack for a loaded test machine


# --------------------------------------------------------------------------- IndexCache
def test_get_hits_misses_and_builds(tmp_path) -> None:
    events = Events()
    path = CORPUS / "p0_09.j2k"
    cache = IndexCache(tmp_path, on_event=events)
    a = cache.get(path)
    assert events.counts == {"miss": 1, "build": 1}
    assert cache.get(path) is a and cache.get(str(path)) is a
    assert events.counts == {"miss": 1, "build": 1, "hit": 2}
    assert path in cache and len(cache) == 1
    cache.close()
    assert a.view is None
    # A new cache (a restarted server) loads from disk: a miss without a build.
    events2 = Events()
    cache2 = IndexCache(tmp_path, on_event=events2)
    b = cache2.get(path)
    assert events2.counts == {"miss": 1}
    with build_source(path) as fresh:
        assert_same_index(fresh, b)
    cache2.close()


def test_memory_only_cache(tmp_path) -> None:
    events = Events()
    cache = IndexCache(None, on_event=events)
    src = cache.get(CORPUS / "p0_12.j2k")
    assert cache.get(CORPUS / "p0_12.j2k") is src
    assert events.counts == {"miss": 1, "build": 1, "hit": 1}
    assert not list(tmp_path.iterdir())
    cache.close()


def test_a_file_changed_since_it_was_cached_is_rebuilt(tmp_path) -> None:
    path = copy_of("p0_01.j2k", tmp_path)
    events = Events()
    cache = IndexCache(tmp_path / "cache", on_event=events)
    old = cache.get(path)
    # Rewritten with another image: new size and mtime.
    shutil.copyfile(CORPUS / "p0_09.j2k", path)
    new = cache.get(path)
    assert new is not old and old.view is None, "the stale Source was closed"
    assert events.counts == {"miss": 2, "build": 2}
    with build_source(path) as fresh:
        assert_same_index(fresh, new)
        assert_same_bins(fresh, new)
    # Touched only: rebuilt again (the disk entry is stale too).
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000))
    assert cache.get(path) is not new
    assert events.counts == {"miss": 3, "build": 3}
    # Deleted: the error reaches the caller and the entry is gone.
    path.unlink()
    with pytest.raises(FileNotFoundError):
        cache.get(path)
    assert len(cache) == 0
    cache.close()


def test_lru_eviction_closes_sources_and_respects_max_entries(tmp_path) -> None:
    names = ["p0_01.j2k", "p0_09.j2k", "p0_12.j2k", "liver_j2k.j2k", "basn6a08.jp2"]
    events = Events()
    # No background completion: it holds a lazily indexed source (p0_01) while it works.
    cache = IndexCache(tmp_path, max_entries=2, on_event=events, background=False)
    opened = [cache.get(CORPUS / n) for n in names[:2]]
    cache.get(CORPUS / names[0])            # names[0] is now the most recent
    third = cache.get(CORPUS / names[2])    # evicts names[1]
    assert len(cache) == 2
    assert opened[1].view is None and opened[0].view is not None
    assert CORPUS / names[1] not in cache
    for n in names[3:]:
        cache.get(CORPUS / n)
        assert len(cache) <= 2
    assert opened[0].view is None and third.view is None
    # An evicted path comes back from the disk cache, not from a build.
    builds = events.counts["build"]
    again = cache.get(CORPUS / names[1])
    assert events.counts["build"] == builds and again is not opened[1]
    cache.close()


def test_eviction_tolerates_views_still_held(tmp_path) -> None:
    # No background completion: a lazily indexed source being completed is in use, and its
    # close would wait for that (the next test), which made this one depend on timing.
    cache = IndexCache(None, max_entries=1, background=False)
    src = cache.get(CORPUS / "p0_01.j2k")
    held = src.bin_range(0, 0, 0, 10)  # memoryviews of the map, as a response would hold
    cache.get(CORPUS / "p0_09.j2k")     # evicts and closes src
    assert src.view is None
    assert len(bytes(held[0])) > 0
    cache.close()


def test_a_source_in_use_is_closed_when_its_last_user_is_done(tmp_path) -> None:
    """Evicted (or found stale) while a response reads it: the file stays open until the
    response is done, then goes (a response in flight once lost its map: ValueError, a cut
    answer). No background completion: it would be one more user of p0_01's source."""
    cache = IndexCache(None, max_entries=1, background=False)
    src = cache.get(CORPUS / "p0_01.j2k")
    with src.in_use():
        with src.in_use():
            cache.get(CORPUS / "p0_09.j2k")  # evicts and closes src
            assert src.view is not None
            assert len(b"".join(src.precinct_pieces(0, 0))) > 0
        assert src.view is not None      # one user left
    assert src.view is None              # the last one released it
    src.close()                          # closing again is harmless
    cache.close()


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError):
        IndexCache(None, max_entries=0)


def test_threads_getting_one_path_share_one_build(tmp_path) -> None:
    events = Events()
    cache = IndexCache(tmp_path, on_event=events)
    path = CORPUS / "p1_05.j2k"  # slow enough to build (PPM, 26k packets) for threads to overlap
    out: list[Source] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        out.append(cache.get(path))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 8 and all(s is out[0] for s in out)
    assert events.counts["build"] == 1
    assert events.counts["hit"] + events.counts["miss"] == 8
    cache.close()


def test_caches_of_several_processes_share_one_build(tmp_path) -> None:
    """Caches that share a directory (workers, hosts) stand for processes here: each has its
    own memory, so only the directory's lock makes the others wait and load the one build."""
    events = Events()
    caches = [IndexCache(tmp_path, on_event=events) for _ in range(4)]
    path = CORPUS / "p1_05.j2k"
    out: list[Source] = []
    barrier = threading.Barrier(len(caches))

    def worker(cache: IndexCache) -> None:
        barrier.wait()
        out.append(cache.get(path))

    threads = [threading.Thread(target=worker, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 4 and events.counts["build"] == 1
    with build_source(path) as fresh:
        for src in out:
            assert_same_index(fresh, src)
    for c in caches:
        c.close()


def test_temporaries_of_a_killed_writer_are_removed(tmp_path) -> None:
    entry = entry_path(CORPUS / "p1_05.j2k", tmp_path)
    old = tmp_path / f"{entry.name}.abc123.tmp"
    new = tmp_path / f"{entry.name}.def456.tmp"  # a write in progress elsewhere
    for f in (old, new):
        f.write_bytes(b"half an index")
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    IndexCache(tmp_path).close()
    assert not old.exists() and new.exists()


async def test_aget_coalesces_concurrent_requests_into_one_build(tmp_path) -> None:
    events = Events()
    cache = IndexCache(tmp_path, on_event=events)
    path = CORPUS / "p1_05.j2k"
    got = await asyncio.gather(*(cache.aget(path) for _ in range(10)))
    assert all(s is got[0] for s in got)
    assert events.counts == {"miss": 10, "build": 1}
    assert await cache.aget(path) is got[0]
    assert events.counts["hit"] == 1
    cache.close()
    # A second cache on the same directory: 10 requests, one disk load, no build.
    events2 = Events()
    cache2 = IndexCache(tmp_path, on_event=events2)
    got2 = await asyncio.gather(*(cache2.aget(str(path)) for _ in range(10)))
    assert all(s is got2[0] for s in got2)
    assert events2.counts == {"miss": 10}
    cache2.close()


async def test_aget_does_not_block_the_event_loop(tmp_path) -> None:
    cache = IndexCache(tmp_path)
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0.001)

    tick_task = asyncio.create_task(ticker())
    await cache.aget(CORPUS / "p1_05.j2k")
    stop = True
    await tick_task
    assert ticks > 3
    cache.close()


async def test_aget_errors_reach_every_waiter_and_are_not_cached(tmp_path) -> None:
    bad = tmp_path / "bad.j2k"
    bad.write_bytes(b"\xff\x4f\xff\x51" + b"\0" * 10)
    cache = IndexCache(tmp_path / "cache")
    results = await asyncio.gather(*(cache.aget(bad) for _ in range(5)), return_exceptions=True)
    from codestream.errors import CodestreamError

    assert all(isinstance(r, CodestreamError) for r in results)
    assert len(cache) == 0
    shutil.copyfile(CORPUS / "p0_01.j2k", bad)
    assert (await cache.aget(bad)).codestreams[0].num_tiles == 1
    cache.close()


async def test_a_cancelled_waiter_does_not_cancel_the_build(tmp_path) -> None:
    events = Events()
    cache = IndexCache(tmp_path, on_event=events)
    path = CORPUS / "p1_05.j2k"
    first = asyncio.create_task(cache.aget(path))
    second = asyncio.create_task(cache.aget(path))
    await asyncio.sleep(0)
    first.cancel()
    src = await second
    assert src is cache.get(path)
    assert events.counts["build"] == 1
    cache.close()


def _completing_while_held(cache: IndexCache, path: Path, src: Source) -> threading.Thread:
    """Completes `src`'s index in a thread (cache.complete) while the caller holds the source
    as a response would; returns once the index is whole and the thread waits to save it."""
    done = threading.Thread(target=cache.complete, args=(path,))
    done.start()
    deadline = time.monotonic() + 10
    while not src.complete and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the completer now waits for the response
    return done


def test_a_completed_index_is_persisted_after_the_responses_that_hold_its_source(
        tmp_path, monkeypatch) -> None:
    """Writing a large index would compete with the responses that waited for it."""
    from cache import index_cache

    monkeypatch.setattr(index_cache, "SAVE_AFTER_RESPONSES", 30.0)
    path = tmp_path / "img.j2k"
    shutil.copyfile(CORPUS / "p0_04.j2k", path)  # RPCL-like lazy: indexed a resolution first
    cache = IndexCache(tmp_path / "ix", background=False, isolate=False)
    try:
        src = cache.get(path)
        assert not src.complete
        entry = entry_path(path, tmp_path / "ix")
        with src.in_use():  # a response being written
            done = _completing_while_held(cache, path, src)
            assert src.complete and not entry.exists(), "not while a response holds it"
        done.join(10)
        assert entry.exists()
    finally:
        cache.close()
    monkeypatch.setattr(index_cache, "SAVE_AFTER_RESPONSES", 0.05)
    entry.unlink()
    cache = IndexCache(tmp_path / "ix", background=False, isolate=False)
    try:
        src = cache.get(path)
        with src.in_use():  # a response that never ends does not keep it from disk
            cache.complete(path)
            assert entry.exists()
    finally:
        cache.close()


def test_background_completion_of_a_new_source_waits_for_the_request_that_opened_it(
        tmp_path) -> None:
    """The request's own indexing (a window at full resolution) would share the processor
    with a background step started as the source was opened."""
    path = tmp_path / "img.j2k"
    shutil.copyfile(CORPUS / "p0_04.j2k", path)  # lazily indexed, a resolution at first
    cache = IndexCache(tmp_path / "ix", isolate=False)  # completed in the background
    try:
        src = cache.get(path)
        first = src.codestreams[0].resolutions_indexed
        assert first is not None
        with src.in_use():  # the request, answered meanwhile
            time.sleep(0.6)
            assert src.codestreams[0].resolutions_indexed == first, "no step meanwhile"
        deadline = time.monotonic() + 20
        while not entry_path(path, tmp_path / "ix").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert src.complete and entry_path(path, tmp_path / "ix").exists()
    finally:
        cache.close()
    cache = IndexCache(tmp_path / "ix2", isolate=False)
    try:  # nobody takes it (a tool): completed after a moment all the same
        src = cache.get(path)
        deadline = time.monotonic() + 20
        while not src.complete and time.monotonic() < deadline:
            time.sleep(0.02)
        assert src.complete
    finally:
        cache.close()


def test_a_file_replaced_while_its_old_index_waits_to_be_saved_keeps_the_new_entry(
        tmp_path, monkeypatch) -> None:
    """The old source's index, complete while a response held it, is not written over the
    entry the replacing file's index has saved meanwhile."""
    from cache import index_cache

    monkeypatch.setattr(index_cache, "SAVE_AFTER_RESPONSES", 30.0)
    path = tmp_path / "img.j2k"
    shutil.copyfile(CORPUS / "p0_04.j2k", path)  # lazily indexed
    cache = IndexCache(tmp_path / "ix", background=False, isolate=False)
    try:
        old = cache.get(path)
        assert not old.complete
        with old.in_use():  # a response being written
            done = _completing_while_held(cache, path, old)
            shutil.copyfile(CORPUS / "p0_02.j2k", tmp_path / "new.j2k")
            os.replace(tmp_path / "new.j2k", path)  # a new file (inode) under the name
            assert cache.get(path).complete  # indexed whole at once, and saved
            assert load_index(path, tmp_path / "ix") is not None
        done.join(10)
        assert not done.is_alive()
        assert load_index(path, tmp_path / "ix") is not None, "the old index was saved over it"
    finally:
        cache.close()


def test_a_file_replaced_while_its_old_index_is_being_saved_keeps_the_new_entry(
        tmp_path, monkeypatch) -> None:
    """The replacement lands after the completer's last check, while the old index is
    written (a large index takes a second): the old entry must not take the new one's place
    (load would drop it, and the new file would be indexed again on the next start)."""
    from cache import index_cache

    monkeypatch.setattr(index_cache, "SAVE_AFTER_RESPONSES", 0.0)
    path = tmp_path / "img.j2k"
    shutil.copyfile(CORPUS / "p0_04.j2k", path)  # lazily indexed
    cache = IndexCache(tmp_path / "ix", background=False, isolate=False)
    real_save = index_cache.save_index
    try:
        old = cache.get(path)
        assert not old.complete

        def save_while_replaced(src, cache_dir):
            if src is old:  # the file is replaced, and its new index saved, meanwhile
                shutil.copyfile(CORPUS / "p0_02.j2k", tmp_path / "new.j2k")
                os.replace(tmp_path / "new.j2k", path)
                assert cache.get(path).complete
                assert load_index(path, tmp_path / "ix") is not None
            return real_save(src, cache_dir)

        monkeypatch.setattr(index_cache, "save_index", save_while_replaced)
        cache.complete(path)
        assert old.complete
        assert load_index(path, tmp_path / "ix") is not None, "the old index was saved over it"
        assert not list((tmp_path / "ix").glob("*.tmp")), "the old index's temporary file left"
    finally:
        cache.close()
