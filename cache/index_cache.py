"""Indexes that outlive a request: an LRU of open Sources in memory, persisted on disk.

On disk there is one file per target, named by a sha256 of the resolved path and written
atomically (temp file + os.replace). It holds a fixed prefix, a JSON header (format version,
file identity, box layout, the scalar fields and SIZ of each codestream, an offset table) and
then the raw bytes of every numpy array, each aligned to 64 bytes. The metadata-bins (the
partition of the boxes, codestream.metabins) are stored as arrays too, so a loaded index gives
clients exactly the partition they were given before:

    prefix  magic "JPIPIDX\\0", version u32, header length u32, data length u64,
            crc32 of the header u32, crc32 of the data u32             (little-endian, 32 bytes)
    header  UTF-8 JSON, zero-padded to a multiple of 64
    data    the arrays, C order, each at a 64-byte aligned offset

Loading maps the file and hands out the arrays as read-only views of the map (no copy, no
pickle): the page cache is shared by every worker process that loads the same index. A file
that is short, fails a CRC or does not decode is treated as missing and removed.

Several processes (the workers of one server, servers on hosts sharing the directory) use one
cache safely: an entry appears whole or not at all (rename), a process that finds no entry
builds under a per-entry file lock (`build_lock`), so the others wait and then load what it
saved, and temporary files left by a process killed while writing are removed after an hour.

DICOM files (dicom/) open without indexing any frame: the server indexes the frames a request
names, and a background thread of the cache indexes the others, one frame at a time, then
persists the whole object (its frame table, and per frame its index or why it failed). A DICOM
object is written to disk only once complete, so a restart before that indexes afresh. Its
frames are stored packed, so an entry holds a few dozen arrays whatever its frame count: each
array of the frames' indexes is concatenated over the frames, with each frame's row bounds
("groups"), and the scalars of each frame are in the JSON header. A frame's index is made of
views of those arrays when it is first read.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import mmap
import os
import struct
import tempfile
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from codestream.boxes import Box, FileLayout
from codestream.errors import CodestreamError, FileChanged
from codestream.index import CodestreamIndex
from codestream.markers import ComponentSize, Siz
from codestream.metabins import MetadataBins
from codestream.source import FileIdentity, Source, file_identity, index_file, stat_key
from dicom.errors import DicomError
from dicom.frames import FrameTable
from dicom.part10 import is_part10_file
from dicom.source import DicomSource, read_dicom

from .isolation import run_isolated

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: metadata-bins (the box partition), not metadata-bin 0 alone
MAGIC = b"JPIPIDX\x00"
_PREFIX = struct.Struct("<8sIIQII")
_ALIGN = 64
_SUFFIX = ".jpidx"
_LOCK_SUFFIX = ".lock"
STALE_TEMP_SECONDS = 3600.0
# A completed index is persisted once no response holds its source, or after this long.
SAVE_AFTER_RESPONSES = 2.0
# A new lazily indexed source is completed in the background once the request that opened it
# is answered (or after SAVE_AFTER_RESPONSES), if that request takes it within this long.
FIRST_REQUEST_ARRIVAL = 0.25
# The dataclass fields are part of the format: an index written by an older CodestreamIndex
# is not decoded into a newer one (it is a miss and gets rebuilt).
_SCHEMA = [f.name for f in dataclasses.fields(CodestreamIndex)]

EventHook = Callable[[str, float], None]


# --------------------------------------------------------------------------- file names
def _resolved(path: Path | str) -> Path:
    return Path(path).resolve()


def entry_path(path: Path | str, cache_dir: Path) -> Path:
    """Where the index of `path` lives under `cache_dir` (a sha256 of the resolved path)."""
    digest = hashlib.sha256(str(_resolved(path)).encode("utf-8", "surrogateescape")).hexdigest()
    return Path(cache_dir) / (digest + _SUFFIX)


def _remove(entry: Path) -> None:
    try:
        entry.unlink()
    except OSError:
        pass  # already gone, or a read-only cache: a miss either way


# --------------------------------------------------------------------------- encoding
class _Arrays:
    """Collects the arrays of one entry and lays them out at aligned offsets."""

    def __init__(self) -> None:
        self.items: list[np.ndarray] = []
        self.table: list[list[Any]] = []
        self.size = 0

    def add(self, arr: np.ndarray) -> int:
        arr = np.ascontiguousarray(arr)
        if arr.dtype.kind not in "biuf" or arr.dtype.hasobject:
            raise TypeError(f"cannot persist an array of dtype {arr.dtype}")
        self.size = -(-self.size // _ALIGN) * _ALIGN
        self.table.append([arr.dtype.str, list(arr.shape), self.size])
        self.items.append(arr)
        self.size += arr.nbytes
        return len(self.items) - 1


def _encode_value(value: Any, arrays: _Arrays) -> dict[str, Any]:
    if isinstance(value, np.ndarray):
        return {"a": arrays.add(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b": arrays.add(np.frombuffer(bytes(value), np.uint8))}
    if isinstance(value, Siz):
        return {"siz": dataclasses.asdict(value)}
    if isinstance(value, dict):
        return {"d": {str(k): arrays.add(np.asarray(v)) for k, v in value.items()}}
    if isinstance(value, tuple):
        return {"t": list(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return {"v": value}
    raise TypeError(f"cannot persist a {type(value).__name__}")


def _decode_value(spec: dict[str, Any], arrays: list[np.ndarray]) -> Any:
    [(kind, val)] = spec.items()
    if kind == "a":
        return arrays[val]
    if kind == "b":
        return arrays[val].tobytes()  # small (PPM/PPT headers); a bytes object is what users get
    if kind == "siz":
        comps = tuple(ComponentSize(**c) for c in val["components"])
        return Siz(**{**val, "components": comps})
    if kind == "d":
        return {k: arrays[i] for k, i in val.items()}
    if kind == "t":
        return tuple(val)
    if kind == "v":
        return val
    raise ValueError(f"unknown field kind {kind!r}")


def _encode_layout(layout: FileLayout) -> dict[str, Any]:
    return {"is_jp2": layout.is_jp2, "brand": layout.brand.hex(),
            "top_boxes": [[b.box_type.hex(), b.offset, b.header_length, b.length]
                          for b in layout.top_boxes],
            "codestreams": [list(c) for c in layout.codestreams]}


def _decode_layout(d: dict[str, Any]) -> FileLayout:
    boxes = tuple(Box(bytes.fromhex(t), int(o), int(h), int(n)) for t, o, h, n in d["top_boxes"])
    streams = tuple((int(o), int(n)) for o, n in d["codestreams"])
    return FileLayout(bool(d["is_jp2"]), boxes, streams, bytes.fromhex(d["brand"]))


def _pack_group(parts: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrays of the frames (None: absent) as (concatenated rows, row bounds, present mask)."""
    present = [p for p in parts if p is not None]
    if not present:
        return np.zeros(0, np.uint8), np.zeros(len(parts) + 1, np.int64), np.zeros(len(parts),
                                                                                  np.uint8)
    tail = present[0].shape[1:]
    if any(p.shape[1:] != tail for p in present):
        raise TypeError("frames disagree on an array's row shape")
    dtype = np.result_type(*present)
    bounds = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([0 if p is None else len(p) for p in parts], out=bounds[1:])
    data = np.concatenate([p.astype(dtype, copy=False) for p in present])
    return data, bounds, np.asarray([p is not None for p in parts], np.uint8)


