"""The fuzz targets: what each one feeds its input to, and what it must hold.

One function per target, shared by the coverage-guided fuzzer (`python -m tests.fuzz`) and the
regression test (tests/fuzz/test_regressions.py), so a committed finding is replayed exactly as
the fuzzer ran it. A target returns normally when the input was handled correctly: accepted
(and then what was built is checked for consistency) or refused with the project's typed error
(CodestreamError for files, RequestError for requests). Anything else escapes, and is a finding.

`run_within_limits` adds the resource limits: any input under 1 MB is handled within
`MAX_SECONDS` of CPU time and `MAX_MEMORY` bytes of traced memory (Python objects and numpy
arrays, which numpy reports to tracemalloc).
"""
from __future__ import annotations

import re
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from client.metadata import box_bytes, box_tree
from codestream.boxes import read_layout, walk_boxes
from codestream.errors import CodestreamError
from codestream.index import CodestreamIndex, index_codestream
from codestream.metabins import MetadataBins, partition_metadata
from codestream.tilebins import tile_bins
from jpip.errors import RequestError
from jpip.model import parse_model, parse_tp_model
from jpip.plan import plan_window
from jpip.request import parse_form_body, parse_query
from jpip.window import resolve_window

MAX_INPUT = 1 << 20          # the limits hold for inputs under 1 MB
MAX_SECONDS = 1.0            # CPU seconds per input
MAX_MEMORY = 100 * 10**6     # peak traced bytes per input
MAX_MESSAGE = 1000           # characters of a RequestError message: it quotes client input, cut
REQUEST_STATUSES = {400, 404, 415, 501, 503}


class Violation(AssertionError):
    """An input that broke a target's rule (a typed error or a consistency check)."""


# --------------------------------------------------------------------------- files
def check_codestream_error(e: CodestreamError, size: int) -> None:
    if not (isinstance(e.reason, str) and e.reason and str(e)):
        raise Violation(f"CodestreamError without a reason: {e!r}")
    if not (e.offset == -1 or 0 <= e.offset <= size):
        raise Violation(f"CodestreamError offset {e.offset} outside the {size}-byte file: {e}")


def _inside(what: str, start: np.ndarray, length: np.ndarray, lo: int, hi: int) -> None:
    if len(start) and (int(length.min()) < 0 or int(start.min()) < lo
                       or int((start + length).max()) > hi):
        raise Violation(f"{what}: a byte range outside [{lo}, {hi})")


def check_index(ix: CodestreamIndex, size: int) -> None:
    """The bins an index hands out are byte ranges of the file (or of its packed headers)."""
    end = ix.offset + ix.length
    if not 0 <= ix.offset <= end <= size:
        raise Violation(f"codestream [{ix.offset}, {end}) outside the {size}-byte file")
    mh = ix.main_header_ranges
    _inside("main header", mh[:, 0], mh[:, 1], ix.offset, end)
    th = ix.tile_header_ranges
    _inside("tile header", th[:, 1], th[:, 2], ix.offset, end)
    if len(th) and (int(th[:, 0].min()) < 0 or int(th[:, 0].max()) >= ix.num_tiles):
        raise Violation("tile header row names a tile outside the image")
    pk, pr = ix.packets, ix.precincts
    _inside("packet body", pk["offset"], pk["length"], ix.offset, end)
    packed = pk["packed_offset"] >= 0
    _inside("packed packet header", pk["packed_offset"][packed], pk["packed_length"][packed],
            0, len(ix.packed_headers))
    if len(pk["precinct"]) and (int(pk["precinct"].min()) < 0
                                or int(pk["precinct"].max()) >= len(pr["id"])):
        raise Violation("packet of a precinct that does not exist")
    starts, counts = pr["pkt_start"], pr["pkt_count"]
    if len(starts) and int((starts + counts).max()) > len(pk["offset"]):
        raise Violation("precinct packet run past the packet table")
    if len(pr["bin_length"]) and int(pr["bin_length"].min()) < 0:
        raise Violation("negative precinct bin length")
    check_tile_bins(ix)


def check_tile_bins(ix: CodestreamIndex) -> None:
    """Tile data-bins: tile-parts of the codestream, each in one tile's bin, bins adding up."""
    tp = ix.tile_parts
    if len(tp) and (int(tp[:, 3].min()) < 0 or int(tp[:, 5].max()) > ix.length
                    or (tp[:, 4] > tp[:, 5]).any() or (tp[:, 3] >= tp[:, 4]).any()):
        raise Violation("a tile-part outside its codestream, or ending before its header")
    tb = tile_bins(ix)
    if (tb.end < tb.start).any() or len(tb.bin_length) != ix.num_tiles:
        raise Violation("tile data-bin parts out of order")
    if len(tb.packet_part) and int(tb.packet_part.max()) >= len(tb.rows):
        raise Violation("a packet in a tile-part that does not exist")
    sizes = np.bincount(tb.tile, weights=tb.end - tb.start, minlength=ix.num_tiles)
    if not np.array_equal(sizes.astype(np.int64), tb.bin_length):
        raise Violation("tile data-bin lengths are not the sums of their tile-parts")


