"""A file rewritten in place while it is indexed or served must not kill the server.

Reading a memory-mapped page past a file's new end raises SIGBUS, which ends the process.
The server indexes in child processes (cache.isolation) and serves with pread
(codestream.source.FileBytes); these tests rewrite files under both.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from array import array
from pathlib import Path

import numpy as np
import pytest

from cache.index_cache import IndexCache
from cache.isolation import run_isolated
from codestream.errors import CodestreamError, FileChanged
from codestream.source import build_source
from dicom.errors import DicomError
from tests.conftest import CORPUS

ROOT = Path(__file__).resolve().parents[2]


def _die_by_sigbus() -> None:
    os.kill(os.getpid(), signal.SIGBUS)


def _die_the_first_time(flag: str) -> str:
    if not os.path.exists(flag):
        open(flag, "w").close()
        os._exit(1)
    return "second try"


def _raise_codestream_error() -> None:
    raise CodestreamError(12, "bad marker", unsupported=True)


def _raise_dicom_error() -> None:
    raise DicomError("frame 2: truncated", 422)


def test_a_child_killed_by_sigbus_is_a_file_error_and_the_next_jobs_run() -> None:
    with pytest.raises(FileChanged, match="changed while it was being indexed"):
        run_isolated(_die_by_sigbus)
    assert run_isolated(os.getpid) != os.getpid()  # a new child answers


def test_a_child_that_dies_otherwise_gets_its_job_again_then_it_is_our_error(
        tmp_path) -> None:
    with pytest.raises(RuntimeError, match="indexing process died"):
        run_isolated(os._exit, 3)
    assert run_isolated(sum, [1, 2]) == 3
    # Dead once, then done: one more try in a new child answers.
    flag = tmp_path / "died-once"
    assert run_isolated(_die_the_first_time, str(flag)) == "second try"


def test_errors_come_back_from_the_child_whole() -> None:
    with pytest.raises(CodestreamError) as err:
        run_isolated(_raise_codestream_error)
    assert (err.value.offset, err.value.reason, err.value.unsupported) == (12, "bad marker", True)
    with pytest.raises(DicomError) as derr:
        run_isolated(_raise_dicom_error)
    assert (derr.value.reason, derr.value.status) == ("frame 2: truncated", 422)


def test_a_file_rewritten_in_place_while_its_index_is_completed(tmp_path) -> None:
    """`cp other.j2k served.j2k` right after the first request, while the index cache
    completes the lazily built index in the background: indexing in this process died of
    SIGBUS here (CI, 2026-11-30). Run in a child Python so that a crash is a failure with a
    message instead of the end of the test run."""
    script = textwrap.dedent(f"""
        import shutil, sys, tempfile, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from cache.index_cache import IndexCache

        def main():
            corpus = Path({str(CORPUS)!r})
            tmp = Path(tempfile.mkdtemp())
            cache = IndexCache(None)
            for i in range(60):
                path = tmp / "img.j2k"
                shutil.copyfile(corpus / "p0_04.j2k", path)   # RLCP, no PLT: indexed lazily
                cache.get(path)
                time.sleep(0.001 * (i % 10))
                shutil.copyfile(corpus / "p0_09.j2k", path)   # in place: cut, then written
                assert cache.get(path).codestreams[0].siz.xsiz == 17
            cache.close()
            print("survived")

        if __name__ == "__main__":
            main()
    """)
    (tmp_path / "rewrite.py").write_text(script)
    run = subprocess.run([sys.executable, str(tmp_path / "rewrite.py")], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0 and "survived" in run.stdout, (run.returncode, run.stderr[-2000:])


def test_a_file_cut_shorter_while_served_gives_an_error_not_sigbus(tmp_path) -> None:
    path = tmp_path / "img.jp2"
    shutil.copyfile(CORPUS / "file1.jp2", path)
    with build_source(path) as src:
        ix = src.codestreams[0]
        whole = len(b"".join(src.precinct_pieces(0, len(ix.precincts["pkt_start"]) - 1)))
        assert whole > 0
        with open(path, "r+b") as f:
            f.truncate(1000)
        with pytest.raises(CodestreamError, match="cut shorter while it was being served"):
            src.precinct_pieces(0, len(ix.precincts["pkt_start"]) - 1)
        with pytest.raises(CodestreamError, match="cut shorter"):
            _read_runs(src.view, [500, 900], [100, 200])


def _read_runs(reader, offsets, lengths) -> list[bytes]:
    """Each run's bytes, read by `reader.read_runs_into` into one buffer (with a byte
    between runs that no read may touch)."""
    buf = bytearray(b"\xee" * (sum(lengths) + len(lengths) + 1))
    mv = memoryview(buf)
    views, pos = [], 1
    for n in lengths:
        views.append(mv[pos:pos + n])
        pos += n + 1
    reader.read_runs_into(views, np.array(offsets, np.int64), np.array(lengths, np.int64))
    gaps = [buf[p] for p in np.cumsum([0] + [n + 1 for n in lengths]).tolist()]
    assert set(gaps) == {0xEE}, "a read wrote outside its run"
    return [bytes(v) for v in views]


def test_runs_are_read_into_their_places(tmp_path) -> None:
    path = tmp_path / "img.jp2"
    shutil.copyfile(CORPUS / "file1.jp2", path)
    data = path.read_bytes()
    with build_source(path) as src:
        # Out of order, adjacent (30+20 = 50 after 20...), overlapping, empty, at the end.
        offsets = [90_000, 10, 5_000, 400_000, 20, 0, 40, 45, 50, len(data) - 7]
        lengths = [100, 30, 7_000, 50, 0, 4, 10, 20, 5, 7]
        want = [data[o:o + n] for o, n in zip(offsets, lengths, strict=True)]
        assert _read_runs(src.view, offsets, lengths) == want
        # More adjacent runs than one preadv takes (IOV_MAX buffers).
        from codestream.source import IOV_MAX
        count = IOV_MAX * 2 + 3
        offsets = [1000 + 3 * i for i in range(count)]
        want = [data[o:o + 3] for o in offsets]
        assert _read_runs(src.view, offsets, [3] * count) == want
        with pytest.raises(FileChanged, match="cut shorter"):
            _read_runs(src.view, [len(data) - 5], [10])


def test_the_server_cache_indexes_in_a_child_and_tools_in_process(tmp_path) -> None:
    served = IndexCache(None, background=False)
    tool = IndexCache(None, background=False, isolate=False)
    try:
        a = served.get(CORPUS / "p0_04.j2k")
        b = tool.get(CORPUS / "p0_04.j2k")
        assert a.index_in is run_isolated and b.index_in is None
        for src in (a, b):
            assert not src.complete
            src.index_codestreams([0])
            assert src.complete
        pa, pb = a.codestreams[0].packets, b.codestreams[0].packets
        assert sorted(pa) == sorted(pb) and all((pa[k] == pb[k]).all() for k in pa)
    finally:
        served.close()
        tool.close()


def test_a_changed_file_is_answered_503_with_retry_after() -> None:
    """Not damage (422): asking again reads the file as it is now."""
    from server.errors import classify

    answer = classify(FileChanged("the file changed while it was being indexed"))
    assert (answer.status, answer.headers.get("Retry-After")) == (503, "1")
    assert "changed while it was being indexed" in answer.body


def test_a_closed_source_never_reads_another_file(tmp_path) -> None:
    """A reader kept past the close fails; it must not read whatever file reuses the fd."""
    src = build_source(CORPUS / "file1.jp2")
    reader = src.view
    src.close()
    with open(CORPUS / "file3.jp2", "rb"):  # likely takes the closed file's number
        with pytest.raises(ValueError):
            reader[0:100]


def test_a_span_reader_reads_its_spans_once_and_the_rest_through_the_file(tmp_path) -> None:
    from codestream.source import SpanReader

    path = tmp_path / "img.jp2"
    shutil.copyfile(CORPUS / "file1.jp2", path)
    data = path.read_bytes()
    with build_source(path) as src:
        spans = np.array([1000, 5000, 5100, 90_000]), np.array([3000, 200, 900, 0])
        reader = SpanReader(src.view, *spans)
        for offsets, lengths in (([1000, 5000, 5500, 3999], [10, 100, 500, 1]),
                                 ([1000, 200_000], [10, 50])):  # one run outside the spans
            got = _read_runs(reader, offsets, lengths)
            assert got == [data[o:o + n] for o, n in zip(offsets, lengths, strict=True)]
        # Over the budget: nothing read up front, every run read through the file.
        small = SpanReader(src.view, *spans, budget=100)
        assert _read_runs(small, [5000], [100]) == [data[5000:5100]]
        with open(path, "r+b") as f:
            f.truncate(2000)
        with pytest.raises(FileChanged):
            SpanReader(src.view, *spans)


def test_a_job_past_its_time_is_given_up_and_its_child_killed(monkeypatch) -> None:
    import time

    from cache import isolation

    monkeypatch.setattr(isolation, "JOB_TIMEOUT", 0.5)
    with pytest.raises(isolation.IndexingTimeout) as err:
        isolation.run_isolated(time.sleep, 30)
    assert err.value.status == 503
    assert isolation.run_isolated(sum, [2, 3]) == 5


def test_an_idle_child_that_died_is_replaced_not_handed_out() -> None:
    from cache import isolation

    pids = {isolation.run_isolated(os.getpid) for _ in range(3)}
    for pid in pids:  # the idle children, killed as the OOM killer would
        os.kill(pid, signal.SIGKILL)
    import time
    time.sleep(0.2)
    assert isolation.run_isolated(sum, [1, 1]) == 2


def test_a_file_removed_before_its_lazy_index_is_completed_is_file_changed(tmp_path) -> None:
    """The child opens the file by name: gone, it is FileChanged (503), not a 500."""
    path = tmp_path / "img.j2k"
    shutil.copyfile(CORPUS / "p0_04.j2k", path)
    cache = IndexCache(None, background=False)
    try:
        src = cache.get(path)
        assert not src.complete
        with src.in_use():
            path.unlink()
            with pytest.raises(FileChanged, match="removed or replaced"):
                src.index_codestreams([0])
    finally:
        cache.close()


def test_a_dicom_file_changed_before_a_frame_is_indexed_is_503_not_a_bad_frame(tmp_path) -> None:
    from tests.data.dicom import build_dicom

    path = tmp_path / "two.dcm"
    build_dicom(path, [[(CORPUS / "p0_01.j2k").read_bytes()]] * 2)
    cache = IndexCache(None, background=False)
    try:
        src = cache.get(path)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
        with pytest.raises(FileChanged):
            src.codestreams[1]
        assert 1 not in src._failures, "not remembered as a bad frame"
    finally:
        cache.close()


async def test_a_server_whose_children_cannot_start_indexes_in_its_own_process(
        tmp_path, monkeypatch, caplog) -> None:
    """A sandbox without fork: one warning at startup, and files are still served."""
    import logging

    import aiohttp

    from cache import isolation
    from tests.reliability.harness import running_app

    def refuse() -> None:
        raise OSError("fork refused")

    monkeypatch.setattr(isolation, "warm", refuse)
    root = tmp_path / "root"
    root.mkdir()
    shutil.copyfile(CORPUS / "p0_04.j2k", root / "a.j2k")
    with caplog.at_level(logging.WARNING, logger="jpip.request"):
        async with running_app(root) as app:
            assert app.state.index_cache._index_in is None
            async with aiohttp.ClientSession() as http:
                url = f"{app.url}/jpip?target=a.j2k&fsiz=64,64&type=jpp-stream"
                async with http.get(url) as r:
                    assert r.status == 200, await r.text()
    assert "cannot start indexing processes (fork refused)" in caplog.text


# --- results through shared memory ------------------------------------------------------------
def _large_result(n: int) -> dict:
    return {"large": np.arange(n, dtype=np.int64), "small": np.arange(10, dtype=np.int32),
            "text": "kept in the pickle"}


def _memfd_descriptors() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed meanwhile
            continue
        if "jpip-index-result" in target:
            out.append(target)
    return out


def _memfd_maps() -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if "jpip-index-result" in line]


def test_large_results_come_back_through_shared_memory_and_leave_nothing_behind(
        monkeypatch) -> None:
    from cache import isolation

    shared = []
    monkeypatch.setattr(isolation, "_receive_fd",
                        lambda sock, real=isolation._receive_fd: shared.append(1) or real(sock))
    shm_before = set(os.listdir("/dev/shm"))
    result = run_isolated(_large_result, 1 << 20)  # 8 MiB: through a memfd, not the pipe
    assert shared == [1]
    assert np.array_equal(result["large"], np.arange(1 << 20))
    assert result["small"].tolist() == list(range(10)) and result["text"] == "kept in the pickle"
    assert result["large"].flags.writeable  # as the child's array was
    # The arrays are the child's pages, mapped copy-on-write (no copy, no descriptor kept),
    # until the last of them is gone.
    assert _memfd_descriptors() == [] and len(_memfd_maps()) == 1
    assert " rw-p " in _memfd_maps()[0]
    result["large"][:3] = -1  # stays here
    assert result["large"][:4].tolist() == [-1, -1, -1, 3]
    del result
    assert _memfd_maps() == []
    assert set(os.listdir("/dev/shm")) == shm_before, "nothing has a name"
    assert run_isolated(_large_result, 1000)["large"].sum() == 499500
    assert shared == [1], "small results come through the pipe"


def test_results_are_read_out_where_they_cannot_be_mapped(monkeypatch) -> None:
    from cache import isolation

    monkeypatch.setattr(isolation, "_private_map", lambda fd, size: None)
    result = run_isolated(_large_result, 1 << 18)
    assert np.array_equal(result["large"], np.arange(1 << 18))
    assert result["large"].flags.writeable
    assert _memfd_descriptors() == [] and _memfd_maps() == []


def test_a_mapped_result_cannot_be_cut_short_under_the_parent() -> None:
    """The parent seals a reply's file against shrinking before mapping it: a sender that kept
    a descriptor cannot truncate it under the arrays (a read past a file's end is SIGBUS).
    A file that cannot be sealed is read out instead of mapped."""
    import fcntl

    from cache.isolation import _receive

    for sealable in (True, False):
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealable else 0)
        fd = os.memfd_create("jpip-index-result", flags)
        payload = np.arange(1 << 18, dtype=np.int64)
        os.write(fd, payload.tobytes())
        ours, theirs = _pipe_pair()
        try:
            _send_places_and_fd(theirs, [(0, payload.nbytes)], fd, payload)
            ok, got = _receive(ours)
            assert ok and np.array_equal(got, payload)
            if sealable:
                assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
                with pytest.raises(PermissionError):
                    os.ftruncate(fd, 0)  # what a child led astray would try
                assert len(_memfd_maps()) == 1, "mapped"
            else:
                assert _memfd_maps() == [], "read out, not mapped"
                os.ftruncate(fd, 0)  # harmless: nothing here maps it
            assert np.array_equal(got, payload)
            del got
        finally:
            os.close(fd)
            ours.close()
            theirs.close()
        assert _memfd_maps() == [], "the map went with the reply"


def _shared_column(n: int) -> dict:
    """In a child: an index column (codestream.allocation) and whether it was made in the
    reply's shared memory."""
    from codestream.allocation import result_column

    column = result_column(n, np.int64)
    column[:] = np.arange(n)
    return {"column": column, "in_shared_memory": _in_memfd_map(column)}


def _in_memfd_map(a: np.ndarray) -> bool:
    start, end = a.ctypes.data, a.ctypes.data + a.nbytes
    for line in _memfd_maps():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= start and end <= hi:
            return True
    return False


def test_index_columns_are_made_in_the_shared_memory_that_takes_them_back() -> None:
    """The child does not copy them into the memfd, and the parent maps them."""
    out = run_isolated(_shared_column, 1 << 18)  # 2 MiB
    assert out["in_shared_memory"] is True
    assert np.array_equal(out["column"], np.arange(1 << 18))
    assert _in_memfd_map(out["column"])
    small = run_isolated(_shared_column, 100)  # below SHARED_MIN: an ordinary array, pickled
    assert small["in_shared_memory"] is False and small["column"].sum() == 4950


def _index_with_shared_columns(path: str, key: tuple) -> tuple:
    """In a child: a whole index of `path`, its columns of more than 4 KiB made in shared
    memory (SHARED_MIN lowered for a small test file), and which columns were."""
    from cache import isolation
    from codestream.source import index_file_codestream

    size = os.stat(path).st_size
    saved, isolation.SHARED_MIN = isolation.SHARED_MIN, 4096
    try:
        ix = index_file_codestream(path, key, 0, size, True, None)
        shared = sorted(k for k, v in ix.packets.items() if _in_memfd_map(v))
        return ix, shared
    finally:
        isolation.SHARED_MIN = saved


def test_an_index_made_in_shared_memory_is_the_one_made_here(tmp_path) -> None:
    from codestream.source import stat_key

    path = CORPUS / "p0_04.j2k"  # 1920 packets, RLCP, no PLT: headers decoded
    with build_source(path) as here:
        want = here.codestreams[0]
        ix, shared = run_isolated(_index_with_shared_columns, str(path),
                                  stat_key(here.identity))
    assert shared == sorted(k for k in want.packets if want.packets[k].nbytes >= 4096)
    assert "offset" in shared and "bin_end" in shared
    assert sorted(ix.packets) == sorted(want.packets)
    for k, v in want.packets.items():
        assert ix.packets[k].dtype == v.dtype and np.array_equal(ix.packets[k], v), k
    for k, v in want.precincts.items():
        assert np.array_equal(ix.precincts[k], v), k


def test_failed_and_killed_jobs_leave_no_shared_memory_behind() -> None:
    shm_before = set(os.listdir("/dev/shm"))
    with pytest.raises(CodestreamError):
        run_isolated(_raise_codestream_error)
    with pytest.raises(FileChanged):
        run_isolated(_die_by_sigbus)
    assert run_isolated(_large_result, 1 << 18)["large"].sum() == (1 << 18) * ((1 << 18) - 1) // 2
    assert _memfd_descriptors() == [] and _memfd_maps() == []
    assert set(os.listdir("/dev/shm")) == shm_before


def test_a_reply_cut_before_its_buffers_is_a_dead_child_and_leaks_nothing() -> None:
    """The child died between the pickle and the descriptors of its buffers."""
    import multiprocessing
    import pickle

    from cache.isolation import _receive, _send

    ours, theirs = multiprocessing.Pipe()
    try:
        _send(theirs, (True, _large_result(1 << 18)))  # whole: it arrives
        ok, value = _receive(ours)
        assert ok and np.array_equal(value["large"], np.arange(1 << 18))
        buffers: list = []
        data = pickle.dumps(_large_result(1 << 18), protocol=5, buffer_callback=buffers.append)
        theirs.send_bytes(array("q", [v for b in buffers for v in (0, b.raw().nbytes)]).tobytes())
        theirs.send_bytes(data)
        theirs.close()  # and no descriptors
        with pytest.raises(EOFError):
            _receive(ours)
        assert _memfd_descriptors() == []
    finally:
        ours.close()
        theirs.close()


# --- starting children ------------------------------------------------------------------------
def test_a_job_beside_a_running_one_finds_a_started_child() -> None:
    """A request's indexing while a background step holds a child: the server started two,
    so it does not wait for a new one to start."""
    import threading
    import time

    from cache import isolation

    isolation.shutdown()  # no idle children left by other tests
    isolation.warm()
    warm = {c.process.pid for c in isolation._children._idle}
    assert len(warm) == 2
    busy = threading.Thread(target=run_isolated, args=(time.sleep, 1.0))
    busy.start()
    time.sleep(0.2)
    try:
        assert run_isolated(os.getpid) in warm
    finally:
        busy.join()


def test_preloaded_modules_are_not_imported_again_by_each_child(tmp_path) -> None:
    """Children import the parent's main module; what it imports, named to `preload`, the
    fork server imports once (the server names server.app, which its main module imports)."""
    log = tmp_path / "imports.log"
    (tmp_path / "heavy_module.py").write_text(
        f"import os\nwith open({str(log)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n")
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent("""
        import os
        import heavy_module
        from cache import isolation

        if __name__ == "__main__":
            isolation.preload("heavy_module")
            isolation.warm()
            print(*{isolation.run_isolated(os.getpid) for _ in range(4)})
            isolation.shutdown()
    """))
    # Installed, as the server is (the fork server does not get the parent's sys.path).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, check=True, env=env)
    children = {int(p) for p in out.stdout.split()}
    importers = {int(p) for p in log.read_text().split()}
    assert len(importers) == 2, log.read_text()  # the main process and the fork server
    assert not importers & children


