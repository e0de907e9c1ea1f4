"""JPP-stream message codec: byte vectors (protocol note sections 3 and 8) and round trips."""
from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jpip.jpp import (
    EOR,
    EXT_PRECINCT,
    EXT_TILE,
    KNOWN_CLASSES,
    MAIN_HEADER,
    METADATA,
    PRECINCT,
    TILE,
    TILE_HEADER,
    EndOfResponse,
    JPPError,
    Message,
    MessageWriter,
    StreamParser,
    message_bytes,
    parse_stream,
)
from jpip.vbas import JPPError as VbasJPPError
from jpip.vbas import encode_vbas

# --- constants -------------------------------------------------------------------------------


def test_constants() -> None:
    assert (PRECINCT, EXT_PRECINCT, TILE_HEADER, TILE, EXT_TILE, MAIN_HEADER, METADATA) == (
        0, 1, 2, 4, 5, 6, 8)
    assert {e.name: int(e) for e in EOR} == {
        "IMAGE_DONE": 1, "WINDOW_DONE": 2, "WINDOW_CHANGE": 3, "BYTE_LIMIT": 4,
        "QUALITY_LIMIT": 5, "SESSION_LIMIT": 6, "RESPONSE_LIMIT": 7, "UNSPECIFIED": 255}
    assert JPPError is VbasJPPError and issubclass(JPPError, ValueError)
    err = JPPError("bad thing", 42)
    assert (err.reason, err.offset) == ("bad thing", 42) and "42" in str(err)


# --- the worked example of section 8 ---------------------------------------------------------

MAIN_HEADER_BIN = bytes.fromhex("ff4fff510029") + bytes(range(107))  # 113 bytes
PRECINCT0 = bytes.fromhex("debe11bde695") + bytes(range(58))  # layer 0: 64 bytes
LAYER1 = bytes(range(86))
LAYER2 = bytes(range(104))

EXAMPLE_RESPONSE_1 = (
    bytes.fromhex("7006000071") + MAIN_HEADER_BIN  # bb=3 c=1 id=0 | 6 | 0 | 0 | 113
    + bytes.fromhex("50020000")  # tile header 0: bb=2 c=1 | 2 | off 0 | len 0
    + bytes.fromhex("40000040") + PRECINCT0  # precinct 0: bb=2 c=0 | 0 | off 0 | len 64
    + bytes.fromhex("000400")  # EOR byte limit
)
EXAMPLE_RESPONSE_2 = (
    bytes.fromhex("6000004056") + LAYER1  # bb=3 c=0 | 0 | 0 | off 64 | len 86
    + bytes.fromhex("30811668") + LAYER2  # bb=1 c=1 | off 150 | len 104
    + bytes.fromhex("000200")
)


def test_worked_example_writer() -> None:
    w = MessageWriter()
    out = (message_bytes(w, MAIN_HEADER, 0, 0, 0, MAIN_HEADER_BIN, True)
           + message_bytes(w, TILE_HEADER, 0, 0, 0, b"", True)
           + message_bytes(w, PRECINCT, 0, 0, 0, PRECINCT0, False)
           + w.eor(EOR.BYTE_LIMIT))
    assert out == EXAMPLE_RESPONSE_1
    # The next response has its own writer: its first message re-sends class and CSn.
    w = MessageWriter()
    out = (message_bytes(w, PRECINCT, 0, 0, 64, LAYER1, False)
           + message_bytes(w, PRECINCT, 0, 0, 150, LAYER2, True)
           + w.eor(EOR.WINDOW_DONE))
    assert out == EXAMPLE_RESPONSE_2


