"""`jpip prepare`: encode an image as a JPEG 2000 file that browses well over JPIP.

What "browses well" means here, and why:
  * resolution levels from the image size (>= 5, and enough that the lowest resolution's longer
    side is <= 256 px), so an overview costs a few kilobytes;
  * RPCL progression with precincts of 256x256 at the two highest resolutions and 128x128
    below, so a zoomed-in window maps onto few, small precinct data-bins;
  * 64x64 code-blocks; several quality layers when lossy (coarse-to-fine rates), one lossless
    layer (5/3 reversible wavelet) with `lossless=True`;
  * PLT markers in every tile-part header, so a server can index packets without parsing them;
  * no tiling, unless the image is above a size threshold: then it is written tile by tile
    through glymur's tile writer, reading the input a strip/tile at a time, so memory stays
    bounded by a row of tiles (a single tile for raw inputs: .npy, uncompressed TIFF, PGM/PPM).

TLM markers are not written: glymur 0.14.8 sends PLT=NO along with TLM=YES, so asking for both
loses the PLT markers (shared/corpus/make_large.py shows a workaround), and the server
locates tile-parts by walking SOT markers anyway.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .imageio import ImageSource, open_source
from .outputs import check_output, output_problem

ProgressCallback = Callable[[int, int], None]

PROGRESSIONS = ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL")
JP2_OUTPUTS = {".jp2", ".jpx"}  # JP2 file format wrapper
J2K_OUTPUTS = {".j2k", ".j2c", ".jpc"}  # raw codestream
DEFAULT_TILE_THRESHOLD_PIXELS = 64_000_000
MIN_LEVELS = 5
LOWEST_RESOLUTION_MAX = 256
MAX_LEVELS = 32  # OpenJPEG allows at most 33 resolutions
LOSSY_LAST_RATIO = 8  # final layer at 8:1, e.g. 3 bits/pixel for 8-bit RGB
LOSSY_RATIO_STEP = 40  # the layer before the last is at 40:1, then doubling


@dataclass
class PrepareReport:
    output: str
    width: int
    height: int
    components: int
    bit_depth: int
    levels: int  # wavelet decomposition levels; the file has levels + 1 resolutions
    layers: int
    lossless: bool
    progression: str
    precincts: list[tuple[int, int]]  # (height, width), highest resolution first
    codeblock: tuple[int, int]
    rates: list[float] | None  # compression ratio of each layer (1 = lossless); None = lossless
    tiled: bool
    tiled_reason: str
    tile_size: tuple[int, int] | None  # (height, width)
    bytes: int = 0
    tile_parts: int = 0
    plt_segments: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_rss_scope: str = "process"  # "prepare" when the peak could be reset at the start
    input_note: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def resolutions(self) -> int:
        return self.levels + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resolutions"] = self.resolutions
        return d

    def summary(self) -> str:
        prec = "/".join(f"{w}x{h}" for h, w in _distinct_runs(self.precincts))
        mode = "lossless 5/3" if self.lossless else "lossy 9/7"
        tiles = (f"tiled {self.tile_size[1]}x{self.tile_size[0]}" if self.tiled and self.tile_size
                 else "untiled")
        lines = [
            f"wrote {self.output} ({self.bytes:,} bytes)",
            f"  image      {self.width}x{self.height}, {self.components} component(s), "
            f"{self.bit_depth}-bit",
            f"  coding     {mode}, {self.layers} layer(s), {self.progression}, "
            f"{self.resolutions} resolutions ({self.levels} levels), precincts {prec}, "
            f"code-blocks {self.codeblock[1]}x{self.codeblock[0]}",
            f"  layout     {tiles}: {self.tiled_reason}",
            f"  markers    {self.tile_parts} tile-part(s), {self.plt_segments} PLT segment(s)",
            f"  cost       {self.seconds:.1f} s, peak RSS {self.peak_rss_mb:.0f} MB "
            f"({self.peak_rss_scope})",
        ]
        lines += [f"  note       {n}" for n in self.notes]
        return "\n".join(lines)


def _distinct_runs(sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in sizes:
        if not out or out[-1] != s:
            out.append(s)
    return out


# --------------------------------------------------------------------------- parameter rules
def max_levels_for(height: int, width: int) -> int:
    """OpenJPEG refuses more levels than the (nominal) tile's shorter side can halve."""
    return min(MAX_LEVELS, int(math.floor(math.log2(max(1, min(height, width))))))


