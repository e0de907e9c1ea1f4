"""One image frame (a numpy array) to a browse-efficient raw JPEG 2000 or HTJ2K codestream.

`jpip prepare IN.dcm OUT.dcm` encodes DICOM frames here, one at a time, with the same rules as
`jpip prepare` for images (filetools/prepare.py: RPCL, precincts of 256 at the two highest
resolutions and 128 below, >= 5 levels with the lowest resolution <= 256 px, 64x64 code-blocks,
PLT markers; lossy: 8 quality layers from 2560:1 to 8:1) and TLM markers. The encoders are the
reference command-line programs, fed one frame through a temporary file:

- JPEG 2000 Part 1: OpenJPEG's `opj_compress` (Debian libopenjp2-tools), from raw samples with
  the frame's own precision and sign (glymur writes 8- and 16-bit unsigned samples only, while
  DICOM frames are often 12-bit or signed);
- HTJ2K: OpenJPH's `ojph_compress` (Debian openjph-tools). OpenJPH 0.9 writes neither PLT nor
  TLM markers and reads no signed samples, so:
  * PLT and TLM are added afterwards without re-encoding (`filetools.addplt.add_plt`, which
    checks that the packets did not change);
  * signed samples S of precision B are written as the unsigned samples S + 2^(B-1) and the
    sign bit of each component's Ssiz is then set. Exact: JPEG 2000 subtracts 2^(B-1) from
    unsigned samples before the transforms (T.800 G.1.2) and leaves signed ones alone, so both
    codings carry the same numbers; only the SIZ marker says how to read them back.
  DICOM's HTJ2K Lossless RPCL (.202) also wants the lowest resolution <= 64 px on its shorter
  side (PS3.5 10.18.1): `frame_coding(..., htj2k=True, lossless=True)` adds the levels for it.

Colour frames (3 samples) are encoded with the component transform: RCT when lossless, ICT
when lossy (DICOM's YBR_RCT / YBR_ICT).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .prepare import choose_levels, layer_rates, max_levels_for, precinct_sizes

OPJ_COMPRESS = "opj_compress"
OJPH_COMPRESS = "ojph_compress"
CODEBLOCK = 64
HTJ2K_RPCL_LOWEST = 64  # PS3.5 10.18.1: base resolution <= 64 wide or high
MAX_PRECISION = 16      # opj_compress and ojph_compress read at most 16-bit samples
# Offset of component 0's Ssiz from SOC: SOC, SIZ marker, Lsiz, Rsiz, 8 x 4 bytes, Csiz.
SIZ_SSIZ = 42


class EncoderMissing(RuntimeError):
    """The encoder program is not installed; the message says which package brings it."""


@dataclass(frozen=True)
class FrameCoding:
    """How every frame of an object is coded (all frames of a DICOM object share their size)."""

    lossless: bool
    htj2k: bool
    levels: int                         # decomposition levels (resolutions - 1)
    precincts: list[tuple[int, int]]    # (height, width), highest resolution first
    layers: int
    rates: list[float] | None           # per layer, coarse to fine; None = one lossless layer
    codeblock: int = CODEBLOCK

    @property
    def progression(self) -> str:
        return "RPCL"


def frame_coding(height: int, width: int, *, lossless: bool, htj2k: bool) -> FrameCoding:
    """The coding parameters of a frame of this size, by prepare.py's rules."""
    levels = choose_levels(height, width)
    if htj2k and lossless:
        shorter = min(height, width)
        while shorter / 2 ** levels > HTJ2K_RPCL_LOWEST and levels < max_levels_for(height, width):
            levels += 1
    if htj2k:
        layers, rates = 1, None  # OpenJPH codes one quality layer
    else:
        layers = 1 if lossless else 8
        rates = layer_rates(layers, lossless)
    return FrameCoding(lossless, htj2k, levels, precinct_sizes(levels), layers, rates)


def encoder_program(htj2k: bool) -> str:
    """The path of the encoder program; EncoderMissing when it is not installed."""
    name = OJPH_COMPRESS if htj2k else OPJ_COMPRESS
    path = shutil.which(name)
    if path is None:
        package = "openjph-tools" if htj2k else "libopenjp2-tools"
        raise EncoderMissing(f"{name} is not installed: install the Debian package {package} "
                             "(scripts/system-deps.sh does)")
    return path


def _check_samples(frame: np.ndarray, precision: int, signed: bool) -> None:
    if not 1 <= precision <= MAX_PRECISION:
        raise ValueError(f"{precision}-bit samples: the encoders read at most {MAX_PRECISION} bits")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3)):
        raise ValueError(f"a frame of shape {frame.shape}: expected rows x columns (x 3)")
    if signed:
        lo, hi = -(1 << precision - 1), (1 << precision - 1) - 1
    else:
        lo, hi = 0, (1 << precision) - 1
    if frame.size and (int(frame.min()) < lo or int(frame.max()) > hi):
        raise ValueError(f"samples from {int(frame.min())} to {int(frame.max())} do not fit "
                         f"{precision}-bit {'signed' if signed else 'unsigned'} samples")