def _pack_frames(indexes: list[CodestreamIndex | None], arrays: _Arrays) -> dict[str, Any]:
    """The frames' indexes (None: a failed frame) packed column by column: per array field
    (and dict member, and bytes) one concatenated array with per-frame row bounds; int fields
    as one int64 array; other scalars (SIZ, strings, tuples, None) as a table of the distinct
    values and a per-frame index into it."""
    ok = [ix is not None for ix in indexes]
    columns: dict[str, Any] = {}

    def group(parts) -> list[int]:
        data, bounds, present = _pack_group(parts)
        return [arrays.add(data), arrays.add(bounds), arrays.add(present)]

    for f in dataclasses.fields(CodestreamIndex):
        values = [getattr(ix, f.name) if ix is not None else None for ix in indexes]
        live = [v for v, o in zip(values, ok, strict=True) if o]
        if any(isinstance(v, np.ndarray) for v in live):
            columns[f.name] = {"g": group([None if v is None else np.asarray(v)
                                           for v in values])}
        elif any(isinstance(v, bytes | bytearray | memoryview) for v in live):
            columns[f.name] = {"gb": group([None if v is None else np.frombuffer(bytes(v),
                                                                                 np.uint8)
                                            for v in values])}
        elif any(isinstance(v, dict) for v in live):
            keys = [str(k) for k in live[0]]
            if any([str(k) for k in v] != keys for v in live):
                raise TypeError(f"{f.name}: frames disagree on its members")
            columns[f.name] = {"gd": {k: group([None if v is None else np.asarray(v[k])
                                                for v in values]) for k in keys}}
        elif all(type(v) is int for v in live):
            columns[f.name] = {"int": arrays.add(np.asarray([v or 0 for v in values],
                                                            np.int64))}
        else:
            table: list[Any] = []
            seen: dict[str, int] = {}
            where = []
            for v in values:
                enc = _encode_value(v, arrays)
                key = json.dumps(enc, sort_keys=True)
                if key not in seen:
                    seen[key] = len(table)
                    table.append(enc)
                where.append(seen[key])
            columns[f.name] = {"table": [table, arrays.add(np.asarray(where, np.int32))]}
    return {"ok": arrays.add(np.asarray(ok, np.uint8)), "columns": columns}


