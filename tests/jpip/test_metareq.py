"""metareq (15444-9 C.5) against real box trees: which metadata-bins, and how much of each, a
request gets before image data (`first`) and after it (`last`). Tables of (request, bins)."""
from __future__ import annotations

import struct

import pytest

from codestream.source import build_source
from jpip.metareq import plan_metadata
from jpip.request import parse_query
from jpip.window import resolve_window
from tests.conftest import CORPUS
from tests.data.jpx import box

# heliov.jpx's bins (see tests/codestream/test_metabins.py): 0 top level (380 bytes), 1 jp2h
# (85), 2 pclr's contents (774), 3-5 codestream 1's headers, 6-8 codestream 2's, 9 the
# enclosing association (3449: frame 0's association inline, frame 2's placeholder), 10 frame
# 2's association (44), 11 frame 2's XML contents (6118).
B = {0: 380, 1: 85, 2: 774, 3: 42, 4: 28, 5: 15, 6: 34, 7: 28, 8: 15, 9: 3449, 10: 44,
     11: 6118}
ALL = dict(B)


def whole(*ids: int) -> dict[int, int]:
    return {k: B[k] for k in ids}


@pytest.fixture(scope="module")
def jpx():
    with build_source(CORPUS / "heliov.jpx") as src:
        yield src


def plan(src, query: str, stream: int = 0):
    req = parse_query(query)
    ix = src.codestreams[stream]
    w = resolve_window(ix, stream, fsiz=(64, 64, "round-down"), roff=None, rsiz=None)
    only = req.metareq is not None and req.metareq.metadata_only
    p = plan_metadata(src.metadata, req.metareq, [w], only)
    return dict(p.first), dict(p.last)


CASES = [
    # (query, stream, first, last)
    # No metareq: bin 0, and the boxes that say how to show the window's codestream.
    ("fsiz=64,64", 0, whole(0, 1, 2), {}),
    ("fsiz=64,64&stream=2", 2, whole(0, 1, 2, 6, 7, 8), {}),
    # Metadata only, nothing named: bin 0 alone.
    ("metareq=[jp2h/a]!!", 0, whole(0), whole(1)),
    # JHelioviewer's request at stream 0: every box relevant to codestream 0 (the frame XML
    # association groups frames 0 and 2, so both come), not the other codestreams' headers.
    ("metareq=[*]!!", 0, whole(0), whole(1, 2, 9, 10, 11)),
    ("metareq=[*/a]!!", 0, whole(0), {k: v for k, v in ALL.items() if k}),
    ("metareq=[*/g]!!", 0, whole(0), whole(1, 2)),
    ("metareq=[jpch/s]!!", 1, whole(0), whole(3)),
    ("metareq=[jpch/s]!!", 0, whole(0), {}),  # codestream 0's jpch is empty, in bin 0
    # A box type: the way to each box of that type and its contents.
    ("metareq=[xml_]!!", 0, whole(0), whole(9, 10, 11)),
    ("metareq=[xml%20]!!", 0, whole(0), whole(9, 10, 11)),
    ("metareq=[xml_:100]!!", 0, whole(0), {**whole(9, 10), 11: 100}),
    ("metareq=[xml_:0]!!", 0, whole(0), whole(9, 10)),
    ("metareq=[pclr:10]!!", 0, whole(0), {1: 65, 2: 10}),  # jp2h's bin up to the placeholder
    ("metareq=[cmap]!!", 0, whole(0), {1: 85}),
    # Depth and recursion.
    ("metareq=[asoc]D0!!", 0, whole(0), whole(9)),
    ("metareq=[asoc:r]D0!!", 0, whole(0), whole(9, 10, 11)),
    ("metareq=[asoc:0]D0!!", 0, whole(0), {}),
    ("metareq=[xml_]D1!!", 0, whole(0), {}),  # the XML boxes are at depth 2
    ("metareq=[asoc]D1!!", 0, whole(0), whole(9, 10)),  # both levels, not the XML's bin
    # A root bin: the boxes of bin 10 and below, and the way to bin 10.
    ("metareq=[xml_]R10!!", 0, {**whole(0, 9)}, whole(10, 11)),
    ("metareq=[xml_]R10D0!!", 0, {**whole(0, 9)}, whole(10, 11)),
    ("metareq=[nlst]R10!!", 0, {**whole(0, 9)}, {10: 16}),
    ("metareq=[xml_]R99!!", 0, whole(0), {}),  # no such bin: nothing matches
    # Priority: before image data, with what the image needs.
    ("fsiz=64,64&metareq=[xml_!]", 0, {**whole(0, 1, 2, 9, 10, 11)}, {}),
    ("fsiz=64,64&metareq=[xml_]", 0, whole(0, 1, 2), whole(9, 10, 11)),
    ("fsiz=64,64&metareq=[jp2h]", 0, whole(0, 1, 2), {}),  # already sent first
    # Several groups, and a list inside brackets.
    ("metareq=[pclr:10],[xml_]R10!!", 0, {**whole(0, 9)}, {1: 65, 2: 10, **whole(10, 11)}),
    ("metareq=[pclr:10;cmap]!!", 0, whole(0), {1: 85, 2: 10}),
]


