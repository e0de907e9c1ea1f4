"""Metadata-bins: how the boxes of the corpus's JP2/JPX files are partitioned, the placeholder
bytes, and that a client reading the bins back gets every box exactly as the file holds it."""
from __future__ import annotations

import mmap
import struct

import numpy as np
import pytest

from client.metadata import box_bytes, box_tree, walk_tree
from codestream.boxes import SUPERBOXES, read_layout, walk_boxes
from codestream.errors import CodestreamError
from codestream.metabins import (
    MetadataBins,
    parse_placeholder,
    partition_metadata,
    placeholder_box,
)
from codestream.source import build_source
from tests.conftest import CORPUS, corpus_files
from tests.data.jpx import frame_xml, frame_xml_jpx

BOXED = [p for p in corpus_files() if p.suffix in (".jp2", ".jpx")]


def _partition(path):
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    layout = read_layout(mm)
    return mm, layout, partition_metadata(mm, layout)


def _file_boxes(buf, start, end):
    """Every box of the file in depth-first order (superboxes' sub-boxes, not codestreams')."""
    for b in walk_boxes(buf, start, end):
        yield b
        if b.box_type in SUPERBOXES:
            yield from _file_boxes(buf, b.content_offset, b.end)


def _tree_of(path):
    mm, layout, meta = _partition(path)
    bins = {k: meta.bin_bytes(k, memoryview(mm)) for k in range(meta.count)}
    return mm, layout, meta, box_tree(bins)


# --- placeholders --------------------------------------------------------------------------------

def test_placeholder_bytes() -> None:
    xml_header = struct.pack(">I4s", 6116, b"xml ")
    # LBox 28 'phld' Flags 1, OrigID 2, OrigBH: the layout Kakadu's server writes.
    assert placeholder_box(xml_header, contents_bin=2) == bytes.fromhex(
        "0000001c" "70686c64" "00000001" "0000000000000002") + xml_header
    jp2c_header = struct.pack(">I4s", 74687, b"jp2c")
    # Flags 4 (a codestream), OrigID 0, OrigBH, EquivID 0, EquivBH 0, CSID 3.
    assert placeholder_box(jp2c_header, codestream=3) == bytes.fromhex(
        "00000034" "70686c64" "00000004" "0000000000000000") + jp2c_header + bytes(16) + \
        (3).to_bytes(8, "big")
    xl = struct.pack(">I4sQ", 1, b"uuid", 1 << 33)
    ph = parse_placeholder(placeholder_box(xl, contents_bin=7)[8:])
    assert (ph.flags, ph.orig_id, ph.box_type, ph.box_length, ph.header_length) == (
        1, 7, b"uuid", 1 << 33, 16)
    ph = parse_placeholder(placeholder_box(jp2c_header, codestream=3)[8:])
    assert (ph.flags, ph.codestream, ph.box_type, ph.box_length) == (4, 3, b"jp2c", 74687)
    with pytest.raises(CodestreamError):
        parse_placeholder(b"\x00\x00\x00\x04phld")  # too short
    with pytest.raises(ValueError):
        placeholder_box(xml_header)


# --- the partition --------------------------------------------------------------------------------

def _layout_of(meta: MetadataBins) -> list[tuple]:
    nd = meta.nodes
    return [(int(nd["type"][i]).to_bytes(4, "big"), int(nd["bin"][i]),
             int(nd["contents_bin"][i]), int(nd["codestream"][i]))
            for i in range(len(nd["type"]))]


def test_partition_of_a_jp2_file() -> None:
    """SDO's JP2: signature, file type inline; the JP2 header in bin 1 (a grouping superbox);
    the codestream as a placeholder; the 6 KB XML box's contents in bin 2."""
    _, _, meta = _partition(CORPUS / "2013_06_24__17_31_30_84__SDO_AIA_AIA_193.jp2")
    assert _layout_of(meta) == [(b"jP  ", 0, -1, -1), (b"ftyp", 0, -1, -1),
                                (b"jp2h", 0, 1, -1), (b"ihdr", 1, -1, -1),
                                (b"colr", 1, -1, -1), (b"jp2c", 0, -1, 0),
                                (b"xml ", 0, 2, -1)]
    # bin 0: 12 + 20 bytes of boxes, two 28-byte placeholders, one 52-byte codestream one.
    assert meta.bins["length"].tolist() == [12 + 20 + 28 + 52 + 28, 22 + 15, 6116 - 8]
    assert meta.bins["subtree_end"].tolist() == [3, 2, 3]


def test_partition_of_a_jpx_file() -> None:
    """heliov.jpx: bin ids in pre-order (a box's bin before its sub-boxes' bins), the first
    sub-box of an association kept in place, small boxes inline."""
    _, _, meta = _partition(CORPUS / "heliov.jpx")
    split = [(t, b, c) for t, b, c, _ in _layout_of(meta) if c >= 0]
    assert split == [(b"jp2h", 0, 1), (b"pclr", 1, 2), (b"jpch", 0, 3), (b"jplh", 0, 4),
                     (b"cgrp", 4, 5), (b"jpch", 0, 6), (b"jplh", 0, 7), (b"cgrp", 7, 8),
                     (b"asoc", 0, 9), (b"asoc", 9, 10), (b"xml ", 10, 11)]
    # The first codestream's empty header boxes stay in bin 0; the first asoc of the outer
    # association (3421 bytes) is kept in place as its first sub-box.
    inline = [t for t, b, c, _ in _layout_of(meta) if c < 0 and b == 9]
    assert inline == [b"asoc", b"nlst", b"xml "]
    assert meta.bins["subtree_end"][9] == 12 and meta.bins["subtree_end"][3] == 4


