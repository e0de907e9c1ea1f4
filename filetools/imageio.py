"""Reading and writing the raster formats `jpip prepare` accepts, whole or in row strips.

Arrays are (H, W) for one component and (H, W, C) otherwise, uint8 or uint16 in native byte
order (other dtypes pass through; the encoder rejects them with a clear message).

Whole-image access: `read_image`, `write_image`.  Bounded-memory access for inputs too big to
hold: `open_source` (an `ImageSource` that reads strips, and tiles where the layout allows)
and `open_strips`.  Raw layouts (.npy, uncompressed TIFF, binary PGM/PPM) are read with plain
file reads, not memory maps, because the pages of a memory-mapped file count towards the RSS.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

JP2_EXTS = {".jp2", ".j2k", ".j2c", ".jpc", ".jpx", ".jpf", ".jph", ".jhc"}
TIFF_EXTS = {".tif", ".tiff"}
PNM_EXTS = {".pgm", ".ppm", ".pnm", ".pbm"}
PNG_EXTS = {".png"}
NPY_EXTS = {".npy"}

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- format detection
def _sniff(path: Path) -> str:
    """Format from the extension, or from the first bytes when the extension says nothing."""
    ext = path.suffix.lower()
    for kind, exts in (("jp2", JP2_EXTS), ("tiff", TIFF_EXTS), ("pnm", PNM_EXTS),
                       ("png", PNG_EXTS), ("npy", NPY_EXTS)):
        if ext in exts:
            return kind
    with open(path, "rb") as fh:
        head = fh.read(12)
    if head.startswith(b"\x89PNG"):
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\xff\x4f\xff\x51") or head == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        return "jp2"
    if head[:1] == b"P" and head[1:2] in b"123456":
        return "pnm"
    return "pillow"


def _squeeze(a: np.ndarray) -> np.ndarray:
    """(H, W, 1) -> (H, W): one convention for single-component images."""
    return a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a


def _native(a: np.ndarray) -> np.ndarray:
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


# --------------------------------------------------------------------------- PNM
class _PnmHeader(NamedTuple):
    magic: bytes
    width: int
    height: int
    maxval: int
    offset: int  # first data byte


def _read_pnm_header(path: Path) -> _PnmHeader:
    with open(path, "rb") as fh:
        data = fh.read(4096)
    magic = data[:2]
    if magic not in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6"):
        raise ValueError(f"{path}: not a PBM/PGM/PPM file")
    need = 2 if magic in (b"P1", b"P4") else 3
    values: list[int] = []
    pos = 2
    while len(values) < need:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":  # comment up to the end of the line
            while pos < len(data) and data[pos:pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and data[pos:pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise ValueError(f"{path}: malformed PNM header")
        values.append(int(data[start:pos]))
    pos += 1  # exactly one whitespace character separates the header from raster data
    maxval = values[2] if need == 3 else 1
    if not 0 < maxval < 65536:
        raise ValueError(f"{path}: PNM maxval {maxval} out of range")
    return _PnmHeader(magic, values[0], values[1], maxval, pos)


def _read_pnm(path: Path) -> np.ndarray:
    h = _read_pnm_header(path)
    comps = 3 if h.magic in (b"P3", b"P6") else 1
    dtype = np.uint8 if h.maxval < 256 else np.uint16
    if h.magic in (b"P5", b"P6"):
        with RawSource(path, h.offset, h.height, h.width, comps,
                       np.dtype(">u2") if dtype == np.uint16 else np.dtype("u1")) as src:
            return src.read_all()
    if h.magic in (b"P2", b"P3"):
        with open(path, "rb") as fh:
            fh.seek(h.offset - 1)
            text = b"\n".join(line.split(b"#", 1)[0] for line in fh.read().splitlines())
        vals = np.array(text.split(), dtype=np.int64)[: h.width * h.height * comps]
        return _squeeze(vals.reshape(h.height, h.width, comps).astype(dtype))
    # bitmaps (P1/P4): 1 is black; give the usual 0 = black, 255 = white
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _write_pnm(path: Path, a: np.ndarray) -> None:
    comps = 1 if a.ndim == 2 else a.shape[2]
    if comps not in (1, 3) or a.dtype not in (np.uint8, np.uint16):
        raise ValueError("PGM/PPM holds 1 or 3 components of uint8/uint16; use .tiff or .npy")
    magic = b"P5" if comps == 1 else b"P6"
    maxval = 255 if a.dtype == np.uint8 else 65535
    with open(path, "wb") as fh:
        fh.write(b"%s\n%d %d\n%d\n" % (magic, a.shape[1], a.shape[0], maxval))
        fh.write(np.ascontiguousarray(a, dtype=">u2" if maxval > 255 else "u1").tobytes())


# --------------------------------------------------------------------------- PNG / Pillow
def _png_ihdr(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG, or None if the IHDR cannot be read."""
    with open(path, "rb") as fh:
        head = fh.read(29)
    if len(head) < 29 or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image

    ihdr = _png_ihdr(path) if _sniff(path) == "png" else None
    if ihdr is not None and ihdr[0] == 16 and ihdr[1] in (2, 4, 6):
        # Pillow decodes 16-bit colour (or grey+alpha) PNGs to 8 bits: refuse rather than lose data.
        raise ValueError(f"{path}: 16-bit colour PNG cannot be read without loss by Pillow; "
                         "convert it to 16-bit TIFF (or .npy) first")
    with Image.open(path) as im:
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
        elif im.mode == "1":
            im = im.convert("L")
        elif im.mode == "CMYK":
            im = im.convert("RGB")
        a = np.asarray(im)
        if im.mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535:
            a = a.astype(np.uint16)  # some 16-bit grey decoders hand back 32-bit 'I'
    return _native(a)


