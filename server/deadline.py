"""The per-request deadline: set by the request middleware, lifted by streaming handlers.

A request must start answering within `request_timeout`; once a streaming response has begun,
the handler lifts the deadline and bounds each write instead, so a large response is never cut
for its size alone.

The deadlines of an app are checked by one periodic sweep (`Deadlines.run`), not by a timer
per request: a timer armed and cancelled on every request (asyncio.timeout) costs more than
the rest of a small request's bounds. So a request is cut between `request_timeout` and
`request_timeout` + `Deadlines.period` (an eighth of it, at most half a second) after it came.
Cutting it works as asyncio.timeout does: the task is cancelled, and the request middleware
turns that cancellation (and only that one: `Deadline.cut`) into its answer.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

MAX_PERIOD = 0.5  # seconds between sweeps, at most


class Deadline:
    """One request's deadline (`when`, on the loop's clock; None once lifted)."""

    __slots__ = ("task", "when", "fired", "cancelling")

    def __init__(self, task: asyncio.Task | None, when: float) -> None:
        self.task = task
        self.when: float | None = when
        self.fired = False  # the sweep cancelled the task for it
        # The task's pending cancellations when the deadline was set (as asyncio.Timeout).
        self.cancelling = task.cancelling() if task is not None else 0

    def lift(self) -> None:
        self.when = None

    def cut(self) -> bool:
        """Called once, when the guarded block ended: True when the deadline fired and the
        cancellation it caused is the only one pending (its CancelledError is then a timeout;
        as asyncio.Timeout, a cancellation from elsewhere stays a cancellation)."""
        return self.fired and self.task.uncancel() <= self.cancelling


class Deadlines:
    """The deadlines of one app's requests in flight, checked every `period` seconds."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.period = min(seconds / 8, MAX_PERIOD)
        self._live: dict[Deadline, None] = {}

    def start(self) -> Deadline:
        """A deadline `seconds` from now for the current task (stop it when it is over)."""
        loop = asyncio.get_running_loop()
        deadline = Deadline(asyncio.current_task(loop), loop.time() + self.seconds)
        self._live[deadline] = None
        return deadline

    def stop(self, deadline: Deadline) -> None:
        self._live.pop(deadline, None)

    def sweep(self, now: float) -> int:
        """Cancels the tasks whose deadline passed; returns how many."""
        fired = 0
        for deadline in [d for d in self._live if d.when is not None and d.when <= now]:
            if deadline.task is not None and not deadline.fired:
                deadline.fired = True
                deadline.task.cancel()
                fired += 1
            self._live.pop(deadline, None)  # fires once
        return fired

    async def run(self) -> None:
        """The sweep, while the app runs."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.period)
            self.sweep(loop.time())


DEADLINE_KEY = web.RequestKey("jpip_deadline", Deadline)


def lift_deadline(request: web.Request) -> None:
    """Removes the request's overall deadline (no-op outside the request middleware)."""
    deadline = request.get(DEADLINE_KEY)
    if deadline is not None:
        deadline.lift()