def test_worked_example_parser() -> None:
    assert parse_stream(EXAMPLE_RESPONSE_1) == [
        Message(MAIN_HEADER, 0, 0, 0, MAIN_HEADER_BIN, True, None),
        Message(TILE_HEADER, 0, 0, 0, b"", True, None),
        Message(PRECINCT, 0, 0, 0, PRECINCT0, False, None),
        EndOfResponse(EOR.BYTE_LIMIT, b""),
    ]
    assert parse_stream(EXAMPLE_RESPONSE_2) == [
        Message(PRECINCT, 0, 0, 64, LAYER1, False, None),
        Message(PRECINCT, 0, 0, 150, LAYER2, True, None),
        EndOfResponse(EOR.WINDOW_DONE, b""),
    ]


# --- Bin-ID encoding --------------------------------------------------------------------------

# (bin id, Bin-ID bytes with bb=1 and c=1): a k-byte Bin-ID carries 7k-3 id bits.
BIN_ID_VECTORS = [
    (0, "30"),
    (15, "3f"),
    (16, "b010"),
    (200, "b148"),  # section 8 encoding check
    (2**11 - 1, "bf7f"),
    (2**11, "b09000"),
    (2**18 - 1, "bfff7f"),
    (2**18, "b0908000"),
    (2**25 - 1, "bfffff7f"),
    (2**25, "b090808000"),
    (2**53 - 1, "bfffffffffffff7f"),
]


def _bb1_header(bin_id: int, is_last: bool = True) -> bytes:
    """Header of a second message with unchanged class and CSn (so bb=1), offset 0, length 0."""
    w = MessageWriter()
    w.header(PRECINCT, 0, 0, 1, 0, False)
    return w.header(PRECINCT, 0, bin_id, 0, 0, is_last)


@pytest.mark.parametrize(("bin_id", "hexbytes"), BIN_ID_VECTORS)
def test_bin_id_vectors(bin_id: int, hexbytes: str) -> None:
    assert _bb1_header(bin_id) == bytes.fromhex(hexbytes) + b"\x00\x00"
    # c=0 clears bit 4 of the first byte only
    expected = bytearray.fromhex(hexbytes)
    expected[0] &= ~0x10
    assert _bb1_header(bin_id, is_last=False) == bytes(expected) + b"\x00\x00"
    # and the parser reads it back
    (msg,) = parse_stream(bytes.fromhex(hexbytes) + b"\x00\x00")
    assert (msg.bin_class, msg.csn, msg.bin_id, msg.is_last) == (PRECINCT, 0, bin_id, True)


def test_bin_id_first_message_bb3() -> None:
    w = MessageWriter()
    assert w.header(PRECINCT, 0, 200, 0, 0, True) == bytes.fromhex("f1480000" "0000")


# --- bb selection -----------------------------------------------------------------------------

# (class, CSn, expected bb) for consecutive messages of one response
BB_SEQUENCE = [
    (PRECINCT, 0, 3),  # first message of a response: always bb=3
    (PRECINCT, 0, 1),
    (TILE_HEADER, 0, 2),
    (TILE_HEADER, 1, 3),  # CSn changed
    (MAIN_HEADER, 1, 2),
    (MAIN_HEADER, 1, 1),
    (MAIN_HEADER, 0, 3),
    (METADATA, 0, 2),
    (METADATA, 200, 3),
    (PRECINCT, 200, 2),
]


def test_bb_selection() -> None:
    w = MessageWriter()
    stream = b""
    for i, (cls, csn, bb) in enumerate(BB_SEQUENCE):
        h = w.header(cls, csn, 0, i, 1, False)
        assert (h[0] >> 5) & 3 == bb, (i, cls, csn)
        expected = bytes(((bb << 5),))
        if bb >= 2:
            expected += encode_vbas(cls)
        if bb == 3:
            expected += encode_vbas(csn)
        assert h == expected + encode_vbas(i) + b"\x01"
        stream += h + b"x"
    got = parse_stream(stream)
    assert [(m.bin_class, m.csn, m.offset) for m in got] == [
        (cls, csn, i) for i, (cls, csn, _) in enumerate(BB_SEQUENCE)]


