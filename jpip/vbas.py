"""VBAS: the variable-length unsigned integers of JPP-stream message headers (15444-9 A.2.1).

Big-endian groups of 7 bits; bit 7 is set on every byte but the last. We always write the
minimal form, but read any form up to 8 bytes (2**56 - 1), the limit real clients enforce.

`JPPError` lives here (and is re-exported by `jpip.jpp`) because both modules raise it and
`jpp` imports this module.
"""
from __future__ import annotations

MAX_VBAS_BYTES = 8
VBAS_LIMIT = 1 << (7 * MAX_VBAS_BYTES)  # first value that no longer fits

# Encodings of every value below 2**14 (one or two bytes), built once (~1 MB, ~3 ms): a
# tuple lookup is several times faster than building the bytes, and message headers on the
# server's hot path are almost all made of such values (2-byte Bin-IDs included).
SMALL_LIMIT = 1 << 14
SMALL_VBAS: tuple[bytes, ...] = tuple(
    bytes((i,)) if i < 0x80 else bytes((0x80 | (i >> 7), i & 0x7F)) for i in range(SMALL_LIMIT)
)


class JPPError(ValueError):
    """A malformed JPP-stream: `offset` is the stream byte offset of the problem."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset

    def __reduce__(self):  # keep the two-argument constructor picklable
        return (type(self), (self.reason, self.offset))


def encode_vbas(value: int) -> bytes:
    """Minimal VBAS encoding of `value` (0 <= value < 2**56)."""
    if 0 <= value < SMALL_LIMIT:
        return SMALL_VBAS[value]
    if value < 0:
        raise ValueError(f"VBAS value must be non-negative, got {value}")
    if value < 0x200000:
        return bytes((0x80 | (value >> 14), 0x80 | ((value >> 7) & 0x7F), value & 0x7F))
    if value >= VBAS_LIMIT:
        raise ValueError(f"VBAS value must be < 2**56, got {value}")
    out = bytearray((value & 0x7F,))
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.reverse()
    return bytes(out)


def read_vbas(buf: bytes | bytearray | memoryview, pos: int, end: int, base: int = 0
              ) -> tuple[int, int]:
    """Reads a VBAS at `pos` (not past `end`); returns (value, new position).

    Returns new position -1 if the buffer ends first (the caller may wait for more bytes).
    Raises JPPError, reporting offset `base + pos`, if the VBAS runs past 8 bytes.
    """
    value = 0
    stop = min(end, pos + MAX_VBAS_BYTES)
    i = pos
    while i < stop:
        b = buf[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if b < 0x80:
            return value, i
    if i - pos >= MAX_VBAS_BYTES:
        raise JPPError(f"VBAS longer than {MAX_VBAS_BYTES} bytes", base + pos)
    return 0, -1


def decode_vbas(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Decodes the VBAS at `pos`; returns (value, position after it).

    Raises JPPError if `buf` ends inside the VBAS or the VBAS is longer than 8 bytes.
    """
    if pos < 0:
        raise ValueError(f"position must be non-negative, got {pos}")
    value, new = read_vbas(buf, pos, len(buf))
    if new < 0:
        raise JPPError("truncated VBAS", pos)
    return value, new
