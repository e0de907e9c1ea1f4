"""Bad input: truncated, overlong, garbage and crafted files give CodestreamError and nothing else.

The crafted-header tests run the indexer in a child process with a memory cap and a time limit,
so that a regression fails the test instead of taking the machine down.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from codestream.boxes import read_layout
from codestream.errors import CodestreamError
from codestream.index import CodestreamIndex, index_codestream
from codestream.parse import parse_codestream
from codestream.source import build_source
from tests.conftest import CORPUS, PROJECT_ROOT, corpus_files
from tests.data.corrupt import corrupt_variants, flip, sample
from tests.fuzz.targets import measure, target_codestream

SOLO = "2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2"  # one tile-part, one PLT


def index_all(buf: bytes) -> list[CodestreamIndex]:
    return [index_codestream(buf, off, ln) for off, ln in read_layout(buf).codestreams]


def outcome(buf: bytes) -> list[CodestreamIndex] | CodestreamError:
    """The indexes, or the CodestreamError (checked to be well formed); anything else escapes."""
    try:
        return index_all(buf)
    except CodestreamError as e:
        assert isinstance(e.reason, str) and e.reason, "an error without a reason"
        assert e.offset == -1 or 0 <= e.offset <= len(buf), f"offset {e.offset} outside the file"
        assert str(e)
        return e


def expect_error(buf: bytes, offset: int | None = None, words: str = "") -> CodestreamError:
    got = outcome(buf)
    assert isinstance(got, CodestreamError), "indexed a file that should have been refused"
    if offset is not None:
        assert got.offset == offset, f"error at {got.offset}, expected {offset}: {got}"
    assert words.lower() in got.reason.lower(), got.reason
    return got


def read(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def codestream_of(buf: bytes, n: int = 0):
    off, ln = read_layout(buf).codestreams[n]
    return parse_codestream(buf, off, ln)


def regions(buf: bytes) -> dict[str, list[int]]:
    """Byte positions of the main header, tile-part headers and packet data of every codestream."""
    out: dict[str, list[int]] = {"main": [], "tile_header": [], "data": []}
    for off, ln in read_layout(buf).codestreams:
        cs = parse_codestream(buf, off, ln)
        out["main"] += range(off, cs.tile_parts[0].sot_offset)
        for part in cs.tile_parts:
            out["tile_header"] += range(part.sot_offset, part.header_end)
            out["data"] += range(part.header_end, part.data_end)
    return out


# --------------------------------------------------------------------------- truncation
TRUNCATED = ["p0_01.j2k", "p1_01.j2k", "p0_10.j2k", "p1_05.j2k", "p1_02.j2k", "basn6a08.jp2",
             "heliov.jpx", "small_world_non_consecutive_tilepart_tlm.jp2",
             "test-card-lossy-tiled.jp2", "CT1_psot0_noeoc.j2k", "HTJ2KLossless_08_RGB.j2k", SOLO]


@pytest.mark.parametrize("name", TRUNCATED)
def test_truncated_files_give_codestream_errors(name) -> None:
    data = read(name)
    reg = regions(data)
    cuts = set(range(0, 64))
    for k, (region, positions) in enumerate(reg.items()):
        cuts.update(sample(positions, 60 if region != "data" else 40, seed=k))
    cs = codestream_of(data)
    boundaries = {p.data_end for p in cs.tile_parts} if not data.startswith(b"\0") else set()
    psot_zero = any(struct.unpack_from(">I", data, p.sot_offset + 6)[0] == 0
                    for p in cs.tile_parts)
    for cut in sorted(cuts):
        got = outcome(data[:cut])
        if not isinstance(got, CodestreamError):
            # A prefix may still be a whole codestream: cut before EOC or between tile-parts of
            # a raw codestream, or a Psot=0 tile-part cut between packets. Nothing else indexes.
            assert cut >= len(data) - 2 or cut in boundaries or psot_zero, \
                f"{name}: cut at {cut} indexed"


@pytest.mark.parametrize("name", ["p0_01.j2k", "p0_10.j2k", "p1_05.j2k", "p1_01.j2k"])
def test_a_cut_in_packet_data_names_the_tile_part(name) -> None:
    """Psot promises more bytes than the file has: the error names that tile-part's SOT."""
    data = read(name)
    cs = codestream_of(data)
    for part in sample(cs.tile_parts, 12, seed=1):
        for cut in (part.header_end + 1, (part.header_end + part.data_end) // 2, part.data_end - 1):
            if part.header_end < cut < part.data_end:
                expect_error(data[:cut], part.sot_offset, "runs past")


def test_a_cut_jp2c_box_names_the_box() -> None:
    data = read("basn6a08.jp2")
    jp2c = [b for b in read_layout(data).top_boxes if b.box_type == b"jp2c"][0]
    expect_error(data[:jp2c.offset + 50], jp2c.offset, "runs past")


def test_a_cut_in_a_jp2c_box_running_to_the_end_of_the_file() -> None:
    """Lbox = 0 (box runs to the end of the file): the codestream checks must catch the cut."""
    data = bytearray(read("basn6a08.jp2"))
    jp2c = [b for b in read_layout(data).top_boxes if b.box_type == b"jp2c"][0]
    assert jp2c.end == len(data)
    struct.pack_into(">I", data, jp2c.offset, 0)
    assert not isinstance(outcome(bytes(data)), CodestreamError)
    cs = codestream_of(bytes(data))
    part = cs.tile_parts[0]
    expect_error(bytes(data[:part.data_end - 40]), part.sot_offset, "runs past")
    expect_error(bytes(data[:part.sot_offset + 5]), part.sot_offset)


# --------------------------------------------------------------------------- lengths
def patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def test_marker_segment_lengths_past_the_end() -> None:
    data = read("p0_01.j2k")
    cs = codestream_of(data)
    expect_error(patched(data, 4, ">H", 0xFFFF), 2, "")           # Lsiz
    qcd = cs.main.segments[0]
    expect_error(patched(data, qcd.offset + 2, ">H", len(data)), qcd.offset, "runs past")
    expect_error(patched(data, qcd.offset + 2, ">H", 1), qcd.offset, "< 2")
    sot = cs.tile_parts[0].sot_offset
    expect_error(patched(data, sot + 6, ">I", 0xFFFFFFF0), sot, "runs past")
    expect_error(patched(data, sot + 6, ">I", 5), sot, "too small")
    expect_error(patched(data, sot + 2, ">H", 11), sot, "SOT length")
    expect_error(patched(data, sot + 4, ">H", 1), sot, "tile 1")  # Isot past the tile count


def test_box_lengths_past_the_end() -> None:
    data = read("basn6a08.jp2")
    boxes = {b.box_type: b for b in read_layout(data).top_boxes}
    jp2h = boxes[b"jp2h"]
    expect_error(patched(data, jp2h.offset, ">I", len(data)), jp2h.offset, "runs past")
    expect_error(patched(data, jp2h.offset, ">I", 3), jp2h.offset, "shorter than its header")
    # XLBox: a 64-bit length of 2^63
    xl = patched(data, jp2h.offset, ">I", 1)
    xl = xl[:jp2h.offset + 8] + struct.pack(">Q", 1 << 63) + xl[jp2h.offset + 8:]
    expect_error(xl, jp2h.offset, "runs past")
    # A child box of jp2h running past its parent.
    child = jp2h.content_offset
    expect_error(patched(data, child, ">I", jp2h.length), child, "runs past")


def test_plt_and_ppm_lengths_past_their_data() -> None:
    solo = read(SOLO)
    cs = codestream_of(solo)
    plt = cs.tile_parts[0].header_segments[0]
    assert plt.code == 0xFF58
    expect_error(patched(solo, plt.offset + 2, ">H", 0xFFFF), plt.offset, "runs past")
    p105 = read("p1_05.j2k")
    ppm = codestream_of(p105).ppm[0][1]
    # The first Nppm (4 bytes after Zppm) claims more header bytes than all PPMs hold.
    expect_error(patched(p105, ppm.offset + 5, ">I", 0x7FFFFFFF), ppm.offset, "PPM")


# --------------------------------------------------------------------------- garbage
@pytest.mark.parametrize("what", ["empty", "one byte", "zeros", "ones", "random", "soc+random",
                                  "signature+random", "signature only", "soc siz only"])
def test_garbage(what) -> None:
    rng = np.random.default_rng(7)
    sig = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
    data = {
        "empty": b"",
        "one byte": b"\xff",
        "zeros": bytes(4096),
        "ones": b"\xff" * 4096,
        "random": rng.bytes(4096),
        "soc+random": b"\xff\x4f\xff\x51" + rng.bytes(4096),
        "signature+random": sig + rng.bytes(4096),
        "signature only": sig,
        "soc siz only": b"\xff\x4f\xff\x51",
    }[what]
    expect_error(data)


def test_many_random_garbage_files() -> None:
    rng = np.random.default_rng(11)
    heads = [b"", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  \r\n\x87\n", read("p0_01.j2k")[:45]]
    for k in range(400):
        data = heads[k % 4] + rng.bytes(int(rng.integers(0, 300)))
        outcome(data)


@pytest.mark.parametrize("content", [b"", b"\0" * 1000, b"\xff\x4f"])
def test_build_source_refuses_bad_files(content, tmp_path) -> None:
    path = tmp_path / "bad.j2k"
    path.write_bytes(content)
    with pytest.raises(CodestreamError) as e:
        build_source(path)
    assert e.value.offset >= 0 and e.value.reason


# --------------------------------------------------------------------------- crafted SIZ
SIZ_FIELDS = ["xsiz", "ysiz", "xosiz", "yosiz", "xtsiz", "ytsiz", "xtosiz", "ytosiz"]


def with_siz(data: bytes, **values: int) -> bytes:
    """p0_01-like raw codestream (SIZ at offset 2) with some SIZ fields replaced."""
    out = bytearray(data)
    for k, v in values.items():
        struct.pack_into(">I", out, 8 + 4 * SIZ_FIELDS.index(k), v)
    return bytes(out)


def with_components(data: bytes, csiz: int, ssiz: int = 7, dx: int = 1, dy: int = 1) -> bytes:
    """Replaces SIZ's component list (one component in p0_01) by `csiz` copies; Lsiz follows
    (capped at 0xFFFF so that absurd counts are still parseable as far as the count)."""
    lsiz = 38 + 3 * csiz
    head = data[:4] + struct.pack(">H", min(lsiz, 0xFFFF)) + data[6:40] + struct.pack(">H", csiz)
    return head + bytes([ssiz, dx, dy]) * min(csiz, 21000) + data[45:]


P0_01 = read("p0_01.j2k")
MAX32 = 2**32 - 1


@pytest.mark.parametrize("case,values,words", [
    ("2^32 tiles", dict(xsiz=MAX32, ysiz=MAX32, xtsiz=65536, ytsiz=65536), "tiles"),
    ("2^64 tiles", dict(xsiz=MAX32, ysiz=MAX32, xtsiz=1, ytsiz=1), "tiles"),
    ("2^21 tiles", dict(xsiz=2048, ysiz=1024, xtsiz=1, ytsiz=1), "tiles"),
    ("zero width", dict(xsiz=0), "empty"),
    ("zero height", dict(ysiz=0), "empty"),
    ("origin at the end", dict(xosiz=128), "empty"),
    ("zero tile width", dict(xtsiz=0), "tile size"),
    ("tile offset past origin", dict(xtosiz=1, xosiz=0), "tile grid"),
    ("tile grid misses image", dict(xosiz=100, yosiz=100, xtsiz=50, ytsiz=50), "tile grid"),
])
def test_absurd_siz_values(case, values, words) -> None:
    """Refused as malformed (not as an unsupported feature): no SIZ of a valid file says so."""
    err = expect_error(with_siz(P0_01, **values), 2, words)
    assert not err.unsupported


@pytest.mark.parametrize("csiz,ssiz,dx,words", [
    (0, 7, 1, "components"),
    (65535, 7, 1, "components"),
    (16385, 7, 1, "components"),
    (1, 7, 0, "subsampling"),
    (1, 0x7F, 1, "bit depth"),
])
def test_absurd_components(csiz, ssiz, dx, words) -> None:
    expect_error(with_components(P0_01, csiz, ssiz, dx), 2, words)


def test_many_components_claimed_by_a_tiny_file() -> None:
    """16384 components (the most SIZ allows) over p0_01's one-component data: refused or
    indexed, fast, within bounded memory."""
    got, peak = _traced(with_components(P0_01, 16384))
    assert peak < 50e6, f"peak {peak / 1e6:.0f} MB"
    del got


def test_bad_coding_parameters() -> None:
    cod = codestream_of(P0_01).main.segments[1]
    assert cod.code == 0xFF52
    base = cod.offset + 4  # Scod, progression, layers(2), mct, levels, xcb, ycb, style, wavelet
    expect_error(patched(P0_01, base + 1, ">B", 5), cod.offset, "progression")
    expect_error(patched(P0_01, base + 2, ">H", 0), cod.offset, "zero layers")
    expect_error(patched(P0_01, base + 5, ">B", 33), cod.offset, "levels")
    expect_error(patched(P0_01, base + 6, ">B", 9), cod.offset, "code-block")
    reserved = expect_error(patched(P0_01, base + 9, ">B", 2), cod.offset, "wavelet 2 is reserved")
    assert not reserved.unsupported  # malformed: Rsiz announces no Part 2 extensions
    part2 = patched(patched(P0_01, base + 9, ">B", 2), 4 + 2, ">H", 0x8000)
    assert expect_error(part2, cod.offset, "Part 2").unsupported  # an ATK kernel: not served


# --------------------------------------------------------------------------- what OpenJPEG refuses
# Damage the index once accepted but OpenJPEG refuses (found by serving damaged corpus files,
# tests/reliability/test_corrupt_served.py): refused here too, so what is served decodes.
def test_a_code_block_with_more_coding_passes_than_can_exist() -> None:
    """CT1's last packet header with one bit flipped claims 158 passes for a code-block: at
    most 3 x 37 - 2 = 109 exist (OpenJPEG opens a second codeword segment after 109 and so
    reads other lengths than a single-segment reading)."""
    expect_error(flip(read("CT1.j2k"), 54520, 6), None, "coding passes")


def test_tile_parts_out_of_sequence() -> None:
    sot = codestream_of(P0_01).tile_parts[0].sot_offset
    expect_error(patched(P0_01, sot + 10, ">B", 1), sot, "out of sequence")


def test_a_packet_header_without_its_eph_marker() -> None:
    data = read("p0_02.j2k")
    part = codestream_of(data).tile_parts[0]
    eph = data.index(b"\xff\x92", part.header_end)
    expect_error(data[:eph] + b"\x00\x00" + data[eph + 2:], eph, "EPH")


def test_a_tile_part_running_into_the_eoc() -> None:
    data = read("p0_01.j2k")
    sot = codestream_of(data).tile_parts[0].sot_offset
    psot = struct.unpack_from(">I", data, sot + 6)[0]
    expect_error(patched(data, sot + 6, ">I", psot + 1), sot, "runs past")


def test_a_tile_without_a_byte_of_packet_data() -> None:
    """Psot = 0 (to the end of the codestream) cut right after SOD."""
    data = read("CT1_psot0_noeoc.j2k")
    part = codestream_of(data).tile_parts[0]
    expect_error(data[:part.header_end], part.sot_offset, "no packet data")


def _traced(data: bytes) -> tuple[object, int]:
    tracemalloc.start()
    try:
        got = outcome(data)
        return got, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_refused_huge_headers_allocate_nothing_proportional() -> None:
    for values in (dict(xsiz=MAX32, ysiz=MAX32, xtsiz=65536, ytsiz=65536),
                   dict(xsiz=MAX32, ysiz=MAX32, xtsiz=1, ytsiz=1)):
        got, peak = _traced(with_siz(P0_01, **values))
        assert isinstance(got, CodestreamError)
        assert peak < 1e6, f"{values}: peak {peak / 1e6:.1f} MB"


_CHILD = r"""
import json, resource, sys, time, tracemalloc
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), resource.RLIM_INFINITY))
from codestream.boxes import SUPERBOXES, read_layout, walk_boxes
from codestream.errors import CodestreamError
from codestream.index import index_codestream
buf = open(sys.argv[1], "rb").read()
tracemalloc.start()
t0 = time.perf_counter()
try:
    for off, ln in read_layout(buf).codestreams:
        index_codestream(buf, off, ln)
    result = "indexed"
except CodestreamError as e:
    result = "CodestreamError: " + str(e)
except BaseException as e:
    result = type(e).__name__ + ": " + str(e)[:200]
print(json.dumps({"result": result, "seconds": time.perf_counter() - t0,
                  "peak_mb": tracemalloc.get_traced_memory()[1] / 1e6}))
"""


def index_in_child(data: bytes, tmp_path: Path, *, timeout: float = 20,
                   address_space: int = 2 << 30) -> dict:
    """Indexes `data` in a child process with a memory cap and a time limit (so a runaway
    case fails the test instead of taking the machine down); returns result, seconds, peak_mb."""
    path = tmp_path / "crafted.j2k"
    path.write_bytes(data)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    try:
        r = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(address_space)],
                           cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"result": f"still running after {timeout} s", "seconds": timeout, "peak_mb": -1}
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_bounded(rep: dict, *, seconds: float = 5, peak_mb: float = 50) -> None:
    ok = (rep["result"] == "indexed" or rep["result"].startswith("CodestreamError")) and \
        rep["seconds"] <= seconds and 0 <= rep["peak_mb"] <= peak_mb
    assert ok, f"expected CodestreamError (or an index) within {seconds} s and {peak_mb} MB: {rep}"


