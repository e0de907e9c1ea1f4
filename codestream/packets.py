"""Packet header decoding (ISO 15444-1 B.10, with HT segments of ISO 15444-15).

Used when a tile has no usable PLT: each packet header is decoded just far enough to learn the
header length and the sum of the code-block contribution lengths (the body length). State that
spans layers (tag trees, inclusion, Lblock, open codeword segments) lives in `PrecinctState`.
"""
from __future__ import annotations

from .errors import CodestreamError
from .markers import CBLK_BYPASS, CBLK_HT, CBLK_TERMALL

_INFINITY = 1 << 30
MAX_ZERO_BITPLANES = 80  # more would mean a corrupt (looping) tag tree


class BitReader:
    """Reads packet-header bits with the bit stuffing of B.10.1 (7 bits after a 0xFF byte)."""

    __slots__ = ("buf", "pos", "end", "base", "byte", "bits", "last")

    def __init__(self, buf: memoryview | bytes, pos: int, end: int, base: int = 0) -> None:
        self.buf, self.pos, self.end, self.base = buf, pos, end, base
        self.byte = 0
        self.bits = 0
        self.last = 0

    def _next_byte(self) -> None:
        if self.pos >= self.end:
            raise CodestreamError(self.base + self.pos, "packet header runs past the data")
        stuffed = self.last == 0xFF
        self.last = self.buf[self.pos]
        self.pos += 1
        if stuffed:
            self.byte, self.bits = self.last & 0x7F, 7
        else:
            self.byte, self.bits = self.last, 8

    def bit(self) -> int:
        if self.bits == 0:
            self._next_byte()
        self.bits -= 1
        return (self.byte >> self.bits) & 1

    def read(self, n: int) -> int:
        v = 0
        for _ in range(n):
            if self.bits == 0:
                self._next_byte()
            self.bits -= 1
            v = (v << 1) | ((self.byte >> self.bits) & 1)
        return v

    def align(self) -> int:
        """Ends the header: skips the stuffed byte after a final 0xFF; returns the position."""
        self.bits = 0
        if self.last == 0xFF:
            if self.pos >= self.end:
                raise CodestreamError(self.base + self.pos, "packet header ends on 0xFF at the end")
            self.pos += 1
            self.last = 0
        return self.pos


class TagTree:
    """A tag tree over a w x h grid of leaves (B.10.2), decoded incrementally."""

    __slots__ = ("parents", "value", "low", "leaf_base")

    def __init__(self, w: int, h: int) -> None:
        parents: list[int] = []
        level_sizes = []
        lw, lh = w, h
        while True:
            level_sizes.append((lw, lh))
            if lw * lh <= 1:
                break
            lw, lh = (lw + 1) >> 1, (lh + 1) >> 1
        # Node numbering: leaves first (level 0), then each coarser level.
        offsets = []
        total = 0
        for lw, lh in level_sizes:
            offsets.append(total)
            total += lw * lh
        parents = [-1] * total
        for lev in range(len(level_sizes) - 1):
            lw, lh = level_sizes[lev]
            pw = level_sizes[lev + 1][0]
            for y in range(lh):
                for x in range(lw):
                    parents[offsets[lev] + y * lw + x] = offsets[lev + 1] + (y >> 1) * pw + (x >> 1)
        self.parents = parents
        self.value = [_INFINITY] * total
        self.low = [0] * total

    def decode(self, bits: BitReader, leaf: int, threshold: int) -> bool:
        """True if the leaf's value is below `threshold` (reading only the bits that needs)."""
        path = []
        node = leaf
        parents = self.parents
        while node >= 0:
            path.append(node)
            node = parents[node]
        value, lows = self.value, self.low
        low = 0
        for node in reversed(path):
            if low > lows[node]:
                lows[node] = low
            else:
                low = lows[node]
            while low < threshold and low < value[node]:
                if bits.bit():
                    value[node] = low
                else:
                    low += 1
            lows[node] = low
        return value[leaf] < threshold


class BandState:
    """Per band of a precinct: its code-block grid and their running state."""

    __slots__ = ("count", "incl", "zbp", "included", "lblock", "seg_passes", "seg_max", "segno",
                 "passes")

    def __init__(self, cw: int, ch: int) -> None:
        n = cw * ch
        self.count = n
        self.incl = TagTree(cw, ch) if n else None
        self.zbp = TagTree(cw, ch) if n else None
        self.included = [False] * n
        self.lblock = [3] * n
        self.seg_passes = [0] * n  # passes in the currently open segment
        self.seg_max = [0] * n
        self.segno = [0] * n
        self.passes = [0] * n


def _num_passes(bits: BitReader) -> int:
    if not bits.bit():
        return 1
    if not bits.bit():
        return 2
    v = bits.read(2)
    if v != 3:
        return 3 + v
    v = bits.read(5)
    if v != 31:
        return 6 + v
    return 37 + bits.read(7)


def _segment_max(style: int, segno: int, first_passes: int) -> int:
    """How many passes codeword segment `segno` may hold (B.10.7.1 and 15444-15)."""
    if style & CBLK_HT:
        if segno == 0:
            return first_passes
        return 2 if segno % 2 == 1 else 1
    if style & CBLK_TERMALL:
        return 1
    if style & CBLK_BYPASS:
        if segno == 0:
            return 10
        return 2 if segno % 2 == 1 else 1
    return 1 << 30


class PrecinctState:
    """Everything a precinct's later packets need from its earlier ones."""

    __slots__ = ("bands", "style")

    def __init__(self, band_grids: list[tuple[int, int]], style: int) -> None:
        self.bands = [BandState(cw, ch) for cw, ch in band_grids]
        self.style = style

    def read_header(self, bits: BitReader, layer: int) -> int:
        """Decodes one packet header (bits positioned at its start); returns the body length."""
        if not bits.bit():
            return 0  # empty packet
        body = 0
        style = self.style
        ht = bool(style & CBLK_HT)
        for band in self.bands:
            for k in range(band.count):
                if not band.included[k]:
                    if not band.incl.decode(bits, k, layer + 1):
                        continue
                    i = 0
                    while not band.zbp.decode(bits, k, i + 1):
                        i += 1
                        if i > MAX_ZERO_BITPLANES:
                            raise CodestreamError(bits.base + bits.pos,
                                                  "zero bit-plane tag tree does not terminate")
                    first = True
                else:
                    if not bits.bit():
                        continue
                    first = False
                n = _num_passes(bits)
                while bits.bit():  # Lblock increment, a comma code
                    band.lblock[k] += 1
                    if band.lblock[k] > 64:
                        raise CodestreamError(bits.base + bits.pos, "Lblock grows without bound")
                if first:
                    band.included[k] = True
                    first_max = 1 + 3 * ((n - 1) // 3) if ht else 0
                    band.segno[k] = 0
                    band.seg_passes[k] = 0
                    band.seg_max[k] = _segment_max(style, 0, first_max)
                elif band.seg_passes[k] >= band.seg_max[k]:
                    band.segno[k] += 1
                    band.seg_passes[k] = 0
                    band.seg_max[k] = _segment_max(style, band.segno[k], 0)
                band.passes[k] += n
                lblock = band.lblock[k]
                while n > 0:
                    take = min(band.seg_max[k] - band.seg_passes[k], n)
                    body += bits.read(lblock + take.bit_length() - 1)
                    band.seg_passes[k] += take
                    n -= take
                    if n > 0:
                        band.segno[k] += 1
                        band.seg_passes[k] = 0
                        band.seg_max[k] = _segment_max(style, band.segno[k], 0)
        return body
