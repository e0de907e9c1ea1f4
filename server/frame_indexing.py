"""Lazily indexed targets: before a JPIP request is planned, what it needs is indexed in a
worker thread, so the event loop never waits for an index: the frames of a DICOM object it
names (a frame read later without this, e.g. named only by a model= qualifier, is indexed where
it is read), and the resolutions its window reaches in a codestream indexed for its lowest
resolutions so far (codestream.index; wholly for a request with model= or need=, whose
statements name precincts of any resolution, and for a JPT-stream request)."""
from __future__ import annotations

import asyncio

from codestream.source import Source
from jpip.errors import RequestError
from jpip.machine import JPT_STREAM, served_codestreams
from jpip.plan import resolutions_needed
from jpip.request import JPIPRequest
from jpip.window import resolve_window


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
    """Indexes, in a worker thread, what this request needs of a lazily indexed source and is
    not indexed yet (see the module docstring)."""
    if source.complete:
        return
    todo = source.unindexed(requested_positions(req, source))
    if not todo:
        return
    partial = [i for i in todo if source.codestreams[i].resolutions_indexed is not None]
    whole = [i for i in todo if i not in partial]
    if whole:  # DICOM frames
        await asyncio.to_thread(source.index_codestreams, whole)
    if not partial:
        return
    # model=/need= name precincts of any resolution; a tile data-bin holds every resolution
    # of its tile (its packed-header parts and extended messages' Aux need all packets).
    if req.model or req.need or any(t.startswith(JPT_STREAM) for t in req.type or ()):
        await asyncio.to_thread(source.index_codestreams, partial)
        return
    fsiz = (req.fsiz.fx, req.fsiz.fy, req.fsiz.round) if req.fsiz is not None else None
    for i in partial:
        ix = source.codestreams[i]
        try:
            window = resolve_window(ix, i, fsiz=fsiz, roff=req.roff, rsiz=req.rsiz,
                                    comps=req.comps, layers=req.layers)
        except RequestError:
            continue  # the machine answers that request
        needed = resolutions_needed(ix, window)
        if needed > ix.resolutions_indexed:
            await asyncio.to_thread(source.index_codestreams, [i], needed)
