"""A served file: its identity, its codestream indexes and its data-bins.

Data-bin bytes are read with pread (FileBytes), a response's worth at a time, so serving never
holds a large file in memory, and a file cut shorter while it is served (rewritten in place)
gives an error instead of the SIGBUS that reading a memory map past the file's new end would
raise. Indexing reads a memory map: the server does it in a child process (cache.isolation);
tools and tests index in their own process (`index_in` says where).
"""
from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import TypeVar

import numpy as np

from .boxes import FileLayout, read_layout
from .errors import CodestreamError, FileChanged
from .index import SPLIT, CodestreamIndex, index_codestream
from .metabins import MetadataBins, partition_metadata
from .scattered import select_runs


@dataclass(frozen=True)
class FileIdentity:
    """What must not change for a cached index (and a JPIP target id) to stay valid."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    header_hash: str  # sha256 of the first 64 KiB: catches rewrites that keep size and mtime

    @cached_property
    def target_id(self) -> str:  # a hash: computed once per identity
        key = f"{self.path}|{self.size}|{self.mtime_ns}|{self.inode}|{self.header_hash}"
        return hashlib.sha256(key.encode()).hexdigest()[:32]


def file_identity(path: Path) -> FileIdentity:
    st = path.stat()
    with open(path, "rb") as f:
        head = f.read(65536)
    return FileIdentity(str(path), st.st_size, st.st_mtime_ns, st.st_ino,
                        hashlib.sha256(head).hexdigest())


T = TypeVar("T")

# SpanReader: at most this many bytes of a response's spans are read up front.
SPAN_BUDGET = 8 << 20
# Source.metadata_pieces keeps metadata-bins of at most KEPT_METADATA_BIN bytes, up to
# KEPT_METADATA_BYTES in all.
KEPT_METADATA_BIN = 16 << 10
KEPT_METADATA_BYTES = 1 << 20
# The most buffers one preadv takes (Linux: 1024).
IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)


class FileBytes:
    """An open file's bytes by slicing (`fb[a:b]` is bytes), read with pread.

    A read past the file's current end (it was cut shorter) raises FileChanged: reading a
    memory map there would kill the process (SIGBUS)."""

    __slots__ = ("_file", "size")

    def __init__(self, file, size: int) -> None:
        # The file object, not its number: once it is closed a read fails (ValueError)
        # instead of reading whichever file reused the number.
        self._file = file
        self.size = size  # the file's length when it was opened

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, span: slice) -> bytes:
        start, stop, _ = span.indices(self.size)
        if stop <= start:
            return b""
        data = os.pread(self._file.fileno(), stop - start, start)
        if len(data) != stop - start:
            raise FileChanged("the file was cut shorter while it was being served")
        return data

    def read_into(self, buffer: memoryview, offset: int) -> None:
        """Fills `buffer` with the file's bytes from `offset` (one copy, no bytes object)."""
        if os.preadv(self._file.fileno(), [buffer], offset) != len(buffer):
            raise FileChanged("the file was cut shorter while it was being served")

    def read_runs_into(self, views: list, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """Reads each run (file offset, length) into its view (a writable buffer of that
        length: a response's message bodies, in place), straight from the file: runs that
        follow each other in the file go into one preadv, which scatters them."""
        n = len(views)
        if n == 0:
            return
        offsets = np.asarray(offsets, np.int64)
        order = np.argsort(offsets, kind="stable")
        starts = offsets[order]
        ends = starts + np.asarray(lengths, np.int64)[order]
        # Where a read starts: the first run, and every run not right after the one before.
        first = [0, *(np.flatnonzero(starts[1:] != ends[:-1]) + 1).tolist(), n]
        views = [views[k] for k in order.tolist()]
        starts, ends = starts.tolist(), ends.tolist()
        fd = self._file.fileno()
        for s, e in pairwise(first):
            while s < e:  # at most IOV_MAX buffers a call
                t = min(e, s + IOV_MAX)
                if os.preadv(fd, views[s:t], starts[s]) != ends[t - 1] - starts[s]:
                    raise FileChanged("the file was cut shorter while it was being served")
                s = t


class SpanReader:
    """Runs of a file read through the spans a response will need (`spans`: offsets and
    lengths), read once, up front, with a pread per span, into one buffer.

    A response sends its precincts layer by layer, so one call of read_runs_into sees one
    layer's packets, scattered over the file; a precinct's packets of every layer are mostly
    one span (a progression with the layer innermost). Reading whole spans costs a few
    preads per response instead of one per packet. Spans of more than `budget` bytes in all
    (a large streamed response) are not read up front: runs are then read from the file."""

    def __init__(self, view: FileBytes, offsets: np.ndarray, lengths: np.ndarray, *,
                 budget: int = SPAN_BUDGET) -> None:
        self.view = view
        keep = lengths > 0
        lo = np.asarray(offsets, np.int64)[keep]
        hi = lo + np.asarray(lengths, np.int64)[keep]
        if len(lo):  # spans that touch or overlap become one
            lo, hi = _merged(lo, hi - lo)
        total = int((hi - lo).sum())
        self._lo = self._hi = self._at = None
        if 0 < total <= budget:
            at = np.concatenate(([0], np.cumsum(hi - lo)[:-1]))
            buf = memoryview(bytearray(total))
            for a, b, p in zip(lo.tolist(), hi.tolist(), at.tolist(), strict=True):
                view.read_into(buf[p:p + b - a], a)
            self._lo, self._hi, self._at = lo, hi, at
            self._buf = buf

    def read_runs_into(self, views: list, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """As FileBytes.read_runs_into; runs outside the spans are read by it."""
        if self._lo is None:
            self.view.read_runs_into(views, offsets, lengths)
            return
        offsets = np.asarray(offsets, np.int64)
        lengths = np.asarray(lengths, np.int64)
        span = np.searchsorted(self._lo, offsets, side="right") - 1
        np.maximum(span, 0, out=span)
        if not (offsets + lengths <= self._hi[span]).all() or not (
                offsets >= self._lo[span]).all():
            self.view.read_runs_into(views, offsets, lengths)  # (not the usual case)
            return
        rel = offsets - self._lo[span] + self._at[span]
        buf = self._buf
        for view, a, e in zip(views, rel.tolist(), (rel + lengths).tolist(), strict=True):
            view[:] = buf[a:e]


def _merged(offsets: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs (offset, length; at least one) merged where they touch or overlap: the [lo, hi)
    of each merged run, in file order."""
    order = np.argsort(offsets, kind="stable")
    off = offsets[order]
    reach = np.maximum.accumulate(off + lengths[order])  # the furthest byte so far
    first = np.ones(len(off), bool)
    first[1:] = off[1:] > reach[:-1]
    starts = np.flatnonzero(first)
    return off[starts], reach[np.append(starts[1:] - 1, len(off) - 1)]


class Source:
    """An open, indexed file. Close it (or use it as a context manager) to release the file.

    A response reading the file holds it with `in_use()`: a close meanwhile (the file was
    replaced or deleted, the index cache evicted it) takes effect when the last user is done,
    so a response in flight ends whole instead of finding its file gone.

    `codestreams[i]` is the index of the i-th codestream of the file; the JPIP codestream
    number of it (CSn, `stream=`) is `first_codestream + i`: 0-based for JPEG 2000 files,
    1-based for DICOM frames (frame N is stream N, PS3.5 8.4.1).
    """

    first_codestream: int = 0

    def __init__(self, path: Path, identity: FileIdentity, layout: FileLayout,
                 codestreams: list[CodestreamIndex], metadata: MetadataBins, *,
                 use_plt: bool = True) -> None:
        self.path = path
        self.identity = identity
        self.layout = layout
        self.codestreams = codestreams
        self.metadata = metadata  # the box structure as metadata-bins (codestream.metabins)
        self._users = 0  # responses reading the map (in_use)
        self._taken = False  # in_use was entered once (wait_first_response)
        self._closing = False
        self._users_lock = threading.Condition()  # notified when the last user is done
        self._file = open(path, "rb")
        try:
            check_same_file(self._file, stat_key(identity), "opened")
        except FileChanged:
            self._file.close()
            raise
        self.view: FileBytes | None = FileBytes(self._file, identity.size)
        self._map: mmap.mmap | None = None  # for indexing in this process (_mapped)
        # Where indexing runs: in this process (None), or through a runner such as
        # cache.isolation.run_isolated, called as index_in(function, *arguments).
        self.index_in: Callable[..., CodestreamIndex] | None = None
        self._use_plt = use_plt
        self._urgent = threading.Condition()  # requests' indexing under way (_urgent_count)
        self._urgent_count = 0
        # codestream position -> (resolutions, done) of the indexing job under way for it
        self._jobs: dict[int, tuple[int | None, threading.Event]] = {}
        self._main_bins: dict[int, bytes] = {}
        self._meta_bins: dict[int, bytes] = {}  # small metadata-bins (metadata_pieces)
        self._meta_kept = 0  # bytes in _meta_bins
        self._tile_bins: dict[tuple[int, int], bytes] = {}

    @contextmanager
    def in_use(self) -> Iterator[Source]:
        """Keeps the file open while the block runs (see the class docstring). FileChanged if
        it was already released (another thread found the file changed and closed this
        source between the caller's lookup and this call): look it up again."""
        with self._users_lock:
            if self.view is None:
                raise FileChanged("the file changed while it was being opened")
            self._users += 1
            if not self._taken:
                self._taken = True
                self._users_lock.notify_all()
        try:
            yield self
        finally:
            with self._users_lock:
                self._users -= 1
                last = self._users == 0 and self._closing
                if self._users == 0:
                    self._users_lock.notify_all()
            if last:
                self._release()

    def wait_first_response(self, arrival: float, timeout: float) -> bool:
        """Waits for the caller that opened the source to take it (`in_use`: at most
        `arrival` seconds) and to be done with it (`wait_unused`: at most `timeout` more);
        True if it was. Background work on a new source goes after its first request, whose
        own indexing would otherwise share the processor with it (a cold server's first
        window at full resolution waited for a background step started a moment before)."""
        with self._users_lock:
            if not self._users_lock.wait_for(lambda: self._taken, arrival):
                return False
        return self.wait_unused(timeout)

    def wait_unused(self, timeout: float) -> bool:
        """Waits until no response holds the source (`in_use`), at most `timeout` seconds;
        True if none does. Background work that would compete with them for the processor
        (persisting the index they waited for) goes after them."""
        with self._users_lock:
            return self._users_lock.wait_for(lambda: self._users == 0, timeout)

    @property
    def closed(self) -> bool:
        """True once `close` was called (the map may still be open for its last users)."""
        return self._closing

    def close(self) -> None:
        with self._users_lock:
            self._closing = True
            if self._users:
                return  # the last user releases the map
        self._release()

    def _release(self) -> None:
        self.view = None
        if getattr(self, "_map", None) is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # an indexer still holds a view; the map closes when it is dropped
        self._file.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- lazily indexed sources -----------------------------------------------------------
    # A DICOM object indexes its frames when they are first read (dicom.source); a JPEG 2000
    # codestream without PLT in RLCP/RPCL order may be indexed for its lowest resolutions
    # first (codestream.index). Either way: `unindexed` says what is left, `index_codestreams`
    # does it (blocking: from a worker thread), `index_steps` splits the background work into
    # steps, `complete` says when nothing is left.
    def unindexed(self, positions: list[int] | None = None) -> list[int]:
        """Which codestreams (positions in `codestreams`, all when None) are not wholly
        indexed yet."""
        pick = range(len(self.codestreams)) if positions is None else positions
        return [i for i in pick if self.codestreams[i].resolutions_indexed is not None]

    def index_codestreams(self, positions: list[int], resolutions: int | None = None, *,
                          background: bool = False) -> None:
        """Indexes the given codestreams now, wholly or (`resolutions`) for at least that many
        lowest resolutions. A request's indexing (`background` False) goes first: background
        work pauses while one runs, so a request never waits for a larger step than its own.
        A result replaces the codestream's index only if it holds more (a request still
        reading the old index reads a consistent, if partial, one).

        Work already under way for a codestream is not done twice: a caller whose need it
        covers, and exceeds by at most one resolution, waits for it (on two cores a second
        job only halves the speed of both); a job that failed leaves the caller to try."""
        for i in positions:
            while not _holds(self.codestreams[i], resolutions):
                with self._urgent:
                    running = self._jobs.get(i)
                    if running is not None and _worth_waiting(self.codestreams[i],
                                                              running[0], resolutions):
                        done = running[1]
                    else:
                        done = None
                        mine = (resolutions, threading.Event())
                        if running is None:
                            self._jobs[i] = mine
                if done is not None:
                    done.wait()
                    continue  # its index is in place now, or it failed: then try ourselves
                try:
                    self._index_one(i, resolutions, background)
                finally:
                    with self._urgent:
                        if self._jobs.get(i) is mine:
                            del self._jobs[i]
                    mine[1].set()
                break

    def _index_one(self, i: int, resolutions: int | None, background: bool) -> None:
        self._check_intact()
        off, ln = self.layout.codestreams[i]
        if background:
            # In this process the pause points let requests' indexing go first; in a child
            # there are none, so the step waits until no request's indexing runs.
            pause = self._yield_to_requests
            if self.index_in is not None:
                pause()
                if _holds(self.codestreams[i], resolutions):
                    return  # a request's indexing did this step's work meanwhile
            ix = self._index_with(off, ln, resolutions, pause)
        else:
            with self._urgent:
                self._urgent_count += 1
            try:
                ix = self._index_with(off, ln, resolutions, None)
            finally:
                with self._urgent:
                    self._urgent_count -= 1
                    self._urgent.notify_all()
        with self._urgent:
            if not _holds(self.codestreams[i], ix.resolutions_indexed):
                self.codestreams[i] = ix

    def _index_with(self, off: int, ln: int, resolutions: int | None,
                    pause: Callable[[], None] | None) -> CodestreamIndex:
        """One indexing job: through `index_in` (a child process), else here on the map."""
        if self.index_in is not None:
            ident = self.identity
            return self.index_in(index_file_codestream, ident.path, stat_key(ident), off, ln,
                                 self._use_plt, resolutions)
        return index_codestream(self._mapped(), off, ln, use_plt=self._use_plt,
                                resolutions=resolutions, pause=pause)

    def _yield_to_requests(self) -> None:
        """Background indexing's pause point: waits while a request's indexing runs, and
        stops on a file cut shorter meanwhile."""
        with self._urgent:
            while self._urgent_count:
                self._urgent.wait(0.5)
        self._check_intact()

    def _check_intact(self) -> None:
        """Indexing in this process reads a map, and reading a mapped page the file no longer
        has kills the process (SIGBUS): it checks, before each step and at each pause, that
        the file (this open file, replaced or not) is still as long as it was. That narrows
        the danger without closing it, which is why the server indexes in a child process."""
        if self._file.closed or os.fstat(self._file.fileno()).st_size < self.identity.size:
            raise FileChanged("the file was cut shorter while it was being indexed")

    def _mapped(self) -> mmap.mmap:
        """A map of the file for indexing in this process (made on first use)."""
        if self._map is None:
            self._map = map_file(self._file)
        return self._map

    def index_steps(self, position: int) -> list[int | None]:
        """The `resolutions` arguments that index codestream `position` a resolution at a
        time (None: the rest): the background work's steps, after each of which a request for
        those resolutions finds its index ready."""
        ix = self.codestreams[position]
        have = ix.resolutions_indexed
        if have is None:
            return []
        return [*range(have + 1, _resolution_count(ix)), None]

    @property
    def complete(self) -> bool:
        """True once every codestream has been wholly indexed (or has failed to)."""
        return not self.unindexed()

    # --- data-bins -------------------------------------------------------------------------
    def metadata_pieces(self, bin_id: int, start: int = 0, end: int | None = None) -> list:
        """Bytes [start, end) of metadata-bin `bin_id`, as buffers. Small bins (metadata-bin
        0 of most files: the top-level boxes) are read once and kept, like header bins."""
        kept = self._meta_bins.get(bin_id)
        if kept is None:
            length = self.metadata.length(bin_id)
            if length > KEPT_METADATA_BIN or self._meta_kept + length > KEPT_METADATA_BYTES:
                return self.metadata.pieces_of(bin_id, self.view, start, end)
            kept = self.metadata.bin_bytes(bin_id, self.view)
            self._meta_bins[bin_id] = kept
            self._meta_kept += length
        return [kept[start:end]]

    @property
    def metadata0(self) -> bytes:
        """Metadata-bin 0 (the top-level boxes), whole."""
        return self.metadata.bin_bytes(0, self.view)

    def codestream_bytes(self, cs: int) -> bytes:
        """The whole codestream `cs` (position in `codestreams`) as one bytes object: for
        tools and tests; serving never copies a codestream."""
        ix = self.codestreams[cs]
        if ix.runs is None:
            return bytes(self.view[ix.offset:ix.offset + ix.length])
        return b"".join(bytes(self.view[o:o + n]) for o, n in ix.runs.tolist())

    def codestream_pieces(self, cs: int, start: int, end: int) -> list:
        """Bytes [start, end) of codestream `cs` (offsets from its SOC) as views of the file."""
        ix = self.codestreams[cs]
        if ix.runs is None:
            return [self.view[ix.offset + start:ix.offset + end]]
        return [self.view[o:o + n] for o, n in select_runs(ix.runs, start, end - start).tolist()]

    def _split_pieces(self, ix: CodestreamIndex, k: int, a: int, b: int) -> list:
        """Bytes [a, b) of SPLIT packet k (see CodestreamIndex.split_spans), as buffers."""
        spans = ix.split_spans
        lo, hi = np.searchsorted(spans[:, 0], [k, k + 1])
        out, pos = [], 0
        for _, where, n in spans[lo:hi].tolist():
            s, e = max(a, pos), min(b, pos + n)
            if s < e:
                if where >= 0:
                    out.append(self.view[where + s - pos:where + e - pos])
                else:
                    start = -1 - where
                    out.append(ix.packed_headers[start + s - pos:start + e - pos])
            pos += n
        return out

    def main_header_bin(self, cs: int) -> bytes:
        b = self._main_bins.get(cs)
        if b is None:
            ix = self.codestreams[cs]
            b = b"".join(self.view[o:o + n] for o, n in ix.main_header_ranges.tolist())
            self._main_bins[cs] = b
        return b

    def tile_header_bin(self, cs: int, t: int) -> bytes:
        key = (cs, t)
        b = self._tile_bins.get(key)
        if b is None:
            rows = self.codestreams[cs].tile_header_ranges
            sel = rows[rows[:, 0] == t] if len(rows) else rows
            b = b"".join(self.view[o:o + n] for _, o, n in sel.tolist())
            self._tile_bins[key] = b
        return b

    def precinct_pieces(self, cs: int, row: int, layers: int | None = None) -> list:
        """The precinct bin of precinct `row` (first `layers` packets) as a list of buffers."""
        ix = self.codestreams[cs]
        pk = ix.packets
        start = int(ix.precincts["pkt_start"][row])
        count = int(ix.precincts["pkt_count"][row])
        if layers is not None:
            count = min(count, layers)
        pieces = []
        for k in range(start, start + count):
            po = int(pk["packed_offset"][k])
            if po == SPLIT:
                pieces.extend(self._split_pieces(ix, k, 0, int(pk["packed_length"][k])))
                continue
            if po >= 0:
                pieces.append(ix.packed_headers[po:po + int(pk["packed_length"][k])])
            off = int(pk["offset"][k])
            pieces.append(self.view[off:off + int(pk["length"][k])])
        return pieces

    def precinct_bin(self, cs: int, row: int, layers: int | None = None) -> bytes:
        return b"".join(self.precinct_pieces(cs, row, layers))

    def bin_range(self, cs: int, row: int, start: int, end: int) -> list:
        """Bytes [start, end) of precinct `row`'s bin, as buffers (no copy of the file)."""
        ix = self.codestreams[cs]
        pk = ix.packets
        p0 = int(ix.precincts["pkt_start"][row])
        n = int(ix.precincts["pkt_count"][row])
        ends = pk["bin_end"][p0:p0 + n]
        k = int(np.searchsorted(ends, start, side="right"))
        out = []
        pos = start
        while pos < end and k < n:
            kk = p0 + k
            pkt_end = int(ends[k])
            hlen = int(pk["packed_length"][kk])
            pkt_start = pkt_end - hlen - int(pk["length"][kk])
            a, b = pos - pkt_start, min(end, pkt_end) - pkt_start
            po = int(pk["packed_offset"][kk])
            if po == SPLIT:
                out.extend(self._split_pieces(ix, kk, a, b))
                a = b  # its bytes are all in the pieces
            elif hlen:
                if a < hlen:
                    out.append(ix.packed_headers[po + a:po + min(b, hlen)])
                a, b = max(a, hlen) - hlen, b - hlen
            if b > a:
                off = int(pk["offset"][kk])
                out.append(self.view[off + a:off + b])
            pos = min(end, pkt_end)
            k += 1
        return out


FIRST_RESOLUTIONS = 1  # what a lazily built index holds at first (codestream.index)


def _holds(ix: CodestreamIndex, resolutions: int | None) -> bool:
    """Whether an index holds (at least) that many lowest resolutions (None: all)."""
    return _covers(ix.resolutions_indexed, resolutions)


def _covers(have: int | None, want: int | None) -> bool:
    return have is None or (want is not None and have >= want)


def _worth_waiting(ix: CodestreamIndex, running: int | None, want: int | None) -> bool:
    """Whether a job indexing `running` resolutions (None: all) serves a caller that needs
    `want` sooner than a job of its own: it covers the need and reaches at most one resolution
    further (each resolution holds about 3/4 of all the packets up to it, so a job for more
    would make the caller wait about four times longer than needed)."""
    if not _covers(running, want):
        return False
    top = _resolution_count(ix)
    return (top if running is None else running) <= (top if want is None else want) + 1


def _resolution_count(ix: CodestreamIndex) -> int:
    """How many resolutions the codestream's deepest tile-component has."""
    levels = ix.tcr["levels"]
    return int(levels.max()) + 1 if len(levels) else 1


def build_source(path: Path | str, *, use_plt: bool = True, lazy: bool = False) -> Source:
    """Opens and indexes a file from scratch (no cache), in this process. `lazy`: a codestream
    whose packet headers must be decoded in RLCP/RPCL order is indexed for its lowest
    resolution only; `Source.index_codestreams` does the rest."""
    path = Path(path)
    return Source(path, *index_file(path, use_plt, lazy), use_plt=use_plt)


def index_file(path: Path, use_plt: bool, lazy: bool
               ) -> tuple[FileIdentity, FileLayout, list[CodestreamIndex], MetadataBins]:
    """What a Source of `path` is made of: its identity, box layout, codestream indexes and
    metadata-bins (picklable: cache.isolation runs this in a child process)."""
    identity = file_identity(path)
    with open(path, "rb") as f:
        try:
            if identity.size < 4:
                raise CodestreamError(0, "file too short to be JPEG 2000", not_jpeg2000=True)
            check_same_file(f, stat_key(identity), "opened")
            mm = map_file(f)
            try:
                layout = read_layout(mm)
                first = FIRST_RESOLUTIONS if lazy else None
                streams = [index_codestream(mm, off, ln, use_plt=use_plt, resolutions=first)
                           for off, ln in layout.codestreams]
                metadata = partition_metadata(mm, layout)
            finally:
                mm.close()
        except FileChanged:
            raise
        except CodestreamError:
            # A file being written (copied over in place) looks damaged or short: if it
            # changed while it was read, say so (503: ask again), not "damaged" (422).
            check_same_file(f, stat_key(identity), "read")
            raise
    return identity, layout, streams, metadata


def index_file_codestream(path: str, key: tuple[int, int, int], offset: int, length: int,
                          use_plt: bool, resolutions: int | None) -> CodestreamIndex:
    """Indexes one codestream of the file at `path`, which must still be the file of stat
    `key` (size, mtime, inode): `Source.index_codestreams` in a child process."""
    return in_same_file(path, key, lambda mm: index_codestream(
        mm, offset, length, use_plt=use_plt, resolutions=resolutions))


def in_same_file(path: str, key: tuple[int, int, int], work: Callable[[mmap.mmap], T]) -> T:
    """`work(map)` on the file at `path`, which must be the file of stat `key` before and
    after (a child process indexes the file its parent has open, by name): FileChanged if it
    was removed, replaced or rewritten meanwhile, even without being cut."""
    with open_same_file(path, key) as f:
        with map_file(f) as mm:
            result = work(mm)
        check_same_file(f, key, "indexed")
    return result


def stat_key(identity: FileIdentity) -> tuple[int, int, int]:
    """What a child process checks to index the very file a Source has open."""
    return identity.size, identity.mtime_ns, identity.inode


def map_file(f) -> mmap.mmap:
    """A read-only map of the open file `f`. FileChanged if it is empty now: it was cut to
    nothing after it was checked (a rewrite in place under way)."""
    try:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except ValueError:  # "cannot mmap an empty file"
        raise FileChanged("the file was cut shorter while it was being indexed") from None


def open_same_file(path: str, key: tuple[int, int, int]):
    """The file at `path` opened for reading, if it is still the one of stat `key` (a child
    process reads the file its parent has open by name). FileChanged if it was removed,
    replaced or rewritten since."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise FileChanged(f"the file was removed or replaced while it was being indexed "
                          f"({e.strerror})") from None
    try:
        check_same_file(f, key, "indexed")
    except BaseException:
        f.close()
        raise
    return f


def check_same_file(f, key: tuple[int, int, int], doing: str) -> None:
    """FileChanged unless the open file `f` still has the stat `key` (stat_key)."""
    st = os.fstat(f.fileno())
    if (st.st_size, st.st_mtime_ns, st.st_ino) != key:
        raise FileChanged(f"the file changed while it was being {doing}")


def size_of(path: str | os.PathLike) -> int:
    return os.stat(path).st_size
