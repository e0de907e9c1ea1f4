"""Real encodings from encoders our corpus under-represents, and the check every one must pass.

Two encoders besides OpenJPEG's `opj_compress`, both from Debian:
- Grok 10 (`grk_compress`, grokj2k-tools): every Part 1 option a real encoder uses (the five
  progressions, POC, tiles and tile offsets, tile-parts split by R/L/C, precincts per
  resolution, code-block sizes, several layers, SOP/EPH, PLT (-L), TLM (-X), HT (-M 64),
  irreversible, JP2 or raw codestream, signed and 12/16-bit raw input);
- OpenJPH 0.9 (`ojph_compress`, openjph-tools): HTJ2K codestreams (.j2c) with its own layout
  of the same options, and the only one of the two that takes subsampled raw input (4:2:0).
  OpenJPH 0.9 has no tile-part, TLM or PLT option (those came in later versions), reads
  raw (.yuv) input of 1 or 3 components only and no signed samples as written.

What the tools cannot write here, and so is not swept: Grok 10 fails to load subsampled raw
input (-F ...@1x1:2x2:2x2: "Unable to load raw file"), refuses POC together with tiles
("Problem with specified progression order changes"), crashes (SIGSEGV) writing PLT with
-r rates (so PLT cases use -q), and its -m custom MCT reported no matrix in the two
matrix files tried (Part 2 MCT is therefore not swept).

Each case is an image spec and the encoder's options; `encode` writes the image (gradients plus
noise, so that no decode is trivial) in the form the tool reads and runs the tool. `check_file`
serves the file through the real server app and compares every window of a set (whole frame at
several reductions, random regions at several reductions, frame sizes between resolutions,
byte-limited responses, component subsets, layer limits, all in one session) with OpenJPEG's
own decode of the original file (tests/oracle.py).

tests/interop/test_encoders.py runs a bounded subset (`QUICK`); `make sweep-encoders` runs
every case (`JPIP_ENCODER_SWEEP=full`).
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.api import JPIPClient
from client.decode import rebuild
from codestream.parse import parse_codestream, tile_coding
from codestream.source import Source, build_source
from dicom.part10 import is_part10_file
from dicom.source import open_dicom
from jpip.window import frame_size, resolve_window
from tests.oracle import OracleError, assert_same_pixels, decode_codestream, window_crops

GRK_COMPRESS = "grk_compress"
OJPH_COMPRESS = "ojph_compress"


@dataclass(frozen=True)
class Picture:
    """The samples to encode: `comps` components of `bits` bits, component c subsampled by
    `sub[c]` (dx, dy) on a width x height reference grid."""

    width: int
    height: int
    comps: int = 1
    bits: int = 8
    signed: bool = False
    sub: tuple[tuple[int, int], ...] | None = None

    def subsampling(self) -> tuple[tuple[int, int], ...]:
        return self.sub or ((1, 1),) * self.comps

    def planes(self, seed: int) -> list[np.ndarray]:
        """One array per component (at its own subsampled size): a different gradient per
        component plus noise, spanning the whole sample range."""
        rng = np.random.default_rng(seed)
        out = []
        lo = -(1 << self.bits - 1) if self.signed else 0
        span = 1 << self.bits
        for c, (dx, dy) in enumerate(self.subsampling()):
            w, h = -(-self.width // dx), -(-self.height // dy)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
            ramp = (xx * (c + 1) / max(w, 1) + yy * (3 - c % 3) / max(h, 1)) / 4
            noise = rng.normal(0, 0.06, (h, w))
            values = ((ramp + noise) % 1.0) * (span - 1)
            out.append(np.clip(np.round(values), 0, span - 1).astype(np.int64) + lo)
        return out


@dataclass(frozen=True)
class Case:
    name: str
    tool: str                       # "grk" or "ojph"
    picture: Picture
    options: tuple[str, ...] = ()
    suffix: str = ".j2k"            # grk: .j2k or .jp2; ojph: .j2c
    seed: int = 0


def _write_pnm(path: Path, planes: list[np.ndarray], bits: int) -> None:
    h, w = planes[0].shape
    magic = b"P5" if len(planes) == 1 else b"P6"
    samples = np.stack(planes, axis=-1).astype(">u2" if bits > 8 else "u1")
    path.write_bytes(magic + f"\n{w} {h}\n{(1 << bits) - 1}\n".encode() + samples.tobytes())


def _write_planar(path: Path, planes: list[np.ndarray], bits: int, signed: bool,
                  order: str) -> None:
    kind = ("i" if signed else "u") + ("2" if bits > 8 else "1")
    with open(path, "wb") as f:
        for p in planes:
            f.write(p.astype(order + kind).tobytes())


def _grk_input(pic: Picture, planes: list[np.ndarray], work: Path) -> tuple[Path, list[str]]:
    plain = not pic.signed and pic.sub is None and pic.comps in (1, 3)
    if plain:
        path = work / ("in.pgm" if pic.comps == 1 else "in.ppm")
        _write_pnm(path, planes, pic.bits)
        return path, []
    # Grok's raw reader: planar, big-endian; its subsampled form fails to load in Grok 10.
    path = work / "in.raw"
    _write_planar(path, planes, pic.bits, pic.signed, ">")
    spec = f"{pic.width},{pic.height},{pic.comps},{pic.bits},{'s' if pic.signed else 'u'}"
    if pic.sub is not None:
        spec += "@" + ":".join(f"{dx}x{dy}" for dx, dy in pic.sub)
    return path, ["-F", spec]


def _ojph_input(pic: Picture, planes: list[np.ndarray], work: Path) -> tuple[Path, list[str]]:
    if not pic.signed and pic.sub is None and pic.comps in (1, 3):
        path = work / ("in.pgm" if pic.comps == 1 else "in.ppm")
        _write_pnm(path, planes, pic.bits)
        return path, []
    # OpenJPH's .yuv: planar, little-endian above 8 bits, each component at its own size.
    path = work / "in.yuv"
    _write_planar(path, planes, pic.bits, pic.signed, "<")
    sub = pic.subsampling()
    return path, ["-dims", f"{{{pic.width},{pic.height}}}", "-num_comps", str(pic.comps),
                  "-signed", ",".join(["true" if pic.signed else "false"] * pic.comps),
                  "-bit_depth", ",".join([str(pic.bits)] * pic.comps),
                  "-downsamp", ",".join(f"{{{dx},{dy}}}" for dx, dy in sub)]


class EncoderFailed(RuntimeError):
    """The encoder refused the options (a case the tool does not support, not our defect)."""


def encode(case: Case, work: Path) -> Path:
    """Writes the case's image and encodes it; returns the encoded file."""
    work.mkdir(parents=True, exist_ok=True)
    planes = case.picture.planes(case.seed)
    out = work / (case.name + case.suffix)
    if case.tool == "grk":
        src, describe = _grk_input(case.picture, planes, work)
        cmd = [GRK_COMPRESS, "-i", str(src), "-o", str(out), "-H", "1", *describe,
               *case.options]
    else:
        src, describe = _ojph_input(case.picture, planes, work)
        cmd = [OJPH_COMPRESS, "-i", str(src), "-o", str(out), *describe, *case.options]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    if proc.returncode != 0 or not out.exists() or out.stat().st_size == 0:
        text = (proc.stderr + proc.stdout).decode(errors="replace").strip()
        raise EncoderFailed(f"{' '.join(cmd)}: {text[-400:]}")
    return out


