"""`jpip-server`: read the config, set up logging, serve until SIGINT/SIGTERM.

With `--workers N` (N > 1) this process supervises N worker processes that serve one listening
socket (server/workers.py); each worker is this same command, told by its environment that it
is one.

On SIGTERM aiohttp stops accepting connections, lets in-flight responses finish for up to
`shutdown_grace` seconds, then cancels what is left, and main() returns 0.

Exit status: 0 after a clean stop, 130 when stopped (Ctrl-C) before serving, 2 for a bad
configuration (an option's value, an image root that is not a readable directory, an
access-control key file that cannot be used), 1 when the server cannot listen (address in
use, an address the host does not have). Each failure is one line on stderr, never a
traceback.
"""
from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import socket
import sys
from pathlib import Path

from aiohttp import web

from cache import isolation
from cache.redis_sessions import redact_url
from codestream.native import decoder_description
from server.access import create_guard
from server.app import create_app
from server.config import ConfigError, ServerConfig, load_config
from server.logs import ACCESS_LOGGER, AccessLogger, setup_logging
from server.tokens import KeyFileError
from server.workers import WORKER_ENV, Supervisor, inherited_socket, listening_socket

log = logging.getLogger("jpip.server")

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # stopped before serving (server/entry.py says it, for a Ctrl-C anywhere)
EXIT_LISTEN = 1

# What a user can do about the usual reasons a listening socket cannot be opened.
_LISTEN_REASONS = {
    errno.EADDRINUSE: "address in use (another server is listening there: stop it or choose "
                      "another --port)",
    errno.EADDRNOTAVAIL: "this host has no such address (use one of its addresses, 127.0.0.1 "
                         "or 0.0.0.0)",
    errno.EACCES: "permission denied (ports below 1024 need privileges: choose a port above "
                  "1023)",
}


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the default loop works, just slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def root_problem(root: Path) -> str | None:
    """Why the image root cannot be served at start, or None when it can."""
    if not root.exists():
        return f"{str(root)!r} does not exist (create it, or point --root / JPIP_ROOT at " \
               "the images)"
    if not root.is_dir():
        return f"{str(root)!r} is not a directory"
    if not os.access(root, os.R_OK | os.X_OK):
        return f"{str(root)!r} is not readable by this user (uid {os.getuid()})"
    return None


def listen_problem(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    return _LISTEN_REASONS.get(exc.errno, exc.strerror or str(exc))


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Banner:
    """Takes aiohttp's "Running on ..." banner: the one sign that every socket is listening."""

    def __init__(self, config: ServerConfig, loop_name: str) -> None:
        self.config = config
        self.loop_name = loop_name
        self.listening = False

    def __call__(self, *args: object, **_: object) -> None:
        self.listening = True
        text = " ".join(map(str, args)).splitlines()[0].strip("= ")
        urls = text.removeprefix("Running on ").strip()
        worker = os.environ.get(WORKER_ENV)
        if worker is not None:
            log.info("worker %s (pid %d) serving (loop: %s)", worker, os.getpid(),
                     self.loop_name)
            return
        log.info("serving %s on %s (JPIP at %s, loop: %s)", self.config.root.resolve(), urls,
                 self.config.jpip_path, self.loop_name)
        log.info("packet headers are decoded by the %s", decoder_description())


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        print(f"jpip-server: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if problem := root_problem(config.root):
        # At start this is a mistake (a typo, a volume not mounted); a root that goes away
        # later is reported by /healthz (503) instead.
        print(f"jpip-server: option root: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config)
    with os.scandir(config.root) as entries:
        if next(entries, None) is None:
            log.warning("the image root %s is empty: mount or copy the images there",
                        config.root.resolve())
    sock = inherited_socket()  # set when this process is a worker of a supervisor
    if sock is None and config.workers > 1:
        try:  # the key files are read here too: a bad one stops the start, not each worker
            create_guard(config)
        except KeyFileError as exc:
            print(f"jpip-server: option auth_jwt_key: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        _log_access_control(config)
        return _supervise(config, sys.argv[1:] if argv is None else argv)
    try:
        app = create_app(config)  # reads the access-control key files
    except KeyFileError as exc:
        print(f"jpip-server: option auth_jwt_key: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if sock is None:  # (a worker's supervisor said it already)
        _log_access_control(config)
    app.on_startup.append(freeze_startup_objects)  # last: once the app is set up
    # Indexing children import the main module (this one, through the jpip-server script or
    # run with -m), and through it the server: the fork server imports the server once, so
    # that a child starts in milliseconds. (Not this module: run with -m, a child executes it
    # again, which Python warns about when it was imported already.)
    isolation.preload("server.app")
    loop = _event_loop()
    banner = _Banner(config, type(loop).__module__.split(".")[0])
    where = {"sock": sock} if sock is not None else {"host": config.host, "port": config.port}
    try:
        web.run_app(
            app,
            **where,
            shutdown_timeout=config.shutdown_grace,
            keepalive_timeout=config.keepalive_timeout,
            access_log=logging.getLogger(ACCESS_LOGGER),
            access_log_class=AccessLogger,
            handle_signals=True,
            print=banner,
            loop=loop,
        )
    except OSError as exc:
        if banner.listening:
            raise
        print(f"jpip-server: cannot listen on {_where(config.host, config.port)}: "
              f"{listen_problem(exc)}", file=sys.stderr)
        return EXIT_LISTEN
    finally:
        # Indexing jobs still running (the requests that wanted them are gone) would keep
        # the process from exiting until they end.
        isolation.abort()
    if not banner.listening:  # run_app took a Ctrl-C (or SIGTERM) while the app started
        return EXIT_INTERRUPTED
    log.info("stopped")
    return 0


async def freeze_startup_objects(app: web.Application) -> None:
    """Takes the objects alive once the server has started (modules, the app and its state:
    about 100,000) out of the garbage collector's sight: they live as long as the process,
    and a full collection used to walk them all, a pause of 30-70 ms every few thousand
    requests that every request in flight waited out (the p99 of fresh windows). Only the
    server's process does it (tests run many apps in one process, whose cycles must stay
    collectable)."""
    gc.collect()
    gc.freeze()


def _log_access_control(config: ServerConfig) -> None:
    if config.auth_jwt_key:
        log.info("access control on: %d key file(s), audience %s", len(config.auth_jwt_key),
                 repr(config.auth_audience) if config.auth_audience else "(none)")


def _supervise(config: ServerConfig, argv: list[str]) -> int:
    """`--workers N`: listen here, and let N worker processes serve (server/workers.py)."""
    try:
        sock = listening_socket(config.host, config.port)
    except OSError as exc:
        print(f"jpip-server: cannot listen on {_where(config.host, config.port)}: "
              f"{listen_problem(exc)}", file=sys.stderr)
        return EXIT_LISTEN
    host, port = sock.getsockname()[:2]
    log.info("%d workers serving %s on http://%s (JPIP at %s, sessions in %s)", config.workers,
             config.root.resolve(), _where(host, port), config.jpip_path,
             redact_url(config.session_store))
    log.info("packet headers are decoded by the %s", decoder_description())
    status = Supervisor(config.workers, argv, sock,
                        shutdown_grace=config.shutdown_grace).run()
    log.info("stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())  # (`jpip-server` is server/entry.py: quiet on a Ctrl-C during imports)