def _write_png(path: Path, a: np.ndarray) -> None:
    from PIL import Image

    if a.dtype == np.uint16:
        if a.ndim != 2:
            raise ValueError("Pillow cannot write 16-bit colour PNG; write .tiff or .npy instead")
        Image.fromarray(np.ascontiguousarray(a, dtype="<u2")).save(path)  # mode I;16
        return
    if a.dtype != np.uint8:
        raise ValueError(f"PNG holds uint8 or uint16 pixels, not {a.dtype}; write .tiff or .npy")
    if a.ndim == 3 and a.shape[2] not in (2, 3, 4):
        raise ValueError(f"PNG holds 1-4 components, not {a.shape[2]}")
    Image.fromarray(np.ascontiguousarray(a)).save(path)


# --------------------------------------------------------------------------- whole images
def read_image(path: PathLike) -> np.ndarray:
    """Decode a whole image: PNG, TIFF, PGM/PPM (8/16-bit), .npy or JPEG 2000."""
    p = Path(path)
    kind = _sniff(p)
    if kind == "npy":
        return _native(_squeeze(np.load(p)))
    if kind == "tiff":
        return _native(_squeeze(_read_tiff(p)))
    if kind == "pnm":
        return _read_pnm(p)
    if kind == "jp2":
        return _native(_read_jp2(p))
    return _read_pillow(p)


def write_image(path: PathLike, array: np.ndarray) -> None:
    """Write by extension: .png (8-bit, or 16-bit grey), .tif/.tiff, .npy, .pgm/.ppm, .jp2/.j2k
    (lossless)."""
    p = Path(path)
    a = _squeeze(np.asarray(array))
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (H, W, C), got shape {a.shape}")
    ext = p.suffix.lower()
    if ext in PNG_EXTS:
        _write_png(p, a)
    elif ext in TIFF_EXTS:
        import tifffile

        photometric = "rgb" if a.ndim == 3 and a.shape[2] in (3, 4) else "minisblack"
        extras = ["unassalpha"] if a.ndim == 3 and a.shape[2] == 4 else None
        tifffile.imwrite(p, a, photometric=photometric, extrasamples=extras)
    elif ext in NPY_EXTS:
        np.save(p, a)
    elif ext in PNM_EXTS:
        _write_pnm(p, a)
    elif ext in JP2_EXTS:
        import glymur

        glymur.Jp2k(str(p), data=a)
    else:
        raise ValueError(f"cannot write {ext or 'files without an extension'}: "
                         "use .png, .tif/.tiff, .npy, .pgm/.ppm or .jp2/.j2k")


