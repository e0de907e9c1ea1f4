"""Reading DICOM Part 10 files up to their pixels: what is served, and clear errors otherwise."""
from __future__ import annotations

import pytest

from dicom.errors import DicomError
from dicom.part10 import is_part10, read_header
from dicom.source import open_dicom
from tests.conftest import CORPUS
from tests.data.dicom import (
    build_dicom,
    build_explicit_length,
    build_jpip_referenced,
    build_uncompressed,
    pixel_items_offset,
)

CT1 = (CORPUS / "CT1.j2k").read_bytes()


def test_sniffing() -> None:
    assert is_part10(b"\0" * 128 + b"DICM")
    assert is_part10(b"II*\0" + b"\0" * 124 + b"DICM\x02\x00")  # a TIFF-DICOM dual preamble
    assert not is_part10(b"\0" * 128 + b"DICN")
    assert not is_part10(b"\0" * 131)
    assert not is_part10(CT1[:200])


def test_header_of_a_multiframe_object(tmp_path) -> None:
    path = tmp_path / "x.dcm"
    build_dicom(path, [[CT1], [CT1], [CT1]], table="eot")
    h = read_header(path)
    assert h.transfer_syntax == "1.2.840.10008.1.2.4.91" and h.number_of_frames == 3
    data = path.read_bytes()
    assert h.items_offset == pixel_items_offset(data) and h.pixel_data_offset == h.items_offset - 12
    assert h.extended_offsets.tolist() == [0, len(CT1) + 8, 2 * (len(CT1) + 8)]
    assert h.extended_lengths.tolist() == [len(CT1)] * 3
    assert h.dataset.Rows == 512 and "PixelData" not in h.dataset


@pytest.mark.parametrize("syntax, words", [
    ("1.2.840.10008.1.2.1", ["Explicit VR Little Endian", "jpip prepare"]),
    ("1.2.840.10008.1.2.4.50", ["JPEG Baseline", "jpip prepare"]),
    ("1.2.840.10008.1.2.4.80", ["JPEG-LS", "jpip prepare"]),
    ("1.2.840.10008.1.2.5", ["RLE Lossless", "jpip prepare"]),
    ("1.2.840.10008.1.2.4.92", ["multi-component", "one codestream", "jpip prepare"]),
    ("1.2.840.10008.1.2.4.93", ["multi-component", "jpip prepare"]),
])
def test_other_transfer_syntaxes_are_415_and_point_at_prepare(tmp_path, syntax, words) -> None:
    path = tmp_path / "x.dcm"
    build_dicom(path, [[CT1]], transfer_syntax=syntax)
    with pytest.raises(DicomError) as info:
        read_header(path)
    assert info.value.status == 415
    for w in words:
        assert w in info.value.reason
    assert syntax in info.value.reason


def test_uncompressed_object(tmp_path) -> None:
    path = tmp_path / "plain.dcm"
    build_uncompressed(path)
    with pytest.raises(DicomError, match="not JPEG 2000 or HTJ2K.*jpip prepare") as info:
        open_dicom(path)
    assert info.value.status == 415


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.204"])
def test_jpip_referenced_objects_name_their_url(tmp_path, syntax) -> None:
    path = tmp_path / "ref.dcm"
    url = "http://archive.example/jpip?target=ct1.dcm"
    build_jpip_referenced(path, url, syntax)
    with pytest.raises(DicomError) as info:
        read_header(path)
    assert info.value.status == 415
    assert "JPIP-referenced" in info.value.reason and url in info.value.reason


def _corrupt(tmp_path, edit) -> DicomError:
    path = tmp_path / "bad.dcm"
    build_dicom(path, [[CT1], [CT1]])
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(edit(data)))
    with pytest.raises(DicomError) as info:
        open_dicom(path)
    assert info.value.status == 422, info.value.reason
    assert "\n" not in info.value.reason
    return info.value


def test_truncated_in_the_pixel_data(tmp_path) -> None:
    err = _corrupt(tmp_path, lambda d: d[:len(d) - 5000])
    assert "truncated" in err.reason


def test_truncated_in_the_dataset(tmp_path) -> None:
    err = _corrupt(tmp_path, lambda d: d[:300])
    assert "DICOM" in err.reason or "Pixel Data" in err.reason


def test_truncated_before_the_items(tmp_path) -> None:
    _corrupt(tmp_path, lambda d: d[:pixel_items_offset(bytes(d)) - 2])


def test_missing_delimiter(tmp_path) -> None:
    _corrupt(tmp_path, lambda d: d[:-8])


def test_a_bad_item_tag(tmp_path) -> None:
    def edit(d):
        at = pixel_items_offset(bytes(d)) + 8 + 8  # BOT (8 bytes of offsets) then item 1
        d[at:at + 4] = b"\x10\x00\x10\x00"
        return d
    err = _corrupt(tmp_path, edit)
    assert "expected a Pixel Data item" in err.reason


def test_an_item_longer_than_the_file(tmp_path) -> None:
    def edit(d):
        at = pixel_items_offset(bytes(d)) + 16
        d[at + 4:at + 8] = b"\xf0\xff\xff\x7f"
        return d
    assert "claims" in _corrupt(tmp_path, edit).reason


def test_explicit_length_pixel_data(tmp_path) -> None:
    path = tmp_path / "explicit.dcm"
    build_explicit_length(path, CT1)
    with pytest.raises(DicomError, match="defined length") as info:
        read_header(path)
    assert info.value.status == 422


def test_not_dicom(tmp_path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(CT1)
    with pytest.raises(DicomError, match="not a DICOM Part 10 file"):
        read_header(path)


def test_garbage_after_the_magic(tmp_path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    with pytest.raises(DicomError) as info:
        read_header(path)
    assert info.value.status == 422


def test_a_corrupt_frame_fails_alone(tmp_path) -> None:
    path = tmp_path / "x.dcm"
    broken = CT1[:4] + b"\x00\x01" + CT1[6:]  # Lsiz = 1
    build_dicom(path, [[CT1], [broken]])
    with open_dicom(path) as src:
        assert src.codestreams[0].siz.width == 512
        for _ in range(2):  # the failure is remembered, not retried
            with pytest.raises(DicomError, match="frame 2") as info:
                src.codestreams[1]
            assert info.value.status == 422
        assert src.complete and src.unindexed() == []


def test_a_frame_that_is_not_jpeg2000(tmp_path) -> None:
    path = tmp_path / "x.dcm"
    build_dicom(path, [[CT1], [b"\xff\xd8\xff\xe0" + b"\0" * 100]], table="bot")
    with open_dicom(path) as src, pytest.raises(DicomError, match="neither a JPEG 2000") as info:
        src.codestreams[1]
    assert info.value.status == 422


def test_a_large_extended_offset_table_is_read_deferred(tmp_path, caplog) -> None:
    """9000 frames: the EOT (72 kB) is over the size pydicom defers; it is read when used."""
    small = (CORPUS / "p0_12.j2k").read_bytes()
    path = tmp_path / "many.dcm"
    build_dicom(path, [[small]] * 9000, table="eot")
    h = read_header(path)
    assert len(h.extended_offsets) == 9000 and h.extended_offsets[-1] == 8999 * 294
    with open_dicom(path) as src:
        assert len(src.codestreams) == 9000 and src.codestreams[8999].siz.width == 3
    assert "ignored" not in caplog.text and "instead" not in caplog.text
