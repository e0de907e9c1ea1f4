"""The per-request deadline: set by the bounds middleware, lifted by streaming handlers.

A request must start answering within `request_timeout`; once a streaming response has begun,
the handler lifts the deadline and bounds each write instead, so a large response is never cut
for its size alone.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

DEADLINE_KEY = web.RequestKey("jpip_deadline", asyncio.Timeout)


def lift_deadline(request: web.Request) -> None:
    """Removes the request's overall deadline (no-op outside the bounds middleware)."""
    deadline = request.get(DEADLINE_KEY)
    if deadline is not None:
        deadline.reschedule(None)
