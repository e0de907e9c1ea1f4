"""Cache models and their change records as bytes, for session stores kept outside the process.

Two encodings, both little-endian and versioned by their first byte:

- records (`encode_records` / `decode_records`): the records of one change, e.g. what one
  written chunk of a response carried. A shared store appends these as they happen, so every
  worker's update is "exactly what was written", never a rewrite of the whole model.
- a model (`encode_model` / `decode_model`): a whole `CacheModel`, the snapshot a store folds
  its appended records into from time to time.

Per record: a tag byte (its type; bit 7 set when its values are int64 rather than int32), the
data-bin kind, the codestream (u32), then either one bin (`Received`/`Evicted`: bin id and
value, i64 each) or a count (u32) and that many rows (i32) and values (i32/i64). Precinct rows
of a model are sorted, so a model stores them as differences (small numbers) and the whole
snapshot is zlib-compressed once it is larger than `COMPRESS_ABOVE` bytes: a viewer's session of
a few hundred precincts costs a few hundred bytes.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

import numpy as np

from .model import (
    BinKind,
    CacheModel,
    CodestreamHoldings,
    Evicted,
    EvictedRows,
    ModelRecord,
    Received,
    ReceivedRows,
    SparseHoldings,
)

__all__ = ["CodecError", "decode_model", "decode_records", "encode_model", "encode_records"]

RECORDS_VERSION = 1
MODEL_VERSION = 1
COMPRESS_ABOVE = 512

_ONE = struct.Struct("<BBIqq")     # tag, kind, codestream, bin id, value
_ROWS = struct.Struct("<BBII")     # tag, kind, codestream, count
_WIDE = 0x80                       # tag bit: values are int64
_TAGS = {Received: 0, Evicted: 1, ReceivedRows: 2, EvictedRows: 3}
_I32_MAX = np.iinfo(np.int32).max
_I32_MIN = np.iinfo(np.int32).min

# model layout
_MODEL_HEAD = struct.Struct("<BBI")      # version, flags (1: zlib), codestream count
_STREAM_HEAD = struct.Struct("<Iq")      # codestream, main header bytes held
_COUNT = struct.Struct("<I")
_FLAG_ZLIB = 1


class CodecError(ValueError):
    """Bytes that are not an encoding of this version (a store holding foreign data)."""


def _values(values: np.ndarray) -> tuple[bool, bytes]:
    """int32 when every value fits (nearly always: bin lengths), else int64."""
    if len(values) and (values.max() > _I32_MAX or values.min() < _I32_MIN):
        return True, values.astype("<i8", copy=False).tobytes()
    return False, values.astype("<i4", copy=False).tobytes()


# --- records ----------------------------------------------------------------------------------

def encode_records(records: Iterable[ModelRecord]) -> bytes:
    """The records, in order, as bytes."""
    out = [bytes([RECORDS_VERSION])]
    for r in records:
        tag = _TAGS[type(r)]
        if tag < 2:
            value = r.end if tag == 0 else r.keep
            out.append(_ONE.pack(tag, r.kind, r.codestream, r.bin_id, value))
            continue
        values = r.ends if tag == 2 else r.keep
        wide, data = _values(np.asarray(values))
        rows = np.asarray(r.rows)
        out.append(_ROWS.pack(tag | (_WIDE if wide else 0), r.kind, r.codestream, len(rows)))
        out.append(rows.astype("<i4", copy=False).tobytes())
        out.append(data)
    return b"".join(out)


def decode_records(data: bytes) -> list[ModelRecord]:
    """The records `encode_records` wrote."""
    if not data or data[0] != RECORDS_VERSION:
        raise CodecError("not a record list of this version")
    view = memoryview(data)
    pos, end = 1, len(data)
    out: list[ModelRecord] = []
    try:
        while pos < end:
            tag = data[pos]
            base = tag & ~_WIDE
            if base < 2:
                _, kind, cs, bin_id, value = _ONE.unpack_from(view, pos)
                pos += _ONE.size
                cls = Received if base == 0 else Evicted
                out.append(cls(BinKind(kind), cs, bin_id, value))
            elif base < 4:
                _, kind, cs, count = _ROWS.unpack_from(view, pos)
                pos += _ROWS.size
                rows = np.frombuffer(view, "<i4", count, pos).astype(np.int32)
                pos += 4 * count
                width = 8 if tag & _WIDE else 4
                values = np.frombuffer(view, f"<i{width}", count, pos).astype(np.int64)
                pos += width * count
                cls = ReceivedRows if base == 2 else EvictedRows
                out.append(cls(BinKind(kind), cs, rows, values))
            else:
                raise CodecError(f"unknown record tag {tag}")
    except (struct.error, ValueError) as e:  # cut short, or a kind that is no BinKind
        if isinstance(e, CodecError):
            raise
        raise CodecError(f"bad record list: {e}") from None
    return out


# --- models -----------------------------------------------------------------------------------

def _put_table(out: list[bytes], table: dict[int, int]) -> None:
    keys = np.fromiter(table.keys(), np.int64, len(table))
    vals = np.fromiter(table.values(), np.int64, len(table))
    out.append(_COUNT.pack(len(table)))
    out.append(keys.astype("<i8").tobytes())
    out.append(vals.astype("<i8").tobytes())


def _put_sparse(out: list[bytes], h: SparseHoldings) -> None:
    rows = h.rows
    steps = np.diff(rows, prepend=np.int32(0)) if len(rows) else rows  # sorted: small steps
    wide, data = _values(h.held)
    out.append(_COUNT.pack(len(rows) | (1 << 31 if wide else 0)))
    out.append(steps.astype("<i4", copy=False).tobytes())
    out.append(data)


def encode_model(model: CacheModel) -> bytes:
    """A whole model as bytes (compressed when that pays)."""
    out: list[bytes] = []
    _put_table(out, model.metadata)
    for cs, h in sorted(model.streams.items()):
        out.append(_STREAM_HEAD.pack(cs, h.main_header))
        _put_table(out, h.tile_headers)
        _put_sparse(out, h.precincts)
        _put_sparse(out, h.tiles)
    body = b"".join(out)
    flags = 0
    if len(body) > COMPRESS_ABOVE:
        body, flags = zlib.compress(body, 1), _FLAG_ZLIB
    return _MODEL_HEAD.pack(MODEL_VERSION, flags, len(model.streams)) + body


class _Reader:
    __slots__ = ("view", "pos")

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def unpack(self, st: struct.Struct) -> tuple:
        values = st.unpack_from(self.view, self.pos)
        self.pos += st.size
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.view, dtype, count, self.pos)
        self.pos += arr.nbytes
        return arr

    def table(self) -> dict[int, int]:
        (count,) = self.unpack(_COUNT)
        keys = self.array("<i8", count)
        vals = self.array("<i8", count)
        return dict(zip(keys.tolist(), vals.tolist(), strict=True))

    def sparse(self) -> SparseHoldings:
        (word,) = self.unpack(_COUNT)
        count, wide = word & ~(1 << 31), bool(word >> 31)
        h = SparseHoldings()
        h.rows = np.cumsum(self.array("<i4", count), dtype=np.int64).astype(np.int32)
        h.held = self.array("<i8" if wide else "<i4", count).astype(np.int64)
        return h


def decode_model(data: bytes) -> CacheModel:
    """The model `encode_model` wrote."""
    try:
        version, flags, streams = _MODEL_HEAD.unpack_from(data, 0)
        if version != MODEL_VERSION:
            raise CodecError("not a model of this version")
        body = data[_MODEL_HEAD.size:]
        if flags & _FLAG_ZLIB:
            body = zlib.decompress(body)
        r = _Reader(body)
        model = CacheModel()
        model.metadata = r.table()
        for _ in range(streams):
            cs, main = r.unpack(_STREAM_HEAD)
            h = CodestreamHoldings()
            h.main_header = main
            h.tile_headers = r.table()
            h.precincts = r.sparse()
            h.tiles = r.sparse()
            model.streams[cs] = h
        if r.pos != len(body):
            raise CodecError("trailing bytes after the model")
        return model
    except (struct.error, ValueError, zlib.error) as e:
        if isinstance(e, CodecError):
            raise
        raise CodecError(f"bad model: {e}") from None