def test_a_small_crafted_header_is_indexed_within_bounds(tmp_path) -> None:
    """A header claiming a modest image over p0_01's data: the harness itself works."""
    assert_bounded(index_in_child(with_siz(P0_01, xsiz=512, ysiz=512), tmp_path))


def test_one_huge_tile_is_refused_before_allocating_its_precincts(tmp_path) -> None:
    """p0_01 (7 KB) with Xsiz = Ysiz = XTsiz = YTsiz = 2^32-1: one 4G x 4G tile, 2^28
    precincts at resolution 0 alone. The precincts are counted from the resolution grids and
    the header refused (more precincts than the data can hold) before any array is built."""
    data = with_siz(P0_01, xsiz=MAX32, ysiz=MAX32, xtsiz=MAX32, ytsiz=MAX32)
    assert_bounded(index_in_child(data, tmp_path))


def test_wide_image_decodes_headers_in_memory_bounded_by_the_data(tmp_path) -> None:
    """p0_01 with Xsiz = XTsiz = 2^32-1 (a 4G x 128 tile; default precincts 2^15): packet
    headers are decoded against precincts with large claimed code-block grids. Band state is
    made on a precinct's first non-empty packet, large tag trees hold only the nodes touched,
    and code-blocks under an excluded tag-tree node are skipped a rectangle at a time."""
    data = with_siz(P0_01, xsiz=MAX32, xtsiz=MAX32)
    assert_bounded(index_in_child(data, tmp_path))


