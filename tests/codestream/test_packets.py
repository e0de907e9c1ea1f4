"""Tag trees and packet headers: the sparse and skipping paths read exactly the same bits as a
plain leaf-by-leaf decoder (a direct transcription of ISO 15444-1 B.10.2 kept here)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codestream import packets
from codestream.errors import CodestreamError
from codestream.packets import BitReader, PrecinctState, TagTree

INF = 1 << 30


@contextmanager
def dense_limit(nodes: int) -> Iterator[None]:
    """Trees made inside use lists up to `nodes` nodes, sparse dicts above."""
    saved = packets.DENSE_NODES
    packets.DENSE_NODES = nodes
    try:
        yield
    finally:
        packets.DENSE_NODES = saved


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

    def decode(self, bits: BitReader, leaf: int, threshold: int) -> bool:
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


@settings(max_examples=200, deadline=None)
@given(w=st.integers(1, 40), h=st.integers(1, 40), data=st.binary(min_size=64, max_size=64),
       queries=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 6)), min_size=1,
                        max_size=60),
       sparse=st.booleans())
def test_tag_tree_reads_the_same_bits_as_the_reference(w, h, data, queries, sparse) -> None:
    with dense_limit(0 if sparse else 1 << 12):
        ours = TagTree(w, h)
    ref = ReferenceTagTree(w, h)
    b1, b2 = BitReader(data, 0, len(data)), BitReader(data, 0, len(data))
    for q, threshold in queries:
        leaf = q % (w * h)
        try:
            expected = ref.decode(b2, leaf, threshold)
        except CodestreamError:
            with pytest.raises(CodestreamError):
                ours.decode(b1, leaf, threshold)
            return
        got = ours.decode(b1, leaf, threshold)
        assert (got < 0) == expected
        assert (b1.pos, b1.bits) == (b2.pos, b2.bits)
        if got >= 0:  # every leaf under the node named is excluded without reading a bit
            side = 1 << got
            x0, y0 = (leaf % w) // side * side, (leaf // w) // side * side
            for y in range(y0, min(y0 + side, h)):
                for x in range(x0, min(x0 + side, w)):
                    assert not ref.decode(b2, y * w + x, threshold)
                    assert (b1.pos, b1.bits) == (b2.pos, b2.bits)


@settings(max_examples=150, deadline=None)
@given(grids=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=3),
       data=st.binary(min_size=200, max_size=200), layers=st.integers(1, 5))
def test_packet_headers_read_the_same_with_dense_and_sparse_trees(grids, data, layers) -> None:
    """Random bytes as packet headers: bodies, header ends and errors agree either way."""
    def run(dense: int) -> list:
        state = PrecinctState(grids, 0)
        bits = BitReader(data, 0, len(data))
        out: list = []
        with dense_limit(dense):  # bands are made on the first non-empty packet
            try:
                for layer in range(layers):
                    out.append((state.read_header(bits, layer), bits.align()))
            except CodestreamError as e:
                out.append(e.offset)
        return out

    assert run(0) == run(1 << 12)


def _vbas(values: list[int]) -> bytes:
    out = bytearray()
    for v in values:
        groups = [v & 0x7F]
        v >>= 7
        while v:
            groups.append(0x80 | (v & 0x7F))
            v >>= 7
        out += bytes(reversed(groups))
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.integers(0, 2**48), max_size=50), cut=st.booleans())
def test_plt_values_decode_like_a_byte_loop(values, cut) -> None:
    import numpy as np

    from codestream.index import _vbas_values

    data = _vbas(values)
    if cut and data:
        data = data[:-1] + bytes([data[-1] | 0x80])  # the last value never ends
        assert _vbas_values(np.frombuffer(data, np.uint8)) is None
    else:
        got = _vbas_values(np.frombuffer(data, np.uint8))
        assert got is not None and got.tolist() == values


@settings(max_examples=200, deadline=None)
@given(w=st.integers(1, 12), h=st.integers(1, 12), data=st.binary(min_size=32, max_size=32),
       leaves=st.lists(st.integers(0, 10**6), min_size=1, max_size=20), limit=st.integers(1, 30))
def test_value_of_reads_like_rising_thresholds(w, h, data, leaves, limit) -> None:
    """value_of() reads what decode() with thresholds 1, 2, ... reads (how OpenJPEG gets
    zero bit-planes) and returns the same value; both give up past the limit."""
    ours, ref = TagTree(w, h), ReferenceTagTree(w, h)
    b1, b2 = BitReader(data, 0, len(data)), BitReader(data, 0, len(data))
    for q in leaves:
        leaf = q % (w * h)
        try:
            expected = 0
            while not ref.decode(b2, leaf, expected + 1):
                expected += 1
                if expected > limit:
                    raise CodestreamError(0, "too many")
        except CodestreamError:
            with pytest.raises(CodestreamError):
                ours.value_of(b1, leaf, limit)
            return
        assert ours.value_of(b1, leaf, limit) == expected
        assert (b1.pos, b1.bits) == (b2.pos, b2.bits)


# --- the inclusion scan: whole excluded subtrees skipped, bits unchanged ---------------------
def _reference_header(bands: list, grids: list, style: int, bits: BitReader, layer: int) -> int:
    """A packet header read code-block by code-block over every band's whole grid, in raster
    order, inclusion from ReferenceTagTree (B.10.2 word for word): what the skipping scan of
    PrecinctState must read, bit for bit. `bands` holds the state across packets."""
    if not bits.bit():
        return 0
    if not bands:
        bands += [(ReferenceTagTree(cw, ch), TagTree(cw, ch), {}) if cw * ch else None
                  for cw, ch in grids]
    ht = bool(style & packets.CBLK_HT)
    body = 0
    for band in bands:
        if band is None:
            continue
        incl, zbp, blocks = band
        for k in range(len(incl.value[0])):
            if k in blocks:
                if not bits.bit():
                    continue
                state, first = blocks[k], False
            else:
                if not incl.decode(bits, k, layer + 1):
                    continue
                zbp.value_of(bits, k, packets.MAX_ZERO_BITPLANES)
                state, first = [3, 0, 0, 0, 0], True
                blocks[k] = state
            n = packets._num_passes(bits)
            state[4] += n
            if state[4] > packets.MAX_PASSES and not ht:
                raise CodestreamError(bits.base + bits.pos, f"a code-block with {state[4]} "
                                      f"coding passes (at most {packets.MAX_PASSES} can exist)")
            while bits.bit():
                state[0] += 1
                if state[0] > packets.MAX_LBLOCK:
                    raise CodestreamError(bits.base + bits.pos, "Lblock grows without bound")
            # Codeword segments (B.10.7.1): one length per segment the new passes reach.
            if first:
                state[3] = packets._segment_max(style, 0, 1 + 3 * ((n - 1) // 3) if ht else 0)
            elif state[2] >= state[3]:
                state[1], state[2] = state[1] + 1, 0
                state[3] = packets._segment_max(style, state[1], 0)
            while n > 0:
                take = min(state[3] - state[2], n)
                body += bits.read(state[0] + take.bit_length() - 1)
                state[2] += take
                n -= take
                if n > 0:
                    state[1], state[2] = state[1] + 1, 0
                    state[3] = packets._segment_max(style, state[1], 0)
    return body


def _headers(read, bits: BitReader, layers: int) -> list:
    out: list = []
    try:
        for layer in range(layers):
            out.append((read(bits, layer), bits.pos, bits.bits))
    except CodestreamError as e:
        out.append((e.offset, e.reason))
    return out


_SIDE = st.one_of(st.integers(1, 12), st.integers(1, 3), st.integers(20, 300))


@settings(max_examples=300, deadline=None)
@given(grids=st.lists(st.tuples(_SIDE, _SIDE), min_size=1, max_size=3),
       seed=st.integers(0, 2**32), ones=st.sampled_from([0.03, 0.1, 0.3, 0.5]),
       layers=st.integers(1, 24),
       style=st.sampled_from([0, packets.CBLK_BYPASS, packets.CBLK_TERMALL, packets.CBLK_HT]))
def test_packet_headers_read_the_bits_of_a_code_block_by_code_block_reader(
        grids, seed, ones, layers, style) -> None:
    """Random headers, mostly zeros for many (so that tag-tree nodes high up exclude whole
    regions, over several layers): bodies, where each header ends, and errors are those of the
    reference, which visits every code-block of every packet."""
    import random

    rng = random.Random(seed)
    data = bytes(sum(1 << b for b in range(8) if rng.random() < ones) for _ in range(600))
    bands: list = []
    expected = _headers(lambda b, layer: _reference_header(bands, grids, style, b, layer),
                        BitReader(data, 0, len(data)), layers)
    state = PrecinctState(grids, style)
    assert _headers(state.read_header, BitReader(data, 0, len(data)), layers) == expected


def test_a_tall_precinct_is_skipped_a_tag_tree_node_at_a_time() -> None:
    """The hostile shape of tests/data/crafted.py: one code-block across, 8192 down, every
    packet the byte 0x80 ("not empty; the inclusion root is > this layer"). Each packet reads
    two bits, and the scan takes four steps that read none: row 0, its code-block found under
    the root, row 1 and the run there (rows 2.. skipped with it), not one per code-block row
    (8192 code-blocks visited a packet before the fix)."""
    layers = 64
    data = b"\x80" * layers
    state = PrecinctState([(1, 8192)], 0)
    bits = BitReader(data, 0, len(data))
    for layer in range(layers):
        assert state.read_header(bits, layer) == 0
        assert (bits.pos, bits.bits) == (layer + 1, 6)
        bits.align()
    assert state.bands is not None
    assert state.bands[0].steps == 4 * layers
    # 512 x 512 code-blocks: the root is 0 (bit 1), each of its four children (256 x 256
    # code-blocks each) > 0 (bit 0). Row 0 and its two children found > 0, row 1 and its two
    # runs crossed as one (then rows 2..255 skipped), the same from row 256: 10 steps.
    state = PrecinctState([(512, 512)], 0)
    bits = BitReader(b"\xc0", 0, 1)  # 1 (not empty), 1, 0 0 0 0
    assert state.read_header(bits, 0) == 0
    assert (bits.pos, bits.bits) == (1, 2)
    assert state.bands is not None and state.bands[0].steps == 10
