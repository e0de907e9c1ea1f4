"""DICOM frames indexed in place: every data-bin a frame serves is byte-identical to the same bin
of the frame's codestream indexed on its own, however its fragments cut it."""
from __future__ import annotations

import random

import numpy as np
import pytest

from codestream.index import SPLIT
from codestream.source import build_source
from dicom.source import DicomSource, open_dicom
from tests.dicom.cases import CASES


def _plain(tmp_path, data: bytes, name: str):
    path = tmp_path / f"{name}.j2k"
    path.write_bytes(data)
    return build_source(path)


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_every_bin_matches_the_unsplit_codestream(dicom_root, tmp_path, name) -> None:
    folder, cases = dicom_root
    case = cases[name]
    rng = random.Random(name)
    with open_dicom(folder / name) as src:
        assert isinstance(src, DicomSource) and src.first_codestream == 1
        assert len(src.codestreams) == len(case.files)
        for i, data in enumerate(case.expected):
            assert src.codestream_bytes(i) == data
            with _plain(tmp_path, data, f"f{i}") as ref:
                ix, rx = src.codestreams[i], ref.codestreams[0]
                assert ix.siz == rx.siz and ix.length == rx.length
                for k in ("id", "pkt_start", "pkt_count", "bin_length"):
                    assert np.array_equal(ix.precincts[k], rx.precincts[k])
                assert np.array_equal(ix.packets["bin_end"], rx.packets["bin_end"])
                assert src.main_header_bin(i) == ref.main_header_bin(0)
                for t in range(ix.num_tiles):
                    assert src.tile_header_bin(i, t) == ref.tile_header_bin(0, t)
                lengths = ix.precincts["bin_length"]
                for row in range(len(lengths)):
                    whole = ref.precinct_bin(0, row)
                    assert src.precinct_bin(i, row) == whole, f"frame {i + 1} precinct {row}"
                    n = int(lengths[row])
                    if n > 1:
                        a = rng.randrange(n)
                        b = rng.randrange(a + 1, n + 1)
                        assert b"".join(src.bin_range(i, row, a, b)) == whole[a:b]
                # Packets outside SPLIT are single file runs holding their bytes (the respond
                # hot path slices the file there).
                pk = ix.packets
                plain = (pk["packed_offset"] < 0) & (pk["packed_offset"] != SPLIT)
                rk = rx.packets
                for k in np.flatnonzero(plain)[:2000].tolist():
                    o, n = int(pk["offset"][k]), int(pk["length"][k])
                    ro = int(rk["offset"][k])
                    assert bytes(src.view[o:o + n]) == data[ro:ro + n]


def test_fragmented_frames_have_split_packets_and_whole_frames_none(dicom_root) -> None:
    folder, _ = dicom_root
    with open_dicom(folder / "ct_split_nobot.dcm") as src:
        assert src.frames.fragments_per_frame().tolist() == [15, 15, 15]
        for ix in src.codestreams:
            assert ix.runs is not None and len(ix.runs) == 15
            assert ix.split_spans is not None and (ix.packets["packed_offset"] == SPLIT).any()
            assert len(ix.main_header_ranges) >= 2  # the cut inside SIZ splits the main header
    with open_dicom(folder / "ct_bot.dcm") as src:
        for ix in src.codestreams:
            assert ix.runs is None and ix.split_spans is None


def test_split_packets_reference_no_copied_pixel_data(dicom_root) -> None:
    """Split packets are described by file pieces: the index holds no frame bytes beyond the
    packed headers the codestream itself has (PPM/PPT)."""
    folder, _ = dicom_root
    for name in ("ct_split_bot.dcm", "tiles_ppm_split.dcm", "ppt_split.dcm"):
        with open_dicom(folder / name) as src:
            ix = src.codestreams[0]
            with _plain_index(src, 0) as ref:
                assert len(ix.packed_headers) == len(ref.codestreams[0].packed_headers)


class _plain_index:
    def __init__(self, src, i):
        import tempfile
        from pathlib import Path
        self.dir = tempfile.TemporaryDirectory()
        path = Path(self.dir.name) / "x.j2k"
        path.write_bytes(src.codestream_bytes(i))
        self.src = build_source(path)

    def __enter__(self):
        return self.src

    def __exit__(self, *exc):
        self.src.close()
        self.dir.cleanup()


def test_frames_are_indexed_lazily_one_at_a_time(dicom_root) -> None:
    folder, _ = dicom_root
    with open_dicom(folder / "ct_nobot.dcm") as src:
        assert src.indexed_count == 0 and src.unindexed() == [0, 1, 2]
        assert not src.complete
        src.codestreams[2]
        assert src.indexed_count == 1 and src.unindexed() == [0, 1]
        assert src.unindexed([2, 1]) == [1]
        src.index_codestreams([0, 1])
        assert src.complete and src.indexed_count == 3
        assert len(list(src.codestreams)) == 3
        with pytest.raises(IndexError):
            src.codestreams[3]


def test_an_empty_fragment_inside_a_frame(tmp_path) -> None:
    from tests.conftest import CORPUS
    from tests.data.dicom import build_dicom

    data = (CORPUS / "p0_10.j2k").read_bytes()
    path = tmp_path / "empty.dcm"
    build_dicom(path, [[data[:10], b"", data[10:1000], b"", data[1000:]]], table="none")  # in SIZ
    with open_dicom(path) as src, _plain_index(src, 0) as ref:
        assert src.frames.fragments_per_frame().tolist() == [5]
        assert src.codestream_bytes(0) == data  # odd: padded in the file, the pad dropped
        ix = src.codestreams[0]
        assert (ix.main_header_ranges[:, 1] > 0).all() and (ix.tile_header_ranges[:, 2] > 0).all()
        assert src.main_header_bin(0) == ref.main_header_bin(0)
        for row in range(len(ix.precincts["id"])):
            assert src.precinct_bin(0, row) == ref.precinct_bin(0, row)