def _plan_windows(ix: CodestreamIndex, cs: int) -> None:
    """The window planner on what was indexed: a thumbnail, the whole image, one region."""
    siz = ix.siz
    w, h = siz.width, siz.height
    for fsiz, roff, rsiz in (((64, 64, "round-down"), None, None),
                             ((w, h, "round-up"), None, None),
                             ((max(1, w // 2), max(1, h // 2), "closest"),
                              (w // 8, h // 8), (max(1, w // 4), max(1, h // 4)))):
        window = resolve_window(ix, cs, fsiz=fsiz, roff=roff, rsiz=rsiz, layers=1)
        plan = plan_window(ix, window)
        if len(plan.rows) and (int(plan.rows.min()) < 0
                               or int(plan.rows.max()) >= len(ix.precincts["id"])):
            raise Violation("the planner picked a precinct row that does not exist")


def target_codestream(data: bytes) -> CodestreamError | None:
    """A file, as `build_source` reads it: box walk, every codestream indexed, metadata-bin 0;
    then the window planner on the result. Returns the (well-formed) error of a refused file."""
    try:
        layout = read_layout(data)
        indexes = [index_codestream(data, off, ln) for off, ln in layout.codestreams]
        meta = partition_metadata(data, layout)
    except CodestreamError as e:
        check_codestream_error(e, len(data))
        return e
    check_metadata(meta, data, layout)
    for cs, ix in enumerate(indexes):
        check_index(ix, len(data))
        _plan_windows(ix, cs)
    return None


def check_metadata(meta: MetadataBins, data: bytes, layout) -> None:
    """Metadata-bin 0 is a well-formed run of boxes, and the boxes a client reads back from
    the metadata-bins are the file's top-level boxes, byte for byte (codestreams aside)."""
    try:
        meta.check()
    except ValueError as e:
        raise Violation(f"inconsistent metadata-bins: {e}") from None
    bins = {k: meta.bin_bytes(k, data) for k in range(meta.count)}
    try:
        walk_boxes(bins[0], 0, len(bins[0]))
    except CodestreamError as e:
        raise Violation(f"metadata-bin 0 is not a run of boxes: {e}") from None
    tree = box_tree(bins)
    if len(tree) != len(layout.top_boxes):
        raise Violation(f"{len(tree)} top-level boxes read back, the file has "
                        f"{len(layout.top_boxes)}")
    for got, box in zip(tree, layout.top_boxes, strict=True):
        if got.box_type != box.box_type:
            raise Violation(f"box {box.box_type!r} read back as {got.box_type!r}")
        whole = box_bytes(got)
        if whole is not None and whole != bytes(data[box.offset:box.end]):
            raise Violation(f"box {box.box_type!r} at {box.offset} read back differently")


def target_boxes(data: bytes) -> None:
    """The JP2/JPX box walk and metadata-bin 0 alone (no codestream is parsed)."""
    try:
        layout = read_layout(data)
        meta = partition_metadata(data, layout)
    except CodestreamError as e:
        check_codestream_error(e, len(data))
        return
    check_metadata(meta, data, layout)
    for off, ln in layout.codestreams:
        if not (0 <= off and ln >= 0 and off + ln <= len(data)):
            raise Violation(f"codestream ({off}, {ln}) outside the {len(data)}-byte file")


# --------------------------------------------------------------------------- requests
def check_request_error(e: RequestError) -> None:
    text = str(e)
    if e.status not in REQUEST_STATUSES:
        raise Violation(f"RequestError with status {e.status}: {text}")
    if "\n" in text or "\r" in text or len(text) > MAX_MESSAGE:
        raise Violation(f"RequestError message not one short line ({len(text)} chars)")


def as_text(data: bytes) -> str:
    """Bytes as the server's HTTP layer hands a raw query over: UTF-8, undecodable bytes kept
    as lone surrogates (which the grammar must refuse)."""
    return data.decode("utf-8", "surrogateescape")


def target_request(data: bytes) -> None:
    """First byte: bit 0 lenient, bit 1 the POST form-body entry; the rest is the request."""
    if not data:
        return
    mode, body = data[0], data[1:]
    try:
        if mode & 2:
            parse_form_body(body, lenient=bool(mode & 1))
        else:
            parse_query(as_text(body), lenient=bool(mode & 1))
    except RequestError as e:
        check_request_error(e)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # what jpip.request refuses in a decoded value


@cache
def _model_sources():
    """Indexed test files the model target applies parsed descriptors to (3-codestream JPX,
    a 4-tile codestream)."""
    from codestream.source import build_source
    from tests.conftest import CORPUS

    return [build_source(CORPUS / name) for name in ("heliov.jpx", "p0_10.j2k")]


def target_model(data: bytes) -> None:
    """First byte: bit 0 picks tpmodel/tpneed over model/need, bit 1 the field name, bit 2
    applies a parsed model/need to an indexed file (cache model, need restriction). The rest
    is the value as the request layer hands it over: %-decoded UTF-8 text without control
    characters or lone surrogates."""
    if not data:
        return
    mode, text = data[0], data[1:].decode("utf-8", "replace")
    if _CONTROL.search(text):
        return  # the request layer refuses these before any grammar sees them (request target)
    tp = bool(mode & 1)
    field = ("tpneed" if mode & 2 else "tpmodel") if tp else ("need" if mode & 2 else "model")
    try:
        spec = parse_tp_model(text, field=field) if tp else parse_model(text, field=field)
    except RequestError as e:
        check_request_error(e)
        return
    if not mode & 4:
        return
    from cache.model import CacheModel
    from jpip.modelspec import (
        model_records,
        need_rows,
        need_tiles,
        restrict_to_need,
        tile_part_records,
    )
    from jpip.tileplan import plan_tiles, restrict_tiles

    for src in _model_sources():
        first = src.first_codestream
        plans = [plan_window(ix, resolve_window(ix, cs, fsiz=(64, 64, "round-up")))
                 for cs, ix in enumerate(src.codestreams)]
        tiles = [plan_tiles(src.codestreams[p.codestream], p) for p in plans]
        if tp:
            CacheModel().apply(tile_part_records(spec, src, first))
            restrict_tiles(tiles, need_tiles(None, spec, src, first), src.codestreams)
            continue
        CacheModel().apply(model_records(spec, src, first))
        restrict_to_need(plans, need_rows(spec, src, first))
        restrict_tiles(tiles, need_tiles(spec, None, src, first), src.codestreams)


def warm_up(name: str) -> None:
    """What a target builds once (the model target's indexed files), built before any input is
    timed."""
    if name == "model":
        _model_sources()


TARGETS: dict[str, Callable[[bytes], object]] = {
    "codestream": target_codestream,
    "boxes": target_boxes,
    "request": target_request,
    "model": target_model,
}


# --------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Measured:
    seconds: float      # CPU time of the process
    peak_bytes: int     # tracemalloc peak (0 when not traced)


def measure(target: Callable[[bytes], object], data: bytes, *, trace: bool = True) -> Measured:
    """Runs the target once; exceptions propagate."""
    tracing = trace and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    try:
        t0 = time.process_time()
        target(data)
        seconds = time.process_time() - t0
        peak = tracemalloc.get_traced_memory()[1] if tracing else 0
    finally:
        if tracing:
            tracemalloc.stop()
    return Measured(seconds, peak)


def check_limits(target: Callable[[bytes], object], data: bytes, first: Measured, *,
                 max_seconds: float = MAX_SECONDS) -> None:
    """Raises Violation when an input under 1 MB takes over `max_seconds` (1 s) or 100 MB.
    Time is CPU time, and a slow first run is retried (the best of three counts): the
    machine is shared."""
    if len(data) >= MAX_INPUT:
        return
    if first.peak_bytes > MAX_MEMORY:
        raise Violation(f"peak memory {first.peak_bytes / 1e6:.0f} MB > {MAX_MEMORY / 1e6:.0f} MB")
    if first.seconds > max_seconds:
        best = min([first.seconds] + [measure(target, data, trace=False).seconds
                                      for _ in range(2)])
        if best > max_seconds:
            raise Violation(f"took {best:.2f} s of CPU > {max_seconds} s")


def run_within_limits(name: str, data: bytes, *, max_seconds: float = MAX_SECONDS) -> Measured:
    target = TARGETS[name]
    got = measure(target, data)
    check_limits(target, data, got, max_seconds=max_seconds)
    return got


def regression_files(root: Path) -> list[tuple[str, Path]]:
    """(target, file) of every committed regression input under root/<target>/."""
    return sorted((d.name, f) for d in root.iterdir() if d.is_dir() and d.name in TARGETS
                  for f in d.iterdir() if f.is_file() and not f.name.startswith("."))


__all__ = ["MAX_INPUT", "MAX_MEMORY", "MAX_SECONDS", "TARGETS", "Measured", "Violation",
           "check_limits", "measure", "regression_files", "run_within_limits", "warm_up"]