class _FrameStore:
    """The frames of a DICOM entry, checked when loaded; frame i's index (views of the
    entry's arrays) is made when asked for."""

    def __init__(self, spec: dict[str, Any], arrays: list[np.ndarray], count: int) -> None:
        self.ok = arrays[spec["ok"]]
        if len(self.ok) != count:
            raise ValueError("DICOM entry: the frame count differs from the frame table")
        columns = spec["columns"]
        if set(columns) != set(_SCHEMA):
            raise ValueError("DICOM entry: its columns are not CodestreamIndex's fields")
        self.columns: dict[str, tuple[str, Any]] = {}
        for name, col in columns.items():
            [(kind, val)] = col.items()
            if kind in ("g", "gb"):
                self.columns[name] = (kind, self._group(arrays, val, count))
            elif kind == "gd":
                self.columns[name] = (kind, {k: self._group(arrays, g, count)
                                             for k, g in val.items()})
            elif kind == "int":
                ints = arrays[val]
                if len(ints) != count:
                    raise ValueError(f"DICOM entry: {name} has a wrong length")
                self.columns[name] = (kind, ints)
            elif kind == "table":
                table = [_decode_value(v, arrays) for v in val[0]]
                where = arrays[val[1]]
                if len(where) != count or (len(where) and (where.min() < 0
                                                           or where.max() >= len(table))):
                    raise ValueError(f"DICOM entry: {name} has a bad table index")
                self.columns[name] = (kind, (table, where))
            else:
                raise ValueError(f"DICOM entry: unknown column kind {kind!r}")

    @staticmethod
    def _group(arrays: list[np.ndarray], ids: list[int], count: int):
        data, bounds, present = (arrays[i] for i in ids)
        if (len(bounds) != count + 1 or len(present) != count or bounds[0] != 0
                or bounds[-1] != len(data) or (np.diff(bounds) < 0).any()):
            raise ValueError("DICOM entry: group bounds do not fit their data")
        return data, bounds, present

    def has(self, i: int) -> bool:
        return bool(self.ok[i])

    def __call__(self, i: int) -> CodestreamIndex | None:
        if not self.ok[i]:
            return None

        def rows(g):
            data, bounds, present = g
            return data[int(bounds[i]):int(bounds[i + 1])] if present[i] else None

        kw: dict[str, Any] = {}
        for name, (kind, val) in self.columns.items():
            if kind == "g":
                kw[name] = rows(val)
            elif kind == "gb":
                kw[name] = rows(val).tobytes()
            elif kind == "gd":
                kw[name] = {k: rows(g) for k, g in val.items()}
            elif kind == "int":
                kw[name] = int(val[i])
            else:
                table, where = val
                kw[name] = table[int(where[i])]
        return CodestreamIndex(**kw)


