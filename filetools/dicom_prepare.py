"""`jpip prepare IN.dcm OUT.dcm [--lossless] [--htj2k]`: re-encode the pixel data of a DICOM
file into browse-efficient JPEG 2000 or HTJ2K, frame by frame.

Any pixel data pydicom can decode is read (uncompressed, deflated, RLE, JPEG, JPEG-LS, JPEG 2000,
HTJ2K: the decoders are pydicom's plugins, installed with the `tools` extra), one frame at a
time from the file, encoded by `frame_encode` (RPCL, precincts, enough levels, PLT and TLM) and
written by `dicom_write` with an offset table, so memory stays at a few frames whatever the
number of frames.

The new object (PS3.5 8.2.4, 8.2.14, A.4; PS3.3 C.7.6.1.1.5):
- transfer syntax: JPEG 2000 Lossless Only (.90) or JPEG 2000 (.91); with --htj2k, HTJ2K
  Lossless RPCL (.202: RPCL, TLM, lowest resolution <= 64 px) or HTJ2K (.203);
- a new SOP Instance UID (file meta too); every other attribute is kept, except those that
  describe the encoding: Photometric Interpretation (colour: YBR_RCT when lossless, YBR_ICT when
  lossy, as the component transform applied; YBR_FULL/_422 and YBR_RCT/ICT inputs are decoded
  to RGB first), Planar Configuration 0, Bits Allocated / Stored / High Bit and Pixel
  Representation as the codestream says, and the offset tables;
- lossy: Lossy Image Compression "01", the method (ISO_15444_1 or ISO_15444_15) and the
  measured ratio appended to (0028,2114)/(0028,2112), Image Type value 1 DERIVED, the ratio in
  Derivation Description, and the source instance in Source Image Sequence (purpose:
  "Uncompressed predecessor"). A lossy input stays "01" after a lossless re-encoding;
- Digital Signatures and MAC Parameters sequences are dropped: they signed the old encoding
  and the old SOP Instance UID, so they can no longer verify.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from dicom.part10 import NUMBER_OF_FRAMES, is_part10_file, syntax_name

from .dicom_write import BASIC_TABLE_LIMIT, drop_group_lengths, write_encapsulated
from .frame_encode import MAX_PRECISION, FrameCoding, encode_frame, encoder_program, frame_coding
from .outputs import check_output
from .prepare import _peak_rss_mb, _reset_peak_rss

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
# Syntaxes whose pixels have been through lossy compression, whatever the dataset says.
LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                  "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101",
                  "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
                  "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
                  "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107",
                  "1.2.840.10008.1.2.4.108"}
DROPPED = {0xFFFAFFFA: "Digital Signatures Sequence", 0x4FFE0001: "MAC Parameters Sequence",
           0xFFFCFFFC: "Data Set Trailing Padding"}
PIXEL_DATA_KEYWORDS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData",
                       0x7FE00009: "DoubleFloatPixelData"}
UNCOMPRESSED_PREDECESSOR = ("121320", "DCM", "Uncompressed predecessor")  # CID 7202
DEFER_SIZE = 64 * 1024
FrameProgress = Callable[[int, int], None]


class DicomPrepareError(ValueError):
    """A DICOM file `jpip prepare` cannot re-encode; the message says why and what to do."""


@dataclass
class DicomPrepareReport:
    input: str
    output: str
    input_syntax: str
    output_syntax: str
    frames: int
    rows: int
    columns: int
    samples_per_pixel: int
    bits_stored: int
    signed: bool
    photometric_interpretation: str
    lossless: bool
    htj2k: bool
    levels: int
    layers: int
    progression: str
    precincts: list[tuple[int, int]]
    offset_table: str
    sop_instance_uid: str
    bytes: int = 0
    pixel_bytes: int = 0           # the compressed frames, pad included
    ratio: float = 0.0             # uncompressed / compressed pixel bytes
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_rss_scope: str = "process"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        mode = "lossless" if self.lossless else "lossy"
        kind = "HTJ2K" if self.htj2k else "JPEG 2000"
        prec = "/".join(f"{w}x{h}" for h, w in dict.fromkeys(self.precincts))
        lines = [
            f"wrote {self.output} ({self.bytes:,} bytes)",
            f"  input      {self.input_syntax}",
            f"  output     {self.output_syntax}",
            f"  frames     {self.frames} of {self.columns}x{self.rows}, "
            f"{self.samples_per_pixel} sample(s), {self.bits_stored}-bit "
            f"{'signed' if self.signed else 'unsigned'}, {self.photometric_interpretation}",
            f"  coding     {kind} {mode}, {self.layers} layer(s), {self.progression}, "
            f"{self.levels + 1} resolutions ({self.levels} levels), precincts {prec}, "
            f"PLT + TLM, {self.offset_table} offset table",
            f"  pixels     {self.pixel_bytes:,} bytes, {self.ratio:.2f}:1",
            f"  cost       {self.seconds:.1f} s, peak RSS {self.peak_rss_mb:.0f} MB "
            f"({self.peak_rss_scope})",
        ]
        lines += [f"  note       {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class SourcePixels:
    """What the decoder says of the frames it yields (after colour conversion to RGB)."""

    rows: int
    columns: int
    samples_per_pixel: int
    photometric_interpretation: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    frames: int

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * ((self.bits_allocated + 7) // 8)


# --------------------------------------------------------------------------- reading frames
def _decoder(uid: str):
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(UID(uid))
    except NotImplementedError:
        raise DicomPrepareError(f"pydicom cannot decode pixel data in {syntax_name(uid)}"
                                ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise DicomPrepareError(f"no decoder installed for {syntax_name(uid)} ({missing}): "
                                "install the tools extra (pip install 'jpip-server[tools]')")
    return decoder


def _pixel_options(path: Path, f) -> dict:
    """pydicom's decoding options for the file open as `f`, left at the Pixel Data value."""
    from pydicom.pixels import as_pixel_options

    ds = pydicom.dcmread(f, stop_before_pixels=True, defer_size=DEFER_SIZE)
    uid = str(ds.file_meta.get("TransferSyntaxUID", ""))
    opts = as_pixel_options(ds)
    opts["transfer_syntax_uid"] = UID(uid)
    head = f.read(12)  # pydicom stopped at the Pixel Data tag: read its header
    if len(head) < 8:
        raise DicomPrepareError(f"{path}: no Pixel Data to re-encode")
    tag = int.from_bytes(head[0:2], "little") << 16 | int.from_bytes(head[2:4], "little")
    if tag != 0x7FE00010:
        what = PIXEL_DATA_KEYWORDS.get(tag, f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
        raise DicomPrepareError(f"{path}: {what} is not integer Pixel Data: JPEG 2000 codes "
                                "integer samples only")
    if UID(uid).is_implicit_VR:
        f.seek(-4, os.SEEK_CUR)  # implicit VR: tag + 32-bit length, no VR
    else:
        opts["pixel_vr"] = head[4:6].decode("ascii")
    opts["pixel_keyword"] = "PixelData"
    return opts


@contextmanager
def open_frames(path: str | os.PathLike[str]
                ) -> Iterator[tuple[SourcePixels, Iterator[np.ndarray]]]:
    """What the frames are, and an iterator over them, decoded one at a time from the file
    (colour converted to RGB as pydicom does by default); the file is closed on leaving.
    Deflated files are inflated whole first (pydicom reads them no other way)."""
    from pydicom.pixels import as_pixel_options

    path = Path(path)
    uid = str(pydicom.filereader.read_file_meta_info(path).get("TransferSyntaxUID", ""))
    decoder = _decoder(uid)
    with ExitStack() as stack:
        if UID(uid).is_deflated:
            ds = pydicom.dcmread(path)
            if "PixelData" not in ds:
                raise DicomPrepareError(f"{path}: no Pixel Data to re-encode")
            opts = as_pixel_options(ds)
            it = decoder.iter_array(ds, **opts)
        else:
            f = stack.enter_context(open(path, "rb"))
            opts = _pixel_options(path, f)
            it = decoder.iter_array(f, **opts)
        try:
            first, meta = next(it)
        except StopIteration:
            raise DicomPrepareError(f"{path}: the Pixel Data holds no frame") from None
        except Exception as e:  # the decoder's own errors: the pixel data does not decode
            raise DicomPrepareError(f"{path}: cannot decode frame 1: {type(e).__name__}: {e}"
                                    ) from None
        info = SourcePixels(
            rows=int(meta["rows"]), columns=int(meta["columns"]),
            samples_per_pixel=int(meta["samples_per_pixel"]),
            photometric_interpretation=str(meta["photometric_interpretation"]),
            bits_allocated=int(meta["bits_allocated"]), bits_stored=int(meta["bits_stored"]),
            signed=bool(meta["pixel_representation"]), frames=int(opts["number_of_frames"]))

        def frames() -> Iterator[np.ndarray]:
            yield first
            try:
                for arr, _ in it:
                    yield arr
            except Exception as e:  # as above
                raise DicomPrepareError(f"{path}: cannot decode a frame: "
                                        f"{type(e).__name__}: {e}") from None

        yield info, frames()


# --------------------------------------------------------------------------- the new dataset
def output_syntax(lossless: bool, htj2k: bool) -> str:
    if htj2k:
        return HTJ2K_LOSSLESS_RPCL if lossless else HTJ2K
    return JPEG2000_LOSSLESS if lossless else JPEG2000


def output_photometric(src: SourcePixels, lossless: bool) -> str:
    """Photometric Interpretation of the re-encoded frames (PS3.5 Tables 8.2.4-1, 8.2.14-1)."""
    pi = src.photometric_interpretation
    if src.samples_per_pixel == 1:
        if pi == "PALETTE COLOR" and not lossless:
            raise DicomPrepareError("PALETTE COLOR frames hold palette indices, which lossy "
                                    "coding would change: use --lossless")
        if pi not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"):
            raise DicomPrepareError(f"one sample per pixel with Photometric Interpretation {pi}")
        return pi
    if src.samples_per_pixel == 3 and pi == "RGB":
        return "YBR_RCT" if lossless else "YBR_ICT"
    raise DicomPrepareError(f"{src.samples_per_pixel} samples per pixel decoded as {pi}: only "
                            "monochrome, palette and RGB frames are re-encoded")


def _check_source(src: SourcePixels) -> None:
    if src.bits_allocated == 1:
        raise DicomPrepareError("1-bit frames (binary segmentations): their IOD requires Bits "
                                "Allocated 1, which this tool does not write")
    if src.bits_stored > MAX_PRECISION:
        raise DicomPrepareError(f"{src.bits_stored}-bit samples: the encoders read at most "
                                f"{MAX_PRECISION} bits")


def _append(ds: Dataset, keyword: str, value) -> None:
    """Adds a value to a multi-valued attribute (creating it)."""
    old = ds.get(keyword)
    if old is None or old == "":
        setattr(ds, keyword, value)
        return
    values = list(old) if isinstance(old, pydicom.multival.MultiValue) else [old]
    setattr(ds, keyword, values + [value])


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def new_dataset(ds: Dataset, src: SourcePixels, *, syntax: str, lossless: bool, htj2k: bool,
                input_syntax: str) -> tuple[Dataset, list[str]]:
    """The dataset of the re-encoded object (no pixel data yet) and notes for the report.
    Lossy attributes are completed by `record_lossy` once the ratio is known."""
    notes = []
    out = ds
    for tag in [t for t in out.keys() if t >> 16 == 0x7FE0]:
        del out[tag]
    drop_group_lengths(out)
    for tag, name in DROPPED.items():
        if tag in out:
            del out[tag]
            notes.append(f"{name} dropped (it signed the old encoding)")
    uid = generate_uid()
    out.SOPInstanceUID = uid
    pi = output_photometric(src, lossless)
    out.PhotometricInterpretation = pi
    out.SamplesPerPixel = src.samples_per_pixel
    if src.samples_per_pixel > 1:
        out.PlanarConfiguration = 0
    elif "PlanarConfiguration" in out:
        del out.PlanarConfiguration
    out.BitsAllocated = 8 if src.bits_stored <= 8 else 16
    out.BitsStored = src.bits_stored
    out.HighBit = src.bits_stored - 1
    out.PixelRepresentation = int(src.signed)
    if input_syntax in LOSSY_SYNTAXES and out.get("LossyImageCompression") != "01":
        out.LossyImageCompression = "01"
        notes.append(f"the input ({syntax_name(input_syntax)}) was lossy: Lossy Image "
                     "Compression set to 01")
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(syntax)
    meta.MediaStorageSOPClassUID = out.get("SOPClassUID", ds.file_meta.get(
        "MediaStorageSOPClassUID"))
    meta.MediaStorageSOPInstanceUID = uid
    out.file_meta = meta
    return out, notes


def record_lossy(ds: Dataset, source: Dataset | None, ratio: float, htj2k: bool) -> None:
    """The lossy compression attributes (PS3.3 C.7.6.1.1.5) for a ratio now applied."""
    method = "ISO_15444_15" if htj2k else "ISO_15444_1"
    ds.LossyImageCompression = "01"
    _append(ds, "LossyImageCompressionRatio", f"{ratio:.4g}"[:16])
    _append(ds, "LossyImageCompressionMethod", method)
    if "ImageType" in ds and ds.ImageType:
        values = list(ds.ImageType) if isinstance(ds.ImageType, pydicom.multival.MultiValue) \
            else [ds.ImageType]
        ds.ImageType = ["DERIVED", *values[1:]]
    text = (f"Lossy compression with {'HTJ2K' if htj2k else 'JPEG 2000'} ({method}), "
            f"compression ratio {ratio:.1f}:1 (jpip prepare)")
    old = str(ds.get("DerivationDescription", "") or "")
    ds.DerivationDescription = (f"{old}; {text}" if old else text)[:1024]
    if source is not None and "SOPClassUID" in source and "SOPInstanceUID" in source:
        ref = Dataset()
        ref.ReferencedSOPClassUID = source.SOPClassUID
        ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ref.PurposeOfReferenceCodeSequence = Sequence([_code(*UNCOMPRESSED_PREDECESSOR)])
        items = list(ds.get("SourceImageSequence", []) or [])
        ds.SourceImageSequence = Sequence(items + [ref])


# --------------------------------------------------------------------------- the command
def _encoded(frames: Iterator[np.ndarray], src: SourcePixels, coding: FrameCoding, threads: int,
             progress: FrameProgress | None) -> Iterator[bytes]:
    """Encoded frames in order; up to `threads` encoders run at once (each is a process), so at
    most 2 x threads decoded frames are held."""
    total = src.frames
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future] = deque()
        done = 0
        for frame in frames:
            pending.append(pool.submit(encode_frame, frame, src.bits_stored, src.signed,
                                       coding))
            del frame
            while len(pending) >= 2 * threads:
                yield pending.popleft().result()
                done += 1
                if progress:
                    progress(done, total)
        while pending:
            yield pending.popleft().result()
            done += 1
            if progress:
                progress(done, total)


