"""End to end, the tools and the client with DICOM: objects made by `jpip prepare` from
uncompressed CT-like (signed 12-bit) and RGB multi-frame objects are served by the real app;
every frame's windows rebuilt by the client decode exactly as OpenJPEG decodes that frame's
codestream (and, lossless, give back the input pixels); `jpip dicom-ref` objects are read by
pydicom and used by `jpip fetch`; `--stream` on DICOM and JPX targets; windows saved as DICOM
read back by pydicom with their geometry adjusted."""
from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pydicom
import pytest

from client.api import JPIPClient
from client.cli import main as jpip_main
from codestream.boxes import read_layout
from codestream.parse import parse_codestream
from filetools.dicom_prepare import prepare_dicom
from filetools.dicomref import dicom_ref
from jpip.window import frame_size
from server.app import create_app
from server.config import ServerConfig
from tests.conftest import CORPUS
from tests.data.dicom import build_native, ct_volume, frame_codestreams, rgb_frames
from tests.oracle import assert_same_pixels, decode_codestream, window_crops

CT = ct_volume(4, rows=200, columns=260)
RGB = rgb_frames(2)
PREPARED = {  # name: (source pixels, lossless, htj2k)
    "ct.dcm": (CT, True, False),
    "ct-ht.dcm": (CT, True, True),
    "rgb.dcm": (RGB, True, False),
    "rgb-lossy-ht.dcm": (RGB, False, True),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicom-tools")
    raw = tmp_path_factory.mktemp("raw")
    build_native(raw / "ct.dcm", CT, bits_stored=12)
    build_native(raw / "rgb.dcm", RGB)
    for name, (_, lossless, htj2k) in PREPARED.items():
        src = raw / ("ct.dcm" if name.startswith("ct") else "rgb.dcm")
        prepare_dicom(src, folder / name, lossless=lossless, htj2k=htj2k)
    shutil.copy(CORPUS / "heliov.jpx", folder / "heliov.jpx")
    shutil.copy(CORPUS / "file1.jp2", folder / "file1.jp2")
    return folder


@pytest.fixture
async def server(aiohttp_server, root, tmp_path):
    app = create_app(ServerConfig(root=root, index_cache_dir=tmp_path / "ix", port=0))
    return await aiohttp_server(app)


async def jpip(*argv: str) -> int:
    """The `jpip` command, run in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(jpip_main, list(argv))


def expected(codestream: bytes, client: JPIPClient, window: dict) -> list[np.ndarray]:
    reg = client.region(window["fsiz"], "round-down", window.get("roff"), window.get("rsiz"),
                        window["stream"])
    siz = parse_codestream(codestream, 0, len(codestream)).siz
    return window_crops(decode_codestream(codestream, rlevel=reg.discard), siz, reg.discard,
                        reg.region)


@pytest.mark.parametrize("name", PREPARED)
async def test_prepared_frames_serve_exact_windows(server, root, name) -> None:
    pixels, lossless, _ = PREPARED[name]
    streams = frame_codestreams(root / name)
    assert len(streams) == len(pixels)
    checked = 0
    for n, cs in enumerate(streams, 1):  # DICOM: frame N is stream N
        siz = parse_codestream(cs, 0, len(cs)).siz
        async with JPIPClient(str(server.make_url("/jpip")) + f"?target={name}") as client:
            for d in range(4):
                fw, fh = frame_size(siz, d)
                for roff, rsiz in ((None, None), ((fw // 3, fh // 4), (fw // 2, fh // 3)),
                                   ((fw - 1, fh - 1), (1, 1))):
                    window = dict(fsiz=(fw, fh), roff=roff, rsiz=rsiz, stream=n)
                    got = await client.window(**window)
                    assert_same_pixels(expected(cs, client, window), got,
                                       f"{name} frame {n} {window}")
                    checked += 1
            assert set(client.cache.streams) == {n} and client.cache.duplicate_bytes == 0
            if lossless:  # through prepare and the server, the input pixels come back
                whole = await client.window(fsiz=(siz.width, siz.height), stream=n)
                image = whole[0] if len(whole) == 1 else np.stack(whole, -1)
                assert np.array_equal(image, pixels[n - 1])
    assert checked == 12 * len(streams)


async def test_dicom_ref_is_fetched_by_jpip_fetch(server, root, tmp_path, capsys) -> None:
    ref = tmp_path / "ref.dcm"
    dicom_ref(root / "ct.dcm", ref, url=str(server.make_url("/jpip")))
    ds = pydicom.dcmread(ref)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.94" and "PixelData" not in ds
    assert ds.NumberOfFrames == 4
    out = tmp_path / "frame2.npy"
    assert await jpip("fetch", str(ref), "--stream", "2", "--fsiz", "130,100", "-o", str(out),
                      "-q") == 0, capsys.readouterr().err
    want = decode_codestream(frame_codestreams(root / "ct.dcm")[1], rlevel=1)
    assert np.array_equal(np.load(out), want[0])
    # Without --stream: frame 1, as PS3.5 8.4.1 numbers them.
    assert await jpip("fetch", str(ref), "--fsiz", "65,50", "-o", str(out), "-q") == 0
    want = decode_codestream(frame_codestreams(root / "ct.dcm")[0], rlevel=2)
    assert np.array_equal(np.load(out), want[0])
    assert await jpip("info", str(ref)) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["width"], info["height"], info["signed"]) == (260, 200, [True])


async def test_fetch_a_frame_region_as_dicom(server, root, tmp_path, capsys) -> None:
    url = str(server.make_url("/jpip")) + "?target=ct.dcm"
    out = tmp_path / "window.dcm"
    assert await jpip("fetch", url, "--stream", "3", "--fsiz", "130,100", "--roff", "16,8",
                      "--rsiz", "40,30", "-o", str(out), "-q") == 0, capsys.readouterr().err
    win, src = pydicom.dcmread(out), pydicom.dcmread(root / "ct.dcm", stop_before_pixels=True)
    frame3 = decode_codestream(frame_codestreams(root / "ct.dcm")[2], rlevel=1)[0]
    assert np.array_equal(win.pixel_array, frame3[8:38, 16:56])
    assert (win.Rows, win.Columns, win.BitsStored, win.PixelRepresentation) == (30, 40, 12, 1)
    assert win.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert [float(v) for v in win.PixelSpacing] == [1.4, 1.4]  # 0.7 mm at half resolution
    # The first sample is full-resolution pixel (32, 16): x = -50 + 32 * 0.7, y = -40 + 16 * 0.7
    assert [float(v) for v in win.ImagePositionPatient] == pytest.approx([-27.6, -28.8, 12.5])
    assert win.PatientName == src.PatientName and win.StudyInstanceUID == src.StudyInstanceUID
    assert win.RescaleIntercept == src.RescaleIntercept and win.WindowWidth == src.WindowWidth
    assert win.SOPInstanceUID != src.SOPInstanceUID and win.ImageType[0] == "DERIVED"
    assert win.get("NumberOfFrames", 1) == 1 and "frame 3" in win.DerivationDescription
    ref = win.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID and ref.ReferencedFrameNumber == 3
    # Colour frames come back as RGB; a JPEG 2000 target becomes a Secondary Capture.
    assert await jpip("fetch", str(server.make_url("/rgb.dcm")), "--stream", "2",
                      "-o", str(out), "-q") == 0
    rgb = pydicom.dcmread(out)
    assert rgb.PhotometricInterpretation == "RGB" and np.array_equal(rgb.pixel_array, RGB[1])
    assert await jpip("fetch", str(server.make_url("/file1.jp2")), "--fsiz", "192,128",
                      "-o", str(out), "-q") == 0
    sc = pydicom.dcmread(out)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.Rows == 128


async def test_stream_on_jpx_and_bad_frames(server, root, tmp_path, capsys) -> None:
    data = (root / "heliov.jpx").read_bytes()
    layout = read_layout(data)
    out = tmp_path / "cs.npy"
    for n in (1, 2):
        off, ln = layout.codestreams[n]
        assert await jpip("fetch", str(server.make_url("/heliov.jpx")), "--stream", str(n),
                          "--fsiz", "64,64", "-o", str(out), "-q") == 0
        want = decode_codestream(data[off:off + ln], rlevel=len(want_levels(data, off, ln)))
        image = want[0] if len(want) == 1 else np.stack(want, -1)
        assert np.array_equal(image, np.load(out)), f"heliov codestream {n}"
    async with JPIPClient(str(server.make_url("/heliov.jpx"))) as client:
        got = await client.window(fsiz=(64, 64), stream=0)
        assert set(client.cache.streams) == {0}
    off, ln = layout.codestreams[0]
    assert_same_pixels(decode_codestream(data[off:off + ln],
                                         rlevel=len(want_levels(data, off, ln))), got, "cs 0")
    capsys.readouterr()
    # DICOM frames are 1..Number of Frames: stream=0 and stream=5 are refused by the server.
    for n in ("0", "5"):
        assert await jpip("fetch", str(server.make_url("/ct.dcm")), "--stream", n,
                          "--fsiz", "64,64", "-o", str(out), "-q") == 1
        err = capsys.readouterr().err
        assert err.startswith("jpip fetch: server answered 4"), err


def want_levels(data: bytes, off: int, ln: int) -> list[int]:
    """The resolution levels a 64x64 fsiz discards from a codestream (one entry each)."""
    siz = parse_codestream(data, off, ln).siz
    d = 0
    while frame_size(siz, d)[0] > 64 or frame_size(siz, d)[1] > 64:
        d += 1
    return list(range(d))
