"""DICOM on the client side: starting from a JPIP-referenced object, and saving a window as a
DICOM file for tools that read nothing else.

- `referenced_url(path)`: the Pixel Data Provider URL (0028,7FE0) of a JPIP-referenced object
  (transfer syntaxes .94/.95/.204/.205; the deflated ones are inflated here, since pydicom
  inflates only 1.2.840.10008.1.2.1.99); `reference_dataset(path)` is its whole dataset.
- `dicom_json_url(url)`: where this server answers a target's DICOM JSON
  (`/dicom-json?target=NAME`, next to the JPIP endpoint); `fetch_dataset(url)` reads it back
  into a pydicom Dataset (None when the target is not DICOM).
- `window_dataset(...)`: a new single-frame object holding a decoded window: the source's
  attributes (frame N's functional groups for an enhanced multi-frame object), Rows/Columns of
  the window, Pixel Spacing scaled by the resolution, Image Position (Patient) moved to the
  window's first sample, pixel attributes of the decoded samples (colour decoded to RGB), a new
  SOP Instance UID and Series, Image Type DERIVED and a Derivation Description saying which
  window of which frame it is; Explicit VR Little Endian.
"""
from __future__ import annotations

import copy
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .url import JPIPURL, decode_value, encode_value

JPIP_REFERENCED = {"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.204"}
JPIP_REFERENCED_DEFLATE = {"1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SOURCE_IMAGE = ("121322", "DCM", "Source image for image processing operation")  # CID 7202
DICOM_JSON_TIMEOUT = 60.0
# Values of the source that describe its pixels as a whole and are wrong for a window.
STALE = ("SmallestImagePixelValue", "LargestImagePixelValue", "PixelDataProviderURL",
         "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "FrameIncrementPointer",
         "IconImageSequence")


class DicomClientError(ValueError):
    """A DICOM file the client cannot start from; the message says why."""


class DicomJSONError(RuntimeError):
    """The server's DICOM JSON of the target could not be had or read."""


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def reference_dataset(path: str | os.PathLike[str]) -> Dataset:
    """The dataset of a JPIP-referenced DICOM file (DicomClientError for any other)."""
    path = Path(path)
    if not is_dicom_file(path):
        raise DicomClientError(f"{path}: not a DICOM file")
    try:
        meta = read_file_meta_info(path)
        uid = str(meta.get("TransferSyntaxUID", ""))
        if uid in JPIP_REFERENCED_DEFLATE:
            with open(path, "rb") as f:
                f.seek(132)  # after the preamble and 'DICM'; the meta group is not deflated
                data = f.read()
            body = data[_meta_length(data):]
            raw = zlib.decompressobj(-zlib.MAX_WBITS).decompress(body)
            ds = read_dataset(io.BytesIO(raw), is_implicit_VR=False, is_little_endian=True)
            ds.file_meta = meta
        else:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:  # pydicom's and zlib's errors for a bad file are of many types
        raise DicomClientError(f"{path}: cannot read the DICOM dataset: {e}") from None
    if uid not in JPIP_REFERENCED | JPIP_REFERENCED_DEFLATE:
        raise DicomClientError(f"{path}: transfer syntax {uid} is not a JPIP-referenced one "
                               "(.94/.95/.204/.205): its pixels are in the file, not on a JPIP "
                               "server (serve it with jpip-server, then fetch its URL)")
    if "PixelDataProviderURL" not in ds or not ds.PixelDataProviderURL:
        raise DicomClientError(f"{path}: no Pixel Data Provider URL (0028,7FE0)")
    return ds


def _meta_length(data: bytes) -> int:
    """Bytes from after 'DICM' to the end of the file meta group (group length + 12)."""
    if data[:4] != b"\x02\x00\x00\x00" or data[4:6] != b"UL":
        raise DicomClientError("the file meta group does not start with its group length")
    return 12 + int.from_bytes(data[8:12], "little")


def referenced_url(path: str | os.PathLike[str]) -> str:
    """The JPIP URL a referenced object's pixels are at."""
    return str(reference_dataset(path).PixelDataProviderURL).strip()


def _target_field(url: JPIPURL) -> str | None:
    """The URL's target= value (decoded), or None in the path form."""
    for item in url.target_query.split("&"):
        name, _, raw = item.partition("=")
        if name == "target":
            return decode_value(raw)
    return None


def target_name(url: JPIPURL) -> str:
    """The target the URL names: its target= field, or its path (the path form)."""
    target = _target_field(url)
    if target is not None:
        return target
    return decode_value(url.base[len(url.origin):].lstrip("/"))


def dicom_json_url(url: JPIPURL) -> str:
    """This server's DICOM JSON of the target: /dicom-json beside the JPIP endpoint (target=
    form: the endpoint's folder; path form: the server's root)."""
    target = _target_field(url)
    if target is not None:
        folder = url.base.rsplit("/", 1)[0]
    else:
        folder, target = url.origin, target_name(url)
    return f"{folder}/dicom-json?target={encode_value(target)}"


async def fetch_dataset(url: JPIPURL, timeout: float = DICOM_JSON_TIMEOUT, *,
                        token: str | None = None) -> Dataset | None:
    """The target's dataset from the server's DICOM JSON; None when the target is not DICOM
    (404) or the server has no such route. `token` (default: the URL's access_token) goes as
    `Authorization: Bearer` to a server with access control."""
    import aiohttp

    token = token or url.token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                     headers=headers) as http:
        async with http.get(dicom_json_url(url)) as resp:
            if resp.status in (400, 404, 405, 501):  # not DICOM, or no such route
                return None
            if resp.status != 200:
                text = (await resp.text(errors="replace"))[:300]
                raise DicomJSONError(f"the server's DICOM JSON answered {resp.status}: "
                                       f"{text.strip()}")
            body = await resp.json(content_type=None)
    if isinstance(body, list):  # a DICOMweb metadata answer: one object per instance
        body = body[0] if body else {}
    try:
        return Dataset.from_json(body)
    except Exception as e:  # a malformed JSON model
        raise DicomJSONError(f"the server's DICOM JSON does not read as a dataset: {e}"
                               ) from None


