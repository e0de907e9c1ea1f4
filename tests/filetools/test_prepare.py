"""`jpip prepare`: lossless round trips, the browse-friendly codestream layout, the tiled
bounded-memory path, image I/O, the CLI glue and the demo builder."""
from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import glymur
import numpy as np
import pytest
import tifffile

from filetools.demo import build_demo, demo_source
from filetools.imageio import open_source, open_strips, read_image, write_image
from filetools.prepare import (
    add_prepare_arguments,
    choose_levels,
    layer_rates,
    precinct_sizes,
    prepare,
    run_prepare,
    scan_markers,
)
from tests.conftest import CORPUS

RPCL = 2  # glymur.core.RPCL
XFORM_97, XFORM_53 = 0, 1


def synthetic(h: int, w: int, comps: int, dtype: type, seed: int = 0) -> np.ndarray:
    """Gradients plus noise over the full sample range: both smooth and busy areas."""
    rng = np.random.default_rng(seed)
    top = float(np.iinfo(dtype).max)
    y = np.linspace(0, 1, h)[:, None, None]
    x = np.linspace(0, 1, w)[None, :, None]
    c = np.arange(comps)[None, None, :]
    base = 0.45 * y + 0.35 * x * (1 + c) / comps + 0.1 * np.sin(20 * x + 7 * y + c)
    noise = rng.normal(0, 0.06, size=(h, w, comps))
    img = np.clip(base + noise, 0, 1) * top
    img = np.rint(img).astype(dtype)
    img[:3, :3] = top  # the extremes must survive too
    img[-3:, -3:] = 0
    return img[:, :, 0] if comps == 1 else img


