"""Tile data-bins against every corpus file: the file's tile-parts, byte for byte, tile by tile
in tile-part order (packed packet headers re-expressed), and codestreams rebuilt from them."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from codestream.index import TILE_PART_FIELDS
from codestream.rebuild import rebuild_from_tiles, whole_tile_parts
from codestream.source import build_source
from codestream.tilebins import SOT_LENGTH, tile_bins, tile_part_pieces
from jpip.respond_jpt import layers_done
from tests.conftest import CORPUS, corpus_files
from tests.oracle import assert_same_pixels, decode_codestream

FILES = corpus_files()
COL = {n: i for i, n in enumerate(TILE_PART_FIELDS)}


def bin_bytes(src, cs: int, t: int, parts: int | None = None) -> bytes:
    tb = tile_bins(src.codestreams[cs])
    span = list(tb.parts_of(t))[:parts]
    return b"".join(bytes(p) for q in span
                    for p in tile_part_pieces(src, cs, tb, q, 0, int(tb.end[q] - tb.start[q])))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_tile_bins_are_the_files_tile_parts(path) -> None:
    with build_source(path) as src:
        for cs, ix in enumerate(src.codestreams):
            tb = tile_bins(ix)
            code = src.codestream_bytes(cs)
            assert (tb.packet_part >= 0).all(), "a packet in no tile-part"
            for t in range(ix.num_tiles):
                data = bin_bytes(src, cs, t)
                assert len(data) == tb.bin_length[t]
                parts = whole_tile_parts(data, t)
                rows = ix.tile_parts[ix.tile_parts[:, COL["tile"]] == t]
                rows = rows[np.argsort(rows[:, COL["tpsot"]])]
                assert [p[10] for p in parts] == rows[:, COL["tpsot"]].tolist()
                if tb.packed[tb.first[t]:tb.first[t + 1]].any():
                    continue  # re-expressed: checked by decoding below
                for part, row in zip(parts, rows.tolist(), strict=True):
                    sot, _, end = row[COL["sot"]], row[COL["header_end"]], row[COL["data_end"]]
                    original = code[sot:end]
                    psot = struct.unpack_from(">I", original, 6)[0]
                    assert psot in (0, end - sot)
                    # Only Psot may differ: 0 ("to the end of the codestream") becomes the length.
                    assert part[:6] + part[10:] == original[:6] + original[10:]
                    assert struct.unpack_from(">I", part, 6)[0] == end - sot


@pytest.mark.parametrize("name", ["p1_02.j2k", "p1_05.j2k", "CT1_psot0_noeoc.j2k",
                                  "test-card-lossy-tiled.jp2", "p0_10.j2k", "heliov.jpx"])
def test_a_codestream_rebuilt_from_every_tile_bin_decodes_as_the_original(name) -> None:
    """PPT (p1_02) and PPM (p1_05) tiles are re-expressed with their packet headers inline;
    the codestream rebuilt from all tile data-bins decodes to the original's samples."""
    with build_source(CORPUS / name) as src:
        for cs, ix in enumerate(src.codestreams):
            bins = {t: bin_bytes(src, cs, t) for t in range(ix.num_tiles)}
            rebuilt = rebuild_from_tiles(src.main_header_bin(cs), bins)
            want = decode_codestream(src.codestream_bytes(cs), rlevel=0)
            assert_same_pixels(want, decode_codestream(rebuilt, rlevel=0), f"{name} cs{cs}")


def test_packed_tiles_carry_sop_and_eph_as_coded() -> None:
    """p1_05: PPM, SOP and EPH. Each re-expressed tile-part: SOT, SOD, then per packet SOP
    (Nsop counting the tile's packets), header (ending in EPH), body; no PPT or PLT."""
    with build_source(CORPUS / "p1_05.j2k") as src:
        ix = src.codestreams[0]
        tb = tile_bins(ix)
        assert tb.packed.all()
        data = bin_bytes(src, 0, 7)
        assert data[:2] == b"\xff\x90" and data[SOT_LENGTH:SOT_LENGTH + 2] == b"\xff\x93"
        count = data.count(b"\xff\x91\x00\x04")
        packets = int((tb.packet_part == tb.first[7]).sum())
        assert count == packets
        first_sop = data.index(b"\xff\x91\x00\x04")
        assert data[first_sop + 4:first_sop + 6] == b"\x00\x00"


def test_rebuild_from_some_tile_parts_or_none() -> None:
    """A tile held in part gets TNsot 0; a tile not held is written with empty packets; the
    codestream decodes either way (what the missing parts hold is outside the window)."""
    with build_source(CORPUS / "test-card-lossy-tiled.jp2") as src:
        ix = src.codestreams[0]
        first = {t: bin_bytes(src, 0, t, parts=1) for t in range(ix.num_tiles)}
        rebuilt = rebuild_from_tiles(src.main_header_bin(0), first)
        assert rebuilt.count(b"\xff\x90\x00\x0a") == ix.num_tiles
        assert decode_codestream(rebuilt, rlevel=0)[0].shape == (480, 640)
        only0 = rebuild_from_tiles(src.main_header_bin(0), {0: bin_bytes(src, 0, 0)})
        assert decode_codestream(only0, rlevel=0)[0].shape == (480, 640)
    # A prefix ending inside a tile-part: only the whole ones are used.
    with build_source(CORPUS / "p0_10.j2k") as src:
        data = bin_bytes(src, 0, 0)
        assert len(whole_tile_parts(data[:-1], 0)) == len(whole_tile_parts(data, 0)) - 1


@pytest.mark.parametrize("name", ["p0_10.j2k", "test-card-lossy-tiled.jp2",
                                  "small_world_non_consecutive_tilepart_tlm.jp2", "p0_02.j2k"])
def test_layers_done_is_what_the_tile_parts_hold(name) -> None:
    """The Aux of extended tile messages: per tile-part, the layers all of whose packets are
    in that tile-part or an earlier one (brute force over the packets)."""
    with build_source(CORPUS / name) as src:
        ix = src.codestreams[0]
        tb = tile_bins(ix)
        done = layers_done(ix, tb)
        layer = ix.packets["layer"]
        for t in range(ix.num_tiles):
            mine = tb.tile[tb.packet_part] == t
            for q in tb.parts_of(t):
                want = 0
                for lay in range(int(ix.layers[t])):
                    sel = mine & (layer == lay)
                    if sel.any() and tb.packet_part[sel].max() > q:
                        break
                    want = lay + 1
                assert done[q] == want, (name, t, q)