# --- the cases --------------------------------------------------------------------------------

G8 = Picture(67, 45)
RGB = Picture(67, 45, comps=3)
MID = Picture(300, 211, comps=3)
LARGE = Picture(1500, 1100)


def _grk(name, pic, *opts, suffix=".j2k", seed=0) -> Case:
    return Case("grk-" + name, "grk", pic, tuple(opts), suffix, seed)


def _ojph(name, pic, *opts, seed=0) -> Case:
    return Case("ojph-" + name, "ojph", pic, tuple(opts), ".j2c", seed)


def grok_cases() -> list[Case]:
    cases = []
    for prog in ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL"):
        cases.append(_grk(f"prog-{prog}", RGB, "-p", prog, "-n", "4", "-r", "40,10,1",
                          "-c", "[32,32],[16,16]", "-b", "8,8"))
        cases.append(_grk(f"prog-{prog}-tiles", MID, "-p", prog, "-n", "3", "-r", "30,8",
                          "-t", "96,80", "-T", "7,5", "-d", "11,9", "-c", "[64,64],[32,32]",
                          "-b", "16,16", "-S", "-E"))
    for split in ("R", "L", "C"):
        for prog in ("LRCP", "RPCL", "CPRL"):
            cases.append(_grk(f"tp{split}-{prog}", MID, "-p", prog, "-u", split, "-n", "4",
                              "-q", "30,40,50", "-t", "128,100", "-X", "-L"))
    cases += [
        _grk("poc", RGB, "-n", "4", "-r", "30,10,1", "-c", "[16,16]",
             "-P", "T0=0,0,2,3,3,RPCL/T0=0,0,3,5,3,LRCP"),
        _grk("poc-3", MID, "-n", "4", "-r", "20,5,1", "-c", "[32,32],[16,16]",
             "-P", "T0=0,0,1,3,3,CPRL/T0=0,0,2,4,3,RLCP/T0=0,0,3,5,3,PCRL"),
        _grk("prec-per-res", MID, "-n", "5", "-p", "RPCL",
             "-c", "[128,64],[64,64],[32,32],[16,8],[8,8]", "-b", "32,16", "-r", "16,4,1"),
        _grk("cblk-4x4", G8, "-n", "3", "-b", "4,4", "-c", "[8,8]", "-r", "10,1"),
        _grk("cblk-64x4", G8, "-n", "2", "-b", "64,4"),
        _grk("cblk-4x64", G8, "-n", "2", "-b", "4,64", "-I"),
        _grk("layers-8", RGB, "-n", "4", "-r", "200,100,50,25,12,6,3,1", "-S", "-E"),
        _grk("sop-eph-plt", RGB, "-n", "3", "-S", "-E", "-L", "-c", "[16,16]"),
        _grk("tlm-plt-tiles", MID, "-n", "3", "-X", "-L", "-t", "64,64", "-p", "PCRL"),
        _grk("irrev", RGB, "-I", "-n", "4", "-r", "30,10,2"),
        _grk("irrev-tiles", MID, "-I", "-n", "4", "-q", "30,40,50", "-t", "100,90",
             "-T", "13,17", "-p", "RPCL", "-c", "[32,32]"),
        _grk("ht", RGB, "-M", "64", "-n", "4", "-c", "[32,32],[16,16]", "-p", "RPCL"),
        _grk("ht-irrev-tiles", MID, "-M", "64", "-I", "-n", "3", "-t", "128,96", "-p", "PCRL",
             "-X", "-L"),
        _grk("ht-tp", MID, "-M", "64", "-n", "3", "-t", "150,150", "-u", "R", "-p", "RPCL"),
        _grk("12bit", Picture(67, 45, bits=12), "-n", "3", "-r", "20,1"),
        _grk("16bit", Picture(67, 45, bits=16), "-n", "3", "-r", "20,1", "-p", "RLCP"),
        _grk("signed-12", Picture(67, 45, bits=12, signed=True), "-n", "3", "-r", "8,1"),
        _grk("signed-16-rgb", Picture(40, 33, comps=3, bits=16, signed=True), "-n", "2",
             "-Y", "0"),
        _grk("4comp", Picture(67, 45, comps=4), "-n", "3", "-r", "20,4,1", "-p", "CPRL"),
        _grk("4comp-mct", Picture(67, 45, comps=4), "-n", "3", "-Y", "1", "-p", "RPCL",
             "-c", "[16,16]"),
        _grk("no-mct", RGB, "-n", "3", "-Y", "0", "-p", "PCRL", "-c", "[16,16]"),
        _grk("jp2", RGB, "-n", "4", "-r", "20,5,1", "-p", "RPCL", suffix=".jp2"),
        _grk("jp2-tiles", MID, "-n", "3", "-t", "100,100", "-X", "-u", "R", suffix=".jp2"),
        _grk("1xN", Picture(1, 57), "-n", "2"),
        _grk("Nx1", Picture(61, 1), "-n", "2", "-p", "RPCL"),
        _grk("17x37", Picture(17, 37, comps=3), "-n", "3", "-c", "[4,4]", "-b", "4,4",
             "-r", "8,2,1"),
        _grk("1x1", Picture(1, 1), "-n", "1"),
        _grk("levels-0", G8, "-n", "1", "-r", "5,1"),
        _grk("tile-offset-big", MID, "-n", "3", "-t", "64,48", "-T", "63,47", "-d", "64,48"),
        _grk("image-offset", RGB, "-n", "4", "-d", "1001,777", "-t", "40,30",
             "-T", "1000,770", "-c", "[16,16]"),
        _grk("modes", RGB, "-n", "3", "-M", "63", "-r", "10,1"),
        _grk("ht-16bit-prec", Picture(90, 70, bits=16), "-M", "64", "-n", "4",
             "-c", "[32,32],[16,16],[8,8]", "-b", "16,16", "-p", "RLCP"),
        _grk("ht-jp2-sop-eph", MID, "-M", "64", "-n", "5", "-S", "-E", "-p", "CPRL",
             suffix=".jp2"),
        _grk("irrev-12bit-tiles", Picture(150, 110, bits=12), "-I", "-n", "3",
             "-q", "40,50,60", "-t", "64,64", "-p", "PCRL", "-c", "[16,16]"),
        _grk("irrev-signed-16", Picture(70, 50, bits=16, signed=True), "-I", "-n", "3",
             "-q", "50,70"),
        _grk("4comp-tiles-tp", Picture(130, 90, comps=4), "-n", "3", "-t", "64,64",
             "-u", "C", "-p", "CPRL", "-X", "-L", "-S"),
        _grk("jp2-16bit-rgb", Picture(70, 50, comps=3, bits=16), "-n", "3", "-q", "60,80",
             "-p", "RLCP", suffix=".jp2"),
        _grk("1xN-tiles", Picture(1, 300), "-n", "3", "-t", "1,64", "-p", "RPCL"),
        _grk("Nx1-tiles", Picture(300, 1), "-n", "3", "-t", "100,1", "-u", "R", "-X"),
        _grk("tiny-tiles", Picture(23, 19, comps=3), "-n", "2", "-t", "5,7", "-T", "2,3",
             "-d", "4,4", "-L"),
        _grk("modes-sop-eph", RGB, "-n", "3", "-M", "38", "-S", "-E", "-r", "20,4,1",
             "-p", "RPCL", "-c", "[16,16]"),
        # ROI by up-shift (RGN): more bit-planes, so more coding passes per code-block.
        _grk("roi", RGB, "-n", "3", "-R", "c=0,U=20", "-p", "RPCL", "-c", "[16,16]"),
        _grk("roi-layers-tiles", MID, "-n", "4", "-R", "c=1,U=20", "-r", "20,5,1",
             "-t", "128,128", "-S", "-E"),
        # The largest shift Grok writes; its own decoder refuses it ("Unsupported ROI shift")
        # and OpenJPEG's 32-bit coefficients do not hold it (not lossless any more).
        _grk("roi-37", RGB, "-n", "3", "-R", "c=1,U=37", "-p", "LRCP"),
        _grk("jp2-res-boxes", RGB, "-n", "3", "-Q", "2834.6,2834.6", "-D", "3779.5,3000",
             "-C", "made by the encoder sweep", "-p", "RPCL", suffix=".jp2"),
        # Profiles real pipelines write: digital cinema (2K, 12-bit, CPRL, one tile-part per
        # component), broadcast and IMF (Rsiz profile bits, their own layouts).
        _grk("cinema2k", Picture(2048, 1080, comps=3, bits=12), "-w", "24", "-H", "2"),
        _grk("broadcast", Picture(960, 540, comps=3, bits=10), "-U", "MULTI,mainlevel=1"),
        _grk("imf-2k-r", Picture(960, 540, comps=3, bits=10), "-z", "2K_R", suffix=".jp2"),
        _grk("large-rpcl", LARGE, "-n", "6", "-p", "RPCL", "-c", "[64,64],[32,32]",
             "-q", "35,45,55", "-L", "-X", "-t", "512,512"),
        _grk("large-lrcp", LARGE, "-n", "5", "-p", "LRCP", "-c", "[128,128]", "-S", "-E",
             "-r", "30,3"),
    ]
    return cases