def choose_levels(height: int, width: int, tile: tuple[int, int] | None = None) -> int:
    """>= 5 levels, and enough that the lowest resolution's longer side is <= 256 px; capped by
    what the tile (the whole image when untiled) can take."""
    longer = max(height, width)
    need = math.ceil(math.log2(longer / LOWEST_RESOLUTION_MAX)) if longer > 256 else 0
    th, tw = tile if tile else (height, width)
    return min(max(MIN_LEVELS, need), max_levels_for(th, tw))


def precinct_sizes(levels: int, high: int = 256, low: int = 128) -> list[tuple[int, int]]:
    """`high` at the two highest resolutions, `low` below, highest resolution first.

    Every resolution is listed: OpenJPEG would otherwise halve the last size for each further
    resolution."""
    n = levels + 1
    return [(high, high)] * min(2, n) + [(low, low)] * max(0, n - 2)


def layer_rates(layers: int, lossless: bool) -> list[float] | None:
    """Compression ratios per layer, coarse to fine. Lossy: ..., 160, 80, 40, 8 (8 layers go up
    to 2560:1, a few KB for an overview). Lossless: ..., 16, 8, then 1 (= lossless)."""
    if layers < 1:
        raise ValueError("layers must be >= 1")
    if lossless:
        if layers == 1:
            return None  # OpenJPEG's default: one lossless layer
        return [float(8 * 2 ** (layers - 2 - i)) for i in range(layers - 1)] + [1.0]
    return [float(LOSSY_RATIO_STEP * 2 ** (layers - 2 - i)) for i in range(layers - 1)] + [
        float(LOSSY_LAST_RATIO)]


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _validate(progression: str, precinct_high: int, precinct_low: int, codeblock: int,
              tile_size: int, layers: int | None) -> str:
    prog = progression.upper()
    if prog not in PROGRESSIONS:
        raise ValueError(f"progression must be one of {', '.join(PROGRESSIONS)}")
    if not (_is_pow2(codeblock) and 4 <= codeblock <= 64):
        raise ValueError("code-block size must be a power of two from 4 to 64")
    for p in (precinct_high, precinct_low):
        if not (_is_pow2(p) and 4 <= p <= 32768):
            raise ValueError(f"precinct size {p} must be a power of two from 4 to 32768")
    if precinct_high < 2 * codeblock:
        raise ValueError("the highest-resolution precinct must be at least twice the code-block")
    if not (_is_pow2(tile_size) and tile_size >= 64):
        raise ValueError("tile size must be a power of two >= 64")
    if layers is not None and not 1 <= layers <= 100:
        raise ValueError("layers must be between 1 and 100")
    return prog


# --------------------------------------------------------------------------- memory accounting
def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0) so the peak is this call's."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


# --------------------------------------------------------------------------- output inspection
def scan_markers(path: str | os.PathLike[str]) -> dict[str, int]:
    """Count tile-parts and PLT/TLM segments by walking the codestream's headers (seeks only;
    packet data is skipped, so this is cheap on big files)."""
    counts = {"tile_parts": 0, "PLT": 0, "TLM": 0}
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        start, end = _codestream_range(fh, size)
        pos = start + 2  # after SOC
        while pos + 4 <= end:
            fh.seek(pos)
            marker, length = _u16_pair(fh.read(4))
            if marker == 0xFFD9:  # EOC
                break
            if marker == 0xFF90:  # SOT: walk this tile-part's header up to SOD, then jump
                counts["tile_parts"] += 1
                fh.seek(pos + 6)
                psot = int.from_bytes(fh.read(4), "big")
                tp_end = pos + psot if psot else end
                q = pos + 2 + length
                while q + 4 <= tp_end:
                    fh.seek(q)
                    m, ln = _u16_pair(fh.read(4))
                    if m == 0xFF93:  # SOD
                        break
                    counts["PLT"] += m == 0xFF58
                    q += 2 + ln
                pos = tp_end
                continue
            counts["TLM"] += marker == 0xFF55
            pos += 2 + length
    return counts