def test_each_writer_starts_with_bb3() -> None:
    for _ in range(2):
        w = MessageWriter()
        assert w.header(PRECINCT, 0, 0, 0, 0, False)[0] >> 5 == 3


def test_reencoding_same_message_keeps_bb() -> None:
    # A caller shortening a message to fit `len` calls header() again for the same message.
    w = MessageWriter()
    assert w.header(METADATA, 0, 0, 0, 5000, True) == bytes.fromhex("7008 00 00 a708")
    assert w.header(METADATA, 0, 0, 0, 100, False) == bytes.fromhex("6008 00 00 64")
    assert w.header(METADATA, 0, 0, 0, 99, False) == bytes.fromhex("6008 00 00 63")
    # the next real message follows the re-encoded one
    assert w.header(METADATA, 0, 1, 0, 1, True) == bytes.fromhex("31 00 01")
    assert w.header(PRECINCT, 0, 1, 0, 1, True) == bytes.fromhex("51 00 00 01")
    assert w.header(PRECINCT, 0, 1, 0, 2, True) == bytes.fromhex("51 00 00 02")


def test_same_message_sent_twice_still_decodes() -> None:
    # If a caller really sends a message twice, the re-encoding rule may pick a larger bb than
    # needed, which is always valid on the wire.
    w = MessageWriter()
    m1 = Message(METADATA, 2, 0, 0, b"meta", True)
    m2 = Message(PRECINCT, 2, 9, 4, b"data", False)
    stream = b"".join(message_bytes(w, m.bin_class, m.csn, m.bin_id, m.offset, m.data,
                                    m.is_last) for m in (m1, m2, m2, m1, m1))
    assert parse_stream(stream) == [m1, m2, m2, m1, m1]


def test_numpy_integers() -> None:
    w = MessageWriter()
    h = w.header(PRECINCT, np.int64(1), np.int64(70000), np.int64(5), np.int64(3), np.bool_(True))
    assert h == bytes.fromhex("f4a270 00 01 05 03")
    assert w.header(PRECINCT, np.int32(1), np.int64(7), np.int64(0), np.int64(1), False) == (
        bytes.fromhex("27 00 01"))


def test_discard_rolls_back() -> None:
    w = MessageWriter()
    w.header(MAIN_HEADER, 0, 0, 0, 10, True)
    w.header(PRECINCT, 0, 3, 0, 10, True)
    w.discard()  # the precinct message was not sent
    assert w.header(PRECINCT, 0, 4, 0, 10, True) == bytes.fromhex("54 00 00 0a")
    w = MessageWriter()
    w.header(PRECINCT, 0, 0, 0, 10, True)
    w.discard()
    assert w.header(PRECINCT, 0, 0, 0, 10, True)[0] >> 5 == 3  # still the first message


# --- Aux and argument checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "aux", "expected"),
    [
        (EXT_PRECINCT, 2, "63 01 00 00 05 02"),
        (EXT_TILE, 300, "63 05 00 00 05 822c"),
        (TILE, None, "63 04 00 00 05"),
    ],
)
def test_aux(cls: int, aux: int | None, expected: str) -> None:
    w = MessageWriter()
    data = b"abcde"
    raw = message_bytes(w, cls, 0, 3, 0, data, False, aux)
    assert raw == bytes.fromhex(expected) + data
    assert parse_stream(raw) == [Message(cls, 0, 3, 0, data, False, aux)]


