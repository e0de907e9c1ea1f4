"""Codestreams written byte by byte for the packet-header decoder: one tile, one component, no
wavelet levels, 4x4 code-blocks and one 2^15 x 2^15 precinct, so that the precinct's code-block
grid is as large and as oddly shaped as the test wants, and packet headers given as bytes.

The hostile shape (tests/codestream/test_packets.py, bench/headers_bench.py): a precinct one
code-block wide and 8192 tall whose every packet is the byte 0x80, "not empty, and the
inclusion tag tree's root is > this layer": one bit of tag tree excludes all 8192 code-blocks.
"""
from __future__ import annotations

import struct

CB = 4  # code-block side, in samples (the smallest the standard allows)
MAX_BLOCKS = (1 << 15) // CB  # code-blocks across or down one precinct


def one_precinct_codestream(blocks_wide: int, blocks_tall: int, layers: int, packets: bytes,
                            style: int = 0) -> bytes:
    """A codestream whose one precinct is blocks_wide x blocks_tall code-blocks and whose tile
    data is `packets` (headers and bodies, LRCP: one packet per layer), code-block `style`."""
    assert 1 <= blocks_wide <= MAX_BLOCKS and 1 <= blocks_tall <= MAX_BLOCKS
    assert 1 <= layers <= 0xFFFF
    w, h = blocks_wide * CB, blocks_tall * CB
    siz = struct.pack(">HHHIIIIIIIIHBBB", 0xFF51, 41, 0, w, h, 0, 0, w, h, 0, 0, 1, 7, 1, 1)
    # Scod 1: precinct sizes follow; LRCP; layers; no MCT; 0 levels; 4x4 code-blocks; 5-3;
    # precinct 2^15 x 2^15.
    cod = struct.pack(">HHBBHBBBBBBB", 0xFF52, 13, 1, 0, layers, 0, 0, 0, 0, style, 1, 0xFF)
    qcd = struct.pack(">HHBB", 0xFF5C, 4, 0x40, 8 << 3)  # no quantization, 2 guard bits
    sot = struct.pack(">HHHIBB", 0xFF90, 10, 0, 12 + 2 + len(packets), 0, 1)
    return b"\xff\x4f" + siz + cod + qcd + sot + b"\xff\x93" + packets + b"\xff\xd9"


def tall_precinct_codestream(layers: int) -> bytes:
    """The hostile shape above: 1 x 8192 code-blocks, `layers` one-byte packets 0x80."""
    return one_precinct_codestream(1, MAX_BLOCKS, layers, b"\x80" * layers)
