"""VBAS encode/decode: byte vectors from the protocol note (section 3.1, 8) and boundaries."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jpip.vbas import JPPError, decode_vbas, encode_vbas, read_vbas

VECTORS = [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x81\x00"),
    (150, b"\x81\x16"),  # Msg-Offset of the worked example, section 8
    (300, b"\x82\x2c"),
    (16383, b"\xff\x7f"),
    (16384, b"\x81\x80\x00"),
    (2**21 - 1, b"\xff\xff\x7f"),
    (2**21, b"\x81\x80\x80\x00"),
    (2**56 - 1, b"\xff" * 7 + b"\x7f"),
]


@pytest.mark.parametrize(("value", "encoded"), VECTORS)
def test_encode_vectors(value: int, encoded: bytes) -> None:
    assert encode_vbas(value) == encoded


@pytest.mark.parametrize(("value", "encoded"), VECTORS)
def test_decode_vectors(value: int, encoded: bytes) -> None:
    assert decode_vbas(encoded, 0) == (value, len(encoded))
    # at a non-zero position, with trailing bytes, and from a memoryview
    buf = b"\xaa" + encoded + b"\x55"
    assert decode_vbas(memoryview(buf), 1) == (value, 1 + len(encoded))


@pytest.mark.parametrize("value", [-1, -300, 2**56, 2**64])
def test_encode_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_vbas(value)


@pytest.mark.parametrize(
    ("buf", "pos", "reason", "offset"),
    [
        (b"", 0, "truncated", 0),
        (b"\x81", 0, "truncated", 0),
        (b"\x00\xff\xff", 1, "truncated", 1),
        (b"\x80" * 8 + b"\x00", 0, "longer than 8", 0),
        (b"\x01" + b"\xff" * 9, 1, "longer than 8", 1),
    ],
)
def test_decode_errors(buf: bytes, pos: int, reason: str, offset: int) -> None:
    with pytest.raises(JPPError, match=reason) as info:
        decode_vbas(buf, pos)
    assert info.value.offset == offset
    assert isinstance(info.value, ValueError)


def test_decode_accepts_non_minimal_forms() -> None:
    # Decoders must accept leading zero-payload bytes (esajpip writes them), up to 8 bytes.
    assert decode_vbas(b"\x80\x05", 0) == (5, 2)
    assert decode_vbas(b"\x80" * 7 + b"\x05", 0) == (5, 8)


def test_read_vbas_reports_incomplete_without_raising() -> None:
    assert read_vbas(b"\x82", 0, 1) == (0, -1)
    assert read_vbas(b"\x82\x2c", 0, 1) == (0, -1)  # `end` bounds the read
    with pytest.raises(JPPError) as info:
        read_vbas(b"\x80" * 8, 0, 8, base=1000)
    assert info.value.offset == 1000


@given(st.integers(min_value=0, max_value=2**56 - 1))
def test_round_trip(value: int) -> None:
    enc = encode_vbas(value)
    assert decode_vbas(enc, 0) == (value, len(enc))
    # minimal: exactly ceil(bits / 7) bytes, continuation on all but the last
    assert len(enc) == max(1, -(-value.bit_length() // 7))
    assert all(b & 0x80 for b in enc[:-1]) and not enc[-1] & 0x80
