"""Tag trees and packet headers: the sparse and skipping paths read exactly the same bits as a
plain leaf-by-leaf decoder (tests/codestream/header_reference.py, written from ISO 15444-1 B.10
alone)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from codestream import packets
from codestream.errors import CodestreamError
from codestream.packets import BitReader, PrecinctState, TagTree
from tests.codestream.header_reference import RefBits, ReferencePrecinct, ReferenceTagTree


@contextmanager
def dense_limit(nodes: int) -> Iterator[None]:
    """Trees made inside use lists up to `nodes` nodes, sparse dicts above."""
    saved = packets.DENSE_NODES
    packets.DENSE_NODES = nodes
    try:
        yield
    finally:
        packets.DENSE_NODES = saved


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
class _LoggedBits(BitReader):
    """A BitReader that logs its multi-bit fields: pass counts (Table B.4) and lengths."""

    __slots__ = ("fields",)

    def __init__(self, data: bytes) -> None:
        super().__init__(data, 0, len(data))
        self.fields: list[tuple[int, int, int, int]] = []

    def read(self, n: int) -> int:
        at = (self.pos, self.bits, n)
        v = super().read(n)
        self.fields.append((*at, v))
        return v


class _LoggedRefBits(RefBits):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.fields: list[tuple[int, int, int, int]] = []

    def bits(self, n: int) -> int:
        at = (self.pos, self.left, n)
        v = super().bits(n)
        self.fields.append((*at, v))
        return v


def reference_packets(grids: list, style: int, data: bytes, layers: int, every: int = 1
                      ) -> tuple[list, list, ReferencePrecinct, list]:
    """The reference over `layers` packets of one precinct: per packet (body, header end),
    then (error position, reason) if one fails; the code-blocks' states after every
    `every`-th packet; the reader; its multi-bit fields."""
    ref = ReferencePrecinct(grids, style)
    bits = _LoggedRefBits(data)
    out: list = []
    states: list = []
    try:
        for layer in range(layers):
            body = ref.read_packet(bits, layer)
            out.append((body, bits.end_header()))
            if layer % every and layer != layers - 1:
                continue
            states.append([{k: (b.layer, b.zero_bitplanes, b.lblock, b.passes,
                                len(b.segments) - 1, b.segments[-1]) for k, b in band.items()}
                           for band in ref.bands])
    except CodestreamError as e:
        out.append((e.offset, e.reason))
    return out, states, ref, bits.fields


def _python_packets(grids: list, style: int, data: bytes, layers: int, every: int = 1
                    ) -> tuple[list, list, list]:
    """reference_packets' first two and fields, from PrecinctState."""
    state = PrecinctState(grids, style)
    bits = _LoggedBits(data)
    out: list = []
    states: list = []
    first_layer: list[dict[int, int]] = [{} for _ in grids]
    one_segment = not style & (packets.CBLK_HT | packets.CBLK_TERMALL | packets.CBLK_BYPASS)
    try:
        for layer in range(layers):
            body = state.read_header(bits, layer)
            out.append((body, bits.align()))
            for b, band in enumerate(state.bands or ()):
                for k in band.blocks:
                    first_layer[b].setdefault(k, layer)
            if layer % every and layer != layers - 1:
                continue
            seen = []
            for b, band in enumerate(state.bands or [packets.BandState(0, 0)] * len(grids)):
                assert band.included == sorted(band.blocks)  # no code-block twice
                seen.append({k: (first_layer[b][k], band.zbp.value[k], lblock, passes,
                                 # one segment: the decoder keeps no segment count
                                 0 if one_segment else segno,
                                 passes if one_segment else seg_passes)
                             for k, (lblock, segno, seg_passes, _, passes)
                             in band.blocks.items()})
            states.append(seen)
    except CodestreamError as e:
        out.append((e.offset, e.reason))
    return out, states, bits.fields


def random_headers(rng, ones: float, size: int, quiet: int = 0) -> bytes:
    """`quiet` packets 0x80 ("not empty, nothing included": every band's inclusion root
    found > the layer, a bit each), then random bytes, each bit 1 with probability `ones`."""
    return b"\x80" * quiet + bytes(sum(1 << b for b in range(8) if rng.random() < ones)
                                   for _ in range(size))


# Code-block grid sides: none (an empty band), small, thin, and a few hundred.
GRID_SIDE = st.one_of(st.integers(0, 12), st.integers(1, 3), st.integers(20, 300))
GRIDS = st.lists(st.tuples(GRID_SIDE, GRID_SIDE), min_size=1, max_size=3)


