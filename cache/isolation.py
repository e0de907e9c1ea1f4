"""Indexing in child processes, so that a file cut shorter under it cannot kill the server.

Indexing reads a file through a memory map (fast, never the whole file in memory), and on Linux
reading a mapped page that the file no longer has kills the process with SIGBUS: no Python
exception, no recovery. A file rewritten in place (`cp new.jp2 served.jp2`, `rsync --inplace`,
an archive updating an object) is cut to nothing and written again, so a server indexing it at
that moment would die (it did, in CI). The server therefore reads and indexes files in a few
child processes: a child killed that way costs one FileChanged error (503) and a new child. Serving
never reads a map (codestream.source.FileBytes reads with pread).

`run_isolated(fn, *args)` runs a module-level function in a child and returns its result; the
errors it raises come back as they are (CodestreamError and DicomError pickle whole). Each
child runs one job at a time, so a child's death is its own job's. Tools and tests that index a
file of their own call the indexer directly.

Children come from a fork server that imported the indexer once (they start in milliseconds,
and forking a process that runs threads and an event loop is not safe). Like every
multiprocessing child they import the parent's main module: a script using the index cache
needs the usual `if __name__ == "__main__":` guard.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from codestream.errors import FileChanged

log = logging.getLogger(__name__)

T = TypeVar("T")

# Two children: a request's indexing never waits behind a long background step.
CHILDREN = 2
# What the fork server imports once, so that each child starts in milliseconds.
PRELOAD = ["cache.index_cache"]


class _Child:
    """One child process and the pipe to it."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        self.conn, theirs = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(theirs,), name="jpip-indexer",
                                   daemon=True)  # ended with this process
        self.process.start()
        theirs.close()

    def run(self, fn: Callable[..., T], args: tuple) -> T:
        self.conn.send((fn, args))
        ok, value = self.conn.recv()  # EOFError: the child died
        if ok:
            return value
        raise value

    def close(self) -> None:
        self.conn.close()
        self.process.join(5)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()


class _Children:
    """At most CHILDREN children, each lent to one job at a time."""

    def __init__(self) -> None:
        self._idle: list[_Child] = []
        self._count = 0
        self._cond = threading.Condition()

    def take(self) -> _Child:
        with self._cond:
            while not self._idle and self._count >= CHILDREN:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return _Child()
        except BaseException:
            self.give_back(None)
            raise

    def give_back(self, child: _Child | None) -> None:
        """Returns a child for the next job (None: it is gone)."""
        with self._cond:
            if child is None:
                self._count -= 1
            else:
                self._idle.append(child)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for child in idle:
            child.close()


_children = _Children()


def run_isolated(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a child process (blocking: call it from a worker thread).

    A child killed by SIGBUS read a file cut shorter meanwhile: FileChanged, which the
    server answers like any file it cannot read. Any other death is a defect or a resource
    limit (the kernel's OOM killer): RuntimeError."""
    child = _children.take()
    try:
        result = child.run(fn, args)
    except (EOFError, ConnectionError):
        child.close()
        _children.give_back(None)
        code = child.process.exitcode
        log.warning("an indexing process died (exit code %s) in %s", code, fn.__name__)
        if code == -signal.SIGBUS:
            raise FileChanged("the file changed while it was being indexed") from None
        raise RuntimeError(f"the indexing process died (exit code {code})") from None
    except BaseException:
        _children.give_back(child)  # the job's own error: the child is fine
        raise
    _children.give_back(child)
    return result


def warm() -> None:
    """Starts a child now, so that the first index of a server's life does not wait for the
    fork server."""
    run_isolated(_nothing)


def shutdown() -> None:
    """Ends the idle children (those at work end with their jobs, or with this process)."""
    _children.close()


def _nothing() -> None:
    return None


def _serve(conn: Connection) -> None:
    """A child's life: jobs in, results or errors out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server, which ends us
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = (True, fn(*args))
        except BaseException as e:  # noqa: BLE001 - every error goes back to the parent
            reply = (False, e)
        try:
            conn.send(reply)
        except Exception as e:  # an error or a result that does not pickle
            conn.send((False, RuntimeError(f"{fn.__name__}: cannot send back {reply!r:.200}: "
                                           f"{e}")))
