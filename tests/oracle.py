"""OpenJPEG (through glymur) as the oracle: decode a codestream's bytes to per-component arrays."""
from __future__ import annotations

import os
import tempfile

import glymur
import numpy as np

glymur.set_option("lib.num_threads", 1)  # one thread: decodes are reproducible


def decode_codestream(data: bytes, *, rlevel: int = 0,
                      area: tuple[int, int, int, int] | None = None,
                      layers: int = 0) -> list[np.ndarray]:
    """Decodes raw codestream bytes; `area` is (y0, x0, y1, x1) on the reference grid,
    `layers` the number of quality layers to decode (0 = all). One array per component."""
    fd, path = tempfile.mkstemp(suffix=".j2k")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        jp = glymur.Jp2k(path)
        if layers:
            jp.layer = layers
        bands = jp.read_bands(rlevel=rlevel, area=area, layer=layers)
        if isinstance(bands, np.ndarray):
            return [bands] if bands.ndim == 2 else [bands[..., i] for i in range(bands.shape[2])]
        return [np.asarray(b) for b in bands]
    finally:
        os.unlink(path)


def assert_same_pixels(a: list[np.ndarray], b: list[np.ndarray], what: str = "") -> int:
    """Asserts equal components, sample for sample; returns how many samples were compared
    (0 is possible: a 1x1 window may hold no sample of a subsampled component). Two empty
    component lists are an error, not a match: an oracle that returns nothing has failed."""
    assert a, f"{what}: no components to compare"
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} components"
    for c, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.shape == y.shape, f"{what}: component {c} shape {x.shape} vs {y.shape}"
        if not np.array_equal(x, y):
            diff = np.argwhere(x != y)
            raise AssertionError(f"{what}: component {c}: {len(diff)} pixels differ, first at "
                                 f"{diff[0].tolist()}")
    return sum(int(x.size) for x in a)


def window_crops(arrays: list[np.ndarray], siz, discard: int, region: tuple[int, int, int, int],
                 comps: tuple[int, ...] | None = None) -> list[np.ndarray]:
    """The samples of a reference-grid region [x0, x1) x [y0, y1) in each component of a
    full-frame decode at `discard` levels (component arrays as decode_codestream returns)."""
    x0, y0, x1, y1 = region
    out = []
    for c, arr in enumerate(arrays):
        if comps is not None and c not in comps:
            continue
        comp = siz.components[c]
        sx, sy = comp.dx << discard, comp.dy << discard
        bx, by = -(-siz.xosiz // sx), -(-siz.yosiz // sy)
        u0, u1 = -(-x0 // sx) - bx, -(-x1 // sx) - bx
        v0, v1 = -(-y0 // sy) - by, -(-y1 // sy) - by
        out.append(arr[v0:v1, u0:u1])
    return out