def reference_cost(grids: list, layers: int) -> int:
    """Code-blocks the reference visits at most: kept small enough for a unit test."""
    return sum(w * h for w, h in grids) * layers
STYLES = st.sampled_from([0, packets.CBLK_BYPASS, packets.CBLK_TERMALL,
                          packets.CBLK_BYPASS | packets.CBLK_TERMALL, packets.CBLK_HT])


@settings(max_examples=200, deadline=None)
@given(grids=GRIDS, seed=st.integers(0, 2**32), ones=st.sampled_from([0.03, 0.1, 0.3, 0.5]),
       quiet=st.sampled_from([0, 0, 1, 5, 60]), layers=st.integers(1, 24), style=STYLES)
def test_packet_headers_read_the_bits_of_a_code_block_by_code_block_reader(
        grids, seed, ones, quiet, layers, style) -> None:
    """Random headers, mostly zeros for many (so that tag-tree nodes high up exclude whole
    regions, over several layers), after `quiet` packets that include nothing (code-blocks
    first included in a late layer): bodies, where each header ends, errors, every pass count
    and length field read, and every code-block's first layer, zero bit-planes, Lblock, passes
    and codeword segment are those of the reference, which visits every code-block of every
    packet."""
    import random

    assume(reference_cost(grids, quiet) <= 200_000)
    data = random_headers(random.Random(seed), ones, 600, quiet)
    expected, states, _, fields = reference_packets(grids, style, data, quiet + layers)
    got, got_states, got_fields = _python_packets(grids, style, data, quiet + layers)
    assert got == expected
    assert got_states == states
    assert got_fields == fields


LATE_GRIDS = [(3, 2), (1, 5), (0, 4)]  # bands of a resolution > 0, one of them empty


@pytest.mark.parametrize("style", [0, packets.CBLK_BYPASS | packets.CBLK_TERMALL])
def test_code_blocks_first_included_in_the_last_of_65535_layers(style) -> None:
    """65,500 packets that include nothing, then random ones up to the 65,535th layer: tag-tree
    lows near 65,535, code-blocks first included there, the same bits and states."""
    import random

    layers = 0xFFFF
    data = random_headers(random.Random(5), 0.5, 3000, layers - 35)
    expected, states, _, fields = reference_packets(LATE_GRIDS, style, data, layers, 4096)
    got, got_states, got_fields = _python_packets(LATE_GRIDS, style, data, layers, 4096)
    assert got == expected
    assert got_states == states
    assert got_fields == fields
    assert len(expected) == layers  # no error
    first = [block[0] for band in states[-1] for block in band.values()]
    assert len(first) >= 5 and min(first) >= layers - 35


def alternating_runs(w: int, h: int, level: int) -> list[list[int | None]]:
    """First layers for inclusion_packets making the scan's costliest rows that this review
    found: in every 2^(level+1) block one code-block included at the corner of its top-left
    child, so that runs of two heights alternate along the rows (level, level-1: they never
    join), and column 0 included on every row (every row is visited, and crosses them all)."""
    first: list[list[int | None]] = [[None] * w for _ in range(h)]
    side = 1 << level
    for y in range(side - 1, h, 2 * side):
        for x in range(side - 1, w, 2 * side):
            first[y][x] = 0
    for row in first:
        row[0] = 0
    return first


@pytest.mark.parametrize(("w", "h", "level"), [(1024, 64, 5), (37, 300, 2)])
def test_alternating_runs_cost_a_few_steps_per_bit(w, h, level) -> None:
    """Hostile but consistent inclusion trees: the scan reads each packet exactly (its header
    ends where the encoder's does) and, once the trees are known (layer 1), its steps that
    read no bit stay a few per bit read (3.1 for 1024 x 64; about sqrt(width) / 2 bounds any
    grid: each row visited reads a bit, each run costs a bit a packet, and the runs crossed
    on a row are at least as wide as the visited rows they span)."""
    from tests.data.crafted import inclusion_packets

    data = inclusion_packets(alternating_runs(w, h, level), 2)
    state = PrecinctState([(w, h)], 0)
    blob = b"".join(data)
    bits = BitReader(blob, 0, len(blob))
    assert state.read_header(bits, 0) == 0
    assert bits.align() == len(data[0])
    assert state.bands is not None
    steps = state.bands[0].steps
    assert state.read_header(bits, 1) == 0
    assert bits.align() == len(blob)
    assert state.bands[0].steps - steps <= 4 * len(data[1]) * 8


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
