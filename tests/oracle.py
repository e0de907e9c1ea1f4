"""The tests' oracle: OpenJPEG's own command-line decoder, `opj_decompress`.

It is deliberately not the client's decode (client/decode.py drives libopenjp2 through glymur
and crops with its own arithmetic): the reference pixels come from Debian's `opj_decompress`,
one PGX file per component (exact sample values, any depth, sign and subsampling), read here.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import tempfile

import numpy as np

OPJ_DECOMPRESS = "opj_decompress"
_PGX_HEADER = re.compile(rb"PG[ \t]*(ML|LM)[ \t]*([+-]?)[ \t]*(\d+)[ \t]+(\d+)[ \t]+(\d+)\r?\n")


class OracleError(RuntimeError):
    """opj_decompress refused the codestream or the area."""


def read_pgx(path: str) -> np.ndarray:
    """One component from a PGX file: "PG ML|LM [+|-] depth width height" and raw samples."""
    with open(path, "rb") as f:
        data = f.read()
    m = _PGX_HEADER.match(data)
    if m is None:
        raise OracleError(f"{path}: not a PGX file")
    order, sign, depth, width, height = m.groups()
    depth, width, height = int(depth), int(width), int(height)
    nbytes = 1 if depth <= 8 else 2 if depth <= 16 else 4
    kind = "i" if sign == b"-" else "u"
    dtype = np.dtype(f"{'>' if order == b'ML' else '<'}{kind}{nbytes}")
    samples = np.frombuffer(data, dtype, width * height, m.end())
    return samples.reshape(height, width).astype(dtype.newbyteorder("="))


def _guessed_sycc(data: bytes) -> bool:
    """True when opj_decompress would take the image for 4:2:0 or 4:2:2 sYCC and convert it to
    RGB (it guesses so for three components with the second one subsampled, and converts those
    two layouts): the oracle then decodes the components one by one, so the samples stay those
    of the codestream. Such images cannot use a component transform (T.800 G.1 needs the three
    components the same size), so nothing else changes."""
    if len(data) < 51 or data[:4] != b"\xff\x4f\xff\x51":
        return False
    (csiz,) = struct.unpack_from(">H", data, 40)
    if csiz != 3:
        return False
    (dx0, dy0), (dx1, dy1), (dx2, dy2) = ((data[43 + 3 * c], data[44 + 3 * c]) for c in range(3))
    return (dx0, dy0, dx1, dx2) == (1, 1, 2, 2) and dy1 == dy2 and dy1 in (1, 2)


def decode_codestream(data: bytes, *, rlevel: int = 0,
                      area: tuple[int, int, int, int] | None = None,
                      layers: int = 0) -> list[np.ndarray]:
    """Decodes raw codestream bytes; `area` is (y0, x0, y1, x1) on the reference grid,
    `layers` the number of quality layers to decode (0 = all). One array per component."""
    if _guessed_sycc(data):
        return [_run(data, rlevel, area, layers, component=c)[0] for c in range(3)]
    return _run(data, rlevel, area, layers)


def _run(data: bytes, rlevel: int, area: tuple[int, int, int, int] | None, layers: int,
         component: int | None = None) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="oracle-") as tmp:
        src = os.path.join(tmp, "in.j2k")
        with open(src, "wb") as f:
            f.write(data)
        cmd = [OPJ_DECOMPRESS, "-i", src, "-o", os.path.join(tmp, "out.pgx")]
        if rlevel:
            cmd += ["-r", str(rlevel)]
        if layers:
            cmd += ["-l", str(layers)]
        if area is not None:
            y0, x0, y1, x1 = area
            cmd += ["-d", f"{x0},{y0},{x1},{y1}"]
        if component is not None:
            cmd += ["-c", str(component)]
        proc = subprocess.run(cmd, capture_output=True, timeout=300)
        outputs = sorted((f for f in os.listdir(tmp) if f.startswith("out") and
                          f.endswith(".pgx")), key=lambda f: int(f[4:-4] or 0))
        if proc.returncode != 0 or not outputs:
            # The library's own messages ("[ERROR] Error reading COC marker") name the cause.
            text = (proc.stderr + proc.stdout).decode(errors="replace")
            errors = [line.strip() for line in text.splitlines() if "ERROR" in line]
            raise OracleError(f"opj_decompress failed ({proc.returncode}): "
                              + "; ".join(errors or [text.strip()[-500:]]))
        return [read_pgx(os.path.join(tmp, f)) for f in outputs]


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
    full-frame decode at `discard` levels (component arrays as decode_codestream returns).

    Written out here on purpose (T.800 B-12/B-14: a sample u of component c at discard d covers
    reference-grid x with ceil(x / (dx 2^d)) = u), not taken from the code under test."""
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
