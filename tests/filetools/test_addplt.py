"""`jpip add-plt`: the rewrite decodes to the same pixels, indexes from PLT alone to the same
data-bins, parses with OpenJPEG, and keeps the JP2 boxes; plus the PLT/TLM encoders and CLI."""
from __future__ import annotations

import argparse
import struct
import subprocess
import warnings
from pathlib import Path

import glymur
import numpy as np
import pytest

from codestream.boxes import read_box_header, read_layout
from codestream.parse import parse_codestream
from codestream.source import Source, build_source
from filetools.addplt import (
    MAX_TLM_ENTRIES,
    STLM,
    AddPltReport,
    add_addplt_arguments,
    add_plt,
    encode_lengths,
    plt_segments,
    run_addplt,
    tlm_segments,
)
from tests.conftest import CORPUS, corpus_files
from tests.oracle import assert_same_pixels, decode_codestream

FILES = corpus_files()
PACKED = ("p1_02.j2k", "p1_05.j2k")  # PPT, PPM


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory):
    """add_plt output per corpus file, made once for the module's tests."""
    outdir = tmp_path_factory.mktemp("addplt")
    done: dict[str, tuple[Path, AddPltReport]] = {}

    def get(src: Path) -> tuple[Path, AddPltReport]:
        if src.name not in done:
            out = outdir / src.name
            done[src.name] = (out, add_plt(src, out))
        return done[src.name]

    return get


