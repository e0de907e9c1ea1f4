"""Indexes built for the lowest resolutions first (RLCP/RPCL without PLT): every packet they
locate is where the whole index says, the rest are left for later, and indexing further gives
the whole index exactly; other files are indexed whole at once."""
from __future__ import annotations

import numpy as np
import pytest

from codestream.source import build_source
from jpip.plan import plan_window, resolutions_needed
from jpip.window import resolve_window
from tests.conftest import CORPUS

LAZY = ["HTJ2KLossless_08_RGB.j2k", "p0_01.j2k", "p0_04.j2k",   # RPCL, RLCP, RLCP
        "test-card-lossy-tiled.jp2"]                              # RLCP, 20 tiles


def _packets_by_precinct(ix) -> dict[int, list[tuple[int, int]]]:
    pr, pk = ix.precincts, ix.packets
    out = {}
    for row in range(len(pr["id"])):
        a, n = int(pr["pkt_start"][row]), int(pr["pkt_count"][row])
        out[row] = list(zip(pk["offset"][a:a + n].tolist(), pk["length"][a:a + n].tolist(),
                            strict=True))
    return out


@pytest.mark.parametrize("name", LAZY)
def test_a_resolution_prefix_locates_what_the_whole_index_does(name) -> None:
    with build_source(CORPUS / name) as whole:
        full = whole.codestreams[0]
        assert full.resolutions_indexed is None
        want = _packets_by_precinct(full)
        top = int(full.tcr["levels"].max()) + 1
        cut_any = False
        for k in range(1, top + 1):
            with build_source(CORPUS / name, lazy=True) as lazy:
                lazy.index_codestreams([0], k)
                ix = lazy.codestreams[0]
                if ix.resolutions_indexed is None:
                    assert k == top or _packets_by_precinct(ix) == want
                    continue
                cut_any = True
                assert ix.resolutions_indexed == k and not lazy.complete
                got = _packets_by_precinct(ix)
                res = full.precincts["r"]
                for row, packets in want.items():
                    assert got[row] == (packets if res[row] < k else []), (k, row)
                # The geometry is all there: the same precinct table.
                for col in ("id", "t", "c", "r", "p", "x0", "y0", "x1", "y1"):
                    assert np.array_equal(ix.precincts[col], full.precincts[col])
                # Indexing the rest gives the whole index.
                lazy.index_codestreams([0])
                assert lazy.complete and lazy.codestreams[0].resolutions_indexed is None
                assert _packets_by_precinct(lazy.codestreams[0]) == want
        assert cut_any


def test_the_steps_go_a_resolution_at_a_time_and_plans_wait_for_them() -> None:
    with build_source(CORPUS / "p0_04.j2k", lazy=True) as src:
        ix = src.codestreams[0]
        assert ix.resolutions_indexed == 1 and src.unindexed() == [0]
        steps = src.index_steps(0)
        assert steps[-1] is None and steps[:-1] == list(range(2, len(steps) + 1))
        full = resolve_window(ix, 0, fsiz=(ix.siz.xsiz, ix.siz.ysiz, "round-down"))
        assert resolutions_needed(ix, full) > 1
        with pytest.raises(RuntimeError, match="resolutions"):
            plan_window(ix, full)  # never planned from too short an index
        thumb = resolve_window(ix, 0, fsiz=(8, 8, "round-down"))
        assert resolutions_needed(ix, thumb) == 1 and len(plan_window(ix, thumb).rows)
        for step in steps:
            src.index_codestreams([0], step)
        assert src.complete and src.index_steps(0) == []
        assert len(plan_window(src.codestreams[0], full).rows)


@pytest.mark.parametrize("name", ["p0_05.j2k", "nemo.jp2"])
def test_other_files_are_indexed_whole(name) -> None:
    with build_source(CORPUS / name, lazy=True) as src:
        assert src.complete and src.codestreams[0].resolutions_indexed is None


def test_background_indexing_waits_while_a_request_indexes() -> None:
    import threading

    with build_source(CORPUS / "p0_04.j2k", lazy=True) as src:
        src._urgent_count = 1  # as while a request's indexing runs
        done = threading.Event()
        worker = threading.Thread(
            target=lambda: (src.index_codestreams([0], background=True), done.set()))
        worker.start()
        assert not done.wait(0.3), "background work went on beside a request's"
        with src._urgent:
            src._urgent_count = 0
            src._urgent.notify_all()
        assert done.wait(30)
        worker.join()
        assert src.complete
        # A request's indexing never replaces an index with a shorter one.
        whole = src.codestreams[0]
        src.index_codestreams([0], 2)
        assert src.codestreams[0] is whole