@pytest.mark.parametrize(
    "args",
    [
        (3, 0, 0, 0, 0, True, None),  # reserved class
        (7, 0, 0, 0, 0, True, None),
        (9, 0, 0, 0, 0, True, None),
        (EXT_PRECINCT, 0, 0, 0, 0, True, None),  # odd class needs Aux
        (PRECINCT, 0, 0, 0, 0, True, 1),  # even class must not have Aux
        (PRECINCT, -1, 0, 0, 0, True, None),
        (PRECINCT, 2**56, 0, 0, 0, True, None),
        (PRECINCT, 0, -1, 0, 0, True, None),
        (PRECINCT, 0, 2**53, 0, 0, True, None),
        (PRECINCT, 0, 0, -1, 0, True, None),
        (PRECINCT, 0, 0, 2**56, 0, True, None),
        (PRECINCT, 0, 0, 0, -1, True, None),
        (EXT_TILE, 0, 0, 0, 0, True, -1),
    ],
)
def test_header_rejects(args: tuple) -> None:
    w = MessageWriter()
    with pytest.raises(ValueError):
        w.header(*args)
    # a rejected call leaves the writer untouched: the next message is still the first
    assert w.header(PRECINCT, 0, 0, 0, 0, True)[0] >> 5 == 3


# --- EOR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "body", "expected"),
    [
        (EOR.WINDOW_DONE, b"", "000200"),
        (EOR.IMAGE_DONE, b"", "000100"),
        (EOR.BYTE_LIMIT, b"", "000400"),
        (EOR.UNSPECIFIED, b"hi", "00ff02" + b"hi".hex()),
        (EOR.RESPONSE_LIMIT, bytes(200), "00078148" + bytes(200).hex()),
    ],
)
def test_eor(reason: int, body: bytes, expected: str) -> None:
    w = MessageWriter()
    assert w.eor(reason, body) == bytes.fromhex(expected)
    assert parse_stream(bytes.fromhex(expected)) == [EndOfResponse(reason, body)]


def test_eor_ends_writer() -> None:
    w = MessageWriter()
    w.eor(EOR.WINDOW_DONE)
    with pytest.raises(RuntimeError):
        w.header(PRECINCT, 0, 0, 0, 0, True)
    with pytest.raises(ValueError):
        MessageWriter().eor(256)


def test_eor_reason_types() -> None:
    (end,) = parse_stream(b"\x00\x02\x00")
    assert end.reason is EOR.WINDOW_DONE
    (end,) = parse_stream(b"\x00\x09\x00")  # unknown reasons are kept as plain ints
    assert end.reason == 9 and not isinstance(end.reason, EOR)


# --- parser ------------------------------------------------------------------------------------


def test_parser_defaults_and_carry_over() -> None:
    # bb=1 first: class 0, CSn 0; then class and CSn carry over until changed
    stream = bytes.fromhex(
        "21 00 01 61"  # bb=1 id=1: precinct 0/0
        "42 08 00 00"  # bb=2: metadata, CSn stays 0
        "73 06 05 00 00"  # bb=3: main header, CSn 5
        "24 00 00"  # bb=1: main header / CSn 5 again
        "45 02 00 00"  # bb=2: tile header, CSn 5
    )
    assert [(m.bin_class, m.csn, m.bin_id, m.is_last) for m in parse_stream(stream)] == [
        (PRECINCT, 0, 1, False), (METADATA, 0, 2, False), (MAIN_HEADER, 5, 3, True),
        (MAIN_HEADER, 5, 4, False), (TILE_HEADER, 5, 5, False)]


def test_parser_accepts_non_minimal_bin_id() -> None:
    # esajpip writes a zero-payload continuation for ids >= 16: first byte 1bbc0000
    assert parse_stream(bytes.fromhex("b0 05 00 00")) == [Message(0, 0, 5, 0, b"", True, None)]
    assert parse_stream(bytes.fromhex("b0 80 10 00 00")) == [
        Message(0, 0, 16, 0, b"", True, None)]