@pytest.mark.parametrize("query,stream,first,last", CASES, ids=[c[0] for c in CASES])
def test_metareq_table(jpx, query, stream, first, last) -> None:
    q = query if "stream=" in query or stream == 0 else f"{query}&stream={stream}"
    assert plan(jpx, q, stream) == (first, last)


def test_raw_codestream_gets_its_empty_bin_0() -> None:
    with build_source(CORPUS / "p0_12.j2k") as src:
        req = parse_query("metareq=[*]!!")
        w = resolve_window(src.codestreams[0], 0, fsiz=None, roff=None, rsiz=None)
        p = plan_metadata(src.metadata, req.metareq, [w], True)
        assert p.first == ((0, 0),) and p.last == ()


def _roi_file(tmp_path):
    """small_world with an association tying an ROI (x 100..199, y 50..99 on the reference
    grid of codestream 0) to a label, after its boxes."""
    data = (CORPUS / "small_world_non_consecutive_tilepart_tlm.jp2").read_bytes()
    roid = box(b"roid", struct.pack(">BBBBIIII", 1, 1, 0, 0, 100, 50, 100, 50))
    tagged = box(b"asoc", box(b"nlst", struct.pack(">I", 0x01000000))
                 + box(b"asoc", roid + box(b"lbl ", b"a region of interest" * 4)))
    path = tmp_path / "roi.jp2"
    path.write_bytes(data + tagged)
    return path


@pytest.mark.parametrize("roff,rsiz,hit", [((0, 0), (400, 200), True),
                                           ((150, 60), (10, 10), True),
                                           ((0, 0), (100, 50), False),
                                           ((300, 100), (50, 50), False)])
def test_window_qualifier_follows_roi_regions(tmp_path, roff, rsiz, hit) -> None:
    with build_source(_roi_file(tmp_path)) as src:
        ix = src.codestreams[0]
        w = resolve_window(ix, 0, fsiz=(400, 200, "round-down"), roff=roff, rsiz=rsiz)
        meta = src.metadata
        label = next(i for i in range(len(meta.nodes["type"]))
                     if meta.nodes["type"][i] == int.from_bytes(b"lbl ", "big")
                     and meta.node_regions(i) is not None)
        contents = int(meta.nodes["contents_bin"][label])
        for q, sent in (("[lbl_/w]", hit), ("[lbl_/s]", False), ("[lbl_/a]", True)):
            p = plan_metadata(meta, parse_query(f"metareq={q}!!").metareq, [w], True)
            assert (contents in dict(p.last)) is sent, q