def _planes(frame: np.ndarray) -> np.ndarray:
    """Components first (planar), as both raw readers want."""
    return frame[np.newaxis] if frame.ndim == 2 else np.moveaxis(frame, 2, 0)


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed (exit status {r.returncode}): {' / '.join(tail)}")


def _opj_encode(frame: np.ndarray, precision: int, signed: bool, coding: FrameCoding,
                work: Path) -> bytes:
    planes = _planes(frame)
    comps, h, w = planes.shape
    dtype = ("<i2" if signed else "<u2") if precision > 8 else ("i1" if signed else "u1")
    raw = work / "frame.rawl"  # .rawl: little-endian raw samples, component after component
    planes.astype(dtype, copy=False).tofile(raw)
    out = work / "frame.j2k"
    cmd = [encoder_program(False), "-i", str(raw), "-o", str(out),
           "-F", f"{w},{h},{comps},{precision},{'s' if signed else 'u'}",
           "-n", str(coding.levels + 1), "-p", coding.progression,
           "-c", ",".join(f"[{pw},{ph}]" for ph, pw in coding.precincts),
           "-b", f"{coding.codeblock},{coding.codeblock}", "-PLT", "-TLM",
           "-mct", "1" if comps == 3 else "0"]
    if not coding.lossless:
        cmd.append("-I")
    if coding.rates is not None:
        cmd += ["-r", ",".join(f"{r:g}" for r in reversed(coding.rates))]
    _run(cmd, "opj_compress")
    return out.read_bytes()


def _ojph_input(planes: np.ndarray, precision: int, work: Path) -> tuple[Path, list[str]]:
    """The frame as a file ojph_compress reads, and the options describing it: one component
    as raw samples (.yuv), three as a PPM (its colour transform works on PPM input only)."""
    comps, h, w = planes.shape
    if comps == 1:
        path = work / "frame.yuv"
        planes[0].astype("<u2" if precision > 8 else "u1", copy=False).tofile(path)
        return path, ["-dims", f"{{{w},{h}}}", "-num_comps", "1", "-signed", "false",
                      "-bit_depth", str(precision), "-downsamp", "{1,1}"]
    path = work / "frame.ppm"
    samples = np.moveaxis(planes, 0, 2).astype(">u2" if precision > 8 else "u1", copy=False)
    with open(path, "wb") as f:
        f.write(f"P6\n{w} {h}\n{(1 << precision) - 1}\n".encode("ascii"))
        f.write(np.ascontiguousarray(samples).tobytes())
    return path, []


def _ojph_encode(frame: np.ndarray, precision: int, signed: bool, coding: FrameCoding,
                 work: Path) -> bytes:
    from .addplt import add_plt

    planes = _planes(frame)
    if signed:  # see the module docstring: same coefficients, sign set in SIZ afterwards
        planes = planes.astype(np.int32) + (1 << precision - 1)
    source, describe = _ojph_input(planes, precision, work)
    coded = work / "frame.j2c"
    precincts = ",".join(f"{{{pw},{ph}}}" for ph, pw in reversed(coding.precincts))
    cmd = [encoder_program(True), "-i", str(source), "-o", str(coded), *describe,
           "-num_decomps", str(coding.levels), "-prog_order", coding.progression,
           "-block_size", f"{{{coding.codeblock},{coding.codeblock}}}",
           "-precincts", precincts, "-reversible", "true" if coding.lossless else "false"]
    if planes.shape[0] == 3:
        cmd += ["-colour_trans", "true"]
    _run(cmd, "ojph_compress")
    if signed:
        data = bytearray(coded.read_bytes())
        for c in range(planes.shape[0]):
            data[SIZ_SSIZ + 3 * c] |= 0x80
        coded.write_bytes(bytes(data))
    marked = work / "frame-plt.j2c"
    add_plt(coded, marked)
    return marked.read_bytes()


def encode_frame(frame: np.ndarray, precision: int, signed: bool, coding: FrameCoding,
                 workdir: str | Path | None = None) -> bytes:
    """The raw codestream (SOC ... EOC) of one frame: rows x columns, or rows x columns x 3
    (interleaved colour). `precision` is the sample precision written in SIZ (DICOM's Bits
    Stored); every sample must fit it."""
    _check_samples(frame, precision, signed)
    with tempfile.TemporaryDirectory(prefix="jpip-frame-", dir=workdir) as tmp:
        encode = _ojph_encode if coding.htj2k else _opj_encode
        return encode(frame, precision, signed, coding, Path(tmp))