def openjph_cases() -> list[Case]:
    cases = []
    for prog in ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL"):
        cases.append(_ojph(f"prog-{prog}", RGB, "-prog_order", prog, "-num_decomps", "4",
                           "-reversible", "true", "-precincts", "{8,8},{16,16},{32,32}",
                           "-block_size", "{16,16}"))
        cases.append(_ojph(f"prog-{prog}-tiles", MID, "-prog_order", prog, "-num_decomps", "3",
                           "-reversible", "true", "-tile_size", "{96,80}",
                           "-tile_offset", "{7,5}", "-image_offset", "{11,9}",
                           "-block_size", "{32,32}"))
    cases += [
        _ojph("irrev", RGB, "-num_decomps", "4", "-qstep", "0.01"),
        _ojph("irrev-tiles", MID, "-num_decomps", "3", "-qstep", "0.005",
              "-tile_size", "{128,128}", "-prog_order", "PCRL", "-precincts", "{16,16},{32,32}"),
        _ojph("gray", G8, "-num_decomps", "3", "-reversible", "true"),
        _ojph("12bit", Picture(67, 45, bits=12), "-num_decomps", "3", "-reversible", "true"),
        _ojph("16bit", Picture(67, 45, bits=16), "-num_decomps", "3", "-reversible", "true",
              "-prog_order", "LRCP"),
        _ojph("signed-12", Picture(67, 45, bits=12, signed=True), "-num_decomps", "3",
              "-reversible", "true"),
        _ojph("420", Picture(67, 45, comps=3, sub=((1, 1), (2, 2), (2, 2))), "-num_decomps",
              "3", "-reversible", "true"),
        _ojph("420-12-tiles", Picture(131, 97, comps=3, bits=12, sub=((1, 1), (2, 2), (2, 2))),
              "-num_decomps", "2", "-reversible", "true",
              "-tile_size", "{64,48}", "-prog_order", "RPCL", "-precincts", "{16,16}"),
        _ojph("422", Picture(67, 45, comps=3, sub=((1, 1), (2, 1), (2, 1))), "-num_decomps",
              "3", "-qstep", "0.01", "-prog_order", "CPRL"),
        _ojph("17x37", Picture(17, 37, comps=3), "-num_decomps", "3", "-reversible", "true",
              "-block_size", "{4,4}", "-precincts", "{4,4}"),
        _ojph("1xN", Picture(1, 57), "-num_decomps", "2", "-reversible", "true"),
        _ojph("levels-0", G8, "-num_decomps", "0", "-reversible", "true"),
        _ojph("cblk-64x16", G8, "-num_decomps", "2", "-block_size", "{16,64}",
              "-reversible", "true"),
        _ojph("irrev-16bit", Picture(67, 45, bits=16), "-num_decomps", "3", "-qstep", "0.0005",
              "-prog_order", "RLCP"),
        _ojph("signed-16-irrev", Picture(67, 45, bits=16, signed=True), "-num_decomps", "4",
              "-qstep", "0.001"),
        _ojph("image-offset", RGB, "-num_decomps", "3", "-reversible", "true",
              "-image_offset", "{333,101}", "-tile_offset", "{300,90}", "-prog_order", "PCRL",
              "-precincts", "{16,16}"),
        _ojph("tiles-prec", MID, "-num_decomps", "4", "-reversible", "true",
              "-tile_size", "{128,64}", "-precincts", "{8,8},{16,16},{32,32}",
              "-block_size", "{8,8}", "-prog_order", "CPRL"),
        _ojph("420-odd-offset", Picture(53, 31, comps=3, sub=((1, 1), (2, 2), (2, 2))),
              "-num_decomps", "2", "-qstep", "0.01", "-image_offset", "{3,5}",
              "-prog_order", "PCRL"),
        _ojph("imf", Picture(960, 540, comps=3, bits=10), "-profile", "IMF",
              "-reversible", "true", "-block_size", "{32,32}", "-prog_order", "CPRL",
              "-precincts", "{128,128},{256,256}"),
        _ojph("broadcast", Picture(960, 540, comps=3, bits=10), "-profile", "BROADCAST",
              "-precincts", "{128,128},{256,256}", "-qstep", "0.002", "-prog_order", "CPRL"),
        _ojph("large-rpcl", LARGE, "-num_decomps", "5", "-reversible", "true",
              "-precincts", "{32,32},{64,64}", "-prog_order", "RPCL"),
        _ojph("large-tiles", LARGE, "-num_decomps", "5", "-qstep", "0.003",
              "-tile_size", "{512,400}", "-tile_offset", "{100,50}",
              "-image_offset", "{130,77}", "-prog_order", "PCRL"),
    ]
    return cases


