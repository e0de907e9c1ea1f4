"""Damaged files through the real app (see corrupt_served.py for what each outcome means).

`make test` serves a seeded sample of the variants of every corpus file and of two DICOM
objects; `make soak` and `make corrupt-sweep` serve all of them (python -m tests.reliability
corrupt).
"""
from __future__ import annotations

import shutil
import struct

import aiohttp
import pytest

from jpip.jpp import EOR, EndOfResponse, parse_stream
from tests.conftest import CORPUS
from tests.reliability.corrupt_served import (
    dicom_cases,
    jpeg2000_cases,
    summary,
    sweep,
)
from tests.reliability.harness import running_app

PER_FILE = 5         # variants of each corpus file in `make test` (all of them in `make soak`)
PER_DICOM_FILE = 12
# Guards against a sweep that passes by accident (everything refused, or nothing compared).
MIN_EXACT = 0.15
MIN_REFUSED = 0.3


def _check(outcomes, log) -> None:
    print(summary(outcomes))
    failures = [str(o) for o in outcomes if not o.accepted]
    assert not failures, "\n".join(failures[:20])
    assert not log.errors(), "\n".join(log.errors()[:5])
    exact = sum(o.outcome == "exact" for o in outcomes)
    refused = sum(o.outcome == "refused" for o in outcomes)
    assert exact >= MIN_EXACT * len(outcomes), summary(outcomes)
    assert refused >= MIN_REFUSED * len(outcomes), summary(outcomes)


async def test_damaged_corpus_files_are_served_exactly_or_refused(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    cases = jpeg2000_cases(per_file=PER_FILE)
    async with running_app(root, index_cache_dir=tmp_path / "ix") as app:
        outcomes = await sweep(app.url, root, cases)
        # The same app still serves an intact file afterwards: nothing took it down.
        shutil.copy(CORPUS / "p0_01.j2k", root / "intact.j2k")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{app.url}/jpip?target=intact.j2k&fsiz=64,64") as r:
                assert r.status == 200
                stream = parse_stream(await r.read())
                assert stream[-1] == EndOfResponse(EOR.WINDOW_DONE)
        _check(outcomes, app.log)


# The damage lands in element values too: pydicom warns about the invalid values it reads
# there (e.g. a transfer syntax UID with a flipped byte); what is checked is the answer.
@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
async def test_damaged_dicom_objects_are_served_exactly_or_refused(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    cases = dicom_cases(tmp_path, per_file=PER_DICOM_FILE)
    async with running_app(root, index_cache_dir=tmp_path / "ix") as app:
        _check(await sweep(app.url, root, cases), app.log)


# --------------------------------------------------------------------------- statuses
P0_01 = (CORPUS / "p0_01.j2k").read_bytes()


def _siz(**values: int) -> bytes:
    """p0_01 (SIZ at offset 2) with SIZ fields replaced."""
    names = ["xsiz", "ysiz", "xosiz", "yosiz", "xtsiz", "ytsiz", "xtosiz", "ytosiz"]
    out = bytearray(P0_01)
    for k, v in values.items():
        struct.pack_into(">I", out, 8 + 4 * names.index(k), v)
    return bytes(out)


def _wavelet(value: int, rsiz: int = 0) -> bytes:
    """p0_01 with COD's wavelet byte and Rsiz replaced."""
    out = bytearray(P0_01)
    cod = P0_01.index(b"\xff\x52")
    out[cod + 13] = value  # FF52 Lcod Scod SGcod(4) SPcod: levels, xcb, ycb, style, wavelet
    struct.pack_into(">H", out, 6, rsiz)
    return bytes(out)


@pytest.mark.parametrize("what,data,status,words", [
    ("2^20 tiles", _siz(xsiz=1 << 20, ysiz=1 << 20, xtsiz=1024, ytsiz=1024), 422, "tiles"),
    ("2^32 tiles", _siz(xsiz=2**32 - 1, ysiz=2**32 - 1, xtsiz=65536, ytsiz=65536), 422, "tiles"),
    ("65535 tiles, one tile-part", _siz(xsiz=255, ysiz=257, xtsiz=1, ytsiz=1), 422, "tiles"),
    ("reserved wavelet", _wavelet(7), 422, "reserved"),
    ("Part 2 wavelet", _wavelet(7, rsiz=0x8000), 501, "Part 2"),
    ("empty", b"", 415, "JPEG 2000"),
    ("text", b"hello, this is not an image\n" * 4, 415, "JPEG 2000"),
    ("cut SIZ", P0_01[:20], 422, "SIZ"),
])
async def test_a_file_is_refused_with_the_status_its_fault_deserves(tmp_path, what, data, status,
                                                                    words) -> None:
    """415: not JPEG 2000 at all; 422: a damaged or malformed one (a SIZ claiming millions of
    tiles is malformed, not a feature we lack); 501: a valid file using a feature not served."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.j2k").write_bytes(data)
    async with running_app(root, index_cache_dir=tmp_path / "ix") as app:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{app.url}/jpip?target=f.j2k&fsiz=64,64") as r:
                text = await r.text()
                assert r.status == status, (what, r.status, text)
                assert words in text and text.count("\n") == 1, text
        assert not app.log.errors()