def codestreams(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [data[off:off + n] for off, n in read_layout(data).codestreams]


def decode_all(path: Path) -> list[list[np.ndarray]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [decode_codestream(cs) for cs in codestreams(path)]


def assert_same_bins(a: Source, b: Source) -> None:
    """Every precinct bin byte for byte, and the main and tile header bins."""
    assert len(a.codestreams) == len(b.codestreams)
    for cs, (ia, ib) in enumerate(zip(a.codestreams, b.codestreams, strict=True)):
        assert a.main_header_bin(cs) == b.main_header_bin(cs)
        for t in range(ia.num_tiles):
            assert a.tile_header_bin(cs, t) == b.tile_header_bin(cs, t), f"tile {t}"
        assert np.array_equal(ia.precincts["bin_length"], ib.precincts["bin_length"])
        for row in range(len(ia.precincts["id"])):
            assert a.precinct_bin(cs, row) == b.precinct_bin(cs, row), f"cs {cs} row {row}"


# --------------------------------------------------------------------------- the corpus
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_same_pixels(path: Path, rewritten) -> None:
    out, report = rewritten(path)
    assert report.output_bytes == out.stat().st_size
    before, after = decode_all(path), decode_all(out)
    assert before and len(before) == len(after)
    for n, (x, y) in enumerate(zip(before, after, strict=True)):
        assert_same_pixels(x, y, f"{path.name} codestream {n}")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_indexes_from_plt_to_same_bins(path: Path, rewritten) -> None:
    out, report = rewritten(path)
    with build_source(path) as a, build_source(out) as b:
        for ix in b.codestreams:
            assert ix.source == "plt"
            assert {"PLT", "TLM"} <= set(ix.markers)
            assert not {"PPM", "PPT", "PLM"} & set(ix.markers)  # packed headers moved out
            assert ix.padding_bytes == 0
        assert sum(len(ix.packets["offset"]) for ix in b.codestreams) == report.packets
        assert_same_bins(a, b)
    assert report.tile_parts == report.plt_segments  # no tile-part of the corpus needs two


def tlm_entries(data: bytes, off: int, length: int) -> list[tuple[int, int]]:
    """(Ttlm, Ptlm) of the TLM segments of a codestream's main header, with Stlm checked."""
    layout = parse_codestream(data, off, length)
    out = []
    for seg in layout.main.segments:
        if seg.code == 0xFF55:
            assert data[seg.body_offset + 1] == STLM
            out += list(struct.iter_unpack(">HI", data[seg.body_offset + 2:seg.end]))
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_tlm_matches_tile_parts(path: Path, rewritten) -> None:
    out, _ = rewritten(path)
    data = out.read_bytes()
    for off, n in read_layout(data).codestreams:
        parts = parse_codestream(data, off, n).tile_parts
        assert tlm_entries(data, off, n) == [(p.tile, p.data_end - p.sot_offset) for p in parts]
        assert all(struct.unpack_from(">I", data, p.sot_offset + 6)[0] for p in parts)  # Psot


@pytest.mark.parametrize("name", ["test-card-lossy-tiled.jp2", "p0_10.j2k", "p1_05.j2k"])
def test_glymur_reads_markers(name: str, rewritten) -> None:
    """glymur's own parser agrees: TLM lists every SOT, one PLT per tile-part."""
    out, _ = rewritten(CORPUS / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cs = glymur.Jp2k(str(out)).get_codestream(header_only=False)
    sots = [s for s in cs.segment if s.marker_id == "SOT"]
    tlm = [s for s in cs.segment if s.marker_id == "TLM"]
    assert len(tlm) == 1
    assert list(tlm[0].ttlm) == [s.isot for s in sots]
    assert list(tlm[0].ptlm) == [s.psot for s in sots]
    assert sum(s.marker_id == "PLT" for s in cs.segment) == len(sots)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_opj_dump_parses(path: Path, rewritten) -> None:
    out, _ = rewritten(path)
    res = subprocess.run(["opj_dump", "-i", str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "type=0xff55" in res.stdout  # the TLM segment, in the main header's marker list
    assert "error" not in res.stderr.lower()


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix != ".j2k"], ids=lambda p: p.name)
def test_boxes_kept(path: Path, rewritten) -> None:
    out, report = rewritten(path)
    a, b = read_layout(path.read_bytes()), read_layout(out.read_bytes())
    assert [x.box_type for x in a.top_boxes] == [x.box_type for x in b.top_boxes]
    src, dst = path.read_bytes(), out.read_bytes()
    for x, y in zip(a.top_boxes, b.top_boxes, strict=True):
        if x.box_type != b"jp2c":
            assert src[x.offset:x.end] == dst[y.offset:y.end]  # copied unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        jp = glymur.Jp2k(str(out))
    assert [bx.box_id for bx in jp.box] == [x.type_name for x in b.top_boxes]


def test_padding_and_trailing_bytes(rewritten) -> None:
    _, r = rewritten(CORPUS / "CT1_psot0_noeoc.j2k")  # Psot = 0, no EOC, 3 bytes of padding
    assert r.padding_dropped == 3 and r.eoc_added
    _, r = rewritten(CORPUS / "CT1.j2k")  # DICOM even-length pad after EOC
    assert r.trailing_dropped == 1 and not r.eoc_added
    _, r = rewritten(CORPUS / "p1_05.j2k")
    assert r.packed_headers and not r.ppm_ppt_kept and "moved" in r.ppm_ppt_note
    _, r = rewritten(CORPUS / "2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2")
    assert r.had_plt and r.tile_parts == 1
    _, r = rewritten(CORPUS / "small_world_non_consecutive_tilepart_tlm.jp2")
    assert not r.had_plt and r.tile_parts == 6


@pytest.mark.parametrize("name", PACKED)
def test_keep_packed_headers(name: str, tmp_path: Path) -> None:
    """PPM/PPT kept: same pixels, and PLT lists SOP + body of every packet."""
    src, out = CORPUS / name, tmp_path / name
    report = add_plt(src, out, keep_packed_headers=True, verify=False)
    assert report.ppm_ppt_kept and "kept" in report.ppm_ppt_note
    assert_same_pixels(decode_all(src)[0], decode_all(out)[0], name)
    with build_source(out, use_plt=False) as b, build_source(src) as a:
        assert {"PLT", "TLM"} <= set(b.codestreams[0].markers)
        assert {"PPM", "PPT"} & set(b.codestreams[0].markers)
        assert_same_bins(a, b)  # decoding the packed headers still works


@pytest.mark.parametrize("name", PACKED)
def test_keep_packed_headers_gives_the_same_bins(name: str, tmp_path: Path) -> None:
    """PLT beside PPM/PPT: the index still takes the headers from the packed stream."""
    out = tmp_path / name
    report = add_plt(CORPUS / name, out, keep_packed_headers=True)  # verified
    assert report.verified
    with build_source(CORPUS / name) as a, build_source(out) as b:
        assert_same_bins(a, b)


# --------------------------------------------------------------------------- box forms
def _jp2_with_jp2c_header(src: Path, dst: Path, form: str) -> None:
    """Copy of a JP2 whose last box is jp2c, with its header as LBox = 0 or as XLBox."""
    data = src.read_bytes()
    box = read_layout(data).top_boxes[-1]
    assert box.box_type == b"jp2c" and box.header_length == 8
    content = data[box.content_offset:box.end]
    header = (struct.pack(">I4s", 0, b"jp2c") if form == "lbox0"
              else struct.pack(">I4sQ", 1, b"jp2c", len(content) + 16))
    dst.write_bytes(data[:box.offset] + header + content)


@pytest.mark.parametrize("form", ["lbox0", "xlbox"])
def test_jp2c_header_forms(form: str, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jp2", tmp_path / "out.jp2"
    _jp2_with_jp2c_header(CORPUS / "file3.jp2", src, form)  # subsampled components
    add_plt(src, out)
    data = out.read_bytes()
    box = read_layout(data).top_boxes[-1]
    lbox, _, xl = struct.unpack_from(">I4sQ", data, box.offset)
    if form == "lbox0":
        assert lbox == 0
    else:
        assert lbox == 1 and xl == box.length == len(data) - box.offset
    assert_same_pixels(decode_all(src)[0], decode_all(out)[0], form)


def test_jp2c_inside_superbox(tmp_path: Path) -> None:
    """A jp2c found inside a superbox (the index looks there too): both lengths rewritten."""
    data = (CORPUS / "file3.jp2").read_bytes()
    box = read_layout(data).top_boxes[-1]
    inner = data[box.offset:box.end]
    src, out = tmp_path / "in.jp2", tmp_path / "out.jp2"
    src.write_bytes(data[:box.offset] + struct.pack(">I4s", 8 + len(inner), b"asoc") + inner)
    report = add_plt(src, out)
    new = out.read_bytes()
    outer = read_layout(new).top_boxes[-1]
    assert outer.box_type == b"asoc" and outer.end == len(new)
    assert read_box_header(new, outer.content_offset, outer.end).end == outer.end
    assert report.output_bytes == len(new) and report.verified


def test_in_place(tmp_path: Path) -> None:
    path = tmp_path / "p0_10.j2k"  # 9 tile-parts, one of them empty
    path.write_bytes((CORPUS / "p0_10.j2k").read_bytes())
    before = decode_all(path)
    add_plt(path, path)
    assert_same_pixels(before[0], decode_all(path)[0], "in place")
    with build_source(path) as s:
        assert s.codestreams[0].source == "plt"
    assert [p.name for p in tmp_path.iterdir()] == ["p0_10.j2k"]


# --------------------------------------------------------------------------- PLT / TLM bytes
def _read_iplt(data: bytes) -> list[int]:
    out, v = [], 0
    for b in data:
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            out.append(v)
            v = 0
    assert v == 0
    return out


def test_encode_lengths() -> None:
    data, ends = encode_lengths(np.array([0, 1, 127, 128, 16383, 16384, 2**32 - 1]))
    assert data == bytes([0, 1, 0x7F, 0x81, 0x00, 0xFF, 0x7F, 0x81, 0x80, 0x00,
                          0x8F, 0xFF, 0xFF, 0xFF, 0x7F])
    assert ends.tolist() == [1, 2, 3, 5, 7, 10, 15]


def test_plt_segments_split() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 1 << 20, 60_000)  # ~3 bytes each: several segments
    segs = plt_segments(lengths)
    assert len(segs) >= 3
    values = []
    for z, seg in enumerate(segs):
        marker, lplt = struct.unpack_from(">HH", seg)
        assert marker == 0xFF58 and lplt == len(seg) - 2 <= 65535
        assert seg[4] == z  # Zplt counts up
        values += _read_iplt(seg[5:])  # entries never straddle two segments
    assert values == lengths.tolist()
    assert plt_segments(np.zeros(0, np.int64)) == [b"\xff\x58\x00\x04\x00\x00"]


def test_tlm_segments() -> None:
    entries = [(k % 7, 1000 + k) for k in range(MAX_TLM_ENTRIES + 5)]
    segs = tlm_segments(entries)
    assert len(segs) == 2
    got = []
    for z, seg in enumerate(segs):
        marker, ltlm, ztlm, stlm = struct.unpack_from(">HHBB", seg)
        assert (marker, ztlm, stlm) == (0xFF55, z, STLM) and ltlm == len(seg) - 2 <= 65535
        got += list(struct.iter_unpack(">HI", seg[6:]))
    assert got == entries
    assert STLM == 0x60  # ST = 2 (bits 4-5), SP = 1 (bit 6)


def test_multi_segment_markers(monkeypatch, tmp_path: Path) -> None:
    """Tiny segment limits force several PLT per tile-part and several TLM: still read right
    by the index, OpenJPEG and glymur."""
    import filetools.addplt as addplt

    monkeypatch.setattr(addplt, "MAX_PLT_DATA", 8)
    monkeypatch.setattr(addplt, "MAX_TLM_ENTRIES", 50)
    src, out = CORPUS / "test-card-lossy-tiled.jp2", tmp_path / "multi.jp2"
    report = add_plt(src, out)
    assert report.tlm_segments == 3 and report.plt_segments > 2 * report.tile_parts
    with build_source(src) as a, build_source(out) as b:
        assert b.codestreams[0].source == "plt"
        assert_same_bins(a, b)
    assert_same_pixels(decode_all(src)[0], decode_all(out)[0], "multi-segment")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cs = glymur.Jp2k(str(out)).get_codestream(header_only=False)
    tlm = [s for s in cs.segment if s.marker_id == "TLM"]
    assert [s.ztlm for s in tlm] == [0, 1, 2]
    assert sum(len(s.ttlm) for s in tlm) == report.tile_parts
    zplt = [s.zplt for s in cs.segment if s.marker_id == "PLT"]
    assert zplt[:3] == [0, 1, 2] and len(zplt) == report.plt_segments


# --------------------------------------------------------------------------- CLI
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_addplt_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "nemo.jp2"
    assert run_addplt(_args(str(CORPUS / "nemo.jp2"), str(out))) == 0
    assert "PLT segment(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.j2k"
    bad.write_bytes(b"\xff\x4f\xff\x51" + b"\x00" * 40)
    assert run_addplt(_args(str(bad), str(tmp_path / "x.j2k"), "--json")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}: ") and "SIZ" in err
    assert not (tmp_path / "x.j2k").exists()
    assert run_addplt(_args(str(tmp_path / "missing.jp2"), str(tmp_path / "y.jp2"))) == 2
    assert "missing.jp2: " in capsys.readouterr().err