def all_cases() -> list[Case]:
    return grok_cases() + openjph_cases()


# A representative subset for `make test`: both tools, every progression once, tiles with
# offsets, tile-parts with TLM/PLT, POC, SOP/EPH, several layers, HT, irreversible, signed,
# 12/16-bit, 4 components, 4:2:0, JP2, ROI up-shift, odd small sizes.
QUICK = (
    "grk-prog-LRCP", "grk-prog-PCRL-tiles", "grk-tpR-RPCL", "grk-tpC-CPRL", "grk-poc",
    "grk-prec-per-res", "grk-layers-8", "grk-irrev-tiles", "grk-ht-irrev-tiles", "grk-signed-12",
    "grk-4comp", "grk-jp2-tiles", "grk-17x37", "grk-image-offset", "grk-roi-layers-tiles",
    "ojph-prog-RLCP-tiles", "ojph-prog-CPRL", "ojph-420-12-tiles", "ojph-signed-12",
    "ojph-irrev-tiles", "ojph-1xN",
)


# --- the check --------------------------------------------------------------------------------

class _References:
    """OpenJPEG's decode of the whole original codestream, once per (discard, layers)."""

    def __init__(self, original: bytes) -> None:
        self.original = original
        self.decoded: dict[tuple[int, int], list[np.ndarray]] = {}

    def window(self, ix, w, comps: tuple[int, ...] | None) -> list[np.ndarray]:
        nl = w.layers if w.layers < ix.max_layers else 0
        key = (w.discard, nl)
        if key not in self.decoded:
            self.decoded[key] = decode_codestream(self.original, rlevel=w.discard, layers=nl)
        # The components asked for (the server may send more: those a component transform
        # needs), as the client's decode returns them.
        return window_crops(self.decoded[key], ix.siz, w.discard, w.region, comps)


