"""Lazily indexed targets (DICOM multi-frame objects): before a JPIP request is planned, the
frames it names are indexed in a worker thread, so the event loop never waits for a frame's
index. (A frame read later without this, e.g. named only by a model= qualifier, is indexed
where it is read.)"""
from __future__ import annotations

import asyncio

from codestream.source import Source
from jpip.request import JPIPRequest


def requested_positions(req: JPIPRequest, source: Source) -> list[int]:
    """Positions in `source.codestreams` of the codestreams a request names (stream=,
    context=jpxl<...>), or of the default one (`first_codestream`)."""
    first, count = source.first_codestream, len(source.codestreams)
    ranges = list(req.stream or ())
    if req.context is not None:
        ranges.extend(req.context.jpxl_layers)
    if not ranges:
        return [0] if count else []
    out: set[int] = set()
    for lo, hi, step in ranges:
        top = first + count - 1 if hi is None else min(hi, first + count - 1)
        out.update(n - first for n in range(lo, top + 1, max(step or 1, 1)) if n >= first)
    return sorted(out)


async def index_requested_frames(source: Source, req: JPIPRequest) -> None:
    """Indexes, in a worker thread, the codestreams of a lazily indexed source (a DICOM
    object's frames) that this request needs and that are not indexed yet."""
    if source.complete:
        return
    todo = source.unindexed(requested_positions(req, source))
    if todo:
        await asyncio.to_thread(source.index_codestreams, todo)