# (stream, error reason fragment, offset, max_message_length)
PARSE_ERRORS = [
    ("05 00 00", "bb=0", 0, None),
    ("21 00 00 10 00 00", "bb=0", 3, None),  # bb=0 after a valid message
    ("8f 00 00 00", "bb=0", 0, None),
    ("40 03 00 00", "unknown data-bin class 3", 1, None),
    ("40 07 00 00", "unknown data-bin class 7", 1, None),
    ("60 09 00 00 00", "unknown data-bin class 9", 1, None),
    ("40 8100 00 00", "unknown data-bin class 128", 1, None),
    ("a0 80808080808080 00 00", "VBAS longer", 0, None),
    ("20 8080808080808080 00", "VBAS longer", 1, None),
    ("60 00 ffffffffffffffff", "VBAS longer", 2, None),
    ("20 00 0b" + "00" * 11, "length 11 exceeds", 2, 10),
    ("20 00 ffffffffff7f", "exceeds", 2, None),  # hostile length: refused before any body
    ("00 02 0b" + "00" * 11, "EOR body length 11 exceeds", 2, 10),
    ("00 02 00 20 00 00", "after end-of-response", 3, None),
    ("00 02 00 00 02 00", "after end-of-response", 3, None),
]


@pytest.mark.parametrize(("hexstream", "reason", "offset", "limit"), PARSE_ERRORS)
def test_parse_errors(hexstream: str, reason: str, offset: int, limit: int | None) -> None:
    data = bytes.fromhex(hexstream)
    with pytest.raises(JPPError, match=reason) as info:
        parse_stream(data) if limit is None else parse_stream(data, limit)
    assert info.value.offset == offset
    # fed one byte at a time, the error shows up at the same stream offset
    parser = StreamParser() if limit is None else StreamParser(limit)
    with pytest.raises(JPPError) as info:
        for i in range(len(data)):
            parser.feed(data[i:i + 1])
        parser.close()
    assert info.value.offset == offset


def test_hostile_length_does_not_wait_for_body() -> None:
    parser = StreamParser(max_message_length=1 << 20)
    with pytest.raises(JPPError):
        parser.feed(b"\x20\x00" + encode_vbas(1 << 40))


@pytest.mark.parametrize(
    ("hexstream", "offset"),
    [
        ("70", 0),  # a complete 1-byte Bin-ID, Class missing
        ("f0", 0),  # inside a 2-byte Bin-ID
        ("7006000071", 0),  # header complete, body missing
        ("21 00 01 61 42 08 00 05 aa", 4),  # second message's body cut short
        ("00", 0),  # EOR identifier alone
        ("00 02", 0),
        ("00 02 03 aa", 0),
    ],
)
def test_close_reports_truncation(hexstream: str, offset: int) -> None:
    parser = StreamParser()
    parser.feed(bytes.fromhex(hexstream))
    with pytest.raises(JPPError, match="ends inside") as info:
        parser.close()
    assert info.value.offset == offset


def test_errors_are_sticky() -> None:
    parser = StreamParser()
    with pytest.raises(JPPError):
        parser.feed(b"\x05")
    with pytest.raises(JPPError):
        parser.feed(b"")
    with pytest.raises(JPPError):
        parser.close()


def test_data_after_eor_in_later_chunk() -> None:
    parser = StreamParser()
    assert parser.feed(b"\x00\x02") == []
    assert parser.feed(b"\x00") == [EndOfResponse(EOR.WINDOW_DONE)]
    assert parser.end == EndOfResponse(EOR.WINDOW_DONE)
    assert parser.feed(b"") == []
    with pytest.raises(JPPError, match="after end-of-response") as info:
        parser.feed(b"\x20")
    assert info.value.offset == 3


def test_no_eor_is_fine() -> None:
    # openjpip's stateless responses carry no EOR: a clean end between messages is accepted
    parser = StreamParser()
    assert parser.feed(bytes.fromhex("21 00 01 61")) == [Message(0, 0, 1, 0, b"a", False)]
    parser.close()
    assert parser.end is None


