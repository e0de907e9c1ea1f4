"""The real app on a real loopback socket, in this process, and what it logs.

Running the app in-process (rather than as `jpip-server`) lets a test read the server's own
state afterwards (its session store, its index cache) while clients still talk to it over TCP.
"""
from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from server.app import create_app
from server.config import ServerConfig
from server.jpip_handler import STATE_KEY, JPIPState


class ErrorLog(logging.Handler):
    """Keeps the server's log records at WARNING and above (500s are logged at ERROR, with
    their traceback), so a run can say what went wrong and how often."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        """The ERROR records (unhandled exceptions, i.e. our own defects), as text."""
        return [self.format(r) for r in self.records if r.levelno >= logging.ERROR]


@dataclass
class RunningApp:
    app: web.Application
    port: int
    log: ErrorLog

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> JPIPState:
        return self.app[STATE_KEY]


@asynccontextmanager
async def running_app(root: Path, **options: Any) -> AsyncIterator[RunningApp]:
    """create_app(ServerConfig(root=root, **options)) listening on a free loopback port."""
    log = ErrorLog()
    logger = logging.getLogger("jpip")
    logger.addHandler(log)
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    app = create_app(ServerConfig(root=root, port=0, **options))
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield RunningApp(app, port, log)
    finally:
        await runner.cleanup()
        logger.removeHandler(log)
        logger.setLevel(old_level)


def process_usage(pid: int | None = None) -> tuple[int, int]:
    """(resident set size in bytes, open file descriptors) of a process (default: this one)."""
    pid = os.getpid() if pid is None else pid
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))