def _region(rng: np.random.Generator, fw: int, fh: int) -> dict:
    x, y = int(rng.integers(0, fw)), int(rng.integers(0, fh))
    return {"roff": (x, y), "rsiz": (int(rng.integers(1, fw - x + 1)),
                                     int(rng.integers(1, fh - y + 1)))}


def windows_for(ix, rng: np.random.Generator, many: bool = False) -> list[dict]:
    """The windows asked for in one session: the whole frame at several reductions (every one
    when `many`), random regions at each, a layer limit, frame sizes between two resolutions
    (round-down and round-up), and component subsets."""
    levels = ix.max_discard
    layer_choices = [1, max(1, ix.max_layers // 2), None]
    discards = range(levels + 1) if many else sorted({0, min(1, levels), min(3, levels)})
    fw, fh = frame_size(ix.siz, 0)
    # First, in pieces of at most `len` bytes (each response ends mid-bin): the whole frame at
    # full size and a region at the next reduction.
    piece = max(1500, ix.length // 7)
    out = [{"fsiz": (fw, fh), "len": piece}]
    if levels:
        out.append({"fsiz": frame_size(ix.siz, 1), **_region(rng, *frame_size(ix.siz, 1)),
                    "len": max(400, piece // 8)})
    for d in discards:
        fw, fh = frame_size(ix.siz, d)
        out.append({"fsiz": (fw, fh), "layers": layer_choices[-1 - d % 3]})
        for _ in range(4 if many else 2):
            out.append({"fsiz": (fw, fh), **_region(rng, fw, fh),
                        "layers": layer_choices[int(rng.integers(0, 3))]})
    fw, fh = frame_size(ix.siz, 0)
    odd = (max(1, fw * 2 // 3), max(1, fh * 3 // 5))  # no resolution's frame size
    for rounding in ("round-down", "round-up"):
        out.append({"fsiz": odd, "round": rounding, **_region(rng, *odd)})
    n = ix.num_components
    if n > 1:
        out.append({"fsiz": (fw, fh), "comps": str(n - 1)})
        subset = sorted({0, n - 1, int(rng.integers(0, n))})
        out.append({"fsiz": (fw, fh), "roff": (fw // 4, fh // 5),
                    "rsiz": (max(1, fw // 2), max(1, fh // 2)),
                    "comps": ",".join(map(str, subset)), "layers": 1})
    return out


def _comps_ranges(text: str | None):
    if text is None:
        return None
    return tuple((int(c), int(c)) for c in text.split(","))


async def check_file(url: str, path: Path, seed: int = 0,
                     area_inexact: list[str] | None = None,
                     stream_type: str = "jpp-stream", many: bool = False,
                     references: dict | None = None,
                     unreferenced: list[str] | None = None) -> int:
    """Serves every window of `windows_for` in one session and compares each, as the client
    reassembles and decodes it, with OpenJPEG's decode of the original; returns how many
    windows held at least one compared sample. A window whose only difference is OpenJPEG's
    own area decoding (see _openjpeg_area_inexact) is not a failure: it is added to
    `area_inexact` (the caller reports them). A DICOM file is opened as the server opens it
    (dicom.source): its frames are codestreams 1..N, each compared with OpenJPEG's decode of
    that frame's codestream. With `unreferenced` (a list), a window OpenJPEG cannot decode in
    the original is still asked for (the server must answer it) but only listed there, not
    compared; without it, that is an OracleError. Components deeper than 16 bits, which the
    client's decode (glymur) does not take, are compared as OpenJPEG decodes the codestream
    the client rebuilt (_rebuilt_window)."""
    rng = np.random.default_rng(seed)
    compared = 0
    area_inexact = [] if area_inexact is None else area_inexact
    with open_served(path) as src:
        for cs, ix in enumerate(src.codestreams):
            stream = src.first_codestream + cs  # the request's `stream` (CSn) of codestream cs
            if references is None:
                references = {}
            if cs not in references:  # kept by the caller across sessions of the same file
                references[cs] = _References(src.codestream_bytes(cs))
            refs = references[cs]
            async with JPIPClient(url, stream_type=stream_type) as client:
                for win in windows_for(ix, rng, many):
                    fsiz, roff, rsiz = win["fsiz"], win.get("roff"), win.get("rsiz")
                    layers, comps = win.get("layers"), win.get("comps")
                    rounding = win.get("round", "round-down")
                    what = f"{path.name} cs{cs} {win}"
                    w = resolve_window(ix, stream, fsiz=(fsiz[0], fsiz[1], rounding),
                                       roff=roff, rsiz=rsiz, layers=layers,
                                       comps=_comps_ranges(comps))
                    asked = tuple(c for c, _ in _comps_ranges(comps)) if comps else None
                    try:
                        want = refs.window(ix, w, asked)
                    except OracleError as e:
                        if unreferenced is None:
                            raise
                        unreferenced.append(f"{what}: {e}")
                        want = None
                    await client.fetch_all(fsiz=fsiz, round=rounding, roff=roff, rsiz=rsiz,
                                           layers=layers, comps=comps, stream=stream,
                                           length=win.get("len"), max_requests=400)
                    if want is None:
                        continue
                    if max(c.precision for c in ix.siz.components) > 16:
                        got = _rebuilt_window(client, stream, ix, w, asked)
                    else:
                        got = client.decode(fsiz=fsiz, round=rounding, roff=roff, rsiz=rsiz,
                                            layers=layers, comps=comps, stream=stream)
                    try:
                        compared += assert_same_pixels(want, got, what) > 0
                    except AssertionError:
                        if not _openjpeg_area_inexact(refs.original, w, asked, got):
                            raise
                        area_inexact.append(what)
                assert client.cache.duplicate_bytes == 0, f"{path.name}: bytes sent twice"
    return compared


def _rebuilt_window(client: JPIPClient, stream: int, ix, w,
                    comps: tuple[int, ...] | None) -> list[np.ndarray]:
    """The window as OpenJPEG decodes the codestream the client rebuilt from what it received
    (for components deeper than 16 bits, which glymur, the client's decoder, refuses)."""
    rebuilt = rebuild(client.cache, client.codestream_id(stream))
    nl = w.layers if w.layers < ix.max_layers else 0
    whole = decode_codestream(rebuilt, rlevel=w.discard, layers=nl)
    return window_crops(whole, ix.siz, w.discard, w.region, comps)


def open_served(path: Path) -> Source:
    """The file as the server reads it: a DICOM object by its frames, anything else by its
    boxes and codestreams."""
    return open_dicom(path) if is_part10_file(path) else build_source(path)


def _irreversible(codestream: bytes) -> bool:
    layout = parse_codestream(codestream, 0, len(codestream))
    return any(not s.reversible for t in range(layout.siz.num_tiles)
               for s in tile_coding(layout, t)[1])


def _openjpeg_area_inexact(original: bytes, w, comps, got: list[np.ndarray]) -> bool:
    """True when the window's samples as served equal OpenJPEG's decode of the same area of
    the original file, which differs from its decode of the whole frame: OpenJPEG 2.5's
    partial 9-7 inverse transform (opj_dwt_decode_partial_97) rounds a few samples near an
    area's edge differently from the full one. The client decodes an area, so it inherits
    that; what the server sent is then exactly right. Only irreversible codestreams."""
    if not _irreversible(original):
        return False
    x0, y0, x1, y1 = w.region
    nl = w.layers if w.layers < _layers(original) else 0
    area = decode_codestream(original, rlevel=w.discard, area=(y0, x0, y1, x1), layers=nl)
    if comps is not None:
        area = [a for c, a in enumerate(area) if c in comps]
    try:
        assert_same_pixels(area, got)
    except AssertionError:
        return False
    return True


def _layers(codestream: bytes) -> int:
    layout = parse_codestream(codestream, 0, len(codestream))
    return max(tile_coding(layout, t)[0].layers for t in range(layout.siz.num_tiles))

