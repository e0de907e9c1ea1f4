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
needs the usual `if __name__ == "__main__":` guard, and a program whose main module imports
much (the server) names those modules to `preload`, so that a child does not import them again.

Results come back pickled, except their large buffers (an index's numpy arrays: 130 MB for
2.1M packets), which cost 0.3 s through the pipe (a pickle, two copies through the kernel, an
unpickle): they go in an anonymous shared-memory file (memfd) whose descriptor is passed over
the pipe. The parent maps the file copy-on-write and closes the descriptor: the result's
arrays are the pages the child wrote (no copy, no fresh pages: on a cold start, touching 130 MB
of new memory costs 0.05-0.3 s). The map is made through libc, not Python's mmap, which holds
a descriptor per map that an index cache of many entries would run out of; it goes with the
last array over it (or is read out into ordinary arrays where libc cannot be called). A job's
largest arrays (an index's packet columns: codestream.allocation) are made in that file from
the start, so the child does not copy them into it either. Such a file has no name, so nothing
is left behind whoever dies when: it lives while a descriptor or a map of it does.

A child parses untrusted files, so the parent does not trust its replies further than it can
check them: a reply is unpickled with a list of what it may build (_ReplyUnpickler: the
indexer's dataclasses, errors and numpy arrays, never another callable, which a pickle could
otherwise name and have the parent call), the buffers' sizes are plain integers checked against
the memfd's, and an error that does not pass comes back as a RuntimeError naming it.
"""
from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import functools
import importlib
import io
import logging
import mmap
import multiprocessing
import os
import pickle
import signal
import socket
import stat
import sys
import threading
import weakref
from array import array
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import numpy as np

from codestream.allocation import columns_made_by
from codestream.errors import FileChanged

log = logging.getLogger(__name__)

T = TypeVar("T")

# Children are started when a job finds none idle, up to CHILDREN; WARM_CHILDREN are started
# with the server, so that a request's indexing finds one idle while a background step runs.
CHILDREN = 4
WARM_CHILDREN = 2
# A job that takes longer is given up and its child killed (a file on a stalled network mount,
# a defect): the largest files index in well under a minute.
JOB_TIMEOUT = 600.0


class IndexingTimeout(Exception):
    """An indexing job ran past JOB_TIMEOUT: 503, try again later (server/errors.py reads
    `status`, `reason` and `retry_after`)."""

    status = 503
    retry_after = 30

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
# What the fork server imports once, so that each child starts in milliseconds (`preload` adds).
PRELOAD = ["cache.index_cache"]
# A result's buffers of at least this many bytes come back through shared memory (see above).
SHARED_MIN = 1 << 20


class BadReply(RuntimeError):
    """A child's reply that the parent refuses (see the module docstring): a defect, or a
    child led astray by the file it parsed. The child is ended; the job fails (500)."""


class _Child:
    """One child process and the pipe to it."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        self.conn, theirs = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(theirs,), name="jpip-indexer",
                                   daemon=True)  # ended with this process
        # The first start launches the fork server, which inherits this thread's signal mask
        # across exec: with SIGINT blocked it never sees a Ctrl-C (meant for the server,
        # which ends it), not even while it starts and imports PRELOAD, where one printed a
        # KeyboardInterrupt traceback. Its children ignore SIGINT too (_serve). The resource
        # tracker is started first: starting it unblocks SIGINT in this thread as it ends.
        resource_tracker.ensure_running()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        theirs.close()
        self.aborted = False  # ended by abort(): its job is not tried again

    def call(self, fn: Callable[..., Any], args: tuple, timeout: float) -> tuple[bool, Any]:
        """(True, result) or (False, the error it raised). EOFError: the child died;
        TimeoutError: no answer within `timeout` seconds."""
        self.conn.send((fn, args))
        if not self.conn.poll(timeout):
            raise TimeoutError
        return _receive(self.conn)

    def close(self, *, kill: bool = False) -> None:
        self.conn.close()
        if kill and self.process.exitcode is None:
            self.process.kill()
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
        while True:
            with self._cond:
                while not self._idle and self._count >= CHILDREN:
                    self._cond.wait()
                if not self._idle:
                    self._count += 1
                    break
                child = self._idle.pop()
            if child.process.is_alive():
                return child
            child.close()  # died idle (the OOM killer): not this job's fault
            self.give_back(None)
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
# The children lent to jobs (abort ends them).
_at_work: set[_Child] = set()
_at_work_lock = threading.Lock()


