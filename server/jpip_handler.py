"""The JPIP request path (owned by the lead; placeholder until the protocol lands)."""
from __future__ import annotations

from aiohttp import web


async def handle_jpip(request: web.Request, target: str | None = None) -> web.StreamResponse:
    """Serve one JPIP request; `target` is the path form's target, if any."""
    return web.Response(status=501, text="JPIP requests are not served yet\n")