def test_warm_settles_for_the_children_that_could_start(monkeypatch, caplog) -> None:
    """A process limit that lets one child start: a warning, and jobs run in it; none: the
    error (the server then indexes in its own process)."""
    import logging

    from cache import isolation

    isolation.shutdown()
    real = isolation._Child
    made = []

    def second_refused():
        if made:
            raise OSError("fork refused")
        made.append(real())
        return made[-1]

    monkeypatch.setattr(isolation, "_Child", second_refused)
    with caplog.at_level(logging.WARNING, logger="cache.isolation"):
        isolation.warm(2)
    assert "fewer indexing processes than 2: fork refused" in caplog.text
    assert isolation.run_isolated(os.getpid) == made[0].process.pid
    isolation.shutdown()
    made.append(None)  # every start refused from now on
    with pytest.raises(OSError, match="fork refused"):
        isolation.warm(2)


# --- replies the parent does not trust --------------------------------------------------------
# A child parses untrusted files: a reply must not be able to have the parent run anything.
def _mark(path: str) -> str:
    """What a hostile pickle would have the parent call (here: leaves a trace of who did)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return "marked"


class _Hostile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_mark, (self.path,))


class _HostileError(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def __reduce__(self):
        return (_mark, (self.path,))


def _hostile_result(path: str, large: bool) -> dict:
    return {"index": np.arange((1 << 18) if large else 10), "payload": _Hostile(path)}


def _raise_hostile_error(path: str) -> None:
    raise _HostileError(path)


def _marks(path) -> set[int]:
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


@pytest.mark.parametrize("large", [False, True], ids=["through the pipe", "through a memfd"])
def test_a_reply_naming_another_callable_is_refused_not_called(tmp_path, large) -> None:
    from cache.isolation import BadReply

    marker = tmp_path / "called"
    with pytest.raises(BadReply, match="names tests.cache.test_isolation._mark"):
        run_isolated(_hostile_result, str(marker), large)
    assert os.getpid() not in _marks(marker), "the child's pickle ran code in the parent"
    assert run_isolated(sum, [1, 2]) == 3  # the next job finds a sound child


def test_an_error_the_parent_would_refuse_comes_back_as_a_runtime_error(tmp_path) -> None:
    marker = tmp_path / "called"
    with pytest.raises(RuntimeError, match="_HostileError"):
        run_isolated(_raise_hostile_error, str(marker))
    assert _marks(marker) == set(), "checked without being called, in the child as well"


def test_a_child_that_raises_system_exit_does_not_end_the_parent() -> None:
    """Raised in a worker thread of the server, SystemExit would end its event loop."""
    with pytest.raises(RuntimeError, match="SystemExit: 3"):
        run_isolated(sys.exit, 3)


def _pipe_pair():
    import multiprocessing

    return multiprocessing.Pipe()


def test_a_sizes_message_is_not_unpickled(tmp_path) -> None:
    """The sizes of a reply's buffers are integers read as such, not a pickle."""
    import pickle

    from cache.isolation import BadReply, _receive

    marker = tmp_path / "called"
    ours, theirs = _pipe_pair()
    try:
        theirs.send(_Hostile(str(marker)))  # a pickle where the sizes go
        theirs.send_bytes(pickle.dumps((True, None)))
        theirs.close()
        with pytest.raises((BadReply, EOFError)):
            _receive(ours)
        assert _marks(marker) == set()
    finally:
        ours.close()
        theirs.close()


