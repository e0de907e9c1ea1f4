"""Lazily indexed targets (DICOM multi-frame objects): before a JPIP request is planned, the
frames it names are indexed in a worker thread, so the event loop never waits for a frame's
index. (A frame read later without this, e.g. named only by a model= qualifier, is indexed
where it is read.)"""
from __future__ import annotations

import asyncio

from codestream.source import Source
from jpip.errors import RequestError
from jpip.machine import served_codestreams
from jpip.request import JPIPRequest


def requested_positions(req: JPIPRequest, source: Source) -> list[int]:
    """Positions in `source.codestreams` of the codestreams a request names (stream=,
    context=jpxl<...>), or of the default one (`first_codestream`): the machine's own reading
    (`jpip.machine.served_codestreams`); none when it names no codestream the target has
    (the machine answers that request)."""
    try:
        return served_codestreams(req, source)[0]
    except RequestError:
        return []


async def index_requested_frames(source: Source, req: JPIPRequest) -> None:
    """Indexes, in a worker thread, the codestreams of a lazily indexed source (a DICOM
    object's frames) that this request needs and that are not indexed yet."""
    if source.complete:
        return
    todo = source.unindexed(requested_positions(req, source))
    if todo:
        await asyncio.to_thread(source.index_codestreams, todo)
