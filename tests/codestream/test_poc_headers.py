"""POC marker segments in both the main header and a tile-part header.

T.800 A.6.6: a tile-part POC overrides the main header's for its tile. Grok 10
(grk_compress -P) writes the POC in the main header and again in the tile-part header, with the
same volumes and every entry's progression LRCP (0) whatever was asked; its packets follow the
main list (OpenJPEG, which reads tile entries after the main ones, decodes it). Both files here
are built from an opj_compress codestream whose POC is in its tile-part header: Grok's layout
copies the segment into the main header and gives the tile-part copy LRCP entries; the
conforming one puts a main POC of other volumes before it, which the tile's overrides.
"""
from __future__ import annotations

import struct
import subprocess

import numpy as np

from codestream.index import index_codestream
from codestream.markers import POC, SOT
from codestream.parse import parse_codestream
from codestream.rebuild import rebuild_codestream
from codestream.source import build_source
from tests.oracle import assert_same_pixels, decode_codestream

POC_SPEC = "T1=0,0,2,3,3,RPCL/T1=0,0,3,4,3,LRCP"  # opj_compress counts tiles from 1


def _opj_poc_codestream(tmp_path) -> bytes:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:48, 0:64]
    planes = [((xx * (c + 1) + yy * 3 + rng.normal(0, 9, xx.shape)) % 256) for c in range(3)]
    rgb = np.stack(planes, -1).astype("u1")
    src = tmp_path / "in.ppm"
    src.write_bytes(b"P6\n64 48\n255\n" + rgb.tobytes())
    out = tmp_path / "poc.j2k"
    subprocess.run(["opj_compress", "-i", str(src), "-o", str(out), "-n", "4", "-r", "30,8,1",
                    "-c", "[16,16]", "-POC", POC_SPEC], check=True, capture_output=True)
    return out.read_bytes()


def _grok_layout(data: bytes) -> bytes:
    """The POC segment of the (only) tile-part header copied into the main header; the
    tile-part's own entries all set to LRCP, as Grok writes them."""
    layout = parse_codestream(data, 0, len(data))
    assert not layout.main.pocs and len(layout.tile_parts) >= 1
    part = layout.tile_parts[0]
    seg = next(s for s in part.header_segments if s.code == POC)
    poc = bytearray(data[seg.offset:seg.offset + seg.length])
    entries = (len(poc) - 4) // 7  # RSpoc CSpoc LYEpoc(2) REpoc CEpoc Ppoc: 7 bytes each
    tile_poc = bytearray(poc)
    for e in range(entries):
        tile_poc[4 + 7 * e + 6] = 0
    out = bytearray(data)
    out[seg.offset:seg.offset + seg.length] = tile_poc
    assert struct.unpack_from(">H", out, part.sot_offset)[0] == SOT
    out[part.sot_offset:part.sot_offset] = poc
    return bytes(out)


def _main_poc_before(data: bytes, body: bytes) -> bytes:
    """A POC segment with entries `body` inserted into the main header (before the SOT)."""
    layout = parse_codestream(data, 0, len(data))
    at = layout.tile_parts[0].sot_offset
    return data[:at] + struct.pack(">HH", POC, 2 + len(body)) + body + data[at:]


def _same_packets(data: bytes, reference: bytes) -> None:
    for use_plt in (True, False):
        ix = index_codestream(data, 0, len(data), use_plt=use_plt)
        ref_ix = index_codestream(reference, 0, len(reference), use_plt=use_plt)
        assert np.array_equal(ix.packets["precinct"], ref_ix.packets["precinct"])
        assert np.array_equal(ix.packets["layer"], ref_ix.packets["layer"])


def test_a_tile_part_poc_overrides_a_main_one_of_other_volumes(tmp_path) -> None:
    original = _opj_poc_codestream(tmp_path)
    # RS 0, CS 0, LYE 1, RE 5, CE 3, LRCP: the first layer of everything, a volume the tile's
    # own list does not start with; read first, it would reorder every packet.
    conforming = _main_poc_before(original, struct.pack(">BBHBBB", 0, 0, 1, 5, 3, 0))
    layout = parse_codestream(conforming, 0, len(conforming))
    assert [p.progression for p in layout.main.pocs] == [0]
    assert [p.progression for p in layout.tiles[0].markers.pocs] == [2, 0]
    _same_packets(conforming, original)


def test_grok_tile_part_copy_of_the_main_poc_follows_the_main_one(tmp_path) -> None:
    original = _opj_poc_codestream(tmp_path)
    grok = _grok_layout(original)
    layout = parse_codestream(grok, 0, len(grok))
    assert [p.progression for p in layout.main.pocs] == [2, 0]
    assert [p.progression for p in layout.tiles[0].markers.pocs] == [0, 0]
    # OpenJPEG decodes the rewritten file exactly like the original (it reads main, then tile).
    reference = decode_codestream(original)
    assert_same_pixels(reference, decode_codestream(grok), "OpenJPEG's reading")

    _same_packets(grok, original)

    path = tmp_path / "grok-poc.j2k"
    path.write_bytes(grok)
    with build_source(path) as src:
        ix = src.codestreams[0]
        bins = {int(ix.precincts["id"][row]): src.precinct_bin(0, row)
                for row in range(len(ix.precincts["id"]))}
        tiles = {t: src.tile_header_bin(0, t) for t in range(ix.num_tiles)}
        rebuilt = rebuild_codestream(src.main_header_bin(0), tiles, bins)
    assert_same_pixels(reference, decode_codestream(rebuilt), "rebuilt from the index")
