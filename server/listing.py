"""The targets under the image root, one folder and one page at a time.

A folder's names are read once (os.scandir, no stat per entry) and kept, sorted, until the
folder's mtime changes; a page then stats only its own entries. The work of a request is
bounded by the page size and, once per folder change, by `max_entries` names. Nothing here
runs on the event loop: callers run `page()` in a thread (it may wait on a slow disk).

Names are checked like targets (server/targets.py): nothing outside the root is listed, links
leaving the root are dropped (and not counted), hidden names (a leading '.') are skipped, and a
file is listed when the server would serve it (`targets.listed_file`: a JPEG 2000 suffix, a
DICOM name, or DICOM content, sniffed with one 132-byte read of a file without a known suffix,
once per folder change, like the names).
"""
from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from server import targets

PAGE_SIZE = 100
MAX_ENTRIES = 200_000  # names kept per folder; a larger folder is listed up to this many
CACHED_FOLDERS = 64


class ListingError(Exception):
    """A folder that cannot be listed: 404 (unknown, refused), 403 (not allowed)."""

    def __init__(self, reason: str, status: int = 404) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class Entry:
    path: str          # under the root, '/'-separated (what `target=` takes)
    name: str
    is_dir: bool
    size: int | None   # bytes of a file


@dataclass(slots=True)
class Page:
    folder: str        # '' for the root
    number: int        # 1-based
    pages: int
    total: int         # entries in the folder (as visible to the request)
    entries: list[Entry] = field(default_factory=list)
    truncated: bool = False  # the folder has more than MAX_ENTRIES names


@dataclass(frozen=True, slots=True)
class _Names:
    mtime_ns: int
    names: tuple[tuple[str, bool, bool], ...]  # (name, is_dir, is_link), sorted
    truncated: bool


def clean_folder(folder: str) -> str:
    """A folder name checked like a target name: '' for the root, else 'a/b'."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in folder) or "\\" in folder:
        raise ListingError("folder name contains control characters or a backslash")
    if folder.startswith("/"):
        raise ListingError("folder is an absolute path")
    parts = [p for p in folder.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ListingError("folder climbs out with '..'")
    return "/".join(parts)


def _inside(real_root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real != real_root and os.path.commonpath([real_root, real]) == real_root


class Lister:
    """Lists folders under `root`, keeping the sorted names of recently listed folders."""

    def __init__(self, root: Path, *, page_size: int = PAGE_SIZE,
                 max_entries: int = MAX_ENTRIES, cached_folders: int = CACHED_FOLDERS) -> None:
        self.root = Path(root)
        self.page_size = page_size
        self.max_entries = max_entries
        self.cached_folders = cached_folders
        self._cache: OrderedDict[str, _Names] = OrderedDict()
        self._lock = threading.Lock()

    def page(self, folder: str, number: int, visible: Callable[[str], bool]) -> Page:
        """Page `number` (1-based) of `folder`; `visible(path)` filters entries (a folder's path
        ends with '/'). Blocking: run it in a thread."""
        folder = clean_folder(folder)
        if folder and not visible(folder + "/"):
            raise ListingError("not allowed", 403)
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(os.path.join(real_root, folder)) if folder else real_root
        if folder and not _inside(real_root, real):
            raise ListingError("folder resolves outside the image root")
        try:
            st = os.stat(real)
        except OSError:
            raise ListingError("no such folder") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ListingError("not a folder")
        names = self._names(real_root, real, st.st_mtime_ns)
        prefix = folder + "/" if folder else ""
        shown = [(n, d, link) for n, d, link in names.names
                 if visible(prefix + n + ("/" if d else ""))]
        pages = max(1, -(-len(shown) // self.page_size))
        number = min(max(number, 1), pages)
        out = Page(folder, number, pages, len(shown), truncated=names.truncated)
        start = (number - 1) * self.page_size
        for name, is_dir, is_link in shown[start:start + self.page_size]:
            path = os.path.join(real, name)
            if is_link and not _inside(real_root, path):
                continue  # a link changed to leave the root since the names were read
            size = None
            if not is_dir:
                try:
                    size = os.stat(path).st_size
                except OSError:
                    continue  # gone, or a dangling link
            out.entries.append(Entry(prefix + name, name, is_dir, size))
        return out

    def _names(self, real_root: str, real: str, mtime_ns: int) -> _Names:
        with self._lock:
            kept = self._cache.get(real)
            if kept is not None and kept.mtime_ns == mtime_ns:
                self._cache.move_to_end(real)
                return kept
        found: list[tuple[str, bool, bool]] = []
        truncated = False
        try:
            with os.scandir(real) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    if len(found) >= self.max_entries:
                        truncated = True
                        break
                    try:
                        is_dir = entry.is_dir()  # follows links; no stat for plain entries
                        is_link = entry.is_symlink()
                    except OSError:
                        continue
                    if is_link and not _inside(real_root, entry.path):
                        continue  # a link leaving the root: never shown, never counted
                    if is_dir or (entry.is_file() and targets.listed_file(entry.path)):
                        found.append((entry.name, is_dir, is_link))
        except OSError as e:
            raise ListingError(f"cannot read folder: {e.strerror}", 404) from None
        found.sort(key=lambda e: (not e[1], e[0].casefold(), e[0]))  # folders first
        names = _Names(mtime_ns, tuple(found), truncated)
        with self._lock:
            self._cache[real] = names
            self._cache.move_to_end(real)
            while len(self._cache) > self.cached_folders:
                self._cache.popitem(last=False)
        return names
