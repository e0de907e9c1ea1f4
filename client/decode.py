"""From a client's data-bin cache to pixels: rebuild a codestream, decode the window with glymur."""
from __future__ import annotations

import os
import struct
import tempfile
import warnings
from dataclasses import dataclass

import glymur
import numpy as np
from glymur.lib.openjp2 import OpenJPEGLibraryError

from codestream.intmath import ceil_div
from codestream.markers import Siz
from codestream.parse import parse_codestream, tile_coding
from codestream.rebuild import rebuild_codestream, rebuild_from_tiles
from jpip.window import FrameRegion, frame_region

from .bincache import BinCache, StreamError


@dataclass(frozen=True)
class HeaderInfo:
    """What the main header says (all a client knows before image data arrives)."""

    siz: Siz
    levels: int      # decomposition levels of the main COD/COC (the smallest over components)
    layers: int
    progression: int
    mct: int
    ht: bool = False  # HTJ2K code-blocks (OpenJPEG 2.5's area decoding gets these wrong)

    @property
    def width(self) -> int:
        return self.siz.width

    @property
    def height(self) -> int:
        return self.siz.height


def header_info(main_header: bytes) -> HeaderInfo:
    skeleton = main_header + struct.pack(">HHHIBBH", 0xFF90, 10, 0, 14, 0, 1, 0xFF93)
    layout = parse_codestream(skeleton, 0, len(skeleton))
    cod, styles = tile_coding(layout, 0)
    return HeaderInfo(layout.siz, min(s.levels for s in styles), cod.layers, cod.progression,
                      cod.mct, any(s.is_ht for s in styles))


Region = FrameRegion  # what a window covers: discard level, frame, reference-grid region


def window_region(info: HeaderInfo, fsiz: tuple[int, int, str] | None,
                  roff: tuple[int, int] | None, rsiz: tuple[int, int] | None) -> Region:
    """The window the server serves for these fields (the same mapping as the server's)."""
    siz = info.siz
    if fsiz is None:
        fsiz = (siz.width, siz.height, "round-down")
    return frame_region(siz, info.levels, fsiz, roff, rsiz)


def rebuild(cache: BinCache, cs: int = 0, layers: int | None = None) -> bytes:
    """A codestream from what the cache holds of codestream `cs`: its tile data-bins when it
    came as a JPT-stream, else its header and precinct data-bins."""
    s = cache.streams.get(cs)
    if s is None or not s.main_header.complete:
        raise StreamError(f"codestream {cs}: the main header has not been received")
    if s.tiles:
        return rebuild_from_tiles(bytes(s.main_header.data),
                                  {t: bytes(b.data) for t, b in s.tiles.items()})
    tiles = {t: bytes(b.data) for t, b in s.tile_headers.items() if b.complete}
    bins = {i: bytes(b.data) for i, b in s.precincts.items()}
    return rebuild_codestream(bytes(s.main_header.data), tiles, bins, max_layers=layers)


def _decode(data: bytes, rlevel: int, area, layers: int) -> list[np.ndarray]:
    fd, path = tempfile.mkstemp(suffix=".j2k")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        jp = glymur.Jp2k(path)
        bands = jp.read_bands(rlevel=rlevel, area=area, layer=layers)
        if isinstance(bands, np.ndarray):
            return [bands] if bands.ndim == 2 else [bands[..., i] for i in range(bands.shape[2])]
        return [np.asarray(b) for b in bands]
    finally:
        os.unlink(path)


def decode_region(cache: BinCache, region: Region, cs: int = 0, layers: int = 0,
                  comps: tuple[int, ...] | None = None) -> list[np.ndarray]:
    """The window's samples, one array per component (components may differ in size)."""
    s = cache.streams[cs]
    info = header_info(bytes(s.main_header.data))
    data = rebuild(cache, cs)
    if layers >= info.layers:
        layers = 0  # OpenJPEG's "all layers"
    x0, y0, x1, y1 = region.region
    try:
        if info.ht:
            raise OpenJPEGLibraryError("area decoding of HT code-blocks is unreliable")
        # OpenJPEG's complaints about an area it refuses ("Failed to decode component 1")
        # are no news when the whole frame is decoded instead: kept only if the area works.
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            arrays = _decode(data, region.discard, (y0, x0, y1, x1), layers)
        for note in notes:
            warnings.warn_explicit(note.message, note.category, note.filename, note.lineno)
    except OpenJPEGLibraryError:
        # OpenJPEG rejects some areas (e.g. a subsampled component left empty) and decodes
        # HT areas wrongly: decode the whole frame and crop instead.
        full = _decode(data, region.discard, None, layers)
        arrays = []
        for c, arr in enumerate(full):
            comp = info.siz.components[c]
            sx, sy = comp.dx << region.discard, comp.dy << region.discard
            bx, by = ceil_div(info.siz.xosiz, sx), ceil_div(info.siz.yosiz, sy)
            arrays.append(arr[ceil_div(y0, sy) - by:ceil_div(y1, sy) - by,
                              ceil_div(x0, sx) - bx:ceil_div(x1, sx) - bx])
    if comps is not None:
        arrays = [a for c, a in enumerate(arrays) if c in comps]
    return arrays


def to_image(arrays: list[np.ndarray]) -> np.ndarray:
    """Stacks same-sized components into (H, W) or (H, W, C)."""
    if len(arrays) == 1:
        return arrays[0]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise StreamError("components differ in size (subsampled); save them separately")
    return np.stack(arrays, axis=-1)