def _identity_dict(ident: FileIdentity) -> dict[str, Any]:
    return dataclasses.asdict(ident)


def _same_file(a: FileIdentity, b: dict[str, Any]) -> bool:
    return (a.size == b["size"] and a.mtime_ns == b["mtime_ns"] and a.inode == b["inode"]
            and a.header_hash == b["header_hash"])


def _check_still_indexed(source: Source) -> None:
    """FileChanged unless the file at the source's path is still the one it indexed. Checked
    last before an entry takes its place: an index of a file replaced meanwhile would be
    dropped by load_index anyway, and would have taken the place of the replacing file's."""
    try:
        st = os.stat(source.path)
        same = (st.st_size, st.st_mtime_ns, st.st_ino) == stat_key(source.identity)
    except OSError:
        same = False
    if not same:
        raise FileChanged("the file changed before its index was saved")


@contextlib.contextmanager
def build_lock(path: Path | str, cache_dir: Path | None) -> Iterator[None]:
    """Held while one process builds the index of `path`: other processes (workers, hosts
    sharing the cache directory) that want it meanwhile wait, then load what it saved, instead
    of building it again. Only an economy: without the lock (a cache directory that cannot
    hold one) builds still never corrupt an entry, each being written to a temporary file and
    renamed into place. The kernel drops the lock of a process that dies."""
    if cache_dir is None:
        yield
        return
    lock = entry_path(path, cache_dir).with_suffix(_LOCK_SUFFIX)
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale_temporaries(cache_dir: Path, older_than: float = STALE_TEMP_SECONDS) -> int:
    """Removes temporary files of writes that never finished (a process killed while saving);
    returns how many. A write in progress is younger than `older_than` seconds."""
    removed = 0
    cutoff = time.time() - older_than
    try:
        candidates = list(Path(cache_dir).glob(f"*{_SUFFIX}.*.tmp"))
    except OSError:
        return 0
    for tmp in candidates:
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
        except OSError:
            pass
    return removed


