"""Request deadlines checked by one sweep: a deadline cuts its own task once, a lifted one
never, and a cancellation from elsewhere stays a cancellation (as with asyncio.timeout)."""
from __future__ import annotations

import asyncio

import pytest

from server.deadline import MAX_PERIOD, Deadlines


async def _guarded(deadlines: Deadlines, body) -> str:
    """What the request middleware does around a handler, reduced to its outcome."""
    deadline = deadlines.start()
    try:
        try:
            await body(deadline)
        except asyncio.CancelledError:
            if deadline.cut():
                return "timed out"
            raise
        deadline.cut()
        return "done"
    finally:
        deadlines.stop(deadline)


def test_period() -> None:
    assert Deadlines(0.2).period == pytest.approx(0.025)
    assert Deadlines(60).period == MAX_PERIOD


async def test_deadline_cuts_a_late_request() -> None:
    deadlines = Deadlines(0.1)
    sweeper = asyncio.create_task(deadlines.run())
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await _guarded(deadlines, lambda d: asyncio.sleep(5)) == "timed out"
        assert 0.1 <= loop.time() - started < 0.1 + 4 * deadlines.period
        assert await _guarded(deadlines, lambda d: asyncio.sleep(0.01)) == "done"
        assert not deadlines._live  # every deadline is stopped
    finally:
        sweeper.cancel()


async def test_lifted_deadline_never_fires() -> None:
    deadlines = Deadlines(0.05)

    async def lifted(deadline) -> None:
        deadline.lift()
        await asyncio.sleep(0.1)
        deadlines.sweep(asyncio.get_running_loop().time())

    assert await _guarded(deadlines, lifted) == "done"


async def test_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    deadlines = Deadlines(0.05)

    async def both(deadline) -> None:
        asyncio.current_task().cancel()  # e.g. the server shutting down
        deadlines.sweep(asyncio.get_running_loop().time() + 1)  # and the deadline passed
        await asyncio.sleep(1)

    task = asyncio.create_task(_guarded(deadlines, both))
    with pytest.raises(asyncio.CancelledError):
        await task