def _send_places_and_fd(conn, places: list[tuple[int, int]], fd: int, value=None) -> None:
    """A reply as a child sends it: `value`'s large buffers out of band, at `places`."""
    import pickle
    import socket

    conn.send_bytes(array("q", [v for place in places for v in place]).tobytes())
    conn.send_bytes(pickle.dumps((True, value), protocol=5, buffer_callback=lambda b: False))
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [fd]))])


@pytest.mark.parametrize("places", [[(0, 1 << 40)], [(0, -1)], [(-8, 8)], [(0, 8), (8, 8)]],
                         ids=["huge", "negative", "before", "more"])
def test_buffer_sizes_larger_than_the_memfd_are_refused_before_any_allocation(places) -> None:
    from cache.isolation import BadReply, _receive

    fd = os.memfd_create("jpip-index-result", os.MFD_CLOEXEC)
    os.write(fd, b"x" * 10)
    ours, theirs = _pipe_pair()
    try:
        _send_places_and_fd(theirs, places, fd)
        with pytest.raises(BadReply, match="bytes said, in a file of 10"):
            _receive(ours)
        assert len(_memfd_descriptors()) == 1, "only ours: the one received was closed"
    finally:
        os.close(fd)
        ours.close()
        theirs.close()


def test_a_descriptor_that_is_not_a_file_is_refused() -> None:
    """A pipe's end instead of a memfd: refused (closed), not read."""
    from cache.isolation import BadReply, _receive

    r, w = os.pipe()
    ours, theirs = _pipe_pair()
    before = len(os.listdir("/proc/self/fd"))
    try:
        _send_places_and_fd(theirs, [(0, 0)], r)
        with pytest.raises(BadReply):
            _receive(ours)
        assert len(os.listdir("/proc/self/fd")) == before, "the received descriptor was closed"
    finally:
        for fd in (r, w):
            os.close(fd)
        ours.close()
        theirs.close()