# --------------------------------------------------------------------------- window -> DICOM
@dataclass(frozen=True)
class WindowGeometry:
    """Where a decoded window sits in the full-resolution frame."""

    discard: int            # resolution levels discarded: one sample spans 2^discard pixels
    column: int             # full-resolution column of the window's first sample
    row: int                # full-resolution row of the window's first sample
    frame: int              # 1-based frame of the source (DICOM stream N)


def _scaled_spacing(item: Dataset, attr: str, factor: int) -> None:
    if attr in item and item[attr].value:
        values = item[attr].value
        item[attr].value = [float(v) * factor for v in values]


def _move_position(item: Dataset, orientation, spacing, column: int, row: int) -> None:
    """Image Position (Patient) of the pixel at (column, row) of the full-resolution frame."""
    if "ImagePositionPatient" not in item or orientation is None or spacing is None:
        return
    pos = np.array([float(v) for v in item.ImagePositionPatient])
    o = np.array([float(v) for v in orientation])
    row_spacing, col_spacing = (float(v) for v in spacing)
    new = pos + column * col_spacing * o[:3] + row * row_spacing * o[3:6]
    item.ImagePositionPatient = [float(f"{v:.6g}") for v in new]


def _first_item(ds: Dataset | None, seq: str) -> Dataset | None:
    if ds is None or seq not in ds or not ds[seq].value:
        return None
    return ds[seq].value[0]


def _lookup(groups: list[Dataset | None], seq: str, attr: str):
    """A functional group value from the first group that has it (per-frame, then shared)."""
    for g in groups:
        item = _first_item(g, seq)
        if item is not None and attr in item:
            return item[attr].value
    return None


