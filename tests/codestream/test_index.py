"""The precinct index against every corpus file: byte accounting and pixel-exact round trips."""
from __future__ import annotations

import mmap

import numpy as np
import pytest

from codestream.boxes import read_layout
from codestream.index import index_codestream
from codestream.parse import parse_codestream
from codestream.rebuild import rebuild_codestream
from codestream.source import build_source
from tests.conftest import CORPUS, corpus_files
from tests.oracle import assert_same_pixels, decode_codestream

FILES = corpus_files()
PLT_FILES = ["heliov.jpx",
             "2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2"]


def test_corpus_is_there() -> None:
    assert len(FILES) == 30  # 27 committed + 3 built (tests/data/generate.py)


def _mapped(path):
    f = open(path, "rb")
    return f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_byte_of_packet_data_is_accounted_for(path) -> None:
    f, mm = _mapped(path)
    try:
        for off, ln in read_layout(mm).codestreams:
            ix = index_codestream(mm, off, ln)
            layout = parse_codestream(mm, off, ln)
            pk = ix.packets
            # Intervals covered by packets, SOP markers included, header + body adding up.
            starts = pk["offset"] - 6 * pk["sop"].astype(np.int64)
            ends = pk["offset"] + pk["length"]
            inline = pk["packed_offset"] < 0
            known = pk["header_length"] >= 0
            assert np.all(pk["header_length"][known & inline] <= pk["length"][known & inline])
            order = np.lexsort((ends, starts))  # empty PPM/PPT packets have no bytes here
            starts, ends = starts[order], ends[order]
            covered = 0
            for part in layout.tile_parts:
                lo, hi = part.header_end, part.data_end
                sel = (starts >= lo) & (ends <= hi)
                s, e = starts[sel], ends[sel]
                if len(s) == 0:
                    assert hi - lo <= ix.padding_bytes
                    continue
                assert s[0] == lo, f"gap at the start of tile-part at {part.sot_offset}"
                assert np.all(s[1:] == e[:-1]), "gap or overlap between packets"
                covered += int(e[-1] - s[0])
                assert hi - e[-1] >= 0
            assert covered + ix.padding_bytes == ix.tile_data_bytes
            assert int((pk["length"] + 6 * pk["sop"]).sum()) == covered
    finally:
        mm.close()
        f.close()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_rebuilt_in_rpcl_decodes_to_the_same_pixels(path) -> None:
    """Re-emit every packet from the index alone (RPCL, no POC/PLT/TLM/PPM/PPT/SOP)."""
    with build_source(path) as src:
        for cs, ix in enumerate(src.codestreams):
            bins = {int(ix.precincts["id"][row]): src.precinct_bin(cs, row)
                    for row in range(len(ix.precincts["id"]))}
            tiles = {t: src.tile_header_bin(cs, t) for t in range(ix.num_tiles)}
            rebuilt = rebuild_codestream(src.main_header_bin(cs), tiles, bins)
            original = bytes(src.view[ix.offset:ix.offset + ix.length])
            assert_same_pixels(decode_codestream(original), decode_codestream(rebuilt),
                               f"{path.name} codestream {cs}")


@pytest.mark.parametrize("name", PLT_FILES)
def test_plt_and_packet_headers_give_the_same_index(name) -> None:
    f, mm = _mapped(CORPUS / name)
    try:
        for off, ln in read_layout(mm).codestreams:
            a = index_codestream(mm, off, ln, use_plt=True)
            b = index_codestream(mm, off, ln, use_plt=False)
            for k in ("precinct", "layer", "offset", "length", "sop", "bin_end"):
                assert np.array_equal(a.packets[k], b.packets[k]), k
    finally:
        mm.close()
        f.close()


def test_plt_is_used_when_present() -> None:
    with build_source(CORPUS / "2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2") as src:
        assert src.codestreams[0].source == "plt"


def test_precinct_ids_follow_the_standard_equation() -> None:
    with build_source(CORPUS / "p1_05.j2k") as src:
        ix = src.codestreams[0]
        pr = ix.precincts
        ntiles, ncomp = ix.num_tiles, ix.num_components
        # I = t + (c + s * C) * T, with s counted from resolution 0 upwards.
        s = (pr["id"] - pr["t"]) // ntiles
        assert np.all((pr["id"] - pr["t"]) % ntiles == 0)
        c = s % ncomp
        assert np.array_equal(c, pr["c"])
        assert len(np.unique(pr["id"])) == len(pr["id"])


def test_located_chunks_join_and_cut_as_one_array() -> None:
    """The builder's located columns: numpy chunks (C, PLT) and array.arrays (the Python
    decoder), joined once; verify_plt cuts them back to a packet count."""
    from array import array

    from codestream.index import _cut, _joined

    def chunks():
        return [np.arange(3, dtype=np.int64), array("q", [3, 4]), np.zeros(0, np.int64),
                np.arange(5, 7, dtype=np.int64)]

    assert _joined(chunks(), np.int64).tolist() == list(range(7))
    assert _joined([], np.int64).dtype == np.int64 and _joined([], np.int64).size == 0
    for n in range(8):
        cut = chunks()
        _cut(cut, n)
        assert _joined(cut, np.int64).tolist() == list(range(n)), n
    grown = chunks()
    _cut(grown, 4)
    grown[-1].append(9)  # the Python decoder goes on growing its array after a cut
    assert _joined(grown, np.int64).tolist() == [0, 1, 2, 3, 9]


def test_verified_plt_gives_the_plt_index() -> None:
    """verify_plt decodes the headers too, compares, and drops what it decoded."""
    checked = 0
    for name in ("2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2", "heliov.jpx"):
        data = (CORPUS / name).read_bytes()
        for off, ln in read_layout(data).codestreams:
            plain = index_codestream(data, off, ln)
            if plain.source != "plt":
                continue
            checked += 1
            verified = index_codestream(data, off, ln, verify_plt=True)
            assert verified.source == "plt"
            for k, v in plain.packets.items():
                assert np.array_equal(v, verified.packets[k]), (name, k)
    assert checked >= 2
