"""`jpip-server`: read the config, set up logging, serve until SIGINT/SIGTERM.

On SIGTERM aiohttp stops accepting connections, lets in-flight responses finish for up to
`shutdown_grace` seconds, then cancels what is left, and main() returns 0.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys

from aiohttp import web

from server.app import create_app
from server.config import ConfigError, load_config
from server.logs import ACCESS_LOGGER, AccessLogger, setup_logging

log = logging.getLogger("jpip.server")


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the default loop works, just slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _log_banner(*args: object, **_: object) -> None:
    # aiohttp's "======== Running on http://... ========" banner, as one log line.
    log.info(" ".join(map(str, args)).splitlines()[0].strip("= "))


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        print(f"jpip-server: {exc}", file=sys.stderr)
        return 2
    setup_logging(config)
    if not os.path.isdir(config.root) or not os.access(config.root, os.R_OK | os.X_OK):
        # Not fatal: the volume may be mounted later; /healthz reports 503 until then.
        log.warning("image root %s is not a readable directory", config.root)
    loop = _event_loop()
    log.info("serving %s on http://%s:%d%s (loop: %s)", config.root.resolve(), config.host,
             config.port, config.jpip_path, type(loop).__module__.split(".")[0])
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        shutdown_timeout=config.shutdown_grace,
        keepalive_timeout=config.keepalive_timeout,
        access_log=logging.getLogger(ACCESS_LOGGER),
        access_log_class=AccessLogger,
        handle_signals=True,
        print=_log_banner,
        loop=loop,
    )
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