def test_scopes_of_a_jpx_file() -> None:
    """Codestream header boxes name their codestream; an association what its number list
    names, and an enclosing association its first sub-box's and then all of theirs."""
    _, _, meta = _partition(CORPUS / "heliov.jpx")
    nd = meta.nodes
    streams = {}
    for i in range(len(nd["type"])):
        key = (int(nd["type"][i]).to_bytes(4, "big"), int(nd["offset"][i]))
        streams[key] = meta.node_streams(i).tolist()
    assert streams[(b"jp2h", 40)] == []
    assert [v for (t, _), v in streams.items() if t == b"jpch"] == [[0], [1], [2]]
    assert streams[(b"asoc", 1389492)] == [0, 2]   # the enclosing association
    assert streams[(b"xml ", 1389524)] == [0]      # frame 0's XML
    assert streams[(b"xml ", 1392945)] == [0, 2]   # frame 2's, inside the group that frame 0
    assert streams[(b"jp2c", 340940)] == [2]       # opens (Kakadu's reading)


def test_a_raw_codestream_has_an_empty_bin_0() -> None:
    _, _, meta = _partition(CORPUS / "p0_12.j2k")
    assert meta.count == 1 and meta.length(0) == 0 and len(meta.nodes["type"]) == 0


@pytest.mark.parametrize("path", BOXED, ids=lambda p: p.name)
def test_every_box_reads_back_as_the_file_holds_it(path) -> None:
    """A client following the placeholders through every bin gets the file's boxes, in
    order, each byte for byte (codestreams aside: their bytes come from image data-bins)."""
    mm, layout, meta, tree = _tree_of(path)
    end = layout.top_boxes[-1].end
    file_boxes = list(_file_boxes(mm, 0, end))
    got = list(walk_tree(tree))
    assert [b.box_type for b in got] == [b.box_type for b in file_boxes]
    for mine, theirs in zip(got, file_boxes, strict=True):
        holds_codestream = any(b.codestream is not None for b in walk_tree([mine]))
        whole = box_bytes(mine)
        if holds_codestream:
            assert whole is None
        else:
            assert whole == bytes(mm[theirs.offset:theirs.end]), mine.path
    meta.check()


@pytest.mark.parametrize("grouped", [True, False])
def test_a_jpx_with_one_xml_box_per_frame(tmp_path, grouped) -> None:
    streams = [(CORPUS / n).read_bytes() for n in ("p0_01.j2k", "p0_12.j2k", "p0_09.j2k",
                                                   "p0_01.j2k")]
    path = frame_xml_jpx(tmp_path / "movie.jpx", streams, grouped=grouped)
    _, _, meta, tree = _tree_of(path)
    xmls = [b for b in walk_tree(tree) if b.box_type == b"xml "]
    assert [box_bytes(b)[8:] for b in xmls] == [frame_xml(k) for k in range(4)]
    codestreams = [b.codestream for b in walk_tree(tree) if b.box_type == b"jp2c"]
    assert codestreams == [0, 1, 2, 3]
    with build_source(path) as src:
        assert [ix.siz.width for ix in src.codestreams] == [128, 3, 17, 128]


def test_the_partition_is_the_same_every_time() -> None:
    a = _partition(CORPUS / "heliov.jpx")[2]
    b = _partition(CORPUS / "heliov.jpx")[2]
    for k, v in a.to_arrays().items():
        assert np.array_equal(v, b.to_arrays()[k]), k


def test_check_refuses_arrays_that_describe_no_partition() -> None:
    _, _, meta = _partition(CORPUS / "small_world_non_consecutive_tilepart_tlm.jp2")
    MetadataBins.from_arrays(meta.to_arrays())  # sound
    arrays = meta.to_arrays()
    arrays["bin_length"] = arrays["bin_length"] + 1
    with pytest.raises(ValueError, match="add up"):
        MetadataBins.from_arrays(arrays)
    arrays = meta.to_arrays()
    arrays["node_bin"] = arrays["node_bin"] + 100
    with pytest.raises(ValueError, match="out of range"):
        MetadataBins.from_arrays(arrays)


def test_the_client_survives_bins_that_lie() -> None:
    """A placeholder pointing at its own bin, one cut short, a box running past its bin: the
    tree stops there instead of looping or failing."""
    loop = placeholder_box(struct.pack(">I4s", 100, b"asoc"), contents_bin=0)
    cut = struct.pack(">I4s", 16, b"phld") + b"\x00" * 8
    past = struct.pack(">I4s", 500, b"xml ") + b"abc"
    tree = box_tree({0: loop + cut + past})
    assert [b.box_type for b in tree] == [b"asoc", b"xml "]
    assert tree[0].children is None and not tree[0].complete
    assert box_bytes(tree[1]) is None
