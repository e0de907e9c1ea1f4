"""A DICOM dataset as DICOM JSON (PS3.18 Annex F), as pydicom's `to_json_dict` writes it.

Left out: the file meta information (group 0002, as PS3.18 10.4.1.1.2 says for metadata), the
Pixel Data (never read: its frames are served over JPIP) and every other value larger than
`part10.DEFER_SIZE` (bulk data we neither read nor serve; e.g. private blobs, overlays). Smaller
binary values are inline (InlineBinary, base64), as pydicom writes them.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from .errors import DicomError
from .part10 import read_dataset

# pydicom writes InlineBinary up to this size; larger values were not read (see part10).
INLINE_LIMIT = 1 << 30


def _drop_bulk(ds: Dataset, depth: int = 0) -> None:
    """Removes the values whose reading was deferred (the bulk data), in nested items too."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
            del ds[tag]
            continue
        elem = ds[tag]
        if elem.VR == "SQ" and depth < 16:
            for item in elem.value or ():
                _drop_bulk(item, depth + 1)


def dataset_json(ds: Dataset) -> dict:
    """The PS3.18 JSON object of a dataset read by part10.read_dataset (no pixel data)."""
    try:
        _drop_bulk(ds)
        return ds.to_json_dict(bulk_data_threshold=INLINE_LIMIT)
    except Exception as e:  # a value pydicom cannot convert: the file's fault
        raise DicomError(f"cannot write the dataset as DICOM JSON: {type(e).__name__}: {e}"
                         ) from None


def file_json(path: str | Path) -> bytes:
    """The DICOM JSON object of one DICOM file's dataset, UTF-8. (A DICOMweb metadata
    response would wrap it in an array; the viewer reads the object.)"""
    body = dataset_json(read_dataset(path))
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