def _read_tiff(path: Path) -> np.ndarray:
    """First page of a TIFF as (H, W) or (H, W, C)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        a = page.asarray()
        axes = page.axes
    if axes.startswith("S") and a.ndim == 3:
        a = np.moveaxis(a, 0, -1)  # planar (C, H, W) storage
    if a.ndim not in (2, 3):
        raise ValueError(f"{path}: unsupported TIFF image shape {a.shape} ({axes})")
    return a


def _read_jp2(path: Path, area: tuple[int, int, int, int] | None = None) -> np.ndarray:
    import glymur

    j = glymur.Jp2k(str(path))
    with warnings.catch_warnings():
        # OpenJPEG warns about harmless quirks (e.g. a missing EOC) that do not affect pixels
        warnings.simplefilter("ignore", UserWarning)
        if area is None:
            a = j[:]
        else:
            r0, r1, c0, c1 = area
            a = j[r0:r1, c0:c1]
    if isinstance(a, list):
        raise ValueError(f"{path}: components of different sizes are not supported")
    return a


# --------------------------------------------------------------------------- streaming sources
class ImageSource:
    """An image read piecewise: `strips(rows)` walks it top to bottom in full-width strips;
    `read_region` exists where the layout allows random access at tile granularity."""

    height: int
    width: int
    components: int
    dtype: np.dtype
    note: str = ""  # how the input is read, for reports
    bounded: bool = True  # False if the whole image is held in memory anyway

    @property
    def shape(self) -> tuple[int, ...]:
        if self.components == 1:
            return (self.height, self.width)
        return (self.height, self.width, self.components)

    @property
    def random_access(self) -> bool:
        return False

    def read_region(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        raise NotImplementedError

    def strips(self, rows: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def read_all(self) -> np.ndarray:
        return np.concatenate(list(self.strips(max(1, self.height))), axis=0)

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawSource(ImageSource):
    """Uncompressed samples at a known offset: .npy, uncompressed TIFF, binary PGM/PPM.

    `file_dtype` carries the file's byte order; results are converted to native order."""

    def __init__(self, path: PathLike, offset: int, height: int, width: int, components: int,
                 file_dtype: np.dtype, *, planar: bool = False) -> None:
        self.path = Path(path)
        self.offset = offset
        self.height, self.width, self.components = height, width, components
        self.file_dtype = np.dtype(file_dtype)
        self.dtype = self.file_dtype.newbyteorder("=")
        self.planar = planar and components > 1
        self.note = "raw samples read in place"
        self._fh = open(self.path, "rb", buffering=0)  # closed by close()
        need = offset + height * width * components * self.file_dtype.itemsize
        if os.fstat(self._fh.fileno()).st_size < need:
            self._fh.close()
            raise ValueError(f"{self.path}: file is shorter than its header says")

    @property
    def random_access(self) -> bool:
        return True

    def _read_into(self, pos: int, out: np.ndarray) -> None:
        self._fh.seek(pos)
        view = memoryview(out).cast("B")
        got = 0
        while got < len(view):  # raw reads may return short counts
            n = self._fh.readinto(view[got:])
            if not n:
                raise ValueError(f"{self.path}: unexpected end of file")
            got += n

    def read_region(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        rows, cols, comps = r1 - r0, c1 - c0, self.components
        item = self.file_dtype.itemsize
        planes = 1 if not self.planar else comps
        per_sample = comps if not self.planar else 1
        row_bytes = self.width * per_sample * item
        buf = np.empty((planes, rows, cols, per_sample), dtype=self.file_dtype)
        for k in range(planes):
            base = self.offset + k * self.height * row_bytes
            if c0 == 0 and c1 == self.width:
                self._read_into(base + r0 * row_bytes, buf[k])  # one read for the whole strip
            else:
                for i in range(rows):
                    self._read_into(base + (r0 + i) * row_bytes + c0 * per_sample * item,
                                    buf[k, i])
        out = buf[0] if not self.planar else np.moveaxis(buf[:, :, :, 0], 0, -1)
        return _squeeze(np.ascontiguousarray(out, dtype=self.dtype))

    def strips(self, rows: int) -> Iterator[np.ndarray]:
        for r0 in range(0, self.height, rows):
            yield self.read_region(r0, min(r0 + rows, self.height), 0, self.width)

    def close(self) -> None:
        self._fh.close()


class ArraySource(ImageSource):
    """An image decoded whole (PNG, ASCII PNM, small or awkward files)."""

    def __init__(self, array: np.ndarray, note: str) -> None:
        a = _squeeze(array)
        self.array = a
        self.height, self.width = a.shape[:2]
        self.components = 1 if a.ndim == 2 else a.shape[2]
        self.dtype = a.dtype
        self.note = note
        self.bounded = False

    @property
    def random_access(self) -> bool:
        return True

    def read_region(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return self.array[r0:r1, c0:c1]

    def strips(self, rows: int) -> Iterator[np.ndarray]:
        for r0 in range(0, self.height, rows):
            yield self.array[r0:r0 + rows]

    def read_all(self) -> np.ndarray:
        return self.array


def _rechunk(bands: Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """Re-cut consecutive full-width bands of any heights into strips of `rows` rows."""
    pending: list[np.ndarray] = []
    have = 0
    for band in bands:
        pending.append(band)
        have += band.shape[0]
        while have >= rows:
            merged = pending[0] if len(pending) == 1 else np.concatenate(pending, axis=0)
            yield merged[:rows]
            rest = merged[rows:]
            pending = [rest] if rest.shape[0] else []
            have = rest.shape[0]
    if have:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending, axis=0)


class TiffSegmentSource(ImageSource):
    """A compressed (or otherwise not raw) TIFF, decoded strip by strip or tile-row by tile-row."""

    def __init__(self, path: PathLike) -> None:
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        page = self._tif.pages.first
        s, d, h, w, c = page.shaped
        if s != 1 or d != 1:
            self._tif.close()
            raise ValueError("planar or volumetric TIFF cannot be streamed")
        self._page = page
        self.height, self.width, self.components = h, w, c
        self.dtype = np.dtype(page.dtype).newbyteorder("=")
        self.note = "TIFF decoded one strip/tile row at a time"

    def _bands(self) -> Iterator[np.ndarray]:
        page = self._page
        band: np.ndarray | None = None
        band_row = -1
        # small read buffer: tifffile's default reads 256 MB of compressed data at a time
        for seg, (_s, _d, h, w, _c), shape in page.segments(buffersize=8 << 20):
            if h != band_row:
                if band is not None:
                    yield band
                band_row = h
                band = np.empty((min(shape[1], self.height - h), self.width, self.components),
                                dtype=self.dtype)
            assert band is not None
            cols = min(shape[2], self.width - w)
            if seg is None:
                band[:, w:w + cols] = page.nodata
            else:
                band[:, w:w + cols] = seg[0, :band.shape[0], :cols]
        if band is not None:
            yield band

    def strips(self, rows: int) -> Iterator[np.ndarray]:
        for strip in _rechunk(self._bands(), rows):
            yield _squeeze(strip)

    def close(self) -> None:
        self._tif.close()


class Jp2Source(ImageSource):
    """An existing JPEG 2000 file, decoded one strip at a time with OpenJPEG's area decoding."""

    def __init__(self, path: PathLike) -> None:
        import glymur

        self.path = Path(path)
        j = glymur.Jp2k(str(self.path))
        shape = j.shape
        self.height, self.width = shape[:2]
        self.components = 1 if len(shape) == 2 else shape[2]
        cs = j.get_codestream(header_only=True)
        siz = cs.segment[1]
        if len(set(siz.xrsiz)) > 1 or len(set(siz.yrsiz)) > 1:
            raise ValueError(f"{self.path}: components of different sizes are not supported")
        prec, sgnd = siz.bitdepth[0], siz.signed[0]
        self.dtype = np.dtype(("i" if sgnd else "u") + ("1" if prec <= 8 else "2"))
        self.note = "JPEG 2000 decoded one strip at a time"

    def strips(self, rows: int) -> Iterator[np.ndarray]:
        for r0 in range(0, self.height, rows):
            area = (r0, min(r0 + rows, self.height), 0, self.width)
            yield _native(_squeeze(_read_jp2(self.path, area)))


def _npy_source(path: Path) -> ImageSource:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        offset = fh.tell()
    if len(shape) not in (2, 3) or dtype.hasobject:
        raise ValueError(f"{path}: expected an (H, W) or (H, W, C) array, got {shape} {dtype}")
    if fortran:
        # rare; column-major order cannot be read in row strips cheaply
        return ArraySource(np.load(path), "Fortran-order .npy loaded whole")
    comps = 1 if len(shape) == 2 else shape[2]
    return RawSource(path, offset, shape[0], shape[1], comps, dtype)


def _tiff_source(path: Path) -> ImageSource:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        s, d, h, w, c = page.shaped
        if page.is_final and page.dtype is not None and d == 1 and (s == 1 or c == 1):
            file_dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)
            return RawSource(path, page.dataoffsets[0], h, w, max(s, c), file_dtype,
                             planar=s > 1)
    try:
        return TiffSegmentSource(path)
    except ValueError:
        return ArraySource(read_image(path), "TIFF loaded whole (planar compressed layout)")


def open_source(path: PathLike) -> ImageSource:
    """Open an image for piecewise reading, without decoding it whole where the format allows."""
    p = Path(path)
    kind = _sniff(p)
    if kind == "npy":
        return _npy_source(p)
    if kind == "tiff":
        return _tiff_source(p)
    if kind == "pnm":
        h = _read_pnm_header(p)
        if h.magic in (b"P5", b"P6"):
            comps = 3 if h.magic == b"P6" else 1
            return RawSource(p, h.offset, h.height, h.width, comps,
                             np.dtype(">u2") if h.maxval > 255 else np.dtype("u1"))
    if kind == "jp2":
        return Jp2Source(p)
    return ArraySource(read_image(p), f"{kind} decoded whole")


class Strips(NamedTuple):
    shape: tuple[int, ...]
    dtype: np.dtype
    strips: Iterator[np.ndarray]


def open_strips(path: PathLike, rows: int = 256) -> Strips:
    """(shape, dtype, iterator over full-width strips of `rows` rows, the last one shorter).

    The file stays open until the iterator is exhausted or closed."""
    src = open_source(path)

    def gen() -> Iterator[np.ndarray]:
        with src:
            yield from src.strips(rows)

    return Strips(src.shape, src.dtype, gen())


__all__ = [
    "ArraySource", "ImageSource", "Jp2Source", "RawSource", "Strips", "TiffSegmentSource",
    "open_source", "open_strips", "read_image", "write_image",
]