def _u16_pair(b: bytes) -> tuple[int, int]:
    if len(b) < 4:
        return 0xFFD9, 0
    return int.from_bytes(b[:2], "big"), int.from_bytes(b[2:4], "big")


def _codestream_range(fh, size: int) -> tuple[int, int]:
    """(start, end) of the codestream: the whole file for J2K, the jp2c box for JP2."""
    fh.seek(0)
    if fh.read(2) == b"\xff\x4f":
        return 0, size
    pos = 0
    while pos + 8 <= size:
        fh.seek(pos)
        head = fh.read(16)
        lbox, tbox = int.from_bytes(head[:4], "big"), head[4:8]
        hdr = 8
        if lbox == 1:
            lbox, hdr = int.from_bytes(head[8:16], "big"), 16
        elif lbox == 0:
            lbox = size - pos
        if tbox == b"jp2c":
            return pos + hdr, pos + lbox
        if lbox < hdr:
            break
        pos += lbox
    raise ValueError(f"{fh.name}: no codestream found")


# --------------------------------------------------------------------------- encoding
def _tiles(src: ImageSource, th: int, tw: int) -> Iterator[np.ndarray]:
    """Tiles in raster order. Raw inputs are read one tile at a time; the others one row of
    tiles at a time (their layout only allows reading full-width strips)."""
    h, w = src.height, src.width
    if src.random_access:
        for r0 in range(0, h, th):
            for c0 in range(0, w, tw):
                yield src.read_region(r0, min(r0 + th, h), c0, min(c0 + tw, w))
    else:
        for band in src.strips(th):
            for c0 in range(0, w, tw):
                yield band[:, c0:c0 + tw]


def _check_dtype(dtype: np.dtype, path: str) -> int:
    if dtype == np.uint8:
        return 8
    if dtype == np.uint16:
        return 16
    raise ValueError(f"{path}: {dtype} samples are not supported (glymur writes uint8 and uint16); "
                     "convert the image to unsigned 8- or 16-bit first")