def test_header_split_across_chunks() -> None:
    parser = StreamParser()
    out = []
    for piece in (b"\xf1", b"\x48\x06", b"\x00", b"\x81", b"\x16\x02x", b"y\x00", b"\x02\x00"):
        out += parser.feed(piece)
    parser.close()
    # class 6 with a non-zero id is not checked: that is the data-bin layer's business
    assert out == [Message(MAIN_HEADER, 0, 200, 150, b"xy", True), EndOfResponse(2)]


# --- round trips (hypothesis) -----------------------------------------------------------------

bin_ids = st.one_of(
    st.integers(0, 15),  # 1-byte Bin-ID
    st.integers(16, 2**11 - 1),  # 2 bytes
    st.integers(2**11, 2**18 - 1),  # 3 bytes
    st.integers(2**18, 2**25 - 1),  # 4 bytes
    st.integers(0, 2**53 - 1),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    cls = draw(st.sampled_from(sorted(KNOWN_CLASSES)))
    return Message(
        bin_class=cls,
        csn=draw(st.one_of(st.integers(0, 3), st.integers(0, 2**56 - 1))),
        bin_id=draw(bin_ids),
        offset=draw(st.one_of(st.integers(0, 300), st.integers(0, 2**56 - 1))),
        data=draw(st.binary(max_size=300)),
        is_last=draw(st.booleans()),
        aux=draw(st.integers(0, 2**56 - 1)) if cls & 1 else None,
    )


def _encode(msgs: list[Message], end: EndOfResponse | None) -> bytes:
    w = MessageWriter()
    parts = [message_bytes(w, m.bin_class, m.csn, m.bin_id, m.offset, m.data, m.is_last, m.aux)
             for m in msgs]
    if end is not None:
        parts.append(w.eor(end.reason, end.body))
    return b"".join(parts)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in pairwise(points)]


ends = st.one_of(
    st.none(),
    st.builds(EndOfResponse, st.sampled_from(list(EOR)), st.binary(max_size=20)),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), max_size=12), ends, st.lists(st.integers(0, 10**6), max_size=20))
def test_round_trip_random_chunks(msgs: list[Message], end: EndOfResponse | None,
                                  cuts: list[int]) -> None:
    data = _encode(msgs, end)
    parser = StreamParser()
    got: list[Message | EndOfResponse] = []
    for chunk in _split(data, cuts):
        got += parser.feed(chunk)
    parser.close()
    assert got == msgs + ([end] if end is not None else [])
    assert parser.end == end


@settings(max_examples=50)
@given(st.lists(messages(), min_size=1, max_size=4), ends)
def test_round_trip_byte_by_byte(msgs: list[Message], end: EndOfResponse | None) -> None:
    data = _encode(msgs, end)
    parser = StreamParser()
    got: list[Message | EndOfResponse] = []
    for i in range(len(data)):
        got += parser.feed(memoryview(data)[i:i + 1])
    parser.close()
    assert got == msgs + ([end] if end is not None else [])


def _parse_chunks(chunks: list[bytes], limit: int) -> None:
    parser = StreamParser(max_message_length=limit)
    try:
        for chunk in chunks:
            parser.feed(chunk)
        parser.close()
    except JPPError:
        pass  # the only exception a malformed stream may raise


@settings(max_examples=500)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=8),
       st.sampled_from([1 << 31, 16, 0]))
def test_random_bytes_only_raise_jpperror(data: bytes, cuts: list[int], limit: int) -> None:
    _parse_chunks(_split(data, cuts), limit)


@settings(max_examples=300)
@given(st.lists(messages(), min_size=1, max_size=4), ends,
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       st.lists(st.integers(0, 10**6), max_size=8))
def test_corrupted_streams_only_raise_jpperror(msgs: list[Message], end: EndOfResponse | None,
                                               flips: list[tuple[int, int]],
                                               cuts: list[int]) -> None:
    data = bytearray(_encode(msgs, end))
    for pos, value in flips:
        data[pos % len(data)] = value
    _parse_chunks(_split(bytes(data), cuts), 1 << 31)
