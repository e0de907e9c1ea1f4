"""The client's DICOM pieces without a server: reading JPIP-referenced objects (plain and
deflated), where the DICOM JSON of a target is, and a window's dataset (geometry of classic and
enhanced multi-frame objects). Against a real server: tests/e2e/test_dicom_tools.py."""
from __future__ import annotations

import zlib

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from client.dicom import (
    DicomClientError,
    WindowGeometry,
    dicom_json_url,
    reference_dataset,
    referenced_url,
    save_window,
    window_dataset,
)
from client.url import parse_url
from tests.data.dicom import build_jpip_referenced, build_uncompressed

URL = "http://pacs.example:8080/jpip?target=study/ct.dcm"


def test_referenced_object(tmp_path) -> None:
    build_jpip_referenced(tmp_path / "ref.dcm", URL)
    assert referenced_url(tmp_path / "ref.dcm") == URL
    build_jpip_referenced(tmp_path / "ht.dcm", URL, "1.2.840.10008.1.2.4.204")
    assert reference_dataset(tmp_path / "ht.dcm").Rows == 512


def test_deflated_referenced_object(tmp_path) -> None:
    """.95: the dataset after the file meta is deflated (pydicom leaves it to us)."""
    build_jpip_referenced(tmp_path / "plain.dcm", URL, "1.2.840.10008.1.2.4.95")
    data = (tmp_path / "plain.dcm").read_bytes()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = packer.compress(data[meta_end:]) + packer.flush()
    (tmp_path / "deflated.dcm").write_bytes(data[:meta_end] + body)
    assert referenced_url(tmp_path / "deflated.dcm") == URL


@pytest.mark.parametrize("make, words", [
    (lambda p: build_uncompressed(p), ["not a JPIP-referenced one", "serve it"]),
    (lambda p: p.write_bytes(b"not dicom"), ["not a DICOM file"]),
])
def test_not_a_reference(tmp_path, make, words) -> None:
    path = tmp_path / "x.dcm"
    make(path)
    with pytest.raises(DicomClientError) as err:
        referenced_url(path)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("url, json_url", [
    (URL, "http://pacs.example:8080/dicom-json?target=study/ct.dcm"),
    ("http://h/prefix/jpip?target=a%20b.dcm", "http://h/prefix/dicom-json?target=a%20b.dcm"),
    ("http://h:1/study/ct.dcm", "http://h:1/dicom-json?target=study/ct.dcm"),
    # JPIP reads '+' as a plus, /dicom-json (an HTML-form query) as a space: sent as %2B.
    ("http://h/jpip?target=a+b c%2Bd.dcm", "http://h/dicom-json?target=a%2Bb%20c%2Bd.dcm"),
    ("http://h:1/My%20Scans/a+b.dcm", "http://h:1/dicom-json?target=My%20Scans/a%2Bb.dcm"),
])
def test_dicom_json_url(url, json_url) -> None:
    assert dicom_json_url(parse_url(url)) == json_url


def _enhanced(frames: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Enhanced^CT"
    ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = "MONOCHROME2"
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.25]
    measures.SliceThickness = "1"
    shared.PixelMeasuresSequence = Sequence([measures])
    orient = Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orient])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    items = []
    for k in range(frames):
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, float(k)]
        item.PlanePositionSequence = Sequence([pos])
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    return ds


def test_window_of_an_enhanced_frame(tmp_path) -> None:
    source = _enhanced(5)
    pixels = np.arange(12, dtype=np.int16).reshape(3, 4) - 6
    ds = window_dataset(source, [pixels], precision=12, signed=True,
                        geometry=WindowGeometry(discard=2, column=8, row=4, frame=3),
                        lossy=True, description="a window")
    save_window(tmp_path / "w.dcm", ds)
    got = pydicom.dcmread(tmp_path / "w.dcm")
    assert np.array_equal(got.pixel_array, pixels)
    assert (got.Rows, got.Columns, got.NumberOfFrames) == (3, 4, 1)
    assert (got.BitsAllocated, got.BitsStored, got.PixelRepresentation) == (16, 12, 1)
    assert len(got.PerFrameFunctionalGroupsSequence) == 1
    pos = got.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    # frame 3 is at z = 2; the first sample is pixel (8, 4): x = 8 * 0.25, y = 4 * 0.5
    assert [float(v) for v in pos.ImagePositionPatient] == [2.0, 2.0, 2.0]
    spacing = got.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == [2.0, 1.0]
    assert got.LossyImageCompression == "01" and got.DerivationDescription == "a window"
    assert got.SourceImageSequence[0].ReferencedFrameNumber == 3
    assert got.SOPInstanceUID != source.SOPInstanceUID and got.PatientName == "Enhanced^CT"
    assert source.NumberOfFrames == 5 and len(source.PerFrameFunctionalGroupsSequence) == 5


def test_window_without_a_source_is_secondary_capture() -> None:
    rgb = [np.full((2, 3), v, np.uint8) for v in (10, 20, 30)]
    ds = window_dataset(None, rgb, precision=8, signed=False,
                        geometry=WindowGeometry(0, 0, 0, 1), lossy=False, description="w")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.PhotometricInterpretation == "RGB" and ds.PlanarConfiguration == 0
    assert ds.pixel_array.shape == (2, 3, 3) and ds.pixel_array[0, 0].tolist() == [10, 20, 30]
    with pytest.raises(DicomClientError, match="differ in size"):
        window_dataset(None, [np.zeros((2, 2)), np.zeros((1, 1))], precision=8, signed=False,
                       geometry=WindowGeometry(0, 0, 0, 1), lossy=False, description="w")


def test_command_line_refuses_other_files(tmp_path, capsys) -> None:
    from client.cli import main

    (tmp_path / "image.jp2").write_bytes(b"\0\0\0\x0cjP  ")
    build_uncompressed(tmp_path / "plain.dcm")
    assert main(["fetch", str(tmp_path / "image.jp2"), "-o", str(tmp_path / "a.npy")]) == 2
    assert "is a file, not a URL" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "plain.dcm")]) == 2
    assert "not a JPIP-referenced one" in capsys.readouterr().err
