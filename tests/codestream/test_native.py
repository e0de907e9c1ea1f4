"""The C packet-header decoder (codestream/_headers.c) against the Python reference
(codestream/packets.py): the same located packets on every corpus file, whole and by lowest
resolutions, and the same errors (positions and messages) on cut and bit-flipped copies, with
headers in the tile data and packed in PPM/PPT.

PLT is ignored (use_plt=False) so that every packet header is decoded. JPIP_PURE_PYTHON=1
forces the reference; the rest of the suite runs with the C decoder when it is built."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from codestream import index as index_module
from codestream import native, packets
from codestream.boxes import read_layout
from codestream.errors import CodestreamError
from codestream.index import CodestreamIndex, index_codestream
from codestream.parse import parse_codestream
from tests.codestream.test_packets import (
    GRIDS,
    LATE_GRIDS,
    STYLES,
    random_headers,
    reference_cost,
    reference_packets,
)
from tests.conftest import corpus_files
from tests.data.corrupt import flip, flip_regions, sample, seed_of
from tests.data.crafted import (
    many_precincts_codestream,
    one_precinct_codestream,
    tall_precinct_codestream,
)

FILES = corpus_files()
HEAVY = 200_000  # bytes: larger files get fewer damaged copies (the Python side is slow)


def _index(data: bytes, pure: bool, monkeypatch, **kw) -> list[CodestreamIndex] | CodestreamError:
    with monkeypatch.context() as m:
        if pure:
            m.setenv(native.PURE_PYTHON_ENV, "1")
        else:
            m.delenv(native.PURE_PYTHON_ENV, raising=False)
            m.setattr(index_module, "NATIVE_MIN_PACKETS", 0)  # small tiles too
        try:
            return [index_codestream(data, off, ln, use_plt=False, **kw)
                    for off, ln in read_layout(data).codestreams]
        except CodestreamError as e:
            return e


def _same(c, py, what: str) -> None:
    if isinstance(py, CodestreamError) or isinstance(c, CodestreamError):
        assert type(c) is type(py), f"{what}: C gave {c!r}, Python {py!r}"
        assert (c.offset, c.reason) == (py.offset, py.reason), what
        return
    assert len(c) == len(py)
    for a, b in zip(c, py, strict=True):
        for table in ("packets", "precincts"):
            ta, tb = getattr(a, table), getattr(b, table)
            assert ta.keys() == tb.keys()
            for k in ta:
                assert np.array_equal(ta[k], tb[k]), f"{what}: {table}[{k}] differs"
        assert (a.padding_bytes, a.source, a.resolutions_indexed) == \
            (b.padding_bytes, b.source, b.resolutions_indexed), what


def _compare(data: bytes, what: str, monkeypatch, **kw) -> None:
    _same(_index(data, False, monkeypatch, **kw), _index(data, True, monkeypatch, **kw), what)


def test_the_c_decoder_is_built() -> None:
    # `make setup` installs a compiler and Python's headers (scripts/system-deps.sh), so the
    # optional build must have succeeded: a failed one would pass every test below unseen.
    assert native._headers is not None, native.decoder_description()


def test_the_environment_forces_python(monkeypatch) -> None:
    monkeypatch.setenv(native.PURE_PYTHON_ENV, "1")
    assert native.native_decoder() is None
    assert native.decoder_description().startswith("pure Python")
    monkeypatch.setenv(native.PURE_PYTHON_ENV, "0")
    assert native.native_decoder() is native._headers


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_whole_files_locate_the_same_packets(path, monkeypatch) -> None:
    data = path.read_bytes()
    _compare(data, path.name, monkeypatch)
    _compare(data, f"{path.name}, lowest resolution", monkeypatch, resolutions=1)


def _tile_data(data: bytes) -> list[int]:
    """Positions of the bytes in tile-part data (packet headers and bodies)."""
    out: list[int] = []
    for off, ln in read_layout(data).codestreams:
        for part in parse_codestream(data, off, ln).tile_parts:
            out += range(part.header_end, part.data_end)
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_damaged_files_give_the_same_errors(path, monkeypatch) -> None:
    data = path.read_bytes()
    seed = seed_of(path.name)
    rng = random.Random(seed)
    light = len(data) < HEAVY
    inside = _tile_data(data)
    if not inside:
        return
    # Cuts in the tile data (a cut tile loses its last packets), flips in packet headers (the
    # decoder's hostile input) and anywhere in the tile data.
    for cut in sample(inside, 6 if light else 2, seed=seed):
        _compare(data[:cut], f"{path.name} cut at {cut}", monkeypatch)
    headers = flip_regions(data)[0]["packet_header"]
    for pos in sample(headers, 12 if light else 3, seed=seed ^ 1):
        bit = rng.randrange(8)
        _compare(flip(data, pos, bit), f"{path.name} bit {bit} at {pos}", monkeypatch)
    for pos in sample(inside, 4 if light else 1, seed=seed ^ 2):
        _compare(flip(data, pos, 7), f"{path.name} bit 7 at {pos}", monkeypatch)


def _packed_headers(data: bytes) -> list[int]:
    """Positions of the bytes of PPM and PPT marker segment bodies (packed packet headers)."""
    out: list[int] = []
    for off, ln in read_layout(data).codestreams:
        cs = parse_codestream(data, off, ln)
        segs = [seg for _, seg in cs.ppm]
        segs += [seg for th in cs.tiles.values() for _, seg in th.ppt]
        for seg in segs:
            out += range(seg.body_offset + 1, seg.end)
    return out


PACKED = [p for p in FILES if _packed_headers(p.read_bytes())]


def test_the_corpus_has_packed_headers() -> None:
    assert PACKED  # else the next test checks nothing


@pytest.mark.parametrize("path", PACKED, ids=lambda p: p.name)
def test_damaged_packed_headers_give_the_same_errors(path, monkeypatch) -> None:
    data = path.read_bytes()
    rng = random.Random(seed_of(path.name))
    for pos in sample(_packed_headers(data), 10, seed=seed_of(path.name)):
        bit = rng.randrange(8)
        _compare(flip(data, pos, bit), f"{path.name} bit {bit} at {pos}", monkeypatch)


SMALL = [p for p in FILES if p.stat().st_size < 20_000]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(SMALL) - 1), edits=st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6))
def test_hostile_tile_data_gives_the_same_result(which, edits, monkeypatch) -> None:
    path = SMALL[which]
    data = bytearray(path.read_bytes())
    inside = _tile_data(bytes(data))
    for where, value in edits:
        data[inside[int(where * len(inside))]] = value
    _compare(bytes(data), f"{path.name} edited {edits}", monkeypatch)


def test_a_tall_precinct_of_one_byte_packets_locates_the_same_packets(monkeypatch) -> None:
    # The hostile shape whose scan visited every code-block row on every packet (8192 of
    # them); both decoders now skip the rows under the root at once.
    data = tall_precinct_codestream(300)
    _compare(data, "tall precinct", monkeypatch)
    found = _index(data, False, monkeypatch)
    assert not isinstance(found, CodestreamError)
    assert found[0].packets["length"].tolist() == [1] * 300


def test_precincts_of_large_grids_locate_the_same_packets(monkeypatch) -> None:
    # 256 precincts of 256 x 256 code-blocks, one one-byte packet each: the C states are one
    # mapping each (pages zeroed when touched), Python's sparse trees.
    data = many_precincts_codestream(10, 16384)
    _compare(data, "many precincts", monkeypatch)
    found = _index(data, False, monkeypatch)
    assert not isinstance(found, CodestreamError)
    assert found[0].packets["length"].tolist() == [1] * 256


_SIDE = st.one_of(st.integers(1, 8), st.integers(1, 3), st.integers(40, 700))


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wide=_SIDE, tall=_SIDE, layers=st.integers(1, 40), seed=st.integers(0, 2**32),
       ones=st.sampled_from([0.03, 0.1, 0.3]), style=st.sampled_from([0, 1, 4]))
def test_crafted_precincts_locate_the_same_packets(wide, tall, layers, seed, ones, style,
                                                   monkeypatch) -> None:
    """One precinct of wide x tall code-blocks (long thin ones too) whose tile data is random
    bytes, mostly zeros for many: tag-tree nodes high up exclude whole regions over many
    layers, which is where the C and Python scans skip code-blocks."""
    rng = random.Random(seed)
    body = bytes(sum(1 << b for b in range(8) if rng.random() < ones) for _ in range(3000))
    data = one_precinct_codestream(wide, tall, layers, body, style)
    _compare(data, f"{wide} x {tall}, {layers} layers, seed {seed}", monkeypatch)


def test_a_precinct_too_large_for_the_c_arrays_is_decoded_in_python(monkeypatch) -> None:
    path = max(FILES, key=lambda p: p.stat().st_size if p.suffix == ".j2k" else 0)
    data = path.read_bytes()
    expected = _index(data, True, monkeypatch)
    monkeypatch.setattr(index_module, "NATIVE_MAX_NODES", 2)
    _same(_index(data, False, monkeypatch), expected, path.name)



@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_code_block_grids_at_once_match_one_precinct_at_a_time(path, monkeypatch) -> None:
    """geometry.precinct_band_grid_rows (what both decoders use) against the scalar
    precinct_band_grids, for every precinct of every tile the packet sequence visits."""
    from codestream.geometry import precinct_band_grids, resolution_grids

    seen: list[tuple] = []
    original = index_module._Builder._precinct_grids

    def spy(self, t, seq_p, styles):
        local, grids, cb_style = original(self, t, seq_p, styles)
        seen.append((self, t, seq_p, styles, local, grids))
        return local, grids, cb_style

    monkeypatch.setattr(index_module._Builder, "_precinct_grids", spy)
    data = path.read_bytes()
    _index(data, False, monkeypatch)
    assert seen
    for builder, t, seq_p, styles, local, grids in seen[:64]:
        per_comp = {}
        for row, k in zip(seq_p.tolist()[:4096], local.tolist()[:4096], strict=True):
            c, r, p = (int(builder.prec_c[row]), int(builder.prec_r[row]),
                       int(builder.prec_p[row]))
            if c not in per_comp:
                per_comp[c] = resolution_grids(builder.siz, t, c, styles[c])
            expected = precinct_band_grids(builder.siz, t, c, styles[c], per_comp[c][r], p)
            expected += [(0, 0)] * (3 - len(expected))
            assert grids[k].tolist() == [list(b) for b in expected], (path.name, t, row)


# --- the call's own arguments: arrays it must not trust once checked -----------------------
LIMITS = (index_module.MAX_ZERO_BITPLANES, index_module.MAX_PASSES, index_module.MAX_LBLOCK,
          index_module.NATIVE_MAX_NODES, index_module.NATIVE_MAX_BYTES)


def _empty_packets_call(n: int, size: int, alias_rows: bool = False, alias_parts: bool = False,
                        limits: tuple = LIMITS):
    """decode_tile over n empty packets (zero bytes) of one one-layer precinct at the end of a
    zeroed buffer of `size` bytes, the outputs optionally sharing memory with the inputs."""
    buf = np.zeros(size, np.uint8)  # untouched pages: no memory used
    offsets, lengths, hlens, poffs = (np.empty(n, np.int64) for _ in range(4))
    sops = np.empty(n, np.uint8)
    # Two tile-parts of n / 2 packets each.
    parts = np.asarray([(size - n, size - n // 2, 0), (size - n // 2, size, 0)], np.int64)
    if alias_parts:  # the packed offsets (-1 here) written over the second part's start
        assert n == 8
        poffs[:6] = parts.ravel()
        parts = poffs[:6].reshape(2, 3)
    rows = offsets if alias_rows else np.zeros(n, np.int64)
    rows[:] = 0
    grids = np.zeros((1, 3, 2), np.int32)
    grids[0, 0] = (1, 1)
    return native._headers.decode_tile(
        buf, parts, None, rows, np.zeros(n, np.int32), grids, np.zeros(1, np.uint8), 0, False,
        False, 0, None, 1, limits, offsets, lengths, hlens, poffs, sops), offsets


@pytest.mark.skipif(native._headers is None, reason="the C decoder is not built")
def test_outputs_sharing_memory_with_the_inputs_change_nothing() -> None:
    # Each packet's precinct is read once: out_off[i] overwriting rows[i] in the same
    # iteration made it free states[offset] (far outside the array: a crash) before the fix.
    expected, offsets = _empty_packets_call(64, 1 << 28)
    got, aliased = _empty_packets_call(64, 1 << 28, alias_rows=True)
    assert got == expected == (64, 1 << 28, 1 << 28, 1, None)
    assert np.array_equal(aliased, offsets)
    # The tile-part bounds are copied once checked: -1 written over the second part's start
    # by the packed offsets made the decoder read buf[-1] and locate a packet there before
    # the fix.
    expected, offsets = _empty_packets_call(8, 1 << 16)
    got, aliased = _empty_packets_call(8, 1 << 16, alias_parts=True)
    assert got == expected == (8, 1 << 16, 1 << 16, 1, None)
    assert np.array_equal(aliased, offsets)
    assert aliased.tolist() == list(range((1 << 16) - 8, 1 << 16))


@pytest.mark.skipif(native._headers is None, reason="the C decoder is not built")
@pytest.mark.parametrize("limits", [(80, 109, 300, 1 << 22, 1 << 30), (80, 109, 2, 4, 4),
                                    (-1, 109, 64, 4, 4), (80, 109, 64, 1 << 62, 1 << 30),
                                    (80, 109, 64, 1 << 22, (1 << 63) - 1)])
def test_limits_outside_what_the_decoder_can_hold_are_refused(limits) -> None:
    # Lblock is held in a byte: a bound past 64 would let it wrap around instead of failing.
    # Nodes past 2^58 made a precinct's byte count wrap around (arrays placed past the block
    # allocated), and bytes near 2^63 the sum of the live states overflow.
    with pytest.raises(ValueError, match="limits"):
        _empty_packets_call(8, 64, limits=limits)


# --- the C scan against the code-block by code-block reference ------------------------------
DATA_BYTES = 1 << 30  # the packets' bodies: a zeroed buffer (untouched pages cost nothing)


def _c_packets(grids: list, style: int, data: bytes, layers: int,
               body_bytes: int = DATA_BYTES) -> list:
    """One precinct's `layers` packets through decode_tile, headers packed (so each packet's
    body length is given as is): [(body, header end)] and (error position, reason) if one
    fails, as tests.codestream.test_packets.reference_packets gives them."""
    n = layers
    offsets, lengths, hlens, poffs = (np.empty(n, np.int64) for _ in range(4))
    sops = np.empty(n, np.uint8)
    bands = np.zeros((1, 3, 2), np.int32)
    bands[0, :len(grids)] = grids
    count, _, _, _, error = native._headers.decode_tile(
        np.zeros(body_bytes, np.uint8), np.asarray([(0, body_bytes, 0)], np.int64), data,
        np.zeros(n, np.int64), np.arange(n, dtype=np.int32), bands,
        np.asarray([style], np.uint8), layers - 1, False, False, 0, None, 0, LIMITS, offsets,
        lengths, hlens, poffs, sops)
    out = [(int(lengths[i]), int(poffs[i] + hlens[i])) for i in range(count)]
    return out + [error] if error is not None else out


def _as_c_reports(expected: list, data: bytes, body_bytes: int = DATA_BYTES) -> list:
    """The reference's packets as decode_tile reports them: it stops, with no error, at the
    end of the headers, and fails at a body past the tile-part's data."""
    out: list = []
    at = 0
    for entry in expected:
        if isinstance(entry[1], str):
            return out + [entry]
        body, _ = entry
        if at + body > body_bytes:
            return out + [(at, "tile 0: packet body runs past the tile-part")]
        at += body
        out.append(entry)
        if entry[1] >= len(data):
            return out  # the packed headers end: later packets are absent
    return out