def decode(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return glymur.Jp2k(str(path))[:]


def codestream(path: Path):
    return glymur.Jp2k(str(path)).get_codestream(header_only=False)


def segment(cs, marker_id: str):
    return next(s for s in cs.segment if s.marker_id == marker_id)


def tile_part_segments(cs) -> list[list[str]]:
    """Marker ids of each tile-part header (SOT up to SOD)."""
    parts: list[list[str]] = []
    for s in cs.segment:
        if s.marker_id == "SOT":
            parts.append([])
        elif parts and s.marker_id != "EOC":
            parts[-1].append(s.marker_id)
    return parts


def cod_precincts(path: Path, cs) -> list[tuple[int, int]]:
    """(height, width) per resolution, highest first, from the raw COD bytes (glymur 0.14.8
    reports 256 as 0: it computes 2**8 in uint8)."""
    cod = segment(cs, "COD")
    with open(path, "rb") as fh:
        fh.seek(cod.offset)
        raw = fh.read(2 + cod.length)
    nres = raw[9] + 1  # SPcod: decomposition levels
    bytes_ = raw[-nres:]
    return [(1 << (b >> 4), 1 << (b & 15)) for b in reversed(bytes_)]


# --------------------------------------------------------------------------- lossless round trips
CASES = [
    ("gray8", 1, np.uint8, [".png", ".pgm", ".npy", ".tif"]),
    ("gray16", 1, np.uint16, [".png", ".pgm", ".tif"]),
    ("rgb8", 3, np.uint8, [".png", ".ppm", ".tif"]),
    ("rgb16", 3, np.uint16, [".tif", ".npy", ".ppm"]),
]


@pytest.mark.parametrize(
    "comps,dtype,ext",
    [(c, d, e) for _, c, d, exts in CASES for e in exts],
    ids=[f"{n}{e}" for n, _, _, exts in CASES for e in exts],
)
def test_lossless_round_trip(tmp_path: Path, comps: int, dtype: type, ext: str) -> None:
    img = synthetic(200, 300, comps, dtype)
    src = tmp_path / f"in{ext}"
    write_image(src, img)
    assert np.array_equal(read_image(src), img)  # the input itself is exact
    out = tmp_path / "out.jp2"
    rep = prepare(src, out, lossless=True)
    got = decode(out)
    assert got.dtype == img.dtype and got.shape == img.shape
    assert np.array_equal(got, img)
    assert (rep.width, rep.height, rep.components) == (300, 200, comps)
    assert rep.bit_depth == 8 * np.dtype(dtype).itemsize
    assert rep.lossless and rep.layers == 1 and not rep.tiled


def test_lossless_with_several_layers_is_exact(tmp_path: Path) -> None:
    img = synthetic(200, 300, 3, np.uint8, seed=3)
    np.save(tmp_path / "in.npy", img)
    rep = prepare(tmp_path / "in.npy", tmp_path / "out.jp2", lossless=True, layers=4)
    assert rep.rates == [32.0, 16.0, 8.0, 1.0]
    assert segment(codestream(tmp_path / "out.jp2"), "COD").layers == 4
    assert np.array_equal(decode(tmp_path / "out.jp2"), img)


# --------------------------------------------------------------------------- codestream layout
def test_lossy_output_layout(tmp_path: Path) -> None:
    img = synthetic(400, 600, 3, np.uint8, seed=1)
    write_image(tmp_path / "in.png", img)
    out = tmp_path / "out.jp2"
    rep = prepare(tmp_path / "in.png", out)
    cs = codestream(out)
    siz, cod = segment(cs, "SIZ"), segment(cs, "COD")
    assert (siz.xsiz, siz.ysiz) == (600, 400)
    assert (siz.xtsiz, siz.ytsiz) == (600, 400)  # one tile: no tiling
    assert cod.prog_order == RPCL
    assert cod.num_res == 5 == rep.levels  # glymur's num_res is the decomposition levels
    assert cod.layers == 8 == rep.layers
    assert cod.code_block_size == (64, 64)
    assert cod.xform == XFORM_97
    assert cod.scod & 1  # explicit precincts
    assert cod_precincts(out, cs) == [(256, 256)] * 2 + [(128, 128)] * 4 == rep.precincts
    parts = tile_part_segments(cs)
    assert len(parts) == 1 and "PLT" in parts[0]  # PLT = 0xFF58 in the tile-part header
    assert "TLM" not in [s.marker_id for s in cs.segment]
    assert rep.tile_parts == 1 and rep.plt_segments >= 1
    err = decode(out).astype(float) - img
    assert 10 * np.log10(255**2 / np.mean(err**2)) > 25  # lossy (noise costs bits), but close
    assert rep.bytes == out.stat().st_size < img.nbytes / 6


def test_lossless_layout_and_j2k_output(tmp_path: Path) -> None:
    img = synthetic(200, 300, 1, np.uint16, seed=2)
    np.save(tmp_path / "in.npy", img)
    out = tmp_path / "out.j2k"
    prepare(tmp_path / "in.npy", out, lossless=True, precinct_high=512, precinct_low=64)
    assert out.read_bytes()[:4] == b"\xff\x4f\xff\x51"  # raw codestream, no JP2 boxes
    cs = codestream(out)
    cod = segment(cs, "COD")
    assert cod.xform == XFORM_53 and cod.layers == 1 and cod.prog_order == RPCL
    assert cod_precincts(out, cs) == [(512, 512)] * 2 + [(64, 64)] * 4
    assert np.array_equal(decode(out), img)
    assert scan_markers(out) == {"tile_parts": 1, "PLT": 1, "TLM": 0}


# --------------------------------------------------------------------------- parameter rules
def test_levels_rule() -> None:
    assert choose_levels(3000, 4000) == 5  # 4000 / 2**5 = 125 <= 256; never fewer than 5
    assert choose_levels(20000, 20000) == 7  # 20000 / 2**7 = 156
    assert choose_levels(65536, 65536, tile=(4096, 4096)) == 8  # 65536 / 2**8 = 256
    assert choose_levels(300, 90000) == 9 - 1  # capped: 2**9 > 300 rows
    assert choose_levels(30, 40) == 4  # OpenJPEG cannot halve 30 rows five times
    for h, w in [(3000, 4000), (1, 1), (257, 256), (12345, 777), (40000, 9000)]:
        lev = choose_levels(h, w)
        assert lev >= 5 or 2 ** (lev + 1) > min(h, w)
        assert max(h, w) / 2**lev <= 256 or 2 ** (lev + 1) > min(h, w)
    assert precinct_sizes(6) == [(256, 256)] * 2 + [(128, 128)] * 5
    assert layer_rates(8, lossless=False) == [2560, 1280, 640, 320, 160, 80, 40, 8]
    assert layer_rates(1, lossless=True) is None


def test_levels_grow_with_size(tmp_path: Path) -> None:
    # 9000 px wide: 5 levels would leave 281 px at the lowest resolution, so 6 are used
    img = synthetic(300, 9000, 1, np.uint8, seed=4)
    np.save(tmp_path / "wide.npy", img)
    out = tmp_path / "wide.jp2"
    rep = prepare(tmp_path / "wide.npy", out, layers=2)
    assert rep.levels == 6 == segment(codestream(out), "COD").num_res
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        thumb = glymur.Jp2k(str(out))[:: 2**6, :: 2**6]
    assert max(thumb.shape) <= 256


def test_small_image_gets_fewer_levels(tmp_path: Path) -> None:
    img = synthetic(24, 40, 1, np.uint8)
    np.save(tmp_path / "s.npy", img)
    rep = prepare(tmp_path / "s.npy", tmp_path / "s.jp2", lossless=True)
    assert rep.levels == 4 and rep.notes
    assert np.array_equal(decode(tmp_path / "s.jp2"), img)


def test_reencode_existing_jpeg2000(tmp_path: Path) -> None:
    img = synthetic(200, 300, 3, np.uint16, seed=5)
    first = tmp_path / "plain.jp2"
    glymur.Jp2k(str(first), data=img)  # glymur's defaults: LRCP, no precincts, no PLT
    assert segment(codestream(first), "COD").prog_order != RPCL
    out = tmp_path / "again.jp2"
    rep = prepare(first, out, lossless=True)
    cs = codestream(out)
    assert segment(cs, "COD").prog_order == RPCL and "PLT" in tile_part_segments(cs)[0]
    assert rep.bit_depth == 16
    assert np.array_equal(decode(out), img)


# --------------------------------------------------------------------------- tiled path
def test_tiled_bounded_memory_path(tmp_path: Path) -> None:
    img = synthetic(2000, 3000, 1, np.uint16, seed=6)
    np.save(tmp_path / "big.npy", img)
    out = tmp_path / "big.jp2"
    seen: list[tuple[int, int]] = []
    rep = prepare(tmp_path / "big.npy", out, lossless=True, tile_threshold_pixels=1_000_000,
                  tile_size=1024, progress=lambda d, t: seen.append((d, t)))
    assert rep.tiled and rep.tile_size == (1024, 1024) and "threshold" in rep.tiled_reason
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)
    cs = codestream(out)
    siz = segment(cs, "SIZ")
    assert (siz.xtsiz, siz.ytsiz) == (1024, 1024)
    parts = tile_part_segments(cs)
    assert len(parts) == 6 and all("PLT" in p for p in parts)
    assert rep.tile_parts == 6 and rep.plt_segments >= 6
    assert segment(cs, "COD").prog_order == RPCL
    assert cod_precincts(out, cs) == [(256, 256)] * 2 + [(128, 128)] * 4
    assert np.array_equal(decode(out), img)


