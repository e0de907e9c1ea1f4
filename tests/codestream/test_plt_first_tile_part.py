"""PLT lengths of a whole tile in its first tile-part, as Grok writes them (grk_compress -L -u R).

Grok puts one PLT in the first tile-part header listing every packet of the tile, and none in
the tile's later tile-parts. The index must still use them (splitting them where each
tile-part's data ends) rather than decode every packet header, and must locate exactly the
packets the headers give. The file here is an opj_compress codestream with a PLT in each
tile-part (-TP R -PLT), rewritten into Grok's layout.
"""
from __future__ import annotations

import struct
import subprocess

import numpy as np

from codestream.index import index_codestream
from codestream.markers import PLT
from codestream.parse import parse_codestream
from tests.oracle import assert_same_pixels, decode_codestream

FIELDS = ("precinct", "layer", "offset", "length", "sop", "bin_end")


def _opj_tile_parts_with_plt(tmp_path) -> bytes:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:40, 0:56]
    grey = ((xx * 5 + yy * 3 + rng.normal(0, 11, xx.shape)) % 256).astype("u1")
    src = tmp_path / "in.pgm"
    src.write_bytes(b"P5\n56 40\n255\n" + grey.tobytes())
    out = tmp_path / "tp.j2k"
    subprocess.run(["opj_compress", "-i", str(src), "-o", str(out), "-n", "3", "-r", "20,4,1",
                    "-t", "32,32", "-TP", "R", "-PLT", "-SOP"], check=True, capture_output=True)
    return out.read_bytes()


def _grok_plt_layout(data: bytes) -> bytes:
    """Each tile's PLT entries gathered into one PLT in its first tile-part; Psot fixed."""
    layout = parse_codestream(data, 0, len(data))
    out = bytearray(data[:layout.tile_parts[0].sot_offset])
    for _, th in sorted(layout.tiles.items()):
        assert len(th.parts) > 1 and all(
            any(s.code == PLT for s in p.header_segments) for p in th.parts)
        entries = b"".join(data[s.body_offset + 1:s.end] for p in th.parts
                           for s in p.header_segments if s.code == PLT)
        for k, part in enumerate(th.parts):
            header = bytearray()
            for s in part.header_segments:
                if s.code != PLT:
                    header += data[s.offset:s.end]
            if k == 0:
                header += struct.pack(">HHB", PLT, 3 + len(entries), 0) + entries
            body = data[part.header_end - 2:part.data_end]  # SOD and the packets
            sot = bytearray(data[part.sot_offset:part.sot_offset + 12])
            struct.pack_into(">I", sot, 6, 12 + len(header) + len(body))
            out += sot + header + body
    out += data[layout.tile_parts[-1].data_end:]
    return bytes(out)


def test_plt_of_a_whole_tile_in_its_first_tile_part(tmp_path) -> None:
    original = _opj_tile_parts_with_plt(tmp_path)
    grok = _grok_plt_layout(original)
    assert_same_pixels(decode_codestream(original), decode_codestream(grok), "rewritten file")
    layout = parse_codestream(grok, 0, len(grok))
    assert all(part_no == 0 for th in layout.tiles.values() for part_no, _, _ in th.plt)

    from_plt = index_codestream(grok, 0, len(grok), use_plt=True)
    from_headers = index_codestream(grok, 0, len(grok), use_plt=False)
    assert from_plt.source == "plt"
    for k in FIELDS:
        assert np.array_equal(from_plt.packets[k], from_headers.packets[k]), k


def test_plt_that_does_not_fill_the_tile_parts_is_not_used(tmp_path) -> None:
    """The same layout with one length changed: the lengths no longer end where a tile-part
    does, so the packet headers are decoded instead (and give the true packets)."""
    grok = bytearray(_grok_plt_layout(_opj_tile_parts_with_plt(tmp_path)))
    layout = parse_codestream(bytes(grok), 0, len(grok))
    _, _, seg = layout.tiles[0].plt[0]
    first = seg.body_offset + 1
    assert grok[first] < 0x7F  # a one-byte length: made one byte longer
    grok[first] += 1
    grok = bytes(grok)
    from_plt = index_codestream(grok, 0, len(grok), use_plt=True)
    from_headers = index_codestream(grok, 0, len(grok), use_plt=False)
    assert from_plt.source in ("headers", "mixed")
    for k in FIELDS:
        assert np.array_equal(from_plt.packets[k], from_headers.packets[k]), k
