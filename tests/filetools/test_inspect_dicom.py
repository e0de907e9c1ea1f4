"""`jpip inspect` on DICOM files: transfer syntax, frames, fragments per frame, the offset table,
each frame's codestream (the same report as for JPEG 2000 files) and advice naming frames;
files the server does not serve are reported with the reason and `jpip prepare`."""
from __future__ import annotations

import argparse
import json

import pytest

from codestream.parse import parse_codestream
from filetools.dicom_prepare import prepare_dicom
from filetools.inspect import add_inspect_arguments, format_report, inspect_file, run_inspect
from tests.conftest import CORPUS
from tests.data.dicom import build_native, build_uncompressed, ct_volume


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_inspect_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("name", ["ct_bot.dcm", "ct_eot.dcm", "ct_split_nobot.dcm",
                                  "htj2k.dcm", "jp2_split.dcm", "CT1_EMPTY_BOT"])
def test_served_dicom_files(dicom_root, name) -> None:
    folder, cases = dicom_root
    case = cases[name]
    report = inspect_file(folder / name)
    assert json.loads(json.dumps(report)) == report
    assert report["file_type"] == "DICOM" and report["servable"]
    assert report["transfer_syntax"] == case.syntax
    assert report["frames"] == len(case.files) == len(report["codestreams"])
    frames = case.frames()
    assert report["fragments_per_frame"] == [len(f) for f in frames]
    assert report["offset_table"] == {"bot": "basic", "eot": "extended", "none": "none"}[
        case.table]
    for cs, data in zip(report["codestreams"], case.expected, strict=True):
        siz = parse_codestream(data, 0, len(data)).siz
        assert (cs["width"], cs["height"]) == (siz.width, siz.height)
        assert cs["length"] == len(data)
    text = format_report(report)
    assert f"DICOM, {report['transfer_syntax_name']}" in text
    assert f"frames      {len(frames)} (frame N is codestream N)" in text
    for item in report["advice"]:
        assert item["frames"] == [n + 1 for n in item["codestreams"]]


def test_advice_names_frames(dicom_root) -> None:
    folder, _ = dicom_root
    report = inspect_file(folder / "ct_bot.dcm")  # CT1, 693_J2KR and TOSHIBA: no PLT
    plt = next(item for item in report["advice"] if item["id"] == "plt")
    assert plt["frames"] == [1, 2, 3]
    assert "[frame 1-3]" in format_report(report)


def test_prepared_object_is_browse_efficient(tmp_path) -> None:
    build_native(tmp_path / "raw.dcm", ct_volume(4, rows=300, columns=400), bits_stored=12)
    prepare_dicom(tmp_path / "raw.dcm", tmp_path / "ct.dcm", lossless=True)
    report = inspect_file(tmp_path / "ct.dcm")
    assert report["browse_efficient"], report["advice"]
    assert report["fragments_per_frame"] == [1, 1, 1, 1]
    assert all(cs["progression"] == "RPCL" and cs["markers"]["PLT"] and cs["markers"]["TLM"]
               for cs in report["codestreams"])
    text = format_report(report)
    assert "frames 1-4 (coded alike)" in text and "browse-efficient: no advice" in text


def test_unserved_dicom_is_explained(tmp_path, capsys) -> None:
    build_uncompressed(tmp_path / "plain.dcm")
    code = run_inspect(_args(str(tmp_path / "plain.dcm"), str(CORPUS / "p0_01.j2k"), "--json"))
    assert code == 2
    reports = json.loads(capsys.readouterr().out)
    assert not reports[0]["servable"] and "jpip prepare" in reports[0]["error"]
    assert "Explicit VR Little Endian" in reports[0]["error"] and reports[1]["servable"]


def test_frames_coded_differently_are_listed_apart(dicom_root) -> None:
    folder, _ = dicom_root
    text = format_report(inspect_file(folder / "odd_whole.dcm"))
    for n in (1, 2, 3):
        assert f"  frame {n} (" in text