def prepare_dicom(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], *,
                  lossless: bool = False, htj2k: bool = False, offset_table: str = "auto",
                  threads: int | None = None,
                  progress: FrameProgress | None = None) -> DicomPrepareReport:
    """Re-encodes a DICOM file's frames as browse-efficient JPEG 2000 (or HTJ2K) in a new
    DICOM file; see the module docstring for what changes."""
    inp, out = Path(input_path), Path(output_path)
    if offset_table not in ("auto", "basic", "extended"):
        raise ValueError("offset table must be auto, basic or extended")
    if not is_part10_file(inp):
        raise DicomPrepareError(f"{inp}: not a DICOM Part 10 file")
    check_output(out)
    if out.resolve() == inp.resolve():
        raise DicomPrepareError("the output would overwrite the input: give another name")
    encoder_program(htj2k)  # refuse before decoding anything when the encoder is missing
    scope = "prepare" if _reset_peak_rss() else "process"
    t0 = time.perf_counter()

    try:
        source = pydicom.dcmread(inp, defer_size=DEFER_SIZE)
    except Exception as e:  # pydicom's parse errors are of many types: the file's fault
        raise DicomPrepareError(f"{inp}: cannot read the DICOM dataset: {e}") from None
    input_syntax = str(source.file_meta.get("TransferSyntaxUID", ""))
    if "PixelDataProviderURL" in source:
        raise DicomPrepareError(f"{inp}: a JPIP-referenced object holds no pixel data (its "
                                f"pixels are at {source.PixelDataProviderURL})")
    with open_frames(inp) as (src, frames):
        _check_source(src)
        if NUMBER_OF_FRAMES not in source and src.frames != 1:
            raise DicomPrepareError(f"{inp}: {src.frames} frames without Number of Frames")
        source_ref = Dataset()
        for kw in ("SOPClassUID", "SOPInstanceUID"):
            if kw in source:
                setattr(source_ref, kw, source[kw].value)
        syntax = output_syntax(lossless, htj2k)
        ds, notes = new_dataset(source, src, syntax=syntax, lossless=lossless, htj2k=htj2k,
                                input_syntax=input_syntax)
        coding = frame_coding(src.rows, src.columns, lossless=lossless, htj2k=htj2k)
        raw_total = src.frame_bytes * src.frames
        extended = offset_table == "extended" or (
            offset_table == "auto" and raw_total >= BASIC_TABLE_LIMIT // 2)
        workers = max(1, threads or min(4, os.cpu_count() or 1))
        encoded = _encoded(frames, src, coding, workers, progress)
        spool = None
        if not lossless:
            # The ratio goes into the dataset, which is written before the frames: encode first
            # into a spool file next to the output, then copy.
            spool = _Spool(out)
            ratio = raw_total / max(1, spool.fill(encoded))
            record_lossy(ds, source_ref, ratio, htj2k)
            encoded = spool.read()
        try:
            layout = write_encapsulated(out, ds, encoded, src.frames, extended=extended)
        finally:
            if spool is not None:
                spool.path.unlink(missing_ok=True)
    pixel_bytes = sum(layout.item_lengths)
    return DicomPrepareReport(
        input=str(inp), output=str(out), input_syntax=syntax_name(input_syntax),
        output_syntax=syntax_name(syntax), frames=src.frames, rows=src.rows,
        columns=src.columns, samples_per_pixel=src.samples_per_pixel,
        bits_stored=src.bits_stored, signed=src.signed,
        photometric_interpretation=str(ds.PhotometricInterpretation), lossless=lossless,
        htj2k=htj2k, levels=coding.levels, layers=coding.layers,
        progression=coding.progression, precincts=coding.precincts,
        offset_table=layout.offset_table, sop_instance_uid=str(ds.SOPInstanceUID),
        bytes=layout.bytes, pixel_bytes=pixel_bytes,
        ratio=raw_total / max(1, pixel_bytes), seconds=time.perf_counter() - t0,
        peak_rss_mb=_peak_rss_mb(), peak_rss_scope=scope, notes=notes)


class _Spool:
    """Encoded frames kept in a temporary file beside the output (not in memory)."""

    def __init__(self, out: Path) -> None:
        self.path = out.with_name(f".{out.name}.frames-{os.getpid()}")
        self.sizes: list[int] = []

    def fill(self, frames: Iterator[bytes]) -> int:
        """Writes the frames; returns their total size."""
        try:
            with open(self.path, "wb") as f:
                for data in frames:
                    f.write(data)
                    self.sizes.append(len(data))
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        return sum(self.sizes)

    def read(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            for n in self.sizes:
                yield f.read(n)


def _is_lossless(path: str | os.PathLike[str]) -> bool:
    """Whether a DICOM file's pixels have never been through lossy compression (False when
    it cannot be read: prepare_dicom then says why)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom's parse errors are of many types
        return False
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    said = ds.get("LossyImageCompression")
    if syntax in LOSSY_SYNTAXES or said == "01":
        return False
    if syntax in (JPEG2000, HTJ2K):  # reversible or not: only the dataset can say
        return said == "00"
    return True


# --------------------------------------------------------------------------- command line
def run_prepare_dicom(args: argparse.Namespace, progress: FrameProgress | None = None) -> int:
    """`jpip prepare` on a DICOM input; prints the report; returns an exit status."""
    if not args.lossless and _is_lossless(args.input):
        print(f"jpip prepare: warning: {args.input} is lossless and is re-encoded lossy "
              "(9/7): add --lossless to keep every sample", file=sys.stderr)
    try:
        report = prepare_dicom(args.input, args.output, lossless=args.lossless,
                               htj2k=args.htj2k, offset_table=args.offset_table,
                               threads=args.threads, progress=progress)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"jpip prepare: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict()) if args.json else report.summary())
    return 0