def run_isolated(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a child process (blocking: call it from a worker thread).

    A child killed by SIGBUS read a file cut shorter meanwhile: FileChanged, which the
    server answers 503. A child that died otherwise gets its job once more in a new child
    (its exit status is not always known: the fork server may not have reported it yet, and
    several children reading one file die together); dying again is a defect or a resource
    limit (the kernel's OOM killer): RuntimeError."""
    for attempt in range(2):
        child = _children.take()
        with _at_work_lock:
            _at_work.add(child)
        try:
            ok, value = child.call(fn, args, JOB_TIMEOUT)
        except BaseException as e:
            # No answer read: the child died, hung, or this thread was interrupted (its
            # answer would reach the next job). It goes either way.
            child.close(kill=True)
            _children.give_back(None)
            code = child.process.exitcode
            if child.aborted:
                raise RuntimeError("indexing was stopped: the process is exiting") from None
            if isinstance(e, TimeoutError):
                log.warning("an indexing job (%s) ran past %.0f s: its process was killed",
                            fn.__name__, JOB_TIMEOUT)
                raise IndexingTimeout(f"indexing took longer than {JOB_TIMEOUT:.0f} s") \
                    from None
            if not isinstance(e, EOFError | ConnectionError):
                raise
            log.warning("an indexing process died (exit code %s) in %s", code, fn.__name__)
            if code == -signal.SIGBUS:
                raise FileChanged("the file changed while it was being indexed") from None
            if attempt:
                raise RuntimeError(f"the indexing process died (exit code {code})") from None
            continue
        finally:
            with _at_work_lock:
                _at_work.discard(child)
        _children.give_back(child)
        if ok:
            return value
        raise value
    raise AssertionError("unreachable")


def preload(*modules: str) -> None:
    """Has the fork server import `modules` too (call it before the first job): the modules
    every child would otherwise import itself, such as a program's main module (multiprocessing
    children import it). They must be importable without the parent's additions to sys.path
    (installed, or on PYTHONPATH): the fork server does not get them."""
    PRELOAD.extend(m for m in modules if m not in PRELOAD)


def warm(children: int = WARM_CHILDREN) -> None:
    """Starts `children` children now (at least: idle ones count), so that the first indexes
    of a server's life do not wait for the fork server or for a child to start. Raises only
    if none could start (then files cannot be indexed in a child at all)."""
    started: list[_Child | None] = []
    failure: BaseException | None = None
    try:
        for _ in range(min(children, CHILDREN)):
            try:
                child = _children.take()
            except Exception as e:  # noqa: BLE001 - reported below, or raised if all fail
                failure = e
                continue
            started.append(child)
            try:
                child.call(_nothing, (), JOB_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - as above
                child.close(kill=True)
                started[-1] = None
                failure = e
    finally:
        for child in started:
            _children.give_back(child)
    if failure is not None:
        if not any(started):
            raise failure
        log.warning("started fewer indexing processes than %d: %s", children, failure)


def shutdown() -> None:
    """Ends the idle children (those at work end with their jobs, or with this process)."""
    _children.close()


def abort() -> None:
    """Ends every child, those at work too (their jobs fail: RuntimeError), for a process
    about to exit: it waits for its worker threads, and a job stalled on a file (a hung
    network mount) would hold the exit for up to JOB_TIMEOUT after the server stopped."""
    with _at_work_lock:
        at_work = list(_at_work)
    for child in at_work:
        child.aborted = True
        if child.process.exitcode is None:
            child.process.kill()
    shutdown()


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
        arena = _SharedArena()
        try:
            try:
                with columns_made_by(arena.empty):
                    reply = (True, fn(*args))
            except BaseException as e:  # noqa: BLE001 - every error goes back to the parent
                reply = (False, e if _passes(e) else
                         RuntimeError(f"{type(e).__module__}.{type(e).__qualname__}: {e}"))
            try:
                _send(conn, reply, arena)
            except Exception as e:  # an error or a result that does not pickle
                _send(conn, (False, RuntimeError(f"{fn.__name__}: cannot send back "
                                                 f"{reply!r:.200}: {e}")), arena)
        finally:
            # An idle child holds nothing: an index is as large as 130 MB.
            fn = args = reply = None
            arena.close()


class _SharedArena:
    """The shared-memory file (memfd) of one job's reply: arrays made in it while the job runs
    (`empty`, for codestream.allocation), and the reply's other large buffers appended by
    `place`. Made on first use; `close` drops this process's maps and descriptor (the parent
    holds its own once the descriptor was sent)."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.size = 0  # bytes of the file in use (page-aligned)
        self._maps: list[tuple[int, int, int, mmap.mmap]] = []  # address, length, offset, map

    def empty(self, n: int, dtype: np.dtype) -> np.ndarray:
        """An uninitialised array in the file (an ordinary one if it is small or the file
        cannot grow)."""
        nbytes = n * dtype.itemsize
        if nbytes < SHARED_MIN or not hasattr(os, "memfd_create"):
            return np.empty(n, dtype)
        try:
            offset = self._grow(nbytes)
            m = mmap.mmap(self.fd, nbytes, flags=mmap.MAP_SHARED, offset=offset)
        except OSError:  # no memory for it: an ordinary array (copied at the end)
            return np.empty(n, dtype)
        array = np.frombuffer(m, dtype, n)
        self._maps.append((array.ctypes.data, nbytes, offset, m))
        return array

    def place(self, raw: memoryview) -> tuple[int, int]:
        """(offset, length) of a buffer in the file: where it already is, or where it is
        copied now."""
        address = np.frombuffer(raw, np.uint8).ctypes.data if raw.nbytes else 0
        for start, length, offset, _ in self._maps:
            if start <= address and address + raw.nbytes <= start + length:
                return offset + address - start, raw.nbytes
        offset = self._grow(raw.nbytes)
        done = 0
        while done < raw.nbytes:
            done += os.pwrite(self.fd, raw[done:], offset + done)
        return offset, raw.nbytes

    def _grow(self, nbytes: int) -> int:
        """Room for `nbytes` at the end of the file (made on first use): its offset."""
        if self.fd is None:
            # Sealing allowed: the parent seals it against shrinking before it maps it.
            self.fd = os.memfd_create("jpip-index-result",
                                      os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        offset = self.size
        os.ftruncate(self.fd, offset + nbytes)
        self.size = offset + -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
        return offset

    def close(self) -> None:
        for _, _, _, m in self._maps:
            try:
                m.close()
            except BufferError:  # an array of it is still referenced: it goes with it
                pass
        self._maps = []
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# A reply on the pipe: the (offset, length) of each of its out-of-band buffers in the
# shared-memory file (64-bit integers, one after the other), its pickle, then (if there are
# any such buffers) the file's descriptor, in an SCM_RIGHTS message.
def _send(conn: Connection, reply: Any, arena: _SharedArena | None = None) -> None:
    """Sends a reply, its large buffers in shared memory (a child's side): those made in
    `arena` stay where they are, the others are copied into it."""
    large: list[memoryview] = []

    def in_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < SHARED_MIN or not hasattr(os, "memfd_create"):
            return True
        large.append(raw)
        return False

    data = pickle.dumps(reply, protocol=5, buffer_callback=in_band)
    own = arena is None
    if own:
        arena = _SharedArena()
    try:
        places: list[tuple[int, int]] = []
        if large:
            try:
                places = [arena.place(raw) for raw in large]
            except OSError:  # no memory for it: everything through the pipe
                large, places = [], []
                data = pickle.dumps(reply, protocol=5)
        conn.send_bytes(array("q", [n for place in places for n in place]).tobytes())
        conn.send_bytes(data)
        if places:
            with _socket_of(conn) as s:
                s.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array("i", [arena.fd]))])
    finally:
        if own:
            arena.close()


def _receive(conn: Connection) -> tuple[bool, Any]:
    """A reply, its large buffers in the child's memfd mapped here (the parent's side; read
    out where it cannot be mapped); the descriptor is closed here, and the file goes with the
    last array over it."""
    placed = conn.recv_bytes()
    if len(placed) % 16:
        raise BadReply("the places of its buffers are not pairs of 64-bit integers")
    values = array("q")
    values.frombytes(placed)
    places = list(zip(values[::2], values[1::2], strict=True))
    data = conn.recv_bytes()
    if not places:
        return _loads(data, [])
    with _socket_of(conn) as s:
        fd = _receive_fd(s)
    try:
        st = os.fstat(fd)
        end = max(at + n for at, n in places)
        if not stat.S_ISREG(st.st_mode) or min(min(p) for p in places) < 0 or end > st.st_size:
            raise BadReply(f"buffers of {sum(n for _, n in places)} bytes said, in a file of "
                           f"{st.st_size}")
        mapped = _private_map(fd, end) if end and _sealed_against_shrinking(fd) else None
        if mapped is not None:
            buffers = [memoryview(mapped)[at:at + n] for at, n in places]
        else:
            buffers = [_read_out(fd, at, n) for at, n in places]
    finally:
        os.close(fd)
    return _loads(data, buffers)


def _read_out(fd: int, at: int, n: int) -> np.ndarray:
    """Bytes [at, at + n) of the file `fd`, read into an array of this process."""
    buffer = np.empty(n, np.uint8)
    view = memoryview(buffer)
    while len(view):
        got = os.preadv(fd, [view], at)
        if got <= 0:
            raise EOFError("the indexing process's result is shorter than it said")
        view, at = view[got:], at + got
    return buffer


def _sealed_against_shrinking(fd: int) -> bool:
    """Seals the file `fd` so that nobody can make it shorter; False if it cannot be sealed.
    A page of a map past a file's end raises SIGBUS, which would end the server: a child
    that kept a descriptor of its reply's file (led astray by a file it parsed) could
    otherwise truncate it under the parent's arrays. Unsealable files are read out."""
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except (OSError, AttributeError):  # made without MFD_ALLOW_SEALING, or no seals here
        return False
    return True


def _private_map(fd: int, size: int):
    """A private (copy-on-write) map of the first `size` bytes of the file `fd`, as a ctypes
    buffer that unmaps itself when the last array over it is gone; None if libc cannot be
    called or the map fails (then the caller copies).

    The result's arrays stay in the pages the child wrote (no copy, no fresh pages: 0.05-0.3 s
    for 130 MB), and a write to them stays in this process. Python's mmap would keep a
    descriptor per map (see the module docstring); a map made through libc needs none once
    it exists, so `fd` is closed by the caller as before."""
    libc = _libc()
    if libc is None:
        return None
    address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if address is None or address == ctypes.c_void_p(-1).value:
        return None
    mapped = (ctypes.c_char * size).from_address(address)
    # Not at exit: a daemon thread may still read the arrays while the interpreter ends, and
    # the process's end unmaps it anyway.
    weakref.finalize(mapped, libc.munmap, address, size).atexit = False
    return mapped


@functools.cache
def _libc():
    """The C library's mmap and munmap through ctypes, or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def _socket_of(conn: Connection) -> socket.socket:
    """A socket object on a duplicate of the pipe's descriptor, for descriptor passing.
    Blocking, as the pipe is: a socket made while socket.setdefaulttimeout() is in force is
    made non-blocking, which the shared open file (the pipe's too) would keep."""
    s = socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(True)
    return s


# What a child's reply may name besides the classes _passes admits: numpy's rebuilders of
# arrays, dtypes and scalars (their 1.x and 2.x homes), and the indexer's error rebuilder.
_REPLY_FUNCTIONS = {
    *((module, name) for module in ("numpy.core.numeric", "numpy._core.numeric")
      for name in ("_frombuffer",)),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("codestream.errors", "_rebuild"),
}
# Packages whose dataclasses and errors a reply may hold (the indexer's results and errors).
_REPLY_PACKAGES = ("codestream", "dicom")


def _reply_class(module: str, name: str) -> type | None:
    """The class `module.name` if a reply may build it: an error of Python's or of the
    indexer's packages, or a dataclass of those packages (None otherwise). A module outside
    those packages is not even imported."""
    if module != "builtins" and module.split(".")[0] not in _REPLY_PACKAGES:
        return None
    if "." in name or name.startswith("__"):
        return None
    mod = sys.modules.get(module) or importlib.import_module(module)
    obj = getattr(mod, name, None)
    if not isinstance(obj, type):
        return None
    if issubclass(obj, Exception):
        return obj
    if module != "builtins" and dataclasses.is_dataclass(obj):
        return obj
    return None


class _ReplyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _REPLY_FUNCTIONS:
            return super().find_class(module, name)
        cls = _reply_class(module, name)
        if cls is None:
            raise BadReply(f"its pickle names {module}.{name}, which a reply may not hold")
        return cls


def _loads(data: bytes, buffers: list) -> tuple[bool, Any]:
    """A reply unpickled with _ReplyUnpickler: (True, a result) or (False, an error)."""
    try:
        reply = _ReplyUnpickler(io.BytesIO(data), buffers=buffers).load()
    except BadReply:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a damaged pickle raises
        raise BadReply(f"its pickle does not load: {e!r:.200}") from None
    if not (isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], bool)):
        raise BadReply("it is not (ok, value)")
    if not reply[0] and not isinstance(reply[1], Exception):
        raise BadReply(f"its error is a {type(reply[1]).__name__}")
    return reply


def _passes(error: BaseException) -> bool:
    """True if the parent would take `error` back (a child's side, before it sends it)."""
    try:
        _loads(pickle.dumps((False, error), protocol=5), [])
    except Exception:  # noqa: BLE001 - not picklable, or refused
        return False
    return True


def _receive_fd(sock: socket.socket) -> int:
    """The descriptor a child sent (any others that came are closed)."""
    fds = array("i")
    msg, ancillary, flags, _ = sock.recvmsg(1, socket.CMSG_SPACE(fds.itemsize),
                                            socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if msg != b"F" or len(fds) != 1 or flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise EOFError("the indexing process ended before its result's buffers came")
    return fds[0]