def window_dataset(source: Dataset | None, arrays: list[np.ndarray], *, precision: int,
                   signed: bool, geometry: WindowGeometry, lossy: bool,
                   description: str) -> Dataset:
    """A single-frame DICOM dataset (with file meta and Pixel Data) holding `arrays` (one per
    component, as decoded) and the source's attributes adjusted to the window."""
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DicomClientError("the components differ in size (subsampled): a DICOM image "
                               "cannot hold them; save .npy files instead")
    ds = Dataset() if source is None else copy.deepcopy(source)  # the source stays as it was
    for tag in [t for t in ds.keys() if t >> 16 == 0x7FE0 or 0x6000 <= t >> 16 <= 0x601F]:
        del ds[tag]  # pixels and overlays (their size is the source's)
    for kw in STALE:
        if kw in ds:
            delattr(ds, kw)
    if source is None:
        ds.SOPClassUID = SECONDARY_CAPTURE
        ds.StudyInstanceUID = generate_uid()
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                   "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            setattr(ds, kw, "")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    factor = 1 << geometry.discard
    per_frame = None
    if "PerFrameFunctionalGroupsSequence" in ds:
        items = ds.PerFrameFunctionalGroupsSequence
        if len(items) >= geometry.frame:
            per_frame = items[geometry.frame - 1]
            ds.PerFrameFunctionalGroupsSequence = Sequence([per_frame])
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    groups = [per_frame, shared]
    orientation = ds.get("ImageOrientationPatient") or _lookup(
        groups, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = ds.get("PixelSpacing") or _lookup(groups, "PixelMeasuresSequence", "PixelSpacing")
    _move_position(ds, orientation, spacing, geometry.column, geometry.row)
    for g in groups:
        plane = _first_item(g, "PlanePositionSequence")
        if plane is not None:
            _move_position(plane, orientation, spacing, geometry.column, geometry.row)
    if factor > 1:
        for item in [ds, *(_first_item(g, "PixelMeasuresSequence") for g in groups)]:
            if item is not None:
                for attr in ("PixelSpacing", "ImagerPixelSpacing",
                             "NominalScannedPixelSpacing"):
                    _scaled_spacing(item, attr, factor)
    if frames > 1:
        ds.NumberOfFrames = 1
    image = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)
    ds.Rows, ds.Columns = image.shape[:2]
    ds.SamplesPerPixel = len(arrays)
    if len(arrays) == 1:
        pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        ds.PhotometricInterpretation = pi if pi.startswith("MONOCHROME") or \
            pi == "PALETTE COLOR" else "MONOCHROME2"
        if "PlanarConfiguration" in ds:
            del ds.PlanarConfiguration
    elif len(arrays) == 3:
        ds.PhotometricInterpretation = "RGB"  # the decoder undid the component transform
        ds.PlanarConfiguration = 0
    else:
        raise DicomClientError(f"{len(arrays)} components: a DICOM image has 1 or 3")
    allocated = 8 if precision <= 8 else 16 if precision <= 16 else 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, precision, precision - 1
    ds.PixelRepresentation = int(signed)
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    ds.PixelData = np.ascontiguousarray(image).astype(dtype).tobytes()
    ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    source_uid = ds.get("SOPInstanceUID")
    source_class = ds.get("SOPClassUID")
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if "ImageType" in ds and ds.ImageType:
        values = list(ds.ImageType) if isinstance(ds.ImageType, pydicom.multival.MultiValue) \
            else [ds.ImageType]
        ds.ImageType = ["DERIVED", *values[1:]]
    else:
        ds.ImageType = ["DERIVED", "SECONDARY"]
    old = str(ds.get("DerivationDescription", "") or "")
    ds.DerivationDescription = (f"{old}; {description}" if old else description)[:1024]
    if lossy:
        ds.LossyImageCompression = "01"
    if source is not None and source_uid and source_class:
        ref = Dataset()
        ref.ReferencedSOPClassUID = source_class
        ref.ReferencedSOPInstanceUID = source_uid
        if frames > 1:
            ref.ReferencedFrameNumber = geometry.frame
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = SOURCE_IMAGE
        ref.PurposeOfReferenceCodeSequence = Sequence([code])
        ds.SourceImageSequence = Sequence([ref])
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    return ds


def save_window(path: str | os.PathLike[str], ds: Dataset) -> None:
    """Writes a dataset made by window_dataset as a Part 10 file (beside, then renamed)."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["DicomClientError", "DicomJSONError", "WindowGeometry", "dicom_json_url",
           "fetch_dataset", "is_dicom_file", "reference_dataset", "referenced_url",
           "save_window", "window_dataset"]
