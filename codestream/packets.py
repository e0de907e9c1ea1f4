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
# The most coding passes a (non-HT) code-block can have: 3 Mb - 2 with Mb <= 37 magnitude
# bit-planes (at most 7 guard bits + a 5-bit exponent of 31, less one; T.800 E.1). A header
# claiming more is corrupt, and decoders disagree on how to read it (OpenJPEG starts a new
# codeword segment after 109 passes, and so reads other lengths).
MAX_PASSES = 109
MAX_LBLOCK = 64  # Lblock past this (a 64-bit length field) means a corrupt header


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
        while n > 0:
            if self.bits == 0:
                self._next_byte()
            take = n if n < self.bits else self.bits  # as many bits as this byte has left
            self.bits -= take
            v = (v << take) | ((self.byte >> self.bits) & ((1 << take) - 1))
            n -= take
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


class _Sparse(dict):
    """A dict read like a list: absent keys read as `default` (and are not stored)."""

    __slots__ = ("default",)

    def __init__(self, default: int) -> None:
        super().__init__()
        self.default = default

    def __missing__(self, key: int) -> int:
        return self.default


# Tag trees and code-block grids up to this many nodes use plain lists; larger ones (which only
# absurd precinct sizes or crafted headers produce) store only the nodes that were touched, so
# memory follows the bits read, not the grid a header claims.
DENSE_NODES = 1 << 12


class TagTree:
    """A tag tree over a w x h grid of leaves (B.10.2), decoded incrementally.

    Nodes are numbered level by level, leaves (level 0) first; a node's parent is found by
    arithmetic, so building a tree costs nothing per leaf."""

    __slots__ = ("w", "levels", "value", "low")

    def __init__(self, w: int, h: int) -> None:
        levels = []  # (offset of the level's first node, its width)
        total = 0
        lw, lh = w, h
        while True:
            levels.append((total, lw))
            total += lw * lh
            if lw * lh <= 1:
                break
            lw, lh = (lw + 1) >> 1, (lh + 1) >> 1
        self.w = w
        self.levels = levels
        if total <= DENSE_NODES:
            self.value: list[int] | _Sparse = [_INFINITY] * total
            self.low: list[int] | _Sparse = [0] * total
        else:
            self.value, self.low = _Sparse(_INFINITY), _Sparse(0)

    def decode(self, bits: BitReader, leaf: int, threshold: int) -> int:
        """-1 if the leaf's value is below `threshold`, else the level of the highest node
        known to be >= threshold (every leaf under it is too), reading only the bits needed."""
        x, y = leaf % self.w, leaf // self.w
        value, lows = self.value, self.low
        low = 0
        levels = self.levels
        for lev in range(len(levels) - 1, -1, -1):
            off, lw = levels[lev]
            node = off + (y >> lev) * lw + (x >> lev)
            if low > lows[node]:
                lows[node] = low
            else:
                low = lows[node]
            v = value[node]
            while low < threshold and low < v:
                if bits.bit():
                    value[node] = v = low
                else:
                    low += 1
            lows[node] = low
            if v >= threshold:
                return lev  # its descendants are >= threshold too: no more bits to read
        return -1

    def value_of(self, bits: BitReader, leaf: int, limit: int) -> int:
        """The leaf's value, read to the end (what decode() with thresholds 1, 2, ... reads,
        in the same order: each node on the path until its value is known); CodestreamError
        past `limit` (a corrupt tree would otherwise read on and on)."""
        x, y = leaf % self.w, leaf // self.w
        value, lows = self.value, self.low
        low = 0
        levels = self.levels
        for lev in range(len(levels) - 1, -1, -1):
            off, lw = levels[lev]
            node = off + (y >> lev) * lw + (x >> lev)
            if low < lows[node]:
                low = lows[node]
            v = value[node]
            while low < v:
                if bits.bit():
                    value[node] = v = low
                else:
                    low += 1
                    if low > limit:
                        raise CodestreamError(bits.base + bits.pos,
                                              "zero bit-plane tag tree does not terminate")
            lows[node] = low
        return low