def test_a_million_claimed_tiles_are_refused_at_once(tmp_path) -> None:
    """p0_01 with Xsiz = Ysiz = 2^20 and 1024 x 1024 tiles: 2^20 tiles, more than SOT can
    address, so the SIZ itself is refused as malformed."""
    data = with_siz(P0_01, xsiz=1 << 20, ysiz=1 << 20, xtsiz=1024, ytsiz=1024)
    rep = index_in_child(data, tmp_path, timeout=15)
    assert_bounded(rep, seconds=5)
    assert "more than SOT can address" in rep["result"], rep


def test_the_most_tiles_sot_can_address_claimed_by_one_tile_part(tmp_path) -> None:
    """p0_01 with 255 x 257 = 65535 tiles of 1 x 1 (the most SIZ may claim), one tile-part
    present: refused as malformed (far more tiles claimed than have tile-parts) before any
    per-tile work, which costs ~150 us a tile."""
    data = with_siz(P0_01, xsiz=255, ysiz=257, xtsiz=1, ytsiz=1)
    got = expect_error(data, 0, "have tile-parts")
    assert not got.unsupported
    assert_bounded(index_in_child(data, tmp_path, timeout=15), seconds=2)


# --------------------------------------------------------------------------- PLT
def plt_entries(buf: bytes, seg) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each Iplt entry of a PLT segment."""
    out, start = [], seg.body_offset + 1
    for pos in range(seg.body_offset + 1, seg.end):
        if not buf[pos] & 0x80:
            out.append((start, pos + 1))
            start = pos + 1
    return out


def plt_value(buf: bytes, a: int, b: int) -> int:
    v = 0
    for x in buf[a:b]:
        v = (v << 7) | (x & 0x7F)
    return v


def solo_with_plt() -> tuple[bytes, object, list[tuple[int, int]]]:
    data = read(SOLO)
    seg = codestream_of(data).tile_parts[0].header_segments[0]
    return data, seg, plt_entries(data, seg)


def assert_same_packets(a: CodestreamIndex, b: CodestreamIndex) -> None:
    for k in ("precinct", "layer", "offset", "length", "sop", "bin_end"):
        assert np.array_equal(a.packets[k], b.packets[k]), k
    assert np.array_equal(a.precincts["bin_length"], b.precincts["bin_length"])


@pytest.fixture(scope="module")
def solo_headers_index() -> CodestreamIndex:
    data = read(SOLO)
    off, ln = read_layout(data).codestreams[0]
    return index_codestream(data, off, ln, use_plt=False)


def test_a_plt_that_does_not_add_up_falls_back_to_packet_headers(solo_headers_index) -> None:
    data, seg, entries = solo_with_plt()
    # Make one (single-byte, non-zero) entry one larger: the lengths no longer add up.
    a, b = next((a, b) for a, b in entries[5:] if b - a == 1 and 0 < data[a] < 0x7F)
    bad = patched(data, a, ">B", data[a] + 1)
    [ix] = index_all(bad)
    assert ix.source == "headers"
    assert_same_packets(ix, solo_headers_index)


def test_a_plt_ending_in_a_continuation_byte_falls_back(solo_headers_index) -> None:
    data, seg, entries = solo_with_plt()
    a, b = entries[-1]
    bad = patched(data, b - 1, ">B", data[b - 1] | 0x80)
    [ix] = index_all(bad)
    assert ix.source == "headers"
    assert_same_packets(ix, solo_headers_index)


def test_plt_entries_swapped_are_caught_by_verify_plt(solo_headers_index) -> None:
    """Two entries swapped keep the total: the PLT is trusted (a documented limit), and
    verify_plt=True catches the disagreement."""
    data, seg, entries = solo_with_plt()
    k = next(k for k in range(len(entries) - 1)
             if entries[k][1] - entries[k][0] == entries[k + 1][1] - entries[k + 1][0]
             and plt_value(data, *entries[k]) != plt_value(data, *entries[k + 1]))
    (a, b), (c, d) = entries[k], entries[k + 1]
    bad = data[:a] + data[c:d] + data[a:b] + data[d:]
    off, ln = read_layout(bad).codestreams[0]
    trusted = index_codestream(bad, off, ln)
    assert trusted.source == "plt"
    assert not np.array_equal(trusted.packets["length"], solo_headers_index.packets["length"])
    with pytest.raises(CodestreamError) as e:
        index_codestream(bad, off, ln, verify_plt=True)
    assert "PLT" in e.value.reason and e.value.offset >= 0


def test_a_plt_with_extra_entries_falls_back(solo_headers_index) -> None:
    """50 more entries appended to the PLT (Lplt, Psot and the jp2c box grown to match)."""
    data, seg, entries = solo_with_plt()
    extra = b"\x05" * 50
    bad = bytearray(data[:seg.end] + extra + data[seg.end:])
    struct.pack_into(">H", bad, seg.offset + 2, seg.length - 2 + len(extra))
    sot = codestream_of(data).tile_parts[0].sot_offset
    psot = struct.unpack_from(">I", data, sot + 6)[0]
    if psot:
        struct.pack_into(">I", bad, sot + 6, psot + len(extra))
    jp2c = [b for b in read_layout(data).top_boxes if b.box_type == b"jp2c"][0]
    if struct.unpack_from(">I", data, jp2c.offset)[0]:
        struct.pack_into(">I", bad, jp2c.offset, jp2c.length + len(extra))
    [ix] = index_all(bytes(bad))
    assert ix.source == "headers"
    for k in ("precinct", "layer", "length", "sop", "bin_end"):
        assert np.array_equal(ix.packets[k], solo_headers_index.packets[k]), k
    assert np.array_equal(ix.packets["offset"], solo_headers_index.packets["offset"] + len(extra))


# --------------------------------------------------------------------------- markers
def insert_in_tile_header(data: bytes, segment: bytes) -> tuple[bytes, int]:
    """p0_01 with `segment` inserted right after its (only) SOT segment; Psot fixed."""
    part = codestream_of(data).tile_parts[0]
    at = part.sot_offset + 12
    out = bytearray(data[:at] + segment + data[at:])
    psot = struct.unpack_from(">I", data, part.sot_offset + 6)[0]
    struct.pack_into(">I", out, part.sot_offset + 6, psot + len(segment))
    return bytes(out), at


def test_unknown_marker_in_a_tile_part_header() -> None:
    bad, at = insert_in_tile_header(P0_01, b"\xff\x6f\x00\x04\xab\xcd")
    err = expect_error(bad, at)
    assert "0xFF6F" in err.reason


@pytest.mark.parametrize("segment,name", [
    (struct.pack(">HH", 0xFF51, 2), "SIZ"),      # main-header-only markers
    (struct.pack(">HH", 0xFF55, 4) + b"\0\0", "TLM"),
    (struct.pack(">HHB", 0xFF60, 3, 0), "PPM"),
    (b"\xff\x4f", "SOC"),
    (b"\xff\xd9", "EOC"),
])
def test_main_header_markers_in_a_tile_part_header(segment, name) -> None:
    bad, at = insert_in_tile_header(P0_01, segment)
    err = expect_error(bad, at)
    assert name in err.reason


def test_reserved_markers_without_a_segment_are_skipped() -> None:
    """0xFF30..0xFF3F have no length (T.800 A.1.4); p0_02 has one; here in a tile header."""
    good, _ = insert_in_tile_header(P0_01, b"\xff\x30")
    [a] = index_all(good)
    [b] = index_all(P0_01)
    assert np.array_equal(a.packets["offset"], b.packets["offset"] + 2)
    assert np.array_equal(a.packets["length"], b.packets["length"])


def test_a_non_marker_where_a_marker_should_be() -> None:
    bad, at = insert_in_tile_header(P0_01, b"\x12\x34\x00\x04")
    expect_error(bad, at, "expected a marker")
    qcd = codestream_of(P0_01).main.segments[0]
    expect_error(patched(P0_01, qcd.offset, ">H", 0x1234), qcd.offset, "expected a marker")


def test_missing_cod_or_qcd() -> None:
    cs = codestream_of(P0_01)
    qcd, cod = cs.main.segments[0], cs.main.segments[1]
    no_cod = P0_01[:cod.offset] + P0_01[cod.end:]
    expect_error(no_cod, 0, "COD")
    no_qcd = P0_01[:qcd.offset] + P0_01[qcd.end:]
    expect_error(no_qcd, 0, "QCD")


def test_every_error_offset_points_into_the_file() -> None:
    """Sweep single-byte overwrites over p0_10's headers: every error is well formed."""
    data = read("p0_10.j2k")
    reg = regions(data)
    for pos in reg["main"] + reg["tile_header"]:
        for value in (0x00, 0xFF):
            outcome(patched(data, pos, ">B", value))