def test_indexing_stops_on_a_file_cut_shorter(tmp_path) -> None:
    """Reading the lost part of the map would kill the process (SIGBUS): indexing checks the
    file's length before each step and at each pause, and fails with an error instead."""
    from codestream.errors import CodestreamError

    path = tmp_path / "p0_04.j2k"
    path.write_bytes((CORPUS / "p0_04.j2k").read_bytes())
    with build_source(path, lazy=True) as src:
        assert not src.complete
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        with pytest.raises(CodestreamError, match="cut shorter"):
            src.index_codestreams([0], background=True)
        with pytest.raises(CodestreamError, match="cut shorter"):
            src._yield_to_requests()


async def test_a_jpt_request_indexes_the_whole_codestream_first() -> None:
    """A tile data-bin holds every resolution of its tile (its packed-header parts and the Aux
    of extended messages need all its packets): a JPT request on a codestream indexed for its
    lowest resolutions gets it indexed whole before it is planned (a JPT response once read
    the packet rows of an index replaced under it: 500)."""
    from jpip.request import parse_query
    from server.frame_indexing import index_requested_frames

    with build_source(CORPUS / "test-card-lossy-tiled.jp2", lazy=True) as src:
        assert src.codestreams[0].resolutions_indexed is not None
        await index_requested_frames(src, parse_query("fsiz=64,48&type=jpp-stream"))
        assert src.codestreams[0].resolutions_indexed is not None  # a thumbnail: still lazy
        await index_requested_frames(src, parse_query("fsiz=64,48&type=jpt-stream;ttype=ext"))
        assert src.codestreams[0].resolutions_indexed is None and src.complete


class _SlowRunner:
    """An `index_in` runner that counts its jobs and holds each until released (a child's job
    in the server); `fail_whole` makes the first job for the whole codestream raise instead."""

    def __init__(self) -> None:
        import threading

        self.jobs: list[int | None] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.fail_whole = False

    def __call__(self, fn, *args):
        self.jobs.append(args[-1])  # the resolutions asked for
        self.started.release()
        assert self.release.wait(30)
        if self.fail_whole and args[-1] is None:
            self.fail_whole = False
            raise RuntimeError("the job died")
        return fn(*args)


def _index_in_thread(src, resolutions):
    import threading

    errors: list[BaseException] = []

    def run() -> None:
        try:
            src.index_codestreams([0], resolutions)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t, errors


def test_a_request_waits_for_the_job_under_way_that_covers_it() -> None:
    """A request needing what a running job will index waits for that job: a second job for
    the same packets would halve the speed of both on two cores (a 16384² file's first window
    at full resolution took 3.9 s with two jobs, for 1.4 s of work)."""
    with build_source(CORPUS / "p0_04.j2k", lazy=True) as src:
        runner = src.index_in = _SlowRunner()
        background, _ = _index_in_thread(src, None)
        assert runner.started.acquire(timeout=30)
        request, errors = _index_in_thread(src, src.index_steps(0)[-2])  # top resolution
        request.join(0.3)
        assert request.is_alive(), "the request should wait for the running job"
        runner.release.set()
        background.join(30)
        request.join(30)
        assert not errors and runner.jobs == [None] and src.complete


def test_a_request_needing_far_less_does_not_wait_and_a_failed_job_is_retried() -> None:
    with build_source(CORPUS / "p0_04.j2k", lazy=True) as src:
        steps = src.index_steps(0)
        assert len(steps) >= 3  # the whole job reaches 2+ resolutions past the request's
        runner = src.index_in = _SlowRunner()
        runner.fail_whole = True
        background, bg_errors = _index_in_thread(src, None)
        assert runner.started.acquire(timeout=30)
        small, _ = _index_in_thread(src, steps[0])
        assert runner.started.acquire(timeout=30), "a small need runs its own job"
        waiter, errors = _index_in_thread(src, steps[-2])
        waiter.join(0.3)
        assert runner.jobs == [None, steps[0]], "the waiter should wait, not run a job"
        runner.release.set()  # the whole job fails: the waiter runs its own
        for t in (background, small, waiter):
            t.join(30)
        assert [type(e) for e in bg_errors] == [RuntimeError] and not errors
        assert runner.jobs == [None, steps[0], steps[-2]]
        assert src.codestreams[0].resolutions_indexed in (None, steps[-2])


def test_background_steps_in_a_child_wait_while_a_request_indexes() -> None:
    """A child has no pause points: a background step waits before it starts while a request's
    indexing runs (beside it on two cores it would halve the request's speed; a cold first
    window at full resolution of a 16384² file took 3.5 s instead of 1.3 s), and then finds
    its work done."""
    with build_source(CORPUS / "p0_04.j2k", lazy=True) as src:
        steps = src.index_steps(0)
        runner = src.index_in = _SlowRunner()
        request, errors = _index_in_thread(src, None)
        assert runner.started.acquire(timeout=30)
        import threading

        background = threading.Thread(
            target=lambda: src.index_codestreams([0], steps[0], background=True))
        background.start()
        background.join(0.3)
        assert runner.jobs == [None], "a background step ran beside a request's indexing"
        runner.release.set()
        request.join(30)
        background.join(30)
        assert not errors and runner.jobs == [None] and src.complete
