"""`jpip prepare IN.dcm OUT.dcm`: DICOM objects made by the tests (an uncompressed CT-like signed
12-bit multi-frame object, 8-bit RGB, RLE, JPEG 2000 LRCP, JPEG baseline) re-encoded; pydicom
decodes OUT to exactly IN's pixels when lossless; every frame is a browse-efficient codestream
(RPCL, precincts, levels, PLT, TLM) that OpenJPEG decodes to the input frame; attributes kept
except those the encoding changes; refusals say why."""
from __future__ import annotations

import argparse
import io
import mmap
import struct

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid

from client.cli import main as jpip_main
from codestream.parse import parse_codestream, tile_coding
from dicom.frames import frame_table
from dicom.part10 import read_header
from filetools import frame_encode
from filetools.dicom_prepare import DicomPrepareError, prepare_dicom
from filetools.prepare import add_prepare_arguments, run_prepare
from tests.data.dicom import (
    build_jpip_referenced,
    build_native,
    ct_volume,
    encapsulate,
    frame_codestreams,
    rgb_frames,
)
from tests.oracle import decode_codestream

# Attributes a re-encoding may change (PS3.5 8.2.4, PS3.3 C.7.6.1.1.5); all others are kept.
CHANGED = {"SOPInstanceUID", "PhotometricInterpretation", "PlanarConfiguration", "BitsAllocated",
           "BitsStored", "HighBit", "PixelRepresentation", "PixelData", "LossyImageCompression",
           "LossyImageCompressionRatio", "LossyImageCompressionMethod", "ImageType",
           "DerivationDescription", "SourceImageSequence"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dicom-inputs")
    ct = ct_volume(5)
    build_native(d / "ct.dcm", ct, bits_stored=12)
    rgb = rgb_frames(3)
    build_native(d / "rgb.dcm", rgb, planar=1)  # colour-by-plane in, colour-by-pixel out
    return d, {"ct.dcm": ct, "rgb.dcm": rgb}


def frames_of(path) -> list[bytes]:
    """Each frame's codestream; every frame is one fragment."""
    header = read_header(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        table = frame_table(mm, header.items_offset, header.number_of_frames,
                            extended_offsets=header.extended_offsets,
                            extended_lengths=header.extended_lengths)
        assert (table.fragments_per_frame() == 1).all()
    return frame_codestreams(path)


def kept(a: Dataset, b: Dataset) -> None:
    for elem in a:
        if elem.keyword in CHANGED:
            continue
        assert elem.tag in b and b[elem.tag].value == elem.value, elem.keyword


@pytest.mark.parametrize("htj2k", [False, True], ids=["j2k", "htj2k"])
@pytest.mark.parametrize("name", ["ct.dcm", "rgb.dcm"])
def test_lossless_round_trip_is_exact(inputs, tmp_path, name, htj2k) -> None:
    folder, pixels = inputs
    out = tmp_path / "out.dcm"
    report = prepare_dicom(folder / name, out, lossless=True, htj2k=htj2k)
    src, got = pydicom.dcmread(folder / name), pydicom.dcmread(out)
    assert np.array_equal(got.pixel_array, src.pixel_array)
    assert np.array_equal(got.pixel_array, pixels[name])
    want_ts = "1.2.840.10008.1.2.4.202" if htj2k else "1.2.840.10008.1.2.4.90"
    assert got.file_meta.TransferSyntaxUID == want_ts
    assert got.SOPInstanceUID != src.SOPInstanceUID
    assert got.file_meta.MediaStorageSOPInstanceUID == got.SOPInstanceUID
    kept(src, got)
    colour = name == "rgb.dcm"
    assert got.PhotometricInterpretation == ("YBR_RCT" if colour else "MONOCHROME2")
    assert "LossyImageCompression" not in got and got.ImageType == src.ImageType
    if colour:
        assert got.PlanarConfiguration == 0
    else:
        assert (got.BitsStored, got.BitsAllocated, got.PixelRepresentation) == (12, 16, 1)
    assert report.frames == len(pixels[name]) and report.offset_table == "basic"
    for i, cs in enumerate(frames_of(out)):
        # OpenJPEG decodes each frame to the input frame, and the frame browses well.
        arrays = decode_codestream(cs)
        frame = pixels[name][i]
        assert np.array_equal(np.stack(arrays, -1) if colour else arrays[0], frame)
        layout = parse_codestream(cs, 0, len(cs))
        cod, styles = tile_coding(layout, 0)
        assert cod.progression == 2 and cod.mct == int(colour)  # RPCL; RCT for colour
        assert styles[0].reversible and styles[0].levels >= 5
        assert [1 << p[0] for p in styles[0].precincts][-2:] == [256, 256]
        assert (1 << styles[0].precincts[0][0]) == 128
        assert {"PLT", "TLM"} <= layout.markers_seen
        assert any(st.is_ht for st in styles) == htj2k


@pytest.mark.parametrize("htj2k", [False, True], ids=["j2k", "htj2k"])
def test_lossy_records_the_compression(inputs, tmp_path, htj2k) -> None:
    folder, pixels = inputs
    out = tmp_path / "lossy.dcm"
    report = prepare_dicom(folder / "rgb.dcm", out, htj2k=htj2k)
    src, got = pydicom.dcmread(folder / "rgb.dcm"), pydicom.dcmread(out)
    assert got.file_meta.TransferSyntaxUID == ("1.2.840.10008.1.2.4.203" if htj2k
                                               else "1.2.840.10008.1.2.4.91")
    assert got.PhotometricInterpretation == "YBR_ICT"
    assert got.LossyImageCompression == "01"
    assert got.LossyImageCompressionMethod == ("ISO_15444_15" if htj2k else "ISO_15444_1")
    assert float(got.LossyImageCompressionRatio) == pytest.approx(report.ratio, rel=1e-3)
    assert got.ImageType[0] == "DERIVED" and "compression ratio" in got.DerivationDescription
    ref = got.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
    kept(src, got)
    error = np.abs(got.pixel_array.astype(int) - pixels["rgb.dcm"].astype(int))
    assert error.mean() < 3  # lossy, but close


def test_extended_offset_table(inputs, tmp_path) -> None:
    folder, pixels = inputs
    out = tmp_path / "eot.dcm"
    report = prepare_dicom(folder / "ct.dcm", out, lossless=True, offset_table="extended")
    assert report.offset_table == "extended"
    ds = pydicom.dcmread(out)
    offsets = struct.unpack(f"<{len(pixels['ct.dcm'])}Q", ds.ExtendedOffsetTable)
    assert offsets[0] == 0 and list(offsets) == sorted(offsets)
    assert np.array_equal(ds.pixel_array, pixels["ct.dcm"])
    header = read_header(out)
    assert header.extended_offsets is not None and len(frames_of(out)) == 5


def _encapsulated(path, frames: list[bytes], syntax: str, like: Dataset) -> None:
    ds = like.copy()
    value, _, _ = encapsulate([[f] for f in frames])
    ds.PixelData = value
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def test_compressed_inputs(inputs, tmp_path) -> None:
    """RLE, JPEG 2000 LRCP (pydicom's own encoder) and JPEG baseline inputs."""
    folder, pixels = inputs
    for name, syntax in (("rle.dcm", "1.2.840.10008.1.2.5"),
                         ("lrcp.dcm", "1.2.840.10008.1.2.4.90")):
        ds = pydicom.dcmread(folder / "ct.dcm")
        ds.compress(syntax, generate_instance_uid=False)
        ds.save_as(tmp_path / name, enforce_file_format=True)
    for name in ("rle.dcm", "lrcp.dcm"):
        out = tmp_path / f"out-{name}"
        prepare_dicom(tmp_path / name, out, lossless=True)
        assert np.array_equal(pydicom.dcmread(out).pixel_array, pixels["ct.dcm"]), name
        layout = parse_codestream(frames_of(out)[0], 0, len(frames_of(out)[0]))
        assert tile_coding(layout, 0)[0].progression == 2  # LRCP in, RPCL out
    # JPEG baseline (lossy, YBR_FULL_422): decoded to RGB, the output stays marked lossy.
    rgb = pydicom.dcmread(folder / "rgb.dcm")
    rgb.PhotometricInterpretation = "YBR_FULL_422"
    rgb.PlanarConfiguration = 0
    jpegs = []
    for frame in pixels["rgb.dcm"]:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    _encapsulated(tmp_path / "jpeg.dcm", jpegs, "1.2.840.10008.1.2.4.50", rgb)
    out = tmp_path / "out-jpeg.dcm"
    report = prepare_dicom(tmp_path / "jpeg.dcm", out, lossless=True)
    got = pydicom.dcmread(out)
    assert np.array_equal(got.pixel_array, pydicom.dcmread(tmp_path / "jpeg.dcm").pixel_array)
    assert got.PhotometricInterpretation == "YBR_RCT" and got.LossyImageCompression == "01"
    assert any("lossy" in n for n in report.notes)


def test_refusals(inputs, tmp_path, monkeypatch) -> None:
    folder, _ = inputs
    build_jpip_referenced(tmp_path / "ref.dcm", "http://x/jpip?target=a.dcm")
    with pytest.raises(DicomPrepareError, match="JPIP-referenced.*http://x/jpip"):
        prepare_dicom(tmp_path / "ref.dcm", tmp_path / "o.dcm")
    with pytest.raises(DicomPrepareError, match="overwrite"):
        prepare_dicom(folder / "ct.dcm", folder / "ct.dcm")
    seg = np.zeros((2, 8, 8), np.uint8)
    ds = build_native(tmp_path / "seg.dcm", seg)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = np.packbits(seg.ravel(), bitorder="little").tobytes()
    ds.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    with pytest.raises(DicomPrepareError, match="1-bit"):
        prepare_dicom(tmp_path / "seg.dcm", tmp_path / "o.dcm")
    # Without OpenJPH's encoder, --htj2k refuses before decoding anything.
    real = frame_encode.shutil.which
    monkeypatch.setattr(frame_encode.shutil, "which",
                        lambda name: None if name == "ojph_compress" else real(name))
    with pytest.raises(frame_encode.EncoderMissing, match="openjph-tools"):
        prepare_dicom(folder / "ct.dcm", tmp_path / "o.dcm", htj2k=True)
    assert not (tmp_path / "o.dcm").exists()


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    return parser.parse_args(list(argv))


def test_command_line(inputs, tmp_path, capsys) -> None:
    folder, pixels = inputs
    out = tmp_path / "cli.dcm"
    assert jpip_main(["prepare", str(folder / "ct.dcm"), str(out), "--lossless", "--htj2k"]) == 0
    text = capsys.readouterr().out
    assert "HTJ2K Lossless RPCL (1.2.840.10008.1.2.4.202)" in text and "5 of 128x96" in text
    assert np.array_equal(pydicom.dcmread(out).pixel_array, pixels["ct.dcm"])
    assert run_prepare(_args(str(folder / "ct.dcm"), str(out), "--levels", "3")) == 2
    assert "--levels: not for DICOM inputs" in capsys.readouterr().err
    np.save(tmp_path / "a.npy", np.zeros((8, 8), np.uint8))
    assert run_prepare(_args(str(tmp_path / "a.npy"), str(tmp_path / "a.jp2"), "--htj2k")) == 2
    assert "--htj2k is for DICOM inputs" in capsys.readouterr().err
    assert run_prepare(_args(str(folder / "ct.dcm"), str(tmp_path / "no" / "x.dcm"))) == 2
    assert "does not exist" in capsys.readouterr().err


def test_uid_is_new_each_time(inputs, tmp_path) -> None:
    folder, _ = inputs
    a = prepare_dicom(folder / "ct.dcm", tmp_path / "a.dcm", lossless=True)
    b = prepare_dicom(folder / "ct.dcm", tmp_path / "b.dcm", lossless=True)
    assert a.sop_instance_uid != b.sop_instance_uid
    assert generate_uid()  # pydicom's root is used, as by pydicom's own compress()


@pytest.mark.parametrize("name", ["ct.jp2", "ct.j2k", "ct.jph", "ct.png"])
def test_a_dicom_input_is_not_written_under_another_name(inputs, tmp_path, capsys,
                                                         name) -> None:
    # A DICOM file named .jp2 is a file no JPEG 2000 reader opens: refused, nothing written.
    folder, _ = inputs
    out = tmp_path / name
    assert jpip_main(["prepare", str(folder / "ct.dcm"), str(out), "--lossless"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: a DICOM input is re-encoded into a DICOM file: " \
        "name the output .dcm" in err, err
    assert not out.exists()


def test_a_lossless_input_made_lossy_is_warned_of(inputs, tmp_path, capsys) -> None:
    folder, _ = inputs
    assert jpip_main(["prepare", str(folder / "ct.dcm"), str(tmp_path / "lossy.dcm")]) == 0
    err = capsys.readouterr().err
    assert err == (f"jpip prepare: warning: {folder / 'ct.dcm'} is lossless and is re-encoded "
                   "lossy (9/7): add --lossless to keep every sample\n"), err
    assert jpip_main(["prepare", str(folder / "ct.dcm"), str(tmp_path / "same.dcm"),
                      "--lossless"]) == 0
    assert capsys.readouterr().err == ""
    # An input that was lossy already: nothing more to lose, no warning.
    assert jpip_main(["prepare", str(tmp_path / "lossy.dcm"), str(tmp_path / "again.dcm")]) == 0
    assert capsys.readouterr().err == ""