def test_tiled_path_from_compressed_tiff(tmp_path: Path) -> None:
    # a compressed, tiled TIFF is decoded one row of tiles at a time, with odd edge tiles
    img = synthetic(900, 1300, 3, np.uint8, seed=7)
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="rgb", compression="zlib",
                     tile=(256, 256))
    with open_source(tmp_path / "in.tif") as src:
        assert not src.random_access and src.bounded
    out = tmp_path / "out.jp2"
    rep = prepare(tmp_path / "in.tif", out, lossless=True, tile_threshold_pixels=500_000,
                  tile_size=512)
    assert rep.tiled and rep.tile_parts == 6
    assert np.array_equal(decode(out), img)


def test_above_threshold_but_one_tile_is_untiled(tmp_path: Path) -> None:
    img = synthetic(200, 300, 1, np.uint8)
    np.save(tmp_path / "in.npy", img)
    rep = prepare(tmp_path / "in.npy", tmp_path / "o.jp2", tile_threshold_pixels=1000)
    assert not rep.tiled and "one" in rep.tiled_reason


# --------------------------------------------------------------------------- image I/O
def test_imageio_strips_and_regions(tmp_path: Path) -> None:
    img = synthetic(70, 90, 3, np.uint16, seed=8)
    for name, kw in [("raw.tif", {}), ("be.tif", {"byteorder": ">"}),
                     ("zip.tif", {"compression": "zlib", "rowsperstrip": 9})]:
        tifffile.imwrite(tmp_path / name, img, photometric="rgb", **kw)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(img, -1, 0), photometric="rgb",
                     planarconfig="separate")
    np.save(tmp_path / "a.npy", img)
    write_image(tmp_path / "a.ppm", img)
    for name in ["raw.tif", "be.tif", "zip.tif", "planar.tif", "a.npy", "a.ppm"]:
        shape, dtype, strips = open_strips(tmp_path / name, rows=16)
        parts = list(strips)
        assert shape == img.shape and dtype == np.uint16, name
        assert [p.shape[0] for p in parts] == [16, 16, 16, 16, 6], name
        assert np.array_equal(np.concatenate(parts), img), name
        assert np.array_equal(read_image(tmp_path / name), img), name
        with open_source(tmp_path / name) as src:
            if src.random_access:
                assert np.array_equal(src.read_region(5, 40, 7, 61), img[5:40, 7:61]), name


