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
