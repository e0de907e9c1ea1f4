"""Cache models and records as bytes (cache/model_codec.py): what is decoded is what was
encoded, a model built from decoded records equals one built from the originals, and foreign
or cut bytes are a CodecError, never something else."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.model import BinKind, CacheModel, Evicted, EvictedRows, Received, ReceivedRows
from cache.model_codec import (
    CodecError,
    decode_model,
    decode_records,
    encode_model,
    encode_records,
)

ROW_KINDS = (BinKind.PRECINCT, BinKind.TILE)
ONE_KINDS = (BinKind.MAIN_HEADER, BinKind.TILE_HEADER, BinKind.METADATA)

values = st.one_of(st.integers(0, 1 << 20), st.integers(0, (1 << 40)))
one = st.builds(lambda cls, kind, cs, bin_id, v: cls(kind, cs, bin_id, v),
                st.sampled_from((Received, Evicted)), st.sampled_from(ONE_KINDS),
                st.integers(0, 5), st.integers(0, 1 << 33), values)


@st.composite
def rows(draw):
    cls = draw(st.sampled_from((ReceivedRows, EvictedRows)))
    n = draw(st.integers(0, 40))
    ids = np.asarray(draw(st.lists(st.integers(0, 1 << 30), min_size=n, max_size=n)), np.int32)
    wide = draw(st.booleans())
    top = (1 << 40) if wide else (1 << 20)
    vals = np.asarray(draw(st.lists(st.integers(0, top), min_size=n, max_size=n)), np.int64)
    return cls(draw(st.sampled_from(ROW_KINDS)), draw(st.integers(0, 5)), ids, vals)


records = st.lists(st.one_of(one, rows()), max_size=12)


def _state(model: CacheModel) -> tuple:
    """Everything a model holds, comparable."""
    streams = {}
    for cs, h in model.streams.items():
        if h.is_empty():
            continue
        streams[cs] = (h.main_header, dict(h.tile_headers), h.precincts.rows.tolist(),
                       h.precincts.held.tolist(), h.tiles.rows.tolist(), h.tiles.held.tolist())
    return dict(model.metadata), streams


def _same_record(a, b) -> bool:
    if type(a) is not type(b) or a.kind != b.kind or a.codestream != b.codestream:
        return False
    if isinstance(a, Received | Evicted):
        return (a.bin_id, getattr(a, "end", None), getattr(a, "keep", None)) == (
            b.bin_id, getattr(b, "end", None), getattr(b, "keep", None))
    vals = (a.ends, b.ends) if isinstance(a, ReceivedRows) else (a.keep, b.keep)
    return a.rows.tolist() == b.rows.tolist() and vals[0].tolist() == vals[1].tolist()


@settings(max_examples=100, deadline=None)
@given(records)
def test_records_round_trip(recs) -> None:
    back = decode_records(encode_records(recs))
    assert len(back) == len(recs)
    assert all(_same_record(a, b) for a, b in zip(recs, back, strict=True))
    for r in back:
        if isinstance(r, ReceivedRows | EvictedRows):
            assert r.rows.dtype == np.int32
            assert (r.ends if isinstance(r, ReceivedRows) else r.keep).dtype == np.int64


@settings(max_examples=100, deadline=None)
@given(st.lists(records, max_size=5))
def test_a_model_round_trips_and_equals_its_records_applied(batches) -> None:
    original, replayed = CacheModel(), CacheModel()
    for batch in batches:
        original.apply(batch)
        replayed.apply(decode_records(encode_records(batch)))
    assert _state(replayed) == _state(original)
    assert _state(decode_model(encode_model(original))) == _state(original)


def test_a_viewer_sized_model_is_a_few_hundred_bytes() -> None:
    model = CacheModel()
    model.apply([Received(BinKind.METADATA, 0, 0, 120), Received(BinKind.MAIN_HEADER, 0, 0, 180),
                 Received(BinKind.TILE_HEADER, 0, 0, 14),
                 ReceivedRows(BinKind.PRECINCT, 0, np.arange(0, 600, 2, dtype=np.int32),
                              np.full(300, 900, np.int64))])
    data = encode_model(model)
    assert len(data) < 400, len(data)  # 300 precincts: 3.6 KB of arrays in memory
    assert _state(decode_model(data)) == _state(model)


@pytest.mark.parametrize("data", [b"", b"\x07", b"\x01\x09", b"\x01\x02\x00\x00\x00\x00\x05"])
def test_foreign_record_bytes_are_a_codec_error(data) -> None:
    with pytest.raises(CodecError):
        decode_records(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_codec_error(data) -> None:
    for decode in (decode_records, decode_model):
        try:
            decode(data)
        except CodecError:
            pass


def test_a_cut_model_is_a_codec_error() -> None:
    model = CacheModel()
    model.apply([ReceivedRows(BinKind.PRECINCT, 1, np.arange(50, dtype=np.int32),
                              np.arange(50, dtype=np.int64))])
    data = encode_model(model)
    for cut in (3, len(data) // 2, len(data) - 1):
        with pytest.raises(CodecError):
            decode_model(data[:cut])