# --------------------------------------------------------------------------- the whole corpus
# Every corpus file, cut at each box and marker-segment boundary and at seeded random points,
# and with seeded bit flips in its main and tile-part headers, packet headers and PLT: the
# file is indexed as build_source indexes it (boxes, every codestream, metadata-bin 0) and
# either succeeds, with every bin a byte range inside the file and the window planner working
# on the result, or raises a CodestreamError naming a place in the file; never another
# exception, never a hang (tests/fuzz/targets.py holds the checks, shared with the fuzzer).
# The variants are made by tests/data/corrupt.py (tests/reliability serves the same ones).
VARIANT_SECONDS = 2.0  # CPU seconds per corrupt variant, at least (see _variant_limit)


def _variant_limit(data: bytes) -> float:
    """The intact file's own CPU time sets the scale: a corrupt copy may not take much longer
    (cutting or flipping never buys a file more work than twice what it had, plus 2 s)."""
    return VARIANT_SECONDS + 2 * measure(target_codestream, data, trace=False).seconds


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corrupt_corpus_files_index_or_raise_codestream_errors(path) -> None:
    data = path.read_bytes()
    limit = _variant_limit(data)
    variants = corrupt_variants(path.name, data)
    outcomes = {"indexed": 0, "refused": 0}
    for what, variant in variants:
        try:
            t0 = time.process_time()
            got = target_codestream(variant)
            seconds = time.process_time() - t0
        except Exception as e:  # a CodestreamError too: it was malformed (see the target)
            raise AssertionError(f"{path.name}, {what}: {type(e).__name__}: {e}") from e
        assert seconds <= limit, f"{path.name}, {what}: {seconds:.2f} s of CPU"
        outcomes["refused" if isinstance(got, CodestreamError) else "indexed"] += 1
    # Cuts inside the first header are always refused; the intact tail of a flip often is not.
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == len(variants) >= 12, outcomes


@pytest.mark.parametrize("tail", [b"\0", b"\0\0\0\x05ju", b"\0" * 100, b"\xff\xff\xff\xffabcd",
                                  b"JUNK"])
def test_bytes_after_the_last_box_are_ignored(tail) -> None:
    data = read("basn6a08.jp2")
    layout = read_layout(data + tail)
    assert layout.codestreams == read_layout(data).codestreams
    assert [b.box_type for b in layout.top_boxes] == [b.box_type for b in
                                                      read_layout(data).top_boxes]


def test_a_cut_codestream_box_after_a_whole_one_is_still_an_error() -> None:
    data = read("basn6a08.jp2")
    jp2c = [b for b in read_layout(data).top_boxes if b.box_type == b"jp2c"][0]
    second = bytes(data[jp2c.offset:jp2c.end])
    expect_error(data + second[:50], len(data), "runs past")
