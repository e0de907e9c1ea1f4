"""Which fragments make which frame: offset tables checked against the items, and the rules
used without them. Byte vectors built here, item by item."""
from __future__ import annotations

import json
import logging
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom.errors import DicomError
from dicom.frames import frame_table, locate_codestream, walk_items
from dicom.json_model import file_json
from dicom.source import open_dicom
from tests.conftest import CORPUS
from tests.data.dicom import build_dicom, pixel_items_offset

SOC = b"\xff\x4f\xff\x51\x00\x29"  # SOC, SIZ with Lsiz 41 (one component)
DELIM = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def item(data: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(data)) + data


def pixel_data(bot: list[int] | None, fragments: list[bytes]) -> bytes:
    table = struct.pack(f"<{len(bot)}I", *bot) if bot else b""
    return item(table) + b"".join(item(f) for f in fragments) + DELIM


def frames_of(buf: bytes, frames: int, **kw) -> list[list[int]]:
    """The fragment numbers (0-based) of each frame."""
    t = frame_table(buf, 0, frames, **kw)
    return [list(range(int(a), int(b))) for a, b in zip(t.starts[:-1], t.starts[1:], strict=True)]


A, B, C = SOC + b"a" * 10, b"bb" * 5, SOC + b"c" * 20  # two frame starts, one continuation


def test_items_are_walked() -> None:
    buf = pixel_data([0], [A])
    tags, lengths = walk_items(buf, 0)
    assert tags.tolist() == [0, 12] and lengths.tolist() == [4, len(A)]


def test_one_fragment_per_frame_without_a_table() -> None:
    assert frames_of(pixel_data(None, [A, C, A]), 3) == [[0], [1], [2]]


def test_a_single_frame_takes_every_fragment() -> None:
    assert frames_of(pixel_data(None, [A, B, B]), 1) == [[0, 1, 2]]


def test_frames_start_at_codestream_starts_without_a_table() -> None:
    assert frames_of(pixel_data(None, [A, B, C, B, B]), 2) == [[0, 1], [2, 3, 4]]


def test_the_basic_offset_table_groups_fragments() -> None:
    # The table decides even where a fragment looks like a codestream start.
    bot = [0, 2 * 8 + len(A) + len(C)]
    assert frames_of(pixel_data(bot, [A, C, B]), 2) == [[0, 1], [2]]


def test_the_extended_offset_table() -> None:
    eot = np.array([0, 8 + len(A), 16 + len(A) + len(C)])
    lengths = np.array([len(A), len(C), len(A)])
    got = frames_of(pixel_data(None, [A, C, A]), 3, extended_offsets=eot,
                    extended_lengths=lengths)
    assert got == [[0], [1], [2]]


@pytest.mark.parametrize("bot", [
    [0, 5],                 # not an item start
    [0],                    # one entry for two frames
    [4, 8 + len(A)],        # does not start at 0
    [8 + len(A), 0],        # decreasing
])
def test_a_table_that_does_not_fit_is_ignored_with_a_warning(bot, caplog) -> None:
    caplog.set_level(logging.WARNING, "dicom.frames")
    assert frames_of(pixel_data(bot, [A, B, C]), 2) == [[0, 1], [2]]
    assert "Basic Offset Table" in caplog.text


def test_extended_lengths_longer_than_the_fragments_are_ignored(caplog) -> None:
    eot = np.array([0, 8 + len(A)])
    assert frames_of(pixel_data(None, [A, C]), 2, extended_offsets=eot,
                     extended_lengths=np.array([len(A), len(C) + 2])) == [[0], [1]]
    assert "Extended Offset Table lengths" in caplog.text


def test_bot_offsets_past_4_gib_are_unwrapped() -> None:
    from dicom.frames import _unwrap32

    v = np.array([0, 0xFFFFFF00, 0x10, 0x20], np.uint32)
    assert _unwrap32(v).tolist() == [0, 0xFFFFFF00, (1 << 32) + 0x10, (1 << 32) + 0x20]


@pytest.mark.parametrize("fragments, frames", [
    ([A, B], 3),            # fewer fragments than frames
    ([A, B, B], 2),         # one codestream start for two frames
    ([B, A, C], 2),         # the first fragment does not start a frame
])
def test_unresolvable_groupings_are_refused(fragments, frames) -> None:
    with pytest.raises(DicomError, match="cannot tell which"):
        frame_table(pixel_data(None, fragments), 0, frames)


def test_no_fragments() -> None:
    with pytest.raises(DicomError, match="without fragments"):
        frame_table(pixel_data(None, []), 0, 1)


def test_locating_the_codestream_drops_the_pad_only_after_eoc() -> None:
    buf = SOC + b"xx\xff\xd9\x00" + SOC + b"x\x00"
    runs = np.array([[0, 11]])
    assert locate_codestream(buf, runs) == (0, 10)
    runs = np.array([[11, 8]])  # no EOC: a trailing zero may be data, it stays
    assert locate_codestream(buf, runs) == (0, 8)


def test_locating_the_codestream_of_a_jp2_frame_across_fragments() -> None:
    jp2 = (CORPUS / "MAROTECH_CT_JP2Lossy.jp2").read_bytes()
    buf = b"\0" * 7 + jp2 + b"\0"
    cuts = [7, 7 + 30, 7 + 90, 7 + 4000, len(buf)]
    runs = np.array([[a, b - a] for a, b in zip(cuts, cuts[1:], strict=False)])
    start, length = locate_codestream(buf, runs)
    assert jp2[start:start + 2] == b"\xff\x4f" and start + length == len(jp2)


# --- whatever the bytes, only DicomError escapes (serving and DICOM JSON) ---------------
_BASE = None


def _base(tmp_path_factory) -> bytes:
    global _BASE
    if _BASE is None:
        path = tmp_path_factory.mktemp("fuzz") / "base.dcm"
        small = (CORPUS / "p0_12.j2k").read_bytes()
        build_dicom(path, [[small[:100], small[100:]], [small]], table="bot")
        _BASE = path.read_bytes()
    return _BASE


# The damage lands in values and element headers too: pydicom warns about what it reads there
# (invalid UIDs, over-long strings, a VR it had to guess), which is what such a file deserves,
# not a fault of the test or of our reader.
@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_files_raise_only_dicom_errors(tmp_path_factory, data) -> None:
    base = bytearray(_base(tmp_path_factory))
    items = pixel_items_offset(bytes(base))
    where = data.draw(st.sampled_from(["meta", "dataset", "items", "anywhere", "cut"]))
    lo, hi = {"meta": (128, 300), "dataset": (300, items), "items": (items - 12, len(base)),
              "anywhere": (0, len(base)), "cut": (0, len(base))}[where]
    if where == "cut":
        base = base[:data.draw(st.integers(lo, hi))]
    else:
        for _ in range(data.draw(st.integers(1, 6))):
            at = data.draw(st.integers(lo, hi - 1))
            base[at] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("case") / "x.dcm"
    path.write_bytes(bytes(base))
    try:
        with open_dicom(path) as src:
            for i in range(len(src.codestreams)):
                try:
                    src.codestreams[i]
                except DicomError as e:
                    assert 400 <= e.status < 600 and e.status != 500
    except DicomError as e:
        assert e.status in (415, 422, 501)
    try:
        json.loads(file_json(path))
    except DicomError as e:
        assert e.status == 422