def prepare(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    lossless: bool = False,
    levels: int | None = None,
    layers: int | None = None,
    precinct_high: int = 256,
    precinct_low: int = 128,
    codeblock: int = 64,
    progression: str = "RPCL",
    tile_threshold_pixels: int = DEFAULT_TILE_THRESHOLD_PIXELS,
    tile_size: int = 4096,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
) -> PrepareReport:
    """Encode `input_path` (PNG, TIFF, PGM/PPM, .npy or JPEG 2000) as a browse-efficient JP2
    (.jp2/.jpx) or raw codestream (.j2k/.j2c/.jpc), chosen by the output's extension.

    Images above `tile_threshold_pixels` are written tile by tile (`tile_size` square tiles)
    with bounded memory. `progress(done, total)` is called as tiles are written (once at the
    start and once at the end for an untiled image). The output is written to a temporary file
    beside it and renamed into place, so a server never sees a half-written file."""
    import glymur

    out = Path(output_path)
    ext = out.suffix.lower()
    if ext not in JP2_OUTPUTS | J2K_OUTPUTS:
        raise ValueError(f"output must end in .jp2/.jpx (JP2) or .j2k/.j2c/.jpc (codestream), "
                         f"not {out.name!r}")
    prog = _validate(progression, precinct_high, precinct_low, codeblock, tile_size, layers)
    check_output(out)
    scope = "prepare" if _reset_peak_rss() else "process"
    t0 = time.perf_counter()
    notes: list[str] = []

    with open_source(input_path) as src:
        h, w, comps = src.height, src.width, src.components
        bits = _check_dtype(src.dtype, str(input_path))

        # tiling: only when the image is big enough that holding it whole would cost too much
        pixels = h * w
        tile: tuple[int, int] | None = None
        if pixels > tile_threshold_pixels:
            t = (min(tile_size, h), min(tile_size, w))  # glymur refuses tiles larger than the image
            if t == (h, w):
                reason = (f"{pixels / 1e6:.1f} Mpixel is above the {tile_threshold_pixels / 1e6:g} "
                          f"Mpixel threshold, but fits in one {tile_size}x{tile_size} tile")
            else:
                tile = t
                reason = (f"{pixels / 1e6:.1f} Mpixel is above the {tile_threshold_pixels / 1e6:g} "
                          f"Mpixel threshold: written tile by tile to bound memory")
                if not src.bounded:
                    notes.append(f"input format is decoded whole ({src.note}); only the encoder's "
                                 "memory is bounded")
        else:
            reason = (f"{pixels / 1e6:.1f} Mpixel is within the {tile_threshold_pixels / 1e6:g} "
                      "Mpixel threshold")

        cap_h, cap_w = tile if tile else (h, w)
        if levels is None:
            nlev = choose_levels(h, w, tile)
            if nlev < MIN_LEVELS or max(h, w) / 2 ** nlev > LOWEST_RESOLUTION_MAX:
                notes.append(f"levels limited to {nlev} by the {cap_h}x{cap_w} "
                             f"{'tile' if tile else 'image'} size")
        else:
            nlev = levels
            if not 0 <= nlev <= max_levels_for(cap_h, cap_w):
                raise ValueError(f"{nlev} levels is too many for a {'tile' if tile else 'image'} "
                                 f"of {cap_h}x{cap_w} (at most {max_levels_for(cap_h, cap_w)})")
        nlayers = layers if layers is not None else (1 if lossless else 8)
        rates = layer_rates(nlayers, lossless)
        psizes = precinct_sizes(nlev, precinct_high, precinct_low)

        kwargs = dict(
            numres=nlev + 1, prog=prog, psizes=psizes, cbsize=(codeblock, codeblock),
            irreversible=not lossless, plt=True,
        )
        if rates is not None:
            kwargs["cratios"] = rates
        if tile:
            kwargs["tilesize"] = tile

        # glymur picks JP2 or J2K from the name, so the temporary file keeps the extension
        tmp = out.with_name(f".{out.stem}.part-{os.getpid()}{out.suffix}")
        old_threads = glymur.get_option("lib.num_threads")
        try:
            try:
                glymur.set_option("lib.num_threads", threads or os.cpu_count() or 1)
            except RuntimeError:
                notes.append("OpenJPEG without thread support: encoding on one thread")
            if tile is None:
                if progress:
                    progress(0, 1)
                data = src.read_all()
                glymur.Jp2k(str(tmp), data=data, **kwargs)
                del data
                if progress:
                    progress(1, 1)
            else:
                shape = (h, w) if comps == 1 else (h, w, comps)
                jp2 = glymur.Jp2k(str(tmp), shape=shape, **kwargs)
                writers = iter(jp2.get_tilewriters())
                total = math.ceil(h / tile[0]) * math.ceil(w / tile[1])
                if progress:
                    progress(0, total)
                for done, data in enumerate(_tiles(src, *tile), 1):
                    next(writers)[:] = data
                    if progress:
                        progress(done, total)
                # one more next() makes glymur finalise the file (a `for` would restart it)
                if next(writers, None) is not None:
                    raise RuntimeError("fewer tiles read than the tile writer expects")
            os.replace(tmp, out)
        finally:
            glymur.set_option("lib.num_threads", old_threads)
            if tmp.exists():
                tmp.unlink()

    counts = scan_markers(out)
    return PrepareReport(
        output=str(out), width=w, height=h, components=comps, bit_depth=bits, levels=nlev,
        layers=nlayers, lossless=lossless, progression=prog, precincts=psizes,
        codeblock=(codeblock, codeblock), rates=rates, tiled=tile is not None,
        tiled_reason=reason, tile_size=tile, bytes=out.stat().st_size,
        tile_parts=counts["tile_parts"], plt_segments=counts["PLT"],
        seconds=time.perf_counter() - t0, peak_rss_mb=_peak_rss_mb(), peak_rss_scope=scope,
        input_note=src.note, notes=notes,
    )


