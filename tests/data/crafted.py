"""Codestreams written byte by byte for the packet-header decoder: one tile, one component, no
wavelet levels, 4x4 code-blocks and precincts as large as the test wants (one 2^15 x 2^15
precinct: a code-block grid as large and as oddly shaped as wanted), packet headers as bytes.

The hostile shapes (tests/codestream/test_packets.py, bench/headers_bench.py): a precinct one
code-block wide and 8192 tall whose every packet is the byte 0x80, "not empty, and the
inclusion tag tree's root is > this layer": one bit of tag tree excludes all 8192 code-blocks;
and many precincts of large code-block grids with one such packet each.
"""
from __future__ import annotations

import struct

CB = 4  # code-block side, in samples (the smallest the standard allows)
MAX_BLOCKS = (1 << 15) // CB  # code-blocks across or down one precinct


def crafted_codestream(width: int, height: int, precinct_exp: int, layers: int,
                       packets: bytes, style: int = 0) -> bytes:
    """A width x height image in one tile, precincts 2^precinct_exp square (4x4 code-blocks),
    whose tile data is `packets` (headers and bodies, LRCP), code-block `style`."""
    assert 2 <= precinct_exp <= 15 and 1 <= layers <= 0xFFFF
    siz = struct.pack(">HHHIIIIIIIIHBBB", 0xFF51, 41, 0, width, height, 0, 0, width, height,
                      0, 0, 1, 7, 1, 1)
    # Scod 1: precinct sizes follow; LRCP; layers; no MCT; 0 levels; 4x4 code-blocks; 5-3.
    cod = struct.pack(">HHBBHBBBBBBB", 0xFF52, 13, 1, 0, layers, 0, 0, 0, 0, style, 1,
                      precinct_exp | precinct_exp << 4)
    qcd = struct.pack(">HHBB", 0xFF5C, 4, 0x40, 8 << 3)  # no quantization, 2 guard bits
    sot = struct.pack(">HHHIBB", 0xFF90, 10, 0, 12 + 2 + len(packets), 0, 1)
    return b"\xff\x4f" + siz + cod + qcd + sot + b"\xff\x93" + packets + b"\xff\xd9"


def one_precinct_codestream(blocks_wide: int, blocks_tall: int, layers: int, packets: bytes,
                            style: int = 0) -> bytes:
    """A codestream whose one precinct is blocks_wide x blocks_tall code-blocks and whose tile
    data is `packets` (one packet per layer), code-block `style`."""
    assert 1 <= blocks_wide <= MAX_BLOCKS and 1 <= blocks_tall <= MAX_BLOCKS
    return crafted_codestream(blocks_wide * CB, blocks_tall * CB, 15, layers, packets, style)


def tall_precinct_codestream(layers: int) -> bytes:
    """The hostile shape above: 1 x 8192 code-blocks, `layers` one-byte packets 0x80."""
    return one_precinct_codestream(1, MAX_BLOCKS, layers, b"\x80" * layers)


def many_precincts_codestream(precinct_exp: int, side: int) -> bytes:
    """A side x side image in precincts of 2^precinct_exp (2^(precinct_exp - 2) code-blocks
    square), one layer, every packet the byte 0x80: a precinct's state for one header byte."""
    n = (-(-side >> precinct_exp)) ** 2
    return crafted_codestream(side, side, precinct_exp, 1, b"\x80" * n)


def inclusion_packets(first_layer: list[list[int]], layers: int) -> list[bytes]:
    """One band's packet headers, layer by layer, written from T.800 B.10 as an encoder would:
    code-block (x, y) is first included in layer first_layer[y][x] (None: never), with zero
    zero bit-planes, one coding pass, Lblock 3 and a zero length; later packets add nothing to
    it. What the inclusion tag tree then costs in bits is what a hostile header could send."""
    h, w = len(first_layer), len(first_layer[0])
    never = 1 << 30
    # Each tag-tree level's node values: the least of its leaves' (B.10.2).
    levels = [[[never if v is None else v for v in row] for row in first_layer]]
    while len(levels[-1]) * len(levels[-1][0]) > 1:
        below = levels[-1]
        lh, lw = (len(below) + 1) >> 1, (len(below[0]) + 1) >> 1
        levels.append([[min(below[j][i] for j in (2 * y, 2 * y + 1) if j < len(below)
                            for i in (2 * x, 2 * x + 1) if i < len(below[0]))
                        for x in range(lw)] for y in range(lh)])
    known: dict = {}   # (tree, level, y, x) -> the value the decoder has learnt
    lows: dict = {}    # (tree, level, y, x) -> its low

    def encode(tree: str, x: int, y: int, threshold: int, out: list[int]) -> bool:
        low = 0
        for lev in range(len(levels) - 1, -1, -1):
            key = (tree, lev, y >> lev, x >> lev)
            truth = levels[lev][y >> lev][x >> lev] if tree == "incl" else 0
            low = max(low, lows.get(key, 0))
            while low < threshold and low < known.get(key, never):
                if truth <= low:
                    out.append(1)
                    known[key] = low
                else:
                    out.append(0)
                    low += 1
            lows[key] = low
        return known.get((tree, 0, y, x), never) < threshold

    included: set = set()
    packets = []
    for layer in range(layers):
        bits = [1]  # not empty
        for y in range(h):
            for x in range(w):
                if (x, y) in included:
                    bits.append(0)  # no new passes
                elif encode("incl", x, y, layer + 1, bits):
                    included.add((x, y))
                    encode("zbp", x, y, 1, bits)  # 0 zero bit-planes
                    bits += [0, 0, 0, 0, 0]  # one pass, Lblock 3, length 0 in 3 bits
        packets.append(_stuffed(bits))
    return packets


def _stuffed(bits: list[int]) -> bytes:
    """Bits into bytes, 7 of them after each 0xFF byte (B.10.1), the last byte padded with
    zeros (and a 0 byte after a final 0xFF)."""
    out = bytearray()
    i = 0
    while i < len(bits):
        room = 7 if out and out[-1] == 0xFF else 8
        chunk = bits[i:i + room]
        i += room
        out.append(int("".join(map(str, chunk)).ljust(room, "0"), 2))
    if out[-1] == 0xFF:
        out.append(0)
    return bytes(out)
