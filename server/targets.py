"""Maps a request's target name to a file under the image root, and nothing else.

The target arrives percent-decoded once (by aiohttp for the path form, by the JPIP parser for
`target=`). It is never decoded again: a '%' left in it is part of a file name.

JPEG 2000 files are served by their suffix. Any other regular file is served when it is a DICOM
Part 10 file (a 128-byte preamble, then 'DICM'): archives name them `.dcm`, by UID
(`1.2.840.113619.2.55.3.123`, whose "suffix" is `.123`) or without a suffix at all.
"""
from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

from dicom.part10 import NAMED_SUFFIXES, is_part10_file

log = logging.getLogger("jpip.targets")

SERVED_SUFFIXES = (".jp2", ".j2k", ".j2c", ".jpx", ".jpf", ".jph", ".jhc")


class TargetError(Exception):
    """A target that is not served: 404 for unknown or refused names, 415 for file types."""

    def __init__(self, reason: str, status: int = 404) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _refuse(target: str, reason: str, status: int = 404) -> TargetError:
    log.warning("refused target %r: %s", target, reason)
    return TargetError(reason, status)


def resolve_target(root: Path, target: str,
                   allowed_suffixes: tuple[str, ...] = SERVED_SUFFIXES, *,
                   dicom: bool = True) -> Path:
    """Returns the real path of the regular file `target` names under `root`.

    Raises TargetError for anything else. The checks on the name come first, so a hostile name
    never reaches the file system; the real-path check then catches symlinks leaving the root.
    This does blocking stat() calls (and reads 132 bytes of a file not named as JPEG 2000, to
    tell whether it is DICOM, unless `dicom` is False); run it in a thread if the root may be
    slow storage.
    """
    if not isinstance(target, str) or not target:
        raise _refuse(str(target), "empty target")
    if any(ord(c) < 0x20 or c == "\x7f" for c in target):
        raise _refuse(target, "target contains control characters")
    if "\\" in target:
        raise _refuse(target, "target contains a backslash")
    if target.startswith("/"):
        raise _refuse(target, "target is an absolute path")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(target, "target climbs out with '..'")
    if not parts:
        raise _refuse(target, "target names no file")
    allowed = tuple(s.lower() for s in allowed_suffixes)
    problem = _suffix_problem(parts[-1], allowed)
    if problem and not dicom:
        raise _refuse(target, problem, 415)

    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise _refuse(target, "target resolves outside the image root")
    try:
        st = os.stat(real)
    except OSError:
        # The name as asked (never the root's path): a typo shows at once.
        raise _refuse(target, f"no such target {target[:200]!r} in the image root") from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(target, "target is not a regular file")
    # A link named .jp2 may point at any other file inside the root: check what it really is.
    problem = problem or _suffix_problem(real, allowed)
    if problem and not (dicom and is_part10_file(real)):
        raise _refuse(target, problem + (" unless they are DICOM Part 10 files" if dicom else ""),
                      415)
    return Path(real)


_SERVED_LOWER = tuple(s.lower() for s in SERVED_SUFFIXES)


def listed_file(path: str) -> bool:
    """Whether a listing shows the regular file at `path`, by the rule `resolve_target` serves
    by: a JPEG 2000 suffix, else DICOM Part 10. A file named as DICOM (`.dcm`, `.dicom`) is
    listed by its name; any other is sniffed with one read of its first 132 bytes (archives
    name DICOM files by UID or without a suffix). Blocking: run it in a thread."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _SERVED_LOWER or suffix in NAMED_SUFFIXES:
        return True
    return is_part10_file(path)


def _suffix_problem(name: str, allowed: tuple[str, ...]) -> str | None:
    suffix = os.path.splitext(name)[1].lower()
    if suffix in allowed:
        return None
    shown = f"'{suffix}' files are" if suffix else "files without a suffix are"
    return f"{shown} not served (served: {', '.join(allowed)})"


class TargetCache:
    """Targets resolved in the last `ttl` seconds, by name: a request for a target named a
    moment ago skips `resolve_target`'s realpath and stat calls. Only successes are kept. A
    kept path is a real path that was inside the root when resolved, so whatever changes on
    disk meanwhile, nothing outside the root is served; whether the file itself changed is
    the index cache's check (size, mtime, inode) on every request."""

    def __init__(self, root: Path, ttl: float = 1.0, max_entries: int = 4096) -> None:
        self.root = root
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str, float]] = {}

    def resolve(self, target: str) -> str:
        """`resolve_target`'s real path, as a string."""
        now = time.monotonic()
        kept = self._entries.get(target)
        if kept is not None and kept[1] > now:
            return kept[0]
        path = str(resolve_target(self.root, target))
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # names seen once each (a crawl): start over
        self._entries[target] = (path, now + self.ttl)
        return path