# --------------------------------------------------------------------------- command line
def _precincts_arg(text: str) -> tuple[int, int]:
    try:
        vals = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected HIGH,LOW, e.g. 256,128") from None
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2:
        raise argparse.ArgumentTypeError("expected HIGH,LOW, e.g. 256,128")
    return vals[0], vals[1]


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `jpip prepare INPUT OUTPUT [...]`."""
    parser.add_argument("input", help="PNG, TIFF, PGM/PPM, .npy or JPEG 2000 image, or a DICOM "
                                      "file (any transfer syntax pydicom decodes)")
    parser.add_argument("output", help="output .jp2 (or .j2k for a raw codestream); a DICOM file "
                                       "(.dcm) for a DICOM input")
    parser.add_argument("--lossless", action="store_true",
                        help="reversible 5/3 wavelet, last layer lossless (default: lossy 9/7)")
    parser.add_argument("--levels", type=int, default=None, metavar="N",
                        help="decomposition levels (default: >= 5, lowest resolution <= 256 px)")
    parser.add_argument("--layers", type=int, default=None, metavar="N",
                        help="quality layers (default: 8 lossy, 1 lossless)")
    parser.add_argument("--precincts", type=_precincts_arg, default=(256, 128), metavar="HIGH,LOW",
                        help="precinct size at the two highest resolutions, and below "
                             "(default: 256,128)")
    parser.add_argument("--codeblock", type=int, default=64, metavar="N",
                        help="code-block size (default: 64)")
    parser.add_argument("--progression", default="RPCL", type=str.upper, choices=PROGRESSIONS,
                        help="progression order (default: RPCL)")
    parser.add_argument("--tile-size", type=int, default=4096, metavar="N",
                        help="tile size when the image is written tile by tile (default: 4096)")
    parser.add_argument("--tile-threshold", type=float,
                        default=DEFAULT_TILE_THRESHOLD_PIXELS / 1e6, metavar="MPIXELS",
                        help="write tile by tile above this many megapixels (default: 64)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="encoder threads (default: all CPUs); DICOM input: frames "
                             "encoded at once (default: up to 4)")
    parser.add_argument("--htj2k", action="store_true",
                        help="DICOM input: HTJ2K (OpenJPH) instead of JPEG 2000 Part 1")
    parser.add_argument("--offset-table", choices=("auto", "basic", "extended"), default="auto",
                        help="DICOM input: the offset table written (default: auto, the "
                             "Extended Offset Table from 2 GiB of uncompressed frames)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


# Options that shape an image's coding: DICOM frames follow fixed rules (filetools/frame_encode).
IMAGE_ONLY_DEFAULTS = {"levels": None, "layers": None, "precincts": (256, 128), "codeblock": 64,
                       "progression": "RPCL", "tile_size": 4096,
                       "tile_threshold": DEFAULT_TILE_THRESHOLD_PIXELS / 1e6}


# What a DICOM input's output may be called: .dcm, .dicom, or no suffix (as in DICOMDIR
# folders); a JPEG 2000 name, or any other, would hide what the file holds.
DICOM_OUTPUT_SUFFIXES = (".dcm", ".dicom", "")


def _dispatch_dicom(args: argparse.Namespace, progress) -> int | None:
    """Runs `jpip prepare` on a DICOM input (None when the input is not DICOM)."""
    from dicom.part10 import is_part10_file

    if not is_part10_file(args.input):
        if getattr(args, "htj2k", False):
            print("jpip prepare: --htj2k is for DICOM inputs (IN.dcm OUT.dcm)", file=sys.stderr)
            return 2
        return None
    suffix = Path(args.output).suffix.lower()
    if suffix not in DICOM_OUTPUT_SUFFIXES:
        # Never DICOM bytes under another format's name (a .jp2 a viewer cannot open).
        print(f"jpip prepare: {args.output}: a DICOM input is re-encoded into a DICOM file: "
              "name the output .dcm (the server streams its frames as it streams a .jp2's), "
              "or for a .jp2 save the frame as .tif or .npy first and prepare that",
              file=sys.stderr)
        return 2
    changed = [k for k, v in IMAGE_ONLY_DEFAULTS.items() if getattr(args, k, v) != v]
    if changed:
        names = ", ".join("--" + k.replace("_", "-") for k in changed)
        print(f"jpip prepare: {names}: not for DICOM inputs, whose frames follow fixed rules "
              "(RPCL, precincts 256/128, >= 5 levels, PLT, TLM)", file=sys.stderr)
        return 2
    from .dicom_prepare import run_prepare_dicom

    frames = (lambda done, total: progress(done, total)) if progress else None
    return run_prepare_dicom(args, frames)


def _usage_problem(args: argparse.Namespace) -> str | None:
    """A mistake in the command line (the input, the output, an option value), found before
    any work: exit status 2, as every `jpip` command."""
    inp = Path(args.input)
    if not inp.exists():
        return f"{args.input}: no such file"
    if inp.is_dir():
        return f"{args.input} is a folder: give an image file"
    if not os.access(inp, os.R_OK):
        return f"{args.input}: not readable"
    if problem := output_problem(args.output):
        return f"cannot write {args.output}: {problem}"
    return None


def _image_usage_problem(args: argparse.Namespace) -> str | None:
    """The same for an image (not DICOM) input: the output's format and the coding options."""
    out = Path(args.output)
    if out.suffix.lower() not in JP2_OUTPUTS | J2K_OUTPUTS:
        return (f"output must end in .jp2/.jpx (JP2) or .j2k/.j2c/.jpc (codestream), "
                f"not {out.name!r}")
    try:
        _validate(args.progression, args.precincts[0], args.precincts[1], args.codeblock,
                  args.tile_size, args.layers)
    except ValueError as e:
        return str(e)
    return None


