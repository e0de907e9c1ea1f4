"""Sans-I/O codec for JPP-stream messages (15444-9 Annex A.2, EOR from D.3).

Server side: one `MessageWriter` per HTTP response encodes message headers and the EOR.
Client side: one `StreamParser` per HTTP response turns received chunks into `Message`s and a
final `EndOfResponse`. Neither does any I/O.

Header layout: `Bin-ID [Class] [CSn] Msg-Offset Msg-Length [Aux]`, every field a VBAS. The first
Bin-ID byte is `Xbbc iiii`: bb says which of Class/CSn follow (1 none, 2 Class, 3 both), c marks
the message holding the bin's last byte, and a k-byte Bin-ID carries 7k-3 in-class id bits.
Absent Class/CSn repeat the previous message's; every reference client restarts from 0/0 at
each HTTP response, so the writer makes each response's first message carry both (bb=3).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from .vbas import SMALL_LIMIT, SMALL_VBAS, JPPError, encode_vbas, read_vbas

__all__ = [
    "EOR",
    "EXT_PRECINCT",
    "EXT_TILE",
    "KNOWN_CLASSES",
    "MAIN_HEADER",
    "METADATA",
    "PRECINCT",
    "TILE",
    "TILE_HEADER",
    "EndOfResponse",
    "JPPError",
    "Message",
    "MessageWriter",
    "StreamParser",
    "message_bytes",
    "parse_stream",
]

# Data-bin classes (A.2.2). 3 and 7 are reserved.
PRECINCT = 0
EXT_PRECINCT = 1  # same bins as PRECINCT, header carries Aux
TILE_HEADER = 2
TILE = 4
EXT_TILE = 5  # same bins as TILE, header carries Aux
MAIN_HEADER = 6  # bin id 0 only
METADATA = 8
KNOWN_CLASSES = frozenset({PRECINCT, EXT_PRECINCT, TILE_HEADER, TILE, EXT_TILE, MAIN_HEADER,
                           METADATA})

MAX_BIN_ID_BYTES = 8
BIN_ID_LIMIT = 1 << (7 * MAX_BIN_ID_BYTES - 3)  # 8-byte Bin-ID: 53 id bits


class EOR(IntEnum):
    """End-of-response reason codes (D.3)."""

    IMAGE_DONE = 1
    WINDOW_DONE = 2
    WINDOW_CHANGE = 3
    BYTE_LIMIT = 4
    QUALITY_LIMIT = 5
    SESSION_LIMIT = 6
    RESPONSE_LIMIT = 7
    UNSPECIFIED = 255


_EOR_CODES = {int(e): e for e in EOR}

# Class fields are a single VBAS byte for every known class: look them up, don't encode.
_CLASS_VBAS: dict[int, bytes] = {c: encode_vbas(c) for c in KNOWN_CLASSES}
_NO_PREVIOUS = None  # matches no class/CSn: forces bb=3 on a response's first message


@dataclass(frozen=True, slots=True)
class Message:
    """One data-bin message: `data` is bytes [offset, offset+len(data)) of the bin."""

    bin_class: int
    csn: int
    bin_id: int
    offset: int
    data: bytes
    is_last: bool  # holds the bin's last byte
    aux: int | None = None  # only for odd classes (1, 5)


@dataclass(frozen=True)
class EndOfResponse:
    """The EOR message that ends a response; `reason` is an `EOR` member when known."""

    reason: int
    body: bytes = b""


class MessageWriter:
    """Encodes the message headers of one HTTP response, choosing bb from the previous message.

    `header()` records the message as sent. Two conveniences for callers that shorten a
    message to fit a byte budget: calling `header()` again for the same (class, CSn, bin id,
    offset) as the immediately preceding call re-encodes that message rather than following
    it (so a response's first message keeps bb=3), and `discard()` forgets the last header
    when it was not sent after all.
    """

    __slots__ = ("_cls", "_csn", "_before_cls", "_before_csn", "_last_id", "_last_off", "_ended")

    def __init__(self) -> None:
        self._cls = self._csn = _NO_PREVIOUS  # class/CSn of the last message
        self._before_cls = self._before_csn = _NO_PREVIOUS  # ...and of the one before it
        self._last_id = self._last_off = _NO_PREVIOUS
        self._ended = False

    def header(self, bin_class: int, csn: int, bin_id: int, offset: int, length: int,
               is_last: bool, aux: int | None = None) -> bytes:
        """Returns the encoded header of a message carrying `length` bytes at `offset`."""
        if self._ended:
            raise RuntimeError("message after end-of-response")
        cls_field = _CLASS_VBAS.get(bin_class)
        if cls_field is None:
            raise ValueError(f"unknown data-bin class {bin_class}")
        if (aux is None) != (not bin_class & 1):
            raise ValueError(f"Aux must be given iff the class is odd (class {bin_class})")
        prev_cls, prev_csn = self._cls, self._csn
        again = (bin_id == self._last_id and offset == self._last_off
                 and bin_class == prev_cls and csn == prev_csn)
        if again:
            prev_cls, prev_csn = self._before_cls, self._before_csn
        # flags = bb << 5 | c << 4, as placed in the first Bin-ID byte
        if csn != prev_csn:
            flags = 0x70 if is_last else 0x60
            if 0 <= csn < SMALL_LIMIT:
                cls_field += SMALL_VBAS[csn]
            else:
                cls_field += encode_vbas(csn)
        elif bin_class != prev_cls:
            flags = 0x50 if is_last else 0x40
        else:
            flags = 0x30 if is_last else 0x20
            cls_field = b""
        # A 1-byte Bin-ID is the VBAS of flags|id, a 2-byte one that of flags<<7|id: both
        # are below 2**14, so both come from the table.
        if 0 <= bin_id < 16:
            id_field = SMALL_VBAS[flags | bin_id]
        elif 16 <= bin_id < 2048:
            id_field = SMALL_VBAS[(flags << 7) | bin_id]
        else:
            id_field = _long_bin_id(flags, bin_id)
        out = (id_field + cls_field
               + (SMALL_VBAS[offset] if 0 <= offset < SMALL_LIMIT else encode_vbas(offset))
               + (SMALL_VBAS[length] if 0 <= length < SMALL_LIMIT else encode_vbas(length)))
        if aux is not None:
            out += encode_vbas(aux)
        if not again:
            self._before_cls, self._before_csn = prev_cls, prev_csn
            self._cls, self._csn = bin_class, csn
            self._last_id, self._last_off = bin_id, offset
        return out

    def continues(self, bin_class: int, csn: int) -> bool:
        """True when the last message was of this class and codestream, so that
        `next_header()` may encode the next one."""
        return self._cls == bin_class and self._csn == csn and not self._ended

    def next_header(self, bin_id: int, offset: int, length: int, is_last: bool) -> bytes:
        """`header()` for a message of the same (even) class and codestream as the last one,
        which therefore omits both (bb=1)."""
        return self.next_headers([bin_id], [offset], [length], [is_last])[0]

    def next_headers(self, bin_ids: Sequence[int], offsets: Sequence[int],
                     lengths: Sequence[int], lasts: Sequence[bool]) -> list[bytes]:
        """`next_header()` for a run of messages (the hot path of a response's precinct
        data: one loop, table lookups for the usual small values)."""
        table, small = SMALL_VBAS, SMALL_LIMIT
        out = []
        append = out.append
        for bin_id, offset, length, last in zip(bin_ids, offsets, lengths, lasts, strict=True):
            flags = 0x30 if last else 0x20
            if bin_id < 16:
                head = table[flags | bin_id]
            elif bin_id < 2048:
                head = table[(flags << 7) | bin_id]
            elif bin_id < 1 << 18:  # three bytes: 18 id bits below the flags
                v = (flags << 14) | bin_id
                head = bytes((0x80 | (v >> 14), 0x80 | ((v >> 7) & 0x7F), v & 0x7F))
            else:
                head = _long_bin_id(flags, bin_id)
            append(head + (table[offset] if offset < small else encode_vbas(offset))
                   + (table[length] if length < small else encode_vbas(length)))
        if out:
            self._before_cls, self._before_csn = self._cls, self._csn
            self._last_id, self._last_off = bin_ids[-1], offsets[-1]
        return out

    def discard(self) -> None:
        """Forgets the last header returned by `header()`: it was not sent."""
        self._cls, self._csn = self._before_cls, self._before_csn
        self._last_id = self._last_off = _NO_PREVIOUS

    def eor(self, reason: int, body: bytes = b"") -> bytes:
        """Returns the end-of-response message; no message may follow it."""
        if not 0 <= reason <= 0xFF:
            raise ValueError(f"EOR reason must fit one byte, got {reason}")
        self._ended = True
        return bytes((0, reason)) + encode_vbas(len(body)) + bytes(body)


def _long_bin_id(flags: int, bin_id: int) -> bytes:
    """Bin-ID VBAS for ids of 11+ bits: k bytes carry 7k-3 id bits below the bb/c flags."""
    bin_id = int(bin_id)  # numpy integers have no bit_length()
    if not 0 <= bin_id < BIN_ID_LIMIT:
        raise ValueError(f"bin id must be in [0, 2**53), got {bin_id}")
    k = (bin_id.bit_length() + 3 + 6) // 7
    return encode_vbas((flags << (7 * (k - 1))) | bin_id)


def message_bytes(writer: MessageWriter, bin_class: int, csn: int, bin_id: int, offset: int,
                  data: bytes, is_last: bool, aux: int | None = None) -> bytes:
    """Header plus body of one message (for tests and small uses; servers join pieces)."""
    return writer.header(bin_class, csn, bin_id, offset, len(data), is_last, aux) + bytes(data)


class StreamParser:
    """Incremental JPP-stream parser for one HTTP response.

    `feed()` returns every message completed so far and buffers the rest, so chunk boundaries
    may fall anywhere. Errors raise JPPError and are sticky: the stream cannot be resynchronised.
    """

    def __init__(self, max_message_length: int = 1 << 31) -> None:
        self.max_message_length = max_message_length
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._cls = 0  # absent Class/CSn default to 0/0 at the start of a response
        self._csn = 0
        self._end: EndOfResponse | None = None
        self._error: JPPError | None = None

    @property
    def end(self) -> EndOfResponse | None:
        """The EOR message, once received."""
        return self._end

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Message | EndOfResponse]:
        """Adds received bytes; returns the messages they complete, in stream order."""
        if self._error is not None:
            raise self._error
        try:
            return self._feed(chunk)
        except JPPError as e:
            self._error = e
            raise

    def close(self) -> None:
        """Declares the response over; raises JPPError if it stopped inside a message."""
        if self._error is not None:
            raise self._error
        if self._buf:
            self._error = JPPError(f"stream ends inside a message ({len(self._buf)} bytes left)",
                                   self._base)
            raise self._error

    def _feed(self, chunk: bytes | bytearray | memoryview) -> list[Message | EndOfResponse]:
        buf = self._buf
        if chunk:
            if self._end is not None:
                raise JPPError("data after end-of-response", self._base + len(buf))
            buf += chunk
        out: list[Message | EndOfResponse] = []
        n = len(buf)
        pos = 0
        while pos < n:
            if self._end is not None:
                raise JPPError("data after end-of-response", self._base + pos)
            if buf[pos] == 0:
                item, new = self._eor(buf, pos, n)
            else:
                item, new = self._message(buf, pos, n)
            if new < 0:
                break  # incomplete: wait for more bytes
            out.append(item)
            pos = new
        if pos:
            del buf[:pos]
            self._base += pos
        return out

    def _eor(self, buf: bytearray, pos: int, n: int) -> tuple[EndOfResponse | None, int]:
        base = self._base
        if pos + 2 > n:
            return None, -1
        reason = buf[pos + 1]
        length, p = read_vbas(buf, pos + 2, n, base)
        if p < 0:
            return None, -1
        if length > self.max_message_length:
            raise JPPError(f"EOR body length {length} exceeds limit", base + pos + 2)
        end = p + length
        if end > n:
            return None, -1
        self._end = EndOfResponse(_EOR_CODES.get(reason, reason), bytes(buf[p:end]))
        return self._end, end

    def _message(self, buf: bytearray, pos: int, n: int) -> tuple[Message | None, int]:
        base = self._base
        b0 = buf[pos]
        if not b0 & 0x60:
            raise JPPError(f"Bin-ID with bb=0 (first byte {b0:#04x})", base + pos)
        value, p = read_vbas(buf, pos, n, base)
        if p < 0:
            return None, -1
        bin_id = value & ((1 << (7 * (p - pos) - 3)) - 1)  # drop the bb and c bits
        cls, csn = self._cls, self._csn
        if b0 & 0x40:  # bb >= 2: Class present
            q = p
            cls, p = read_vbas(buf, p, n, base)
            if p < 0:
                return None, -1
            if cls not in KNOWN_CLASSES:
                raise JPPError(f"unknown data-bin class {cls}", base + q)
            if b0 & 0x20:  # bb == 3: CSn present
                csn, p = read_vbas(buf, p, n, base)
                if p < 0:
                    return None, -1
        offset, p = read_vbas(buf, p, n, base)
        if p < 0:
            return None, -1
        q = p
        length, p = read_vbas(buf, p, n, base)
        if p < 0:
            return None, -1
        if length > self.max_message_length:
            raise JPPError(f"message length {length} exceeds limit", base + q)
        aux = None
        if cls & 1:  # extended precinct / tile: Aux required
            aux, p = read_vbas(buf, p, n, base)
            if p < 0:
                return None, -1
        end = p + length
        if end > n:
            return None, -1
        self._cls, self._csn = cls, csn
        msg = Message(cls, csn, bin_id, offset, bytes(buf[p:end]), bool(b0 & 0x10), aux)
        return msg, end


def parse_stream(data: bytes | bytearray | memoryview,
                 max_message_length: int = 1 << 31) -> list[Message | EndOfResponse]:
    """Parses one complete response body; raises JPPError if it is malformed or truncated."""
    parser = StreamParser(max_message_length)
    out = parser.feed(data)
    parser.close()
    return out