class BandState:
    """Per band of a precinct: its code-block grid and the running state of the code-blocks
    included so far (Lblock, open codeword segment), keyed by raster index."""

    __slots__ = ("cw", "ch", "count", "incl", "zbp", "blocks", "included", "steps")

    def __init__(self, cw: int, ch: int) -> None:
        self.cw, self.ch = cw, ch
        self.count = cw * ch
        self.incl = TagTree(cw, ch) if self.count else None
        self.zbp = TagTree(cw, ch) if self.count else None
        # k -> [lblock, segno, seg_passes, seg_max, passes]
        self.blocks: dict[int, list[int]] = {}
        self.included: list[int] = []  # sorted raster indices of the included code-blocks
        # The inclusion scan's steps that read no bit, all packets together: rows visited, runs
        # crossed and code-blocks found under a node > layer. The work that must follow the
        # bits read, not the grid's size (tests/codestream/test_packets.py).
        self.steps = 0


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
    """Everything a precinct's later packets need from its earlier ones.

    The band states are made on the precinct's first non-empty packet: empty packets (one
    zero bit) need none."""

    __slots__ = ("band_grids", "bands", "style")

    def __init__(self, band_grids: list[tuple[int, int]], style: int) -> None:
        self.band_grids = band_grids
        self.bands: list[BandState] | None = None
        self.style = style

    def read_header(self, bits: BitReader, layer: int) -> int:
        """Decodes one packet header (bits positioned at its start); returns the body length."""
        if not bits.bit():
            return 0  # empty packet
        if self.bands is None:
            self.bands = [BandState(cw, ch) for cw, ch in self.band_grids]
        body = 0
        for band in self.bands:
            if band.count:
                body += self._read_band(bits, band, layer)
        return body

    def _read_band(self, bits: BitReader, band: BandState, layer: int) -> int:
        style = self.style
        ht = bool(style & CBLK_HT)
        threshold = layer + 1
        cw, ch = band.cw, band.ch
        blocks, included = band.blocks, band.included
        bit, incl_decode = bits.bit, band.incl.decode  # bound once: the loop is hot
        read = bits.read
        # Without bypass, termination or HT, a code-block's passes form one codeword segment.
        one_segment = not style & (CBLK_HT | CBLK_TERMALL | CBLK_BYPASS)
        newly: list[int] = []
        body = 0
        n_included = len(included)
        i = 0  # next entry of `included` at or after the position
        # Code-blocks under a tag-tree node known > layer are not included, and no bits are
        # read for them (B.10.2): the node's whole rectangle is skipped. Its span on each of its
        # rows is a run, recorded at its first code-block (where the scan meets it first): run
        # start x -> its end x and the row it ends before. A row made of runs only is skipped
        # with every row after it until one of its runs ends. The work is then what the bits
        # read and the nodes met cost, whatever the grid's size.
        run_end: dict[int, int] = {}
        run_until: dict[int, int] = {}
        steps = 0
        y = 0
        while y < ch:
            row = y * cw
            row_end = row + cw
            skip_to = ch  # where this row's first-ending run ends
            covered = 0  # code-blocks of this row in runs
            steps += 1
            k = row
            while k < row_end:
                if run_until:  # (no lookup while there is no run)
                    x = k - row
                    until = run_until.get(x, 0)
                    if until > y:
                        # Joined with the runs right after it that end on the same row: a row
                        # of runs is crossed in as many steps as it has different ends.
                        steps += 1
                        end = run_end[x]
                        while end < cw and run_until.get(end, 0) == until:
                            end = run_end[end]
                        run_end[x] = end
                        if until < skip_to:
                            skip_to = until
                        covered += end - x
                        k = row + end
                        continue
                # An included code-block's tag-tree nodes are all known <= layer, so none is
                # ever in a run: `i` follows the scan.
                if i < n_included and included[i] == k:
                    i += 1
                    if not bit():
                        k += 1
                        continue
                    state = blocks[k]
                    first = False
                else:
                    level = incl_decode(bits, k, threshold)
                    if level >= 0:
                        steps += 1
                        if level:  # a node above the leaf: skip its rectangle
                            x = k - row
                            end = ((x >> level) + 1) << level
                            until = ((y >> level) + 1) << level
                            if until > y + 1 and y + 1 < ch:
                                run_end[x] = end if end < cw else cw
                                run_until[x] = until if until < ch else ch
                            k = row + end  # past row_end when the node reaches the edge
                        else:
                            k += 1
                        continue
                    band.zbp.value_of(bits, k, MAX_ZERO_BITPLANES)  # zero bit-planes: not needed
                    state = blocks[k] = [3, 0, 0, 0, 0]
                    newly.append(k)
                    first = True
                n = _num_passes(bits)
                state[4] += n
                if state[4] > MAX_PASSES and not ht:
                    raise CodestreamError(bits.base + bits.pos, f"a code-block with {state[4]} "
                                          f"coding passes (at most {MAX_PASSES} can exist)")
                while bit():  # Lblock increment, a comma code
                    state[0] += 1
                    if state[0] > MAX_LBLOCK:
                        raise CodestreamError(bits.base + bits.pos, "Lblock grows without bound")
                if one_segment:
                    body += read(state[0] + n.bit_length() - 1)
                    k += 1
                    continue
                if first:
                    first_max = 1 + 3 * ((n - 1) // 3) if ht else 0
                    state[3] = _segment_max(style, 0, first_max)
                elif state[2] >= state[3]:
                    state[1] += 1
                    state[2] = 0
                    state[3] = _segment_max(style, state[1], 0)
                lblock = state[0]
                while n > 0:
                    take = min(state[3] - state[2], n)
                    body += read(lblock + take.bit_length() - 1)
                    state[2] += take
                    n -= take
                    if n > 0:
                        state[1] += 1
                        state[2] = 0
                        state[3] = _segment_max(style, state[1], 0)
                k += 1
            y = skip_to if covered == cw else y + 1
        band.steps += steps
        if newly:
            band.included = sorted(included + newly)  # two sorted runs: a linear merge
        return body