@pytest.mark.skipif(native._headers is None, reason="the C decoder is not built")
@settings(max_examples=200, deadline=None)
@given(grids=GRIDS, seed=st.integers(0, 2**32), ones=st.sampled_from([0.03, 0.1, 0.3, 0.5]),
       quiet=st.sampled_from([0, 0, 1, 5, 60]), layers=st.integers(1, 24), style=STYLES)
def test_c_headers_read_the_bits_of_a_code_block_by_code_block_reader(
        grids, seed, ones, quiet, layers, style) -> None:
    """test_packets' reference test for the C decoder, which tells per packet where its
    header ends and its body length (its per-code-block state stays inside): random headers,
    mostly zeros for many, code-blocks first included late, bands of any shape, none empty."""
    assume(reference_cost(grids, quiet) <= 200_000)
    data = random_headers(random.Random(seed), ones, 600, quiet)
    expected, _, _, _ = reference_packets(grids, style, data, quiet + layers)
    assert _c_packets(grids, style, data, quiet + layers) == _as_c_reports(expected, data)


@pytest.mark.skipif(native._headers is None, reason="the C decoder is not built")
@pytest.mark.parametrize("style", [0, packets.CBLK_BYPASS | packets.CBLK_TERMALL])
def test_c_code_blocks_first_included_in_the_last_of_65535_layers(style) -> None:
    """test_packets' 65,535-layer case for the C decoder (run stamps, lows near 65,535)."""
    layers = 0xFFFF
    data = random_headers(random.Random(5), 0.5, 3000, layers - 35)
    expected, _, _, _ = reference_packets(LATE_GRIDS, style, data, layers, layers)
    assert len(expected) == layers
    assert _c_packets(LATE_GRIDS, style, data, layers) == _as_c_reports(expected, data)


@pytest.mark.skipif(native._headers is None, reason="the C decoder is not built")
def test_c_reads_alternating_runs_exactly() -> None:
    """test_packets' hostile but consistent inclusion trees, through the C scan."""
    from tests.codestream.test_packets import alternating_runs
    from tests.data.crafted import inclusion_packets

    data = inclusion_packets(alternating_runs(300, 37, 2), 3)
    blob = b"".join(data)
    ends = [sum(len(p) for p in data[:i + 1]) for i in range(3)]
    assert _c_packets([(300, 37)], 0, blob, 3) == [(0, end) for end in ends]
