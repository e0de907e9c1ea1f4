"""`jpip dicom-ref`: the JPIP-referenced object of a served DICOM file (dataset kept, no pixels,
.94 or .204) or of a JPEG 2000 file (Secondary Capture from the codestream); what cannot be
referenced is refused with the reason. (Fetching through such an object against a real server:
tests/e2e/test_dicom_tools.py.)"""
from __future__ import annotations

import pydicom
import pytest

from client.cli import main as jpip_main
from filetools.dicom_prepare import prepare_dicom
from filetools.dicomref import DicomRefError, dicom_ref, provider_url
from tests.conftest import CORPUS
from tests.data.dicom import build_dicom, build_native, codestream_of, ct_volume, rgb_frames

BASE = "http://archive.example:8080/jpip"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref-inputs")
    build_native(d / "ct-raw.dcm", ct_volume(3), bits_stored=12)
    prepare_dicom(d / "ct-raw.dcm", d / "ct.dcm", lossless=True)
    prepare_dicom(d / "ct-raw.dcm", d / "ct-ht.dcm", lossless=True, htj2k=True)
    build_native(d / "rgb-raw.dcm", rgb_frames(2))
    build_dicom(d / "rgb-plain.dcm", [[(CORPUS / "p0_01.j2k").read_bytes()]],
                extra={"PhotometricInterpretation": "RGB"})
    return d


def test_served_dicom_keeps_its_dataset(prepared, tmp_path) -> None:
    out = tmp_path / "ref.dcm"
    report = dicom_ref(prepared / "ct.dcm", out, url=BASE, root=prepared.parent)
    src, ref = pydicom.dcmread(prepared / "ct.dcm"), pydicom.dcmread(out)
    assert ref.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.94"
    assert "PixelData" not in ref and "ExtendedOffsetTable" not in ref
    assert ref.PixelDataProviderURL == f"{BASE}?target={prepared.name}/ct.dcm" == report.url
    assert ref["PixelDataProviderURL"].VR == "UR"
    for elem in src:
        if elem.tag != 0x7FE00010:
            assert ref[elem.tag].value == elem.value, elem.keyword
    assert ref.SOPInstanceUID == src.SOPInstanceUID  # the same instance, another syntax
    assert report.frames == 3 and "stream=N" in report.summary()
    ht = dicom_ref(prepared / "ct-ht.dcm", tmp_path / "ht.dcm", url=BASE, target="a/b c.dcm")
    assert pydicom.dcmread(tmp_path / "ht.dcm").file_meta.TransferSyntaxUID == \
        "1.2.840.10008.1.2.4.204"
    assert ht.url == f"{BASE}?target=a/b%20c.dcm"


@pytest.mark.parametrize("name, syntax, pi, bits, signed", [
    ("CT1.j2k", "1.2.840.10008.1.2.4.94", "MONOCHROME2", 16, 1),
    ("file1.jp2", "1.2.840.10008.1.2.4.94", "YBR_RCT", 8, 0),
    ("HTJ2KLossless_08_RGB.j2k", "1.2.840.10008.1.2.4.204", "YBR_RCT", 8, 0),
])
def test_jpeg2000_file_becomes_secondary_capture(tmp_path, name, syntax, pi, bits, signed) -> None:
    out = tmp_path / "sc.dcm"
    dicom_ref(CORPUS / name, out, url=f"{BASE}?target=corpus/{name}")
    ds = pydicom.dcmread(out)
    data = (CORPUS / name).read_bytes()
    from codestream.parse import parse_codestream
    cs = codestream_of(data)
    siz = parse_codestream(cs, 0, len(cs)).siz
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert (ds.Rows, ds.Columns) == (siz.height, siz.width)
    assert ds.PhotometricInterpretation == pi and ds.SamplesPerPixel == siz.num_components
    assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (
        bits, siz.components[0].precision, signed)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.PatientName == ""
    assert ds.PixelDataProviderURL == f"{BASE}?target=corpus/{name}"


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "ct-raw.dcm", ["Explicit VR Little Endian", "jpip prepare"]),
    (lambda d: d / "rgb-plain.dcm", ["RGB", "jpip prepare", "YBR_RCT"]),
    (lambda d: CORPUS / "heliov.jpx", ["3 codestreams", "stream=N"]),
    (lambda d: CORPUS / "rgb_trns_ycbc.jp2", ["4 components"]),
    (lambda d: CORPUS / "MANIFEST.md", ["not a JPEG 2000 file"]),
])
def test_refusals(prepared, tmp_path, make, words) -> None:
    with pytest.raises(DicomRefError) as err:
        dicom_ref(make(prepared), tmp_path / "x.dcm", url=BASE, target="x")
    for w in words:
        assert w in str(err.value)
    assert not (tmp_path / "x.dcm").exists()


@pytest.mark.parametrize("url, target, result", [
    (BASE, "a.dcm", f"{BASE}?target=a.dcm"),
    (f"{BASE}?target=x/y.dcm", None, f"{BASE}?target=x/y.dcm"),
    ("https://h/p/jpip", "dir/é.dcm", "https://h/p/jpip?target=dir/%C3%A9.dcm"),
    ("ftp://h/jpip", "a", "HTTP or HTTPS"),
    (f"{BASE}?target=a&fsiz=64,64", None, "fsiz"),
    (f"{BASE}?target=a", "b", "give one of them"),
    (BASE, None, "--target"),
])
def test_provider_url(url, target, result) -> None:
    if result.startswith("http"):
        assert provider_url(url, target) == result
    else:
        with pytest.raises(DicomRefError, match=result.replace("?", r"\?")):
            provider_url(url, target)


def test_command_line(prepared, tmp_path, capsys) -> None:
    out = tmp_path / "cli.dcm"
    assert jpip_main(["dicom-ref", str(prepared / "ct.dcm"), str(out), "--url", BASE]) == 0
    assert f"{BASE}?target=ct.dcm" in capsys.readouterr().out
    assert jpip_main(["dicom-ref", str(prepared / "ct-raw.dcm"), str(out), "--url", BASE]) == 1
    assert "jpip prepare" in capsys.readouterr().err
    assert jpip_main(["dicom-ref", str(prepared / "ct.dcm"), str(out), "--url", BASE,
                      "--root", str(tmp_path)]) == 1
    assert "is not under the root" in capsys.readouterr().err
