"""A packet-header reader written from ISO 15444-1 B.10 alone, code-block by code-block: what the
decoders' skipping scans (codestream/packets.py, codestream/_headers.c) must read, bit for bit.

Nothing here comes from the decoders: its own bit reader (B.10.1), tag trees visiting every
node of every path on every query (B.10.2), every code-block of every band visited in every
packet (B.10.4), zero bit-planes by rising thresholds (B.10.5, as OpenJPEG reads them), the
pass-count codewords of Table B.4 read bit by bit (B.10.6), Lblock and the codeword-segment
lengths (B.10.7). Only the decoders' limits on corrupt headers (more passes than can exist, an
Lblock past 64 bits, a zero bit-plane tree that does not end) are taken from packets.py, so
that errors can be compared too. It records every code-block's state, so that tests compare
per code-block, not only where each header ends.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from codestream import packets
from codestream.errors import CodestreamError
from codestream.markers import CBLK_BYPASS, CBLK_HT, CBLK_TERMALL

INF = 1 << 30


class RefBits:
    """B.10.1: bits MSB first; a byte after 0xFF holds 7 bits (its MSB is a stuffed 0)."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end
        self.left = 0  # bits left in the current byte
        self.prev = 0  # the last byte read

    def bit(self) -> int:
        if self.left == 0:
            if self.pos >= self.end:
                raise CodestreamError(self.pos, "packet header runs past the data")
            self.left = 7 if self.prev == 0xFF else 8
            self.prev = self.data[self.pos]
            self.pos += 1
        self.left -= 1
        return (self.prev >> self.left) & 1

    def bits(self, n: int) -> int:
        v = 0
        for _ in range(n):
            v = v << 1 | self.bit()
        return v

    def end_header(self) -> int:
        """The header ends on a byte boundary; after a final 0xFF comes its stuffed byte."""
        self.left = 0
        if self.prev == 0xFF:
            if self.pos >= self.end:
                raise CodestreamError(self.pos, "packet header ends on 0xFF at the end")
            self.pos += 1
            self.prev = 0
        return self.pos


class ReferenceTagTree:
    """Every node on the path is visited for every query (no early exit), lists throughout."""

    def __init__(self, w: int, h: int) -> None:
        self.sizes = []
        lw, lh = w, h
        while True:
            self.sizes.append((lw, lh))
            if lw * lh <= 1:
                break
            lw, lh = (lw + 1) >> 1, (lh + 1) >> 1
        self.w = w
        self.value = [[INF] * (a * b) for a, b in self.sizes]
        self.low = [[0] * (a * b) for a, b in self.sizes]

    def decode(self, bits, leaf: int, threshold: int) -> bool:
        """Whether the leaf's value is < threshold (B.10.2), reading the bits that tells."""
        x, y = leaf % self.w, leaf // self.w
        low = 0
        for lev in range(len(self.sizes) - 1, -1, -1):
            node = (y >> lev) * self.sizes[lev][0] + (x >> lev)
            low = max(low, self.low[lev][node])
            while low < threshold and low < self.value[lev][node]:
                if bits.bit():
                    self.value[lev][node] = low
                else:
                    low += 1
            self.low[lev][node] = low
        return self.value[0][leaf] < threshold


def segment_capacity(style: int, segno: int, first_passes: int) -> int:
    """How many coding passes codeword segment `segno` holds (B.10.7.2, Table D.8; 15444-15
    for HT: the cleanup segment takes the first contribution's passes up to its last cleanup
    pass, then SigProp + MagRef, Cleanup alternate)."""
    if style & CBLK_HT:
        return first_passes if segno == 0 else (2 if segno % 2 else 1)
    if style & CBLK_TERMALL:
        return 1  # every pass terminated
    if style & CBLK_BYPASS:
        # Four bit-planes through the MQ coder (10 passes), then raw SigProp + MagRef and an
        # MQ Cleanup per bit-plane.
        return 10 if segno == 0 else (2 if segno % 2 else 1)
    return INF  # one segment, terminated at the end


@dataclass
class RefBlock:
    """A code-block as the headers described it so far."""
    layer: int               # the layer that first included it
    zero_bitplanes: int
    lblock: int = 3
    passes: int = 0
    first_passes: int = 0    # passes of its first contribution, less any past a cleanup
    segments: list[int] = field(default_factory=list)  # passes in each codeword segment
    lengths: list[list[int]] = field(default_factory=list)  # per contribution, per segment


def _pass_count(bits: RefBits) -> int:
    """Table B.4, codeword by codeword."""
    if not bits.bit():
        return 1
    if not bits.bit():
        return 2
    v = bits.bits(2)
    if v < 3:
        return 3 + v
    v = bits.bits(5)
    if v < 31:
        return 6 + v
    return 37 + bits.bits(7)


class ReferencePrecinct:
    """A precinct's packets read in layer order; `bands[b][k]` is code-block k (raster order)
    of band b once included."""

    def __init__(self, grids: list[tuple[int, int]], style: int) -> None:
        self.grids, self.style = grids, style
        self.incl = [ReferenceTagTree(w, h) if w * h else None for w, h in grids]
        self.zbp = [ReferenceTagTree(w, h) if w * h else None for w, h in grids]
        self.bands: list[dict[int, RefBlock]] = [{} for _ in grids]

    def read_packet(self, bits: RefBits, layer: int) -> int:
        """Reads one packet header (B.10.3-B.10.7); returns the sum of the lengths read."""
        if not bits.bit():
            return 0  # a zero-length packet
        body = 0
        ht = bool(self.style & CBLK_HT)
        for b, (w, h) in enumerate(self.grids):
            blocks = self.bands[b]
            for k in range(w * h):
                block = blocks.get(k)
                if block is not None:
                    if not bits.bit():
                        continue
                elif not self.incl[b].decode(bits, k, layer + 1):
                    continue
                else:
                    zero = 0
                    while not self.zbp[b].decode(bits, k, zero + 1):
                        zero += 1
                        if zero > packets.MAX_ZERO_BITPLANES:
                            raise CodestreamError(bits.pos, "zero bit-plane tag tree does not "
                                                  "terminate")
                    block = blocks[k] = RefBlock(layer, zero)
                n = _pass_count(bits)
                block.passes += n
                if block.passes > packets.MAX_PASSES and not ht:
                    raise CodestreamError(bits.pos, f"a code-block with {block.passes} coding "
                                          f"passes (at most {packets.MAX_PASSES} can exist)")
                while bits.bit():
                    block.lblock += 1
                    if block.lblock > packets.MAX_LBLOCK:
                        raise CodestreamError(bits.pos, "Lblock grows without bound")
                if not block.segments:  # its first contribution (HT: its cleanup segment)
                    block.first_passes = 1 + 3 * ((n - 1) // 3)
                segs, lengths = block.segments, []
                while n:
                    if not segs or segs[-1] == segment_capacity(self.style, len(segs) - 1,
                                                                block.first_passes):
                        segs.append(0)  # a new codeword segment
                    room = segment_capacity(self.style, len(segs) - 1, block.first_passes)
                    take = min(room - segs[-1], n)
                    # B.10.7.1: Lblock + floor(log2(passes in this segment)) bits.
                    lengths.append(bits.bits(block.lblock + take.bit_length() - 1))
                    segs[-1] += take
                    n -= take
                block.lengths.append(lengths)
                body += sum(lengths)
        return body
