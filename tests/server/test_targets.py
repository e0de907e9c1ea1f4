"""Root confinement: no request names a file outside the image root, whatever it tries."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import unquote

import pytest

from server.targets import TargetError, resolve_target


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """images/ with files, a subfolder, links in and out, and a secret beside the root."""
    (tmp_path / "secret.jp2").write_bytes(b"outside")
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "a.jp2").write_bytes(b"a")
    (images / "sub" / "b.J2K").write_bytes(b"b")
    (images / "notes.txt").write_text("no")
    (images / "folder.jp2").mkdir()
    (images / "%2e%2e%2fx.jp2").write_bytes(b"literal")  # a '%' name is just a name
    os.symlink(tmp_path / "secret.jp2", images / "out.jp2")
    os.symlink("/etc/passwd", images / "passwd.jp2")
    os.symlink(images / "a.jp2", images / "in.jp2")
    os.symlink("sub", images / "dirlink")
    os.symlink(tmp_path, images / "up")
    os.symlink(images / "notes.txt", images / "text.jp2")
    os.symlink(images / "missing.jp2", images / "dangling.jp2")
    part10 = b"\0" * 128 + b"DICM" + b"\x02\x00"  # sniffed only: nothing more is read here
    (images / "ct.dcm").write_bytes(part10)
    (images / "IM0001").write_bytes(part10)
    (images / "1.2.840.113619.2.55.3.604").write_bytes(part10)
    (images / "fake.exe").write_bytes(b"MZ" + b"\0" * 200)
    (images / "fake.dcm").write_bytes(b"\0" * 128 + b"NOPE" + b"\0" * 10)
    (images / "short").write_bytes(b"\0" * 100)
    os.symlink(images / "ct.dcm", images / "ct-link")
    os.symlink(tmp_path / "secret.jp2", images / "out-dicom")
    return images


@pytest.mark.parametrize("target, status", [
    ("../x.jp2", 404),
    ("../secret.jp2", 404),
    ("/etc/passwd", 404),
    (str(Path("/tmp/x.jp2")), 404),
    ("a/../../x.jp2", 404),
    ("sub/../../secret.jp2", 404),
    ("..%2fsecret.jp2", 404),                 # not decoded: no such file
    (unquote("..%2fsecret.jp2"), 404),         # decoded once: '..' component
    ("a.jp2\x00.txt", 404),
    ("a\x00.jp2", 404),
    ("line\nbreak.jp2", 404),
    ("sub\\b.J2K", 404),
    ("..\\secret.jp2", 404),
    ("out.jp2", 404),                         # symlink leaving the root
    ("passwd.jp2", 404),
    ("up/secret.jp2", 404),                   # symlinked folder leaving the root
    ("dangling.jp2", 404),
    ("folder.jp2", 404),                      # a directory
    ("nothere.jp2", 404),
    ("", 404),
    ("/", 404),
    (".", 404),
    ("notes.txt", 415),                       # a file type we do not serve
    ("text.jp2", 415),                        # a .jp2 link to a .txt file
    ("../etc/passwd", 404),
    ("sub", 404),                             # a directory (names without a suffix may be DICOM)
    ("a.jp2.exe", 404),                       # no such file
    ("fake.exe", 415),                        # not JPEG 2000 by name, not DICOM by content
    ("fake.dcm", 415),                        # named DICOM, but no 'DICM' at byte 128
    ("short", 415),                           # shorter than a DICOM preamble
])
def test_hostile_targets_are_refused(root: Path, target: str, status: int,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "jpip.targets")
    with pytest.raises(TargetError) as info:
        resolve_target(root, target)
    assert info.value.status == status
    assert info.value.reason and "\n" not in info.value.reason
    assert any(repr(target) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("target, real", [
    ("a.jp2", "a.jp2"),
    ("sub/b.J2K", "sub/b.J2K"),              # suffixes are case-insensitive
    ("./a.jp2", "a.jp2"),
    ("sub//b.J2K", "sub/b.J2K"),
    ("in.jp2", "a.jp2"),                      # symlink inside the root is fine
    ("dirlink/b.J2K", "sub/b.J2K"),
    ("%2e%2e%2fx.jp2", "%2e%2e%2fx.jp2"),     # a '%' left after decoding is a literal name
    ("ct.dcm", "ct.dcm"),                     # DICOM Part 10 files, by content, whatever name
    ("IM0001", "IM0001"),
    ("1.2.840.113619.2.55.3.604", "1.2.840.113619.2.55.3.604"),
    ("ct-link", "ct.dcm"),
])
def test_files_inside_the_root(root: Path, target: str, real: str) -> None:
    assert resolve_target(root, target) == Path(os.path.realpath(root / real))


def test_root_given_through_a_symlink(root: Path, tmp_path: Path) -> None:
    os.symlink(root, tmp_path / "link-to-images")
    assert resolve_target(tmp_path / "link-to-images", "a.jp2") == Path(
        os.path.realpath(root / "a.jp2"))
    with pytest.raises(TargetError):
        resolve_target(tmp_path / "link-to-images", "out.jp2")


def test_415_names_the_suffix(root: Path) -> None:
    with pytest.raises(TargetError, match="'.txt'"):
        resolve_target(root, "notes.txt")


def test_dicom_links_leaving_the_root_are_refused(root: Path) -> None:
    with pytest.raises(TargetError) as info:
        resolve_target(root, "out-dicom")
    assert info.value.status == 404


def test_415_says_dicom_would_be_served(root: Path) -> None:
    with pytest.raises(TargetError, match="unless they are DICOM Part 10 files"):
        resolve_target(root, "fake.exe")


def test_dicom_sniffing_can_be_turned_off(root: Path) -> None:
    with pytest.raises(TargetError) as info:
        resolve_target(root, "ct.dcm", dicom=False)
    assert info.value.status == 415


def test_allowed_suffixes_can_be_narrowed(root: Path) -> None:
    with pytest.raises(TargetError) as info:
        resolve_target(root, "a.jp2", allowed_suffixes=(".j2k",))
    assert info.value.status == 415