def _one_line(e: Exception, args: argparse.Namespace) -> str:
    """An error as one line: OpenJPEG's come as several 'OpenJPEG library error:' lines, its
    write errors with no message at all."""
    text = str(e)
    if not text:
        return f"writing {args.output} failed (the encoder gave no reason: is the disk full?)"
    lines = [line.replace("OpenJPEG library error:", "").strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if "OpenJPEG library error" in text:
        return f"OpenJPEG cannot decode or encode the image (is {args.input} truncated or " \
               f"corrupt?): {'; '.join(lines)}"
    return "; ".join(lines)


def run_prepare(args: argparse.Namespace, progress: ProgressCallback | None = None) -> int:
    """Run `jpip prepare` from parsed arguments; prints the report; returns an exit status."""
    if (problem := _usage_problem(args)) is not None:
        print(f"jpip prepare: {problem}", file=sys.stderr)
        return 2
    status = _dispatch_dicom(args, progress)
    if status is not None:
        return status
    if (problem := _image_usage_problem(args)) is not None:
        print(f"jpip prepare: {problem}", file=sys.stderr)
        return 2
    # glymur's warnings (a box longer than the file...) name its own source lines; a
    # truncated input ends in an error told below as one line.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _run_prepare_image(args, progress)


def _run_prepare_image(args: argparse.Namespace, progress: ProgressCallback | None) -> int:
    try:
        report = prepare(
            args.input, args.output, lossless=args.lossless, levels=args.levels,
            layers=args.layers, precinct_high=args.precincts[0], precinct_low=args.precincts[1],
            codeblock=args.codeblock, progression=args.progression,
            tile_threshold_pixels=int(args.tile_threshold * 1e6), tile_size=args.tile_size,
            threads=args.threads, progress=progress,
        )
    except (ValueError, OSError, RuntimeError) as e:
        print(f"jpip prepare: {_one_line(e, args)}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict()) if args.json else report.summary())
    return 0


def _stderr_progress(done: int, total: int) -> None:
    end = "\n" if done >= total else ""
    print(f"\rencoding: {done}/{total} tile(s) or frame(s)", end=end, file=sys.stderr,
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m filetools.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(parser)
    args = parser.parse_args(argv)
    return run_prepare(args, _stderr_progress if sys.stderr.isatty() else None)


if __name__ == "__main__":
    sys.exit(main())
