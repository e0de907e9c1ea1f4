"""`GET /dicom-json?target=NAME`: the dataset of a DICOM file under the root as DICOM JSON.

PS3.18 Annex F, `application/dicom+json`: the dataset's JSON object (tag keys, {"vr", "Value"}
values), without the pixel data and other bulk data (dicom/json_model.py). 404 for a
target that is not a DICOM file, 422 for one pydicom cannot read. Viewers read window/level,
rescale, pixel spacing and the frame count from it. Works for any DICOM file under the root
that the request may see (server/access.py), whatever its transfer syntax (its frames are
served over JPIP only under JPEG 2000 / HTJ2K).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

from aiohttp import web

from dicom.json_model import file_json
from dicom.part10 import is_part10_file
from jpip.errors import RequestError
from server import access
from server.jpip_handler import STATE_KEY
from server.targets import TargetError, resolve_target

DICOM_JSON_TYPE = "application/dicom+json"
JSON_CACHE_ENTRIES = 256


class _JsonCache:
    """DICOM JSON bodies by file identity (path, size, mtime, inode): a small LRU."""

    def __init__(self, entries: int = JSON_CACHE_ENTRIES) -> None:
        self.entries = entries
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def body(self, path: Path) -> tuple[bytes, str]:
        """(JSON body, ETag) of a DICOM file (blocking: run in a thread)."""
        st = os.stat(path)
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        etag = '"' + hashlib.sha256(repr(key).encode("utf-8", "surrogateescape")).hexdigest()[
            :32] + '"'
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
                return body, etag
        body = file_json(path)
        with self._lock:
            self._items[key] = body
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
        return body, etag


# One per process: keyed by file identity, it is right for every app that serves the file.
_JSON_CACHE = _JsonCache()


def _dicom_path(root: Path, target: str) -> Path:
    try:
        path = resolve_target(root, target)
    except TargetError as e:
        if e.status == 415:  # a file type we do not serve is, a fortiori, not DICOM
            raise TargetError(f"{target!r} is not a DICOM file", 404) from None
        raise
    if not is_part10_file(path):
        raise TargetError(f"{target!r} is not a DICOM file (no 'DICM' after a 128-byte "
                          "preamble)", 404)
    return path


async def dicom_json(request: web.Request) -> web.Response:
    """GET /dicom-json?target=NAME."""
    access.authenticate(request)
    target = request.query.get("target")
    if not target:
        raise RequestError("target", "give the DICOM file as target=NAME")
    access.require_target(request, target)
    root = request.app[STATE_KEY].root
    path = await asyncio.to_thread(_dicom_path, root, target)
    access.require_path(request, path)
    body, etag = await asyncio.to_thread(_JSON_CACHE.body, path)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers={**headers,
                                            "Content-Type": f"{DICOM_JSON_TYPE}; charset=utf-8"})