def test_the_pipe_stays_blocking_under_a_default_socket_timeout() -> None:
    """A socket made while socket.setdefaulttimeout() is in force turns non-blocking, and with
    it the pipe's open file it duplicates: the next reply read from that child would fail with
    EAGAIN when it is not all there yet."""
    import fcntl
    import socket

    from cache import isolation

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        isolation.shutdown()
        assert run_isolated(_large_result, 1 << 18)["large"][-1] == (1 << 18) - 1
        (child,) = isolation._children._idle
        flags = fcntl.fcntl(child.conn.fileno(), fcntl.F_GETFL)
        assert not flags & os.O_NONBLOCK
    finally:
        socket.setdefaulttimeout(old)


def test_abort_ends_the_jobs_at_work_without_trying_them_again() -> None:
    """The server's process, stopping, waits for its worker threads: a job stalled on a file
    (here: asleep) would have held the exit for up to JOB_TIMEOUT."""
    import threading
    import time

    from cache import isolation

    outcome: list[BaseException | None] = []

    def job() -> None:
        try:
            run_isolated(time.sleep, 60)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - looked at below
            outcome.append(e)

    worker = threading.Thread(target=job)
    worker.start()
    deadline = time.monotonic() + 10
    while not isolation._at_work and time.monotonic() < deadline:
        time.sleep(0.01)
    (child,) = isolation._at_work
    t0 = time.monotonic()
    isolation.abort()
    worker.join(10)
    assert not worker.is_alive() and time.monotonic() - t0 < 10
    assert isinstance(outcome[0], RuntimeError) and "stopped" in str(outcome[0])
    assert child.process.exitcode is not None and not isolation._at_work
    assert run_isolated(sum, [4, 5]) == 9  # later jobs start children again


def test_a_preloaded_module_that_fails_to_import_does_not_end_the_program(tmp_path) -> None:
    """A module missing from the fork server's path is skipped (children import it
    themselves); one that raises as it is imported ends the fork server: warm() then raises
    an Exception, which the server answers by indexing in its own process."""
    (tmp_path / "raising_module.py").write_text("raise RuntimeError('broken at import')\n")
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from cache import isolation

        if __name__ == "__main__":
            isolation.preload(sys.argv[1])
            try:
                isolation.warm()
                print("warm", isolation.run_isolated(os.getpid) != os.getpid())
            except Exception as e:
                print("refused", type(e).__name__)
            isolation.shutdown()
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    for module, said in (("no_such_module", "warm True"), ("raising_module", "refused")):
        out = subprocess.run([sys.executable, str(script), module], capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.returncode == 0 and out.stdout.startswith(said), (module, out.stdout,
                                                                      out.stderr[-1000:])
