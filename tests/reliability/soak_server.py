"""`jpip-server` as users run it (server.cli.main), plus one test-only hook: on SIGUSR1 it
writes every open session's cache model to the file named by $SOAK_DUMP, so the soak can check
each model against what its client really received. Nothing here is part of the server.

    SOAK_DUMP=/tmp/models.json python -m tests.reliability.soak_server --root DIR --port N ...

The dump is JSON: {"sessions": [{"cids", "target", "target_id", "busy", "streams": {CSn:
{"main": n, "tiles": {t: n}, "precincts": {id: n}}}, "metadata": {id: n}}, ...]}; precincts
are named by their JPIP precinct id (the model keeps index rows), codestreams by their CSn.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
from aiohttp import web

import server.cli
from cache.sessions import MemorySessionStore, SessionState
from server.app import create_app
from server.jpip_handler import STATE_KEY, JPIPState

DUMP_ENV = "SOAK_DUMP"


def session_record(state: JPIPState, session: SessionState) -> dict:
    source = state.index_cache.get(session.target)
    first = source.first_codestream
    streams = {}
    for cs, held in session.model.streams.items():
        ids = source.codestreams[cs].precincts["id"]
        rows = held.precincts.rows
        streams[str(cs + first)] = {
            "main": int(held.main_header),
            "tiles": {str(t): int(n) for t, n in held.tile_headers.items()},
            "precincts": {str(int(i)): int(n) for i, n in
                          zip(np.asarray(ids)[rows].tolist(), held.precincts.held.tolist(),
                              strict=True)},
        }
    return {"cids": sorted(session.channels), "target": session.target,
            "target_id": session.target_id, "busy": session.busy, "streams": streams,
            "metadata": {str(k): int(v) for k, v in session.model.metadata.items()}}


def dump_sessions(app: web.Application, path: Path) -> None:
    state: JPIPState = app[STATE_KEY]
    store = state.sessions
    assert isinstance(store, MemorySessionStore), "the soak reads the in-memory store"
    records = [session_record(state, s) for s in store.sessions()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sessions": records}))
    tmp.replace(path)


def with_dump_hook(app: web.Application) -> web.Application:
    path = Path(os.environ[DUMP_ENV])

    async def install(app: web.Application) -> None:
        import asyncio

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_sessions, app, path)

    app.on_startup.append(install)
    return app


def main(argv: list[str] | None = None) -> int:
    server.cli.create_app = lambda config: with_dump_hook(create_app(config))
    return server.cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