# --------------------------------------------------------------------------- save / load
def save_index(source: Source, cache_dir: Path) -> Path:
    """Writes the index of `source` under `cache_dir` (atomically); returns the entry's path.
    FileChanged (nothing written) if the file is no longer the one indexed."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays = _Arrays()
    dicom = None
    if isinstance(source, DicomSource):
        if not source.complete:
            raise ValueError("a DICOM object is persisted once every frame is indexed")
        indexes, failures = source.persisted_state()
        dicom = {"transfer_syntax": source.transfer_syntax,
                 "runs": arrays.add(source.frames.runs),
                 "starts": arrays.add(source.frames.starts),
                 "failures": {str(i): [e.reason, e.status] for i, e in failures.items()},
                 "frames": _pack_frames(indexes, arrays)}
        indexes = []
    else:
        indexes = list(source.codestreams)
    streams = []
    for ix in indexes:
        streams.append({f.name: _encode_value(getattr(ix, f.name), arrays)
                        for f in dataclasses.fields(ix)})
    header = {
        "version": FORMAT_VERSION,
        "schema": _SCHEMA,
        "key": str(_resolved(source.path)),
        "identity": _identity_dict(source.identity),
        "layout": _encode_layout(source.layout),
        "metadata": {k: arrays.add(v) for k, v in source.metadata.to_arrays().items()},
        "codestreams": streams,
        "arrays": arrays.table,
    }
    if dicom is not None:
        header["dicom"] = dicom
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b"\0" * (-len(head) % _ALIGN)
    entry = entry_path(source.path, cache_dir)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=entry.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * _PREFIX.size)  # rewritten below, once the data CRC is known
            f.write(head)
            crc = 0
            pos = 0
            for arr, (_, _, off) in zip(arrays.items, arrays.table, strict=True):
                if off > pos:
                    pad = b"\0" * (off - pos)
                    f.write(pad)
                    crc = zlib.crc32(pad, crc)
                raw = arr.reshape(-1).view(np.uint8)
                f.write(raw.data)
                crc = zlib.crc32(raw.data, crc)
                pos = off + arr.nbytes
            f.seek(0)
            f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head), pos, zlib.crc32(head), crc))
        # No fsync: a file cut short by a crash fails the length/CRC checks and is rebuilt.
        _check_still_indexed(source)
        os.replace(tmp, entry)
    except BaseException:
        _remove(Path(tmp))
        raise
    return entry


def _read_entry(entry: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Header and arrays of an entry; raises (anything) when the entry is not sound."""
    with open(entry, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    magic, version, hlen, dlen, hcrc, dcrc = _PREFIX.unpack_from(mm, 0)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise ValueError("not an index file of this version")
    data_start = _PREFIX.size + hlen
    if hlen % _ALIGN or data_start + dlen != len(mm):
        raise ValueError(f"length {len(mm)} does not match the prefix (cut short?)")
    view = memoryview(mm)
    if zlib.crc32(view[_PREFIX.size:data_start]) != hcrc:
        raise ValueError("header CRC mismatch")
    if zlib.crc32(view[data_start:]) != dcrc:
        raise ValueError("data CRC mismatch")
    header = json.loads(bytes(view[_PREFIX.size:data_start]).rstrip(b"\0"))
    if header.get("version") != FORMAT_VERSION or header.get("schema") != _SCHEMA:
        raise ValueError("index written for another format or CodestreamIndex")
    arrays = []
    for dstr, shape, off in header["arrays"]:
        dt = np.dtype(dstr)
        if dt.kind not in "biuf" or dt.hasobject:
            raise ValueError(f"dtype {dstr} in an index file")
        count = int(np.prod(shape, dtype=np.int64))
        if off < 0 or count < 0 or off + count * dt.itemsize > dlen:
            raise ValueError("array outside the data")
        arrays.append(np.frombuffer(mm, dt, count, data_start + off).reshape(shape))
    view.release()
    return header, arrays


def load_index(path: Path, cache_dir: Path) -> Source | None:
    """The indexed Source of `path` from the disk cache, or None (no entry, the file changed,
    or the entry is unreadable: then it is removed). Never raises for a bad cache file."""
    path = Path(path)
    entry = entry_path(path, cache_dir)
    if not entry.is_file():
        return None
    try:
        ident = file_identity(path)
    except OSError:
        return None  # the image itself is gone: building will say so
    try:
        header, arrays = _read_entry(entry)
        if header["key"] != str(_resolved(path)):
            raise ValueError("entry belongs to another path")
        if not _same_file(ident, header["identity"]):
            log.info("index cache: %s changed since it was indexed", path)
            _remove(entry)
            return None
        layout = _decode_layout(header["layout"])
        metadata = MetadataBins.from_arrays({k: arrays[i]
                                             for k, i in header["metadata"].items()})
        streams = [CodestreamIndex(**{k: _decode_value(v, arrays) for k, v in cs.items()})
                   for cs in header["codestreams"]]
        dicom = header.get("dicom")
        if dicom is not None:
            frames = FrameTable(arrays[dicom["runs"]], arrays[dicom["starts"]])
            failures = {int(i): DicomError(r, int(st)) for i, (r, st) in dicom["failures"].items()}
            stored = _FrameStore(dicom["frames"], arrays, frames.number_of_frames)
            if any(stored.has(i) == (i in failures) for i in range(frames.number_of_frames)):
                raise ValueError("DICOM entry: frames, indexes and failures disagree")
    except Exception as e:  # any defect of a cache file means "rebuild"
        log.warning("index cache: dropping unreadable entry %s: %s", entry, e)
        _remove(entry)
        return None
    try:
        if dicom is not None:
            return DicomSource(path, ident, dicom["transfer_syntax"], frames, stored=stored,
                               failures=failures)
        return Source(path, ident, layout, streams, metadata)
    except Exception as e:  # e.g. the file changed between stat and map
        log.info("index cache: cannot open %s from its cached index: %s", path, e)
        return None


# --------------------------------------------------------------------------- opening
def open_source(path: Path, *, use_plt: bool = True,
                index_in: Callable[..., Any] | None = None) -> Source:
    """Opens a target from scratch: a DICOM Part 10 file (by its 'DICM' magic, whatever its
    name) as a lazily indexed DicomSource, anything else as a JPEG 2000 file (lazily for its
    resolutions where it has no PLT and an RLCP/RPCL order: codestream.index).

    `index_in`: where the file is read and indexed, now and later (Source.index_in): None in
    this process, cache.isolation.run_isolated in a child process."""
    run = index_in or _here
    if is_part10_file(path):
        src: Source = DicomSource(path, *run(read_dicom, path), use_plt=use_plt)
    else:
        src = Source(path, *run(index_file, path, use_plt, True), use_plt=use_plt)
    src.index_in = index_in
    return src


def _here(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class _Completer:
    """One background thread that indexes what lazily indexed sources have left (a DICOM
    object's other frames), one codestream at a time, then persists each complete source.

    A source is dropped from the work when it leaves the cache or is closed."""

    def __init__(self, cache: IndexCache) -> None:
        self.cache = cache
        self._work: list[tuple[str, Source]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def submit(self, key: str, src: Source) -> None:
        with self._cond:
            if self._stopping:
                return
            self._work.append((key, src))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="jpip-index-completer",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._work.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._stopping = False
            self._thread = None

    def _next(self) -> tuple[str, Source] | None:
        with self._cond:
            while not self._work and not self._stopping:
                if not self._cond.wait(timeout=30.0):
                    return None  # idle: the thread ends; the next submit starts another
            if self._stopping:
                return None
            return self._work.pop(0)

    def _run(self) -> None:
        while (item := self._next()) is not None:
            key, src = item
            try:
                # The request that opened the source first: what it needs beyond the lowest
                # resolutions is its own job (Source.index_codestreams), which a background
                # step started meanwhile would slow down.
                src.wait_first_response(FIRST_REQUEST_ARRIVAL, SAVE_AFTER_RESPONSES)
                self.cache.complete(key, src, stop=lambda: self._stopping)
            except (CodestreamError, DicomError) as e:
                # The file's fault (damage in resolutions or frames not read before): the
                # requests that reach it get their 4xx; not a defect of ours.
                log.warning("index cache: cannot complete the index of %s: %s", key, e)
            except Exception:  # never let one bad file end the thread
                log.exception("index cache: completing the index of %s failed", key)


# --------------------------------------------------------------------------- the cache
class _PathLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class IndexCache:
    """Open, indexed Sources by resolved path: an LRU in memory, backed by the disk cache.

    Events (`on_event(name, seconds)`, possibly called from a worker thread): every `get` /
    `aget` reports exactly one of "hit" (found in memory, file unchanged) or "miss" (the time
    the caller waited for a disk load or a build); each index built from the image file also
    reports "build" with the build time. So disk loads = misses - builds (less coalesced waits).
    """

    def __init__(self, cache_dir: Path | None, max_entries: int = 64,
                 on_event: EventHook | None = None, *, use_plt: bool = True,
                 background: bool = True, isolate: bool = True) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_entries = max_entries
        self.use_plt = use_plt
        self._on_event = on_event
        self._entries: OrderedDict[str, Source] = OrderedDict()
        self._lock = threading.Lock()  # guards _entries and _path_locks; never held for I/O
        self._path_locks: dict[str, _PathLock] = {}
        self._pending: dict[str, asyncio.Future[Source]] = {}
        # Lazily indexed sources are completed by a background thread (False: only on
        # demand, and by complete()).
        self.background = background
        # Files are read and indexed in child processes (cache.isolation): a file rewritten
        # in place meanwhile cannot kill this one. False: in this process (tools).
        self._index_in = run_isolated if isolate else None
        self._completer = _Completer(self)
        if self.cache_dir is not None:
            remove_stale_temporaries(self.cache_dir)
        self._save_failing = False  # the last save failed (logged once: see _save)

    def index_in_process(self) -> None:
        """Indexes the files opened from now on in this process (no child processes)."""
        self._index_in = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str | Path) and str(_resolved(path)) in self._entries

    def get(self, path: Path | str) -> Source:
        """The Source of `path`, from memory, the disk cache or a fresh build (in this thread)."""
        t0 = time.perf_counter()
        key = str(_resolved(path))
        src = self._lookup(key)
        if src is not None:
            self._emit("hit", time.perf_counter() - t0)
            return src
        src = self._fill(key)
        self._emit("miss", time.perf_counter() - t0)
        return src

    def cached(self, path: str) -> Source | None:
        """The Source of the resolved `path` when memory holds it and the file is unchanged
        (a "hit", as `aget` would report), else None: call `aget`, which loads or builds it."""
        src = self._lookup(path)
        if src is not None:
            self._emit("hit", 0.0)
        return src

    async def aget(self, path: Path | str, *, resolved: bool = False) -> Source:
        """As `get`, with disk loads and builds in a worker thread; concurrent requests for one
        path share one load or build. `resolved`: the caller resolved the path already (the
        server's target resolution does), so it is not resolved twice."""
        t0 = time.perf_counter()
        key = str(path) if resolved else str(_resolved(path))
        src = self._lookup(key)
        if src is not None:
            self._emit("hit", time.perf_counter() - t0)
            return src
        loop = asyncio.get_running_loop()
        fut = self._pending.get(key)
        if fut is None or fut.get_loop() is not loop:
            fut = asyncio.ensure_future(asyncio.to_thread(self._fill, key))
            self._pending[key] = fut
            fut.add_done_callback(partial(self._pending_done, key))
        # shield: one cancelled request must not cancel the build the others wait for
        src = await asyncio.shield(fut)
        self._emit("miss", time.perf_counter() - t0)
        return src

    def complete(self, path: Path | str, src: Source | None = None, *,
                 stop: Callable[[], bool] = lambda: False) -> Source | None:
        """Indexes what `path`'s source has left, one codestream at a time (blocking), then
        persists it; returns the source, or None when it left the cache meanwhile."""
        key = str(_resolved(path))
        if src is None:
            with self._lock:
                src = self._entries.get(key)
            if src is None:
                return None
        for i in src.unindexed():
            for step in src.index_steps(i):
                with self._lock:
                    if self._entries.get(key) is not src:
                        return None  # evicted or replaced: its work is not needed
                if stop():
                    return None
                # Held while it reads the map: an eviction or a replaced file closes the
                # source, and the map goes when this step is done (Source.in_use).
                with src.in_use():
                    if src.closed:
                        return None
                    src.index_codestreams([i], step, background=True)
                time.sleep(0)  # let request threads have the interpreter between steps
        with self._lock:
            current = self._entries.get(key) is src
        if src.complete and self.cache_dir is not None and current:
            # Writing the index (100+ MB for the largest files) would compete with the
            # responses that waited for it: they go first, if they are quick.
            src.wait_unused(SAVE_AFTER_RESPONSES)
            with self._lock:  # the file may have been replaced (and its index saved) meanwhile
                current = self._entries.get(key) is src
            if current and not stop():
                self._save(key, src)
        return src

    def close(self) -> None:
        """Closes every open Source (the cache stays usable: later gets reopen)."""
        self._completer.stop()
        with self._lock:
            sources = list(self._entries.values())
            self._entries.clear()
        for src in sources:
            src.close()

    # --- internals -------------------------------------------------------------------------
    def _save(self, key: str, src: Source) -> None:
        """Persists an index. A cache directory that cannot be written (read-only, full) is
        worth one warning, not one per file: serving goes on from memory, and the next
        failures are logged at DEBUG until a save works again."""
        try:
            save_index(src, self.cache_dir)
        except FileChanged as e:  # replaced meanwhile: its new index is (or will be) saved
            log.debug("index cache: not saving the index of %s: %s", key, e)
            return
        except (OSError, TypeError, ValueError) as e:
            if self._save_failing:
                log.debug("index cache: cannot save the index of %s: %s", key, e)
            else:
                self._save_failing = True
                log.warning("index cache: cannot save the index of %s: %s (indexes are kept "
                            "in memory only; this is said once until saving works again)", key, e)
            return
        if self._save_failing:
            self._save_failing = False
            log.info("index cache: saving works again (%s)", self.cache_dir)

    def _emit(self, name: str, seconds: float) -> None:
        if self._on_event is not None:
            try:
                self._on_event(name, seconds)
            except Exception:  # a metrics hook must not break serving
                log.exception("index cache event hook failed")

    def _pending_done(self, key: str, fut: asyncio.Future[Source]) -> None:
        if self._pending.get(key) is fut:
            del self._pending[key]
        if not fut.cancelled():
            fut.exception()  # retrieved here: waiters may all have been cancelled

    def _lookup(self, key: str) -> Source | None:
        """The cached Source if the file still has the size, mtime and inode it was built from."""
        src = self._entries.get(key)  # one dict read: atomic, no lock needed
        if src is None:
            return None
        try:
            st = os.stat(key)
            same = (st.st_size, st.st_mtime_ns, st.st_ino) == (
                src.identity.size, src.identity.mtime_ns, src.identity.inode)
        except OSError:
            same = False
        with self._lock:
            if self._entries.get(key) is not src:
                return None  # replaced meanwhile; the caller refills (and finds the new one)
            if same:
                self._entries.move_to_end(key)
                return src
            del self._entries[key]
        src.close()
        return None

    def _fill(self, key: str) -> Source:
        """Loads or builds `key` and caches it; one thread per path at a time."""
        with self._lock:
            pl = self._path_locks.setdefault(key, _PathLock())
            pl.users += 1
        try:
            with pl.lock:
                src = self._lookup(key)  # filled by another thread while we waited
                if src is not None:
                    return src
                path = Path(key)
                if self.cache_dir is not None:
                    src = load_index(path, self.cache_dir)
                if src is None:
                    with build_lock(path, self.cache_dir):
                        if self.cache_dir is not None:  # built by another process meanwhile?
                            src = load_index(path, self.cache_dir)
                        if src is None:
                            src = self._build(key, path)
                src.index_in = self._index_in
                self._insert(key, src)
                if not src.complete and self.background:
                    self._completer.submit(key, src)
                return src
        finally:
            with self._lock:
                pl.users -= 1
                if pl.users == 0:
                    del self._path_locks[key]

    def _build(self, key: str, path: Path) -> Source:
        t0 = time.perf_counter()
        src = open_source(path, use_plt=self.use_plt, index_in=self._index_in)
        self._emit("build", time.perf_counter() - t0)
        if self.cache_dir is not None and src.complete:
            self._save(key, src)
        return src

    def _insert(self, key: str, src: Source) -> None:
        dropped = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None and old is not src:
                dropped.append(old)
            while len(self._entries) >= self.max_entries:
                dropped.append(self._entries.popitem(last=False)[1])
            self._entries[key] = src
        for s in dropped:
            s.close()