def test_imageio_refuses_lossy_conversions(tmp_path: Path) -> None:
    rgb16 = synthetic(20, 30, 3, np.uint16)
    with pytest.raises(ValueError, match="tiff"):
        write_image(tmp_path / "x.png", rgb16)
    # a genuine 16-bit RGB PNG (written by hand) would be decoded to 8 bits by Pillow
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    raw = b"".join(b"\0" + rgb16[r].astype(">u2").tobytes() for r in range(20))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30, 20, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    (tmp_path / "rgb16.png").write_bytes(png)
    with pytest.raises(ValueError, match="16-bit colour PNG"):
        read_image(tmp_path / "rgb16.png")
    np.save(tmp_path / "f.npy", np.zeros((20, 30), np.float32))
    with pytest.raises(ValueError, match="float32"):
        prepare(tmp_path / "f.npy", tmp_path / "f.jp2")


# --------------------------------------------------------------------------- CLI glue
def test_cli_arguments_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(tmp_path / "in.pgm", synthetic(64, 80, 1, np.uint8))
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    args = parser.parse_args([str(tmp_path / "in.pgm"), str(tmp_path / "o.jp2"), "--lossless",
                              "--levels", "3", "--precincts", "128,64", "--progression", "rpcl",
                              "--layers", "2"])
    assert run_prepare(args) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "4 resolutions (3 levels)" in out and "128x128/64x64" in out
    assert segment(codestream(tmp_path / "o.jp2"), "COD").num_res == 3
    bad = parser.parse_args([str(tmp_path / "in.pgm"), str(tmp_path / "o.png")])
    assert run_prepare(bad) == 2  # a usage mistake, as in every jpip command
    assert "output must end in .jp2/.jpx" in capsys.readouterr().err
    too_many = parser.parse_args([str(tmp_path / "in.pgm"), str(tmp_path / "p.jp2"),
                                  "--levels", "9"])
    assert run_prepare(too_many) == 1
    assert "too many" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*part*"))  # no temporary files left behind


# --------------------------------------------------------------------------- demo
def test_demo_builder_on_nemo(tmp_path: Path) -> None:
    out = tmp_path / "demo" / "demo.jp2"
    rep = build_demo(out)
    photo = decode(demo_source())
    assert (rep.height, rep.width, rep.components) == photo.shape  # the photo at its own size
    cs = codestream(out)
    cod = segment(cs, "COD")
    assert cod.num_res >= 5 and cod.prog_order == RPCL and cod.layers == 8
    assert cod.xform == XFORM_97
    assert cod_precincts(out, cs)[:3] == [(256, 256), (256, 256), (128, 128)]
    assert "PLT" in tile_part_segments(cs)[0]
    err = decode(out).astype(float) - photo
    assert 10 * np.log10(255**2 / np.mean(err**2)) > 32


# --------------------------------------------------------------------------- command line errors
def test_input_mistakes_are_one_line(tmp_path: Path) -> None:
    def jpip(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "client.cli", "prepare", *args],
                              capture_output=True, text=True, timeout=120)

    out = str(tmp_path / "o.jp2")
    done = jpip(str(tmp_path / "nothere.png"), out)
    assert (done.returncode, done.stderr) == (
        2, f"jpip prepare: {tmp_path / 'nothere.png'}: no such file\n")
    done = jpip(str(tmp_path), out)
    assert done.returncode == 2 and "is a folder: give an image file" in done.stderr
    done = jpip(str(CORPUS / "file1.jp2"), out, "--codeblock", "3")
    assert (done.returncode, done.stderr) == (
        2, "jpip prepare: code-block size must be a power of two from 4 to 64\n")
    # A truncated JP2: glymur warns of a box longer than the file, OpenJPEG fails in several
    # lines; the user sees one line, without a source path.
    cut = tmp_path / "cut.jp2"
    cut.write_bytes((CORPUS / "file1.jp2").read_bytes()[:30000])
    done = jpip(str(cut), out)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"jpip prepare: OpenJPEG cannot decode or encode the image "
                                  f"(is {cut} truncated or corrupt?): "), done.stderr
    assert "Warning" not in done.stderr and ".py" not in done.stderr
    assert not Path(out).exists()
