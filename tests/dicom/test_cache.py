"""DICOM objects in the index cache: opened without indexing, completed, persisted, reloaded."""
from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest

from cache.index_cache import IndexCache, entry_path, load_index, save_index
from dicom.errors import DicomError
from dicom.source import DicomSource, open_dicom
from tests.conftest import CORPUS
from tests.data.dicom import build_dicom

CT1 = (CORPUS / "CT1.j2k").read_bytes()


@pytest.mark.parametrize("name", ["ct_split_nobot.dcm", "odd.dcm", "tiles_ppm_split.dcm",
                                  "jp2_frames.dcm", "ppt_split.dcm"])
def test_a_complete_object_round_trips_through_the_disk(dicom_root, tmp_path, name) -> None:
    """Frames of different geometry, PPM/PPT headers, split packets: packed in one entry,
    each frame read back equal, field by field and bin by bin."""
    folder, _ = dicom_root
    path = tmp_path / name
    shutil.copy(folder / name, path)
    with open_dicom(path) as src:
        n = len(src.codestreams)
        if n > 1:
            src.codestreams[0]
            with pytest.raises(ValueError, match="once every frame"):
                save_index(src, tmp_path / "ix")
        src.index_codestreams(list(range(n)))
        save_index(src, tmp_path / "ix")
        loaded = load_index(path, tmp_path / "ix")
        assert isinstance(loaded, DicomSource) and loaded.complete
        assert loaded.first_codestream == 1 and len(loaded.codestreams) == n
        assert np.array_equal(loaded.frames.runs, src.frames.runs)
        for i in range(n):
            a, b = src.codestreams[i], loaded.codestreams[i]
            for f in dataclasses.fields(a):
                x, y = getattr(a, f.name), getattr(b, f.name)
                if isinstance(x, dict):
                    assert x.keys() == y.keys()
                    assert all(np.array_equal(x[k], y[k]) for k in x), f.name
                elif isinstance(x, np.ndarray):
                    assert np.array_equal(x, y), f.name
                else:
                    assert x == y, f.name
            assert loaded.main_header_bin(i) == src.main_header_bin(i)
            for row in range(len(a.precincts["id"])):
                assert loaded.precinct_bin(i, row) == src.precinct_bin(i, row)
        loaded.close()


def test_failed_frames_are_remembered_on_disk(tmp_path) -> None:
    path = tmp_path / "broken.dcm"
    build_dicom(path, [[CT1], [CT1[:4] + b"\x00\x01" + CT1[6:]]])
    cache = IndexCache(tmp_path / "ix", background=False)
    src = cache.get(path)
    assert isinstance(src, DicomSource) and src.indexed_count == 0
    assert cache.complete(path) is src and src.complete
    cache.close()
    events = []
    again = IndexCache(tmp_path / "ix", on_event=lambda kind, s: events.append(kind))
    src = again.get(path)
    assert "build" not in events and src.codestreams[0].siz.width == 512
    with pytest.raises(DicomError, match="frame 2") as info:
        src.codestreams[1]
    assert info.value.status == 422
    again.close()


def test_a_changed_file_is_reopened(tmp_path) -> None:
    path = tmp_path / "x.dcm"
    build_dicom(path, [[CT1], [CT1]])
    cache = IndexCache(tmp_path / "ix", background=False)
    cache.complete(path, cache.get(path))
    assert entry_path(path, tmp_path / "ix").exists()
    cache.close()
    build_dicom(path, [[CT1], [CT1], [CT1]])
    os.utime(path, ns=(1, 1))
    src = IndexCache(tmp_path / "ix").get(path)
    assert len(src.codestreams) == 3 and src.indexed_count == 0
    src.close()


def test_jpeg2000_files_are_still_indexed_whole(tmp_path) -> None:
    cache = IndexCache(tmp_path / "ix")
    src = cache.get(CORPUS / "CT1.j2k")
    assert type(src).__name__ == "Source" and src.complete and src.first_codestream == 0
    assert entry_path(CORPUS / "CT1.j2k", tmp_path / "ix").exists()
    cache.close()


def test_closing_the_cache_stops_the_background(tmp_path) -> None:
    path = tmp_path / "many.dcm"
    small = (CORPUS / "p0_01.j2k").read_bytes()
    build_dicom(path, [[small]] * 300, table="none")
    cache = IndexCache(tmp_path / "ix")
    src = cache.get(path)
    cache.close()  # joins the completer thread
    assert src.view is None
    assert not entry_path(path, tmp_path / "ix").exists() or src.complete
