"""Test images that are built, not committed: `python -m tests.data.generate [--force]`.

The suite calls `ensure_generated()` once per run (tests/conftest.py); files already built are
kept (ignored by git: `tests/data/corpus/.gitignore`, `tests/data/interop/`) and rebuilt only
when this recipe changes. Into `tests/data/corpus/`:

- `nemo.jp2`, `heliov.jpx`: copied from the glymur package the project installs (its bundled
  data, MIT licence), byte for byte: a photograph (JP2, LRCP, 5 layers) and a solar JPX (3
  codestreams, XML, palette, association boxes).
- `CT1_psot0_noeoc.j2k`: the committed `CT1.j2k` with the last tile-part's Psot set to 0 ("runs
  to the end of the codestream", T.800 A.4.2) and no EOC marker, as some DICOM writers store
  frames
  (followed by zero padding to an even length, as that writer did).

Into `tests/data/interop/`:
- `rgb4096.jp2`, `med2048.jp2`: the interoperability images (4096² 8-bit RGB 9/7 lossy and 2048²
  16-bit grey 5/3 with a lossless last layer; RPCL, 6 layers, 5 levels, 64² code-blocks,
  precincts 256² at the two highest resolutions and 128² below, PLT markers), encoded by
  Debian's `opj_compress` from pixels made of the photograph and of `CT1.j2k` (crops zoomed,
  flipped and given mild seeded noise, so no area is flat).
- `rgb4096_idx.jp2`, `med2048_idx.jp2`: the same two files with a JPIP index added (ISO 15444-9
  Annex I: iptr, cidx, fidx; tests/interop/jpip_index.py), for OpenJPEG's opj_server, which
  serves only indexed files. The codestream bytes are the same as in the plain files.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent
CORPUS = DATA / "corpus"
INTEROP = DATA / "interop"
# The recipe: this file and the index writer it uses (a change to either rebuilds everything).
_RECIPE = hashlib.sha256(Path(__file__).read_bytes() + (
    DATA.parent / "interop" / "jpip_index.py").read_bytes()).hexdigest()[:16]
_STAMP = INTEROP / ".recipe"


def _glymur_data(name: str) -> Path:
    import glymur

    return Path(glymur.__file__).resolve().parent / "data" / name


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _copy_glymur(name: str) -> bytes:
    return _glymur_data(name).read_bytes()


def _psot0_noeoc(src: bytes) -> bytes:
    """A single-tile codestream with Psot=0 in its (last) tile-part and no EOC."""
    sot = src.find(b"\xff\x90\x00\x0a")
    if sot < 0 or src.find(b"\xff\x90\x00\x0a", sot + 1) >= 0:
        raise ValueError("expected exactly one tile-part")
    out = bytearray(src)
    out[sot + 6:sot + 10] = struct.pack(">I", 0)
    eoc = out.rfind(b"\xff\xd9", len(out) - 4)  # CT1 has one pad byte after EOC
    if eoc < 0:
        raise ValueError("expected EOC at the end")
    del out[eoc:]
    # Zero padding up to an even length (a DICOM fragment's rule), and at least 2 bytes: with
    # Psot = 0 OpenJPEG 2.5 takes the tile-part to end 2 bytes before the end of the stream
    # (where EOC would be), as in JPEG2KLossless_1s_1f_u_16_16 (pylibjpeg-data), which has 3.
    out += bytes(3 if len(out) % 2 else 2)
    return bytes(out)


def _zoom(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of a 2-D float array."""
    h, w = a.shape
    y = np.linspace(0, h - 1, out_h)
    x = np.linspace(0, w - 1, out_w)
    y0 = np.floor(y).astype(int)
    x0 = np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _rgb_mosaic(size: int = 4096, cell: int = 1024) -> np.ndarray:
    import glymur

    photo = glymur.Jp2k(str(_glymur_data("nemo.jp2")))[:].astype(np.float64)
    rng = np.random.default_rng(4096)
    h, w = photo.shape[:2]
    out = np.zeros((size, size, 3), np.uint8)
    for n in range(size // cell * (size // cell)):
        side = int(rng.integers(h // 3, h))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[y:y + side, x:x + side]
        cell_rgb = np.stack([_zoom(crop[..., c], cell, cell) for c in range(3)], axis=-1)
        if n % 2:
            cell_rgb = cell_rgb[:, ::-1]
        if n % 3 == 0:
            cell_rgb = cell_rgb[::-1]
        cell_rgb = cell_rgb * rng.uniform(0.8, 1.2, 3) + rng.normal(0, 2.0, cell_rgb.shape)
        r, c = divmod(n, size // cell)
        out[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = np.clip(cell_rgb, 0, 255)
    return out


def _grey16(size: int = 2048) -> np.ndarray:
    import glymur

    ct = glymur.Jp2k(str(CORPUS / "CT1.j2k"))[:].astype(np.float64)
    ct = (ct - ct.min()) * (60000.0 / (ct.max() - ct.min())) + 1000
    rng = np.random.default_rng(2048)
    img = _zoom(ct, size, size) + rng.normal(0, 40.0, (size, size))
    return np.clip(img, 0, 65535).astype(np.uint16)


def _write_pnm(path: Path, pixels: np.ndarray) -> None:
    if pixels.ndim == 3:
        header = f"P6\n{pixels.shape[1]} {pixels.shape[0]}\n255\n".encode()
        body = pixels.astype(np.uint8).tobytes()
    else:
        header = f"P5\n{pixels.shape[1]} {pixels.shape[0]}\n65535\n".encode()
        body = pixels.astype(">u2").tobytes()
    path.write_bytes(header + body)


def _opj_encode(pixels: np.ndarray, rates: str, irreversible: bool) -> bytes:
    opj = shutil.which("opj_compress")
    if opj is None:
        raise RuntimeError("opj_compress not found: `make setup-test` installs libopenjp2-tools")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / ("in.ppm" if pixels.ndim == 3 else "in.pgm")
        dst = Path(tmp) / "out.jp2"
        _write_pnm(src, pixels)
        cmd = [opj, "-i", str(src), "-o", str(dst), "-n", "6", "-b", "64,64",
               "-c", "[256,256],[256,256],[128,128]", "-p", "RPCL", "-r", rates, "-PLT"]
        if irreversible:
            cmd.append("-I")
        subprocess.run(cmd, check=True, capture_output=True)
        return dst.read_bytes()


def _with_jpip_index(path: Path) -> bytes:
    from tests.interop.jpip_index import add_jpip_index

    return add_jpip_index(path.read_bytes())


# Where each built file goes, and how it is made (in build order).
BUILDERS = {
    CORPUS / "nemo.jp2": lambda: _copy_glymur("nemo.jp2"),
    CORPUS / "heliov.jpx": lambda: _copy_glymur("heliov.jpx"),
    CORPUS / "CT1_psot0_noeoc.j2k": lambda: _psot0_noeoc((CORPUS / "CT1.j2k").read_bytes()),
    INTEROP / "rgb4096.jp2": lambda: _opj_encode(_rgb_mosaic(), "320,160,80,40,20,10", True),
    INTEROP / "med2048.jp2": lambda: _opj_encode(_grey16(), "80,40,20,10,4,1", False),
    INTEROP / "rgb4096_idx.jp2": lambda: _with_jpip_index(INTEROP / "rgb4096.jp2"),
    INTEROP / "med2048_idx.jp2": lambda: _with_jpip_index(INTEROP / "med2048.jp2"),
}


def ensure_generated(force: bool = False) -> None:
    """Builds what is missing (everything if the recipe changed)."""
    INTEROP.mkdir(exist_ok=True)
    stale = force or not _STAMP.is_file() or _STAMP.read_text().strip() != _RECIPE
    for path, build in BUILDERS.items():
        if stale or not path.is_file():
            _atomic_write(path, build())
    if stale:
        _atomic_write(_STAMP, _RECIPE.encode())


if __name__ == "__main__":
    ensure_generated(force="--force" in sys.argv[1:])
