"""`jpip inspect`: every corpus file is reported (text and JSON) and cross-checked against the
corpus manifest; the browse-efficiency advice fires on the files that break a rule and stays
quiet on a file encoded the recommended way."""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import glymur
import numpy as np
import pytest

from filetools.addplt import add_plt
from filetools.inspect import add_inspect_arguments, format_report, inspect_file, run_inspect
from tests.conftest import CORPUS, corpus_files

FILES = corpus_files()


def _manifest() -> dict[str, dict]:
    return {m["file"]: m for m in json.loads((CORPUS / "manifest.json").read_text())}


MANIFEST = _manifest()
# Built at test time from a manifest file (tests/data/generate.py), so not in the manifest.
NOT_IN_MANIFEST = {"CT1_psot0_noeoc.j2k"}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_inspect_arguments(parser)
    return parser.parse_args(list(argv))


def advice_ids(report: dict) -> set[str]:
    return {item["id"] for item in report["advice"]}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_corpus_file(path: Path) -> None:
    report = inspect_file(path)
    assert report["servable"] and report["index_seconds"] > 0
    again = json.loads(json.dumps(report))  # JSON-ready: plain types only
    assert again == report
    text = format_report(report)
    assert str(path) in text and "verdict" in text
    cs = report["codestreams"][0]
    assert cs["packet_count"] > 0 and cs["precinct_count"] > 0
    assert set(cs["markers"]) == {"PLT", "TLM", "SOP", "EPH", "PPM", "PPT", "POC", "COC", "QCC",
                                  "RGN", "COM", "CAP"}
    if path.name in NOT_IN_MANIFEST:
        return
    m = MANIFEST[path.name]
    # Cross-check with the manifest, read from the files by a separate tool.
    assert report["file_type"] == ("JP2 family" if m["container"] == "JP2" else "raw codestream")
    assert len(report["codestreams"]) == m["codestreams"]
    assert (cs["width"], cs["height"]) == (m["width"], m["height"])
    assert cs["components"]["count"] == m["comps"]
    assert set(cs["components"]["bit_depth"]) == set(m["bits"])
    assert cs["components"]["subsampling"] == m["subsampling"]
    assert (cs["tiles"]["count"], cs["tiles"]["tile_parts"]) == (m["tiles"], m["tileparts"])
    assert [cs["tiles"]["width"], cs["tiles"]["height"]] == m["tile_size"]
    assert cs["progression"] == m["cod"]["prog"]
    assert cs["poc"] == bool(m["poc"])
    if not m["tile_cods"]:
        assert cs["layers"] == m["cod"]["layers"]
    if not m["coc"] and not m["tile_cods"]:
        assert cs["levels"] == m["cod"]["levels"]
        assert cs["coding"][0]["codeblock"] == m["cod"]["cblk"]
        assert cs["coding"][0]["wavelet"].startswith(m["cod"]["wavelet"])
    for name in ("SOP", "EPH"):
        assert cs["markers"][name] == m["cod"][name.lower()]
    for name in ("PLT", "TLM", "PPM", "PPT"):
        seen = name in m["markers_main"] or name in m["tile_markers"]
        assert cs["markers"][name] == seen, name


def test_cli_all_corpus_files(capsys) -> None:
    assert run_inspect(_args(*map(str, FILES))) == 0
    out = capsys.readouterr().out
    assert out.count("verdict") == len(FILES)
    assert run_inspect(_args(*map(str, FILES[:3]), "--json")) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in reports] == list(map(str, FILES[:3]))


def test_unservable_files(tmp_path: Path, capsys) -> None:
    garbage = tmp_path / "garbage.jp2"
    garbage.write_bytes(b"this is not a JPEG 2000 file at all")
    assert run_inspect(_args(str(garbage))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{garbage}: ") and "JPEG 2000" in err
    # A good file next to a bad one: the good one is reported, the status is still 2.
    missing = tmp_path / "missing.j2k"
    assert run_inspect(_args(str(CORPUS / "p0_01.j2k"), str(missing), "--json")) == 2
    captured = capsys.readouterr()
    assert f"{missing}: No such file or directory" in captured.err
    reports = json.loads(captured.out)
    assert reports[0]["servable"] and not reports[1]["servable"]


def test_nemo_advice() -> None:
    """One level, no precincts, LRCP, no PLT: the glymur sample breaks most rules."""
    report = inspect_file(glymur.data.nemo())
    ids = advice_ids(report)
    assert {"levels", "precincts", "progression", "plt"} <= ids
    levels = next(i for i in report["advice"] if i["id"] == "levels")
    assert "use 5 levels (jpip prepare --levels 5)" in levels["advice"]  # 2592 px / 2^5 <= 256
    assert not report["browse_efficient"]


@pytest.mark.parametrize(("name", "expected"), [
    ("p1_05.j2k", {"tiling", "precincts-small", "plt"}),  # 37x37 tiles, 16x16 precincts
    ("p1_02.j2k", {"precincts-large", "progression", "plt"}),  # 8192 precincts at 640x480
    ("p0_10.j2k", {"tiling", "progression", "levels", "plt"}),
    ("2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2", set()),  # RPCL, 128 precincts, PLT
    ("p0_12.j2k", {"progression", "plt"}),  # 3x5 px: no levels or precinct advice
])
def test_advice_rules(name: str, expected: set[str]) -> None:
    assert advice_ids(inspect_file(CORPUS / name)) == expected


def test_plt_advice_gone_after_add_plt(tmp_path: Path) -> None:
    out = tmp_path / "US1_J2KR.j2k"
    add_plt(CORPUS / "US1_J2KR.j2k", out)
    assert "plt" in advice_ids(inspect_file(CORPUS / "US1_J2KR.j2k"))
    report = inspect_file(out)
    assert "plt" not in advice_ids(report)
    assert report["codestreams"][0]["packets_located"] == "PLT"


def test_browse_efficient_file(tmp_path: Path) -> None:
    """1200x900, 5 levels, 256/128 precincts, RPCL, PLT: nothing to advise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:900, 0:1200]
    img = ((x + y) % 256 + rng.integers(0, 16, (900, 1200))).clip(0, 255).astype(np.uint8)
    path = tmp_path / "good.jp2"
    psizes = [(256, 256)] * 2 + [(128, 128)] * 4  # (height, width), highest resolution first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        glymur.Jp2k(str(path), data=img, numres=6, psizes=psizes, prog="RPCL", plt=True)
    report = inspect_file(path)
    assert report["advice"] == [] and report["browse_efficient"]
    cs = report["codestreams"][0]
    assert cs["levels"] == 5 and cs["progression"] == "RPCL" and cs["markers"]["PLT"]
    assert cs["coding"][0]["precincts"] == [[128, 128]] * 4 + [[256, 256]] * 2  # r0 first
    assert "browse-efficient: no advice" in format_report(report)
