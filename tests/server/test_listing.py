"""The target listing's rules, on a real folder tree: what is listed, in which order, paged;
nothing outside the root; bounded work (names read once per folder change, stat per page)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from server import listing
from server.listing import Lister, ListingError, clean_folder


def everyone(_: str) -> bool:
    return True


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "b-folder" / "deep").mkdir(parents=True)
    (root / "A-folder").mkdir()
    for name in ("z.jp2", "a.J2K", "m.jpx", "notes.txt", ".hidden.jp2", "no_suffix"):
        (root / name).write_bytes(b"x" * (len(name) + 10))
    (root / "b-folder" / "inner.jp2").write_bytes(b"y" * 5)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jp2").write_bytes(b"s")
    os.symlink(outside / "secret.jp2", root / "escape.jp2")
    os.symlink(outside, root / "escape-folder")
    os.symlink(root / "z.jp2", root / "inside-link.jp2")
    return root


def test_folders_first_then_served_files_sorted_with_sizes(root: Path) -> None:
    page = Lister(root).page("", 1, everyone)
    assert [(e.name, e.is_dir) for e in page.entries] == [
        ("A-folder", True), ("b-folder", True),
        ("a.J2K", False), ("inside-link.jp2", False), ("m.jpx", False), ("z.jp2", False)]
    sizes = {e.name: e.size for e in page.entries}
    assert sizes["z.jp2"] == len("z.jp2") + 10 and sizes["A-folder"] is None
    assert page.total == 6 and page.pages == 1  # the two escaping links: not shown, not counted
    paged = Lister(root, page_size=3)
    assert paged.page("", 1, everyone).pages == 2 and len(paged.page("", 2, everyone).entries) == 3
    assert all(e.path == e.name for e in page.entries)


def test_subfolder_paths_and_refusals(root: Path) -> None:
    page = Lister(root).page("b-folder", 1, everyone)
    assert [e.path for e in page.entries] == ["b-folder/deep", "b-folder/inner.jp2"]
    lister = Lister(root)
    for bad in ("../outside", "b-folder/../../outside", "/etc", "escape-folder", "a\\b",
                "x\x00", "nothere", "z.jp2"):
        with pytest.raises(ListingError):
            lister.page(bad, 1, everyone)
    assert clean_folder("./b-folder//deep/") == "b-folder/deep"


def test_pages(root: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for i in range(250):
        (big / f"img{i:04d}.jp2").write_bytes(b"")
    lister = Lister(big, page_size=100)
    pages = [lister.page("", n, everyone) for n in (1, 2, 3, 99)]
    assert [len(p.entries) for p in pages] == [100, 100, 50, 50]  # past the end: the last page
    assert pages[0].pages == 3 and pages[3].number == 3
    assert pages[1].entries[0].name == "img0100.jp2"


def test_names_are_read_once_per_folder_change_and_stat_per_page(root: Path, tmp_path: Path,
                                                                 monkeypatch) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for i in range(300):
        (big / f"img{i:04d}.jp2").write_bytes(b"")
    scans, stats = [], []
    real_scandir, real_stat = os.scandir, os.stat
    monkeypatch.setattr(listing.os, "scandir", lambda p: scans.append(p) or real_scandir(p))
    monkeypatch.setattr(listing.os, "stat",
                        lambda p, *a, **k: stats.append(p) or real_stat(p, *a, **k))
    lister = Lister(big, page_size=50)
    lister.page("", 1, everyone)
    lister.page("", 4, everyone)
    assert len(scans) == 1
    assert len(stats) <= 2 * (50 + 1)  # the folder itself and the entries of each page
    (big / "new.jp2").write_bytes(b"")
    os.utime(big, ns=(os.stat(big).st_atime_ns, os.stat(big).st_mtime_ns + 10**9))
    assert lister.page("", 1, everyone).total == 301
    assert len(scans) == 2


def test_a_huge_folder_is_listed_in_part(tmp_path: Path) -> None:
    for i in range(30):
        (tmp_path / f"{i}.jp2").write_bytes(b"")
    page = Lister(tmp_path, max_entries=10).page("", 1, everyone)
    assert page.truncated and page.total == 10


DICOM_HEAD = bytes(128) + b"DICM" + b"\x02\x00\x00\x00"  # a preamble, the magic, a tag


def test_dicom_files_are_listed_by_name_or_by_content(tmp_path: Path, monkeypatch) -> None:
    """What the server serves is listed: DICOM named `.dcm`/`.dicom`, and DICOM named by UID
    or without a suffix (sniffed); a file with neither a served name nor DICOM content is not.
    Only files without a known suffix are opened, once per folder change."""
    study = tmp_path / "study1"
    study.mkdir()
    for name in ("ct.dcm", "mr.DICOM", "IM000001", "1.2.840.113619.2.55.3.123"):
        (study / name).write_bytes(DICOM_HEAD)
    (study / "IM000002").write_bytes(b"not dicom" * 40)
    (study / "short").write_bytes(b"DICM")
    (study / "notes.txt").write_bytes(bytes(128) + b"DICX")
    (study / "empty").write_bytes(b"")
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: opened.append(os.path.basename(p))
                        or real_open(p, *a, **k))
    lister = Lister(tmp_path)
    page = lister.page("study1", 1, everyone)
    assert [e.name for e in page.entries] == [
        "1.2.840.113619.2.55.3.123", "ct.dcm", "IM000001", "mr.DICOM"]
    assert page.total == 4 and all(e.size == len(DICOM_HEAD) for e in page.entries)
    assert sorted(opened) == sorted(["1.2.840.113619.2.55.3.123", "IM000001", "IM000002",
                                     "short", "notes.txt", "empty"])
    lister.page("study1", 1, everyone)
    assert len(opened) == 6  # kept with the names until the folder changes


def test_a_link_into_the_root_is_sniffed_one_out_of_it_never(tmp_path: Path,
                                                               monkeypatch) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "IM1").write_bytes(DICOM_HEAD)
    (outside / "IM2").write_bytes(DICOM_HEAD)
    os.symlink(root / "IM1", root / "IM1-link")
    os.symlink(outside / "IM2", root / "IM2-link")
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: opened.append(p)
                        or real_open(p, *a, **k))
    page = Lister(root).page("", 1, everyone)
    assert [e.name for e in page.entries] == ["IM1", "IM1-link"]
    assert not any("outside" in str(p) or "IM2" in str(p) for p in opened)


def test_the_access_hook_filters_before_paging(root: Path) -> None:
    seen = []

    def only_z(path: str) -> bool:
        seen.append(path)
        return path in ("z.jp2", "b-folder/")

    page = Lister(root, page_size=1).page("", 1, only_z)
    assert [e.name for e in page.entries] == ["b-folder"] and page.total == 2
    assert "A-folder/" in seen and "a.J2K" in seen
    with pytest.raises(ListingError) as e:
        Lister(root).page("A-folder", 1, only_z)
    assert e.value.status == 403
