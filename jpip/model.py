"""Cache-model descriptor lists of `model`/`need` and `tpmodel`/`tpneed` (15444-9 C.9).

Also home of the small grammar pieces every request field shares (UINT, UINT-RANGE,
sampled-range), because `jpip.request` builds on this module and not the other way round.

Grammar accepted for `model`/`need` (protocol note section 6.3; the note marks parts of it
UNCONFIRMED, the comments below say where we chose to be lenient):

    model-list     = 1#model-element
    model-element  = codestream-qualifier / ["-"] bin-descriptor
    codestream-qualifier = "[" 1$UINT-RANGE "]"     ; also "," inside the brackets, see below
    bin-descriptor = explicit-bin [":" (UINT / "L" UINT)]
                   / implicit-bin [":" "L" UINT]
    explicit-bin   = "Hm" / ("H" / "P" / "T" / "M") (UINT / "*")
    implicit-bin   = ["t" R] ["c" R] ["r" R] ["p" R]   ; at least one, in this order
    R              = UINT-RANGE / "*"

A codestream qualifier applies to every descriptor after it, up to the next qualifier; before
the first one, descriptors name the request's default codestream (`codestreams is None`).
`:N` is a byte count (the first N bytes of the bin), `:LN` a number of quality layers (precinct
bins only). A leading "-" makes the descriptor subtractive (the client dropped that data).

Extensions, accepted on purpose and documented as such:
- OpenHTJ2K's explicit id ranges, `P5-10` (and `H`/`T`/`M` likewise), including an open upper
  bound `P5-`: a private form, not known to be standard (note section 6.3).
- "," as well as ";" between the ranges of a codestream qualifier (the ";" list is itself
  UNCONFIRMED in the note); commas inside brackets never split elements.

`tpmodel`/`tpneed` list tile-parts: `1#(codestream-qualifier / ["-"] tp ["-" tp])` with
`tp = UINT "." UINT` (tile index "." tile-part index), the cache of JPT-stream tile data-bins.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

from .errors import RequestError, shorten

__all__ = [
    "MAX_BIN_ID",
    "MAX_CODESTREAM",
    "MAX_INDEX",
    "MAX_LAYERS",
    "MAX_MODEL_ITEMS",
    "MAX_MODEL_TEXT",
    "ModelItem",
    "ModelKind",
    "ModelSpec",
    "SampledRange",
    "TilePartRange",
    "TpSpec",
    "check_tp_model",
    "parse_tp_model",
    "UintRange",
    "parse_model",
    "parse_sampled_range",
    "parse_uint",
    "parse_uint_range",
]

MAX_INDEX = 2**32  # tile/component/resolution/precinct indices, codestream numbers
MAX_CODESTREAM = 2**32
MAX_BIN_ID = 2**53 - 1  # an 8-byte Bin-ID VBAS carries 7*8-3 = 53 id bits (A.2.1)
MAX_BIN_BYTES = 2**53
MAX_LAYERS = 65535  # COD holds the layer count in 16 bits (T.800 A.6.1)
MAX_TILE = 65534  # Isot (T.800 A.4.2)
MAX_TILE_PART = 254  # TPsot
MAX_MODEL_ITEMS = 100_000
MAX_MODEL_TEXT = 8 * 2**20  # a POSTed model may be far longer than a URL
MAX_QUALIFIER_RANGES = 1024

_MAX_DIGITS = 20  # anything longer is out of every bound; checked before int() sees it


# --- shared grammar pieces ------------------------------------------------------------------

class UintRange(NamedTuple):
    """`UINT ["-" [UINT]]`: `lo` alone is (lo, lo); an open upper bound `lo-` is (lo, None)."""

    lo: int
    hi: int | None

    def covers(self, value: int) -> bool:
        return value >= self.lo and (self.hi is None or value <= self.hi)

    def __str__(self) -> str:
        if self.hi is None:
            return f"{self.lo}-"
        return str(self.lo) if self.hi == self.lo else f"{self.lo}-{self.hi}"


class SampledRange(NamedTuple):
    """`UINT-RANGE [":" UINT]`: lo, lo+step, lo+2*step, ... up to hi (None: no upper bound)."""

    lo: int
    hi: int | None
    step: int = 1

    def covers(self, value: int) -> bool:
        return (value >= self.lo and (self.hi is None or value <= self.hi)
                and (value - self.lo) % self.step == 0)

    def __str__(self) -> str:
        text = str(UintRange(self.lo, self.hi))
        return text if self.step == 1 else f"{text}:{self.step}"


def parse_uint(text: str, field: str | None, *, maximum: int, what: str = "value") -> int:
    """A decimal UINT (ASCII digits only: int() would also take '+', '_', spaces, other digits)."""
    if not text or not text.isascii() or not text.isdigit():
        raise RequestError(field, f"{what}: expected an unsigned integer, got {shorten(text)}")
    if len(text.lstrip("0")) > _MAX_DIGITS:
        raise RequestError(field, f"{what}: {shorten(text, 24)} is above the limit {maximum}")
    value = int(text)
    if value > maximum:
        raise RequestError(field, f"{what}: {value} is above the limit {maximum}")
    return value


def parse_uint_range(text: str, field: str | None, *, maximum: int,
                     what: str = "range") -> UintRange:
    lo_text, dash, hi_text = text.partition("-")
    lo = parse_uint(lo_text, field, maximum=maximum, what=what)
    if not dash:
        return UintRange(lo, lo)
    if not hi_text:
        return UintRange(lo, None)
    hi = parse_uint(hi_text, field, maximum=maximum, what=what)
    if hi < lo:
        raise RequestError(field, f"{what}: {lo}-{hi} has its lower bound above its upper bound")
    return UintRange(lo, hi)


def parse_sampled_range(text: str, field: str | None, *, maximum: int,
                        what: str = "range") -> SampledRange:
    range_text, colon, step_text = text.partition(":")
    lo, hi = parse_uint_range(range_text, field, maximum=maximum, what=what)
    if not colon:
        return SampledRange(lo, hi)
    step = parse_uint(step_text, field, maximum=maximum, what=f"{what} sampling factor")
    if step == 0:
        raise RequestError(field, f"{what}: sampling factor must be at least 1")
    return SampledRange(lo, hi, step)


# --- model / need ---------------------------------------------------------------------------

ModelKind = Literal["Hm", "H", "P", "T", "M", "implicit"]


class ModelItem(NamedTuple):
    """One bin descriptor, with the codestream qualifier in force where it appeared.

    Explicit forms fill `ids` (None for '*'; `Hm` is always id 0). The implicit form fills
    `tiles`..`precincts`, where None means every index ('*' or the letter left out).
    `bytes`/`layers` are both None when the descriptor means the whole bin. (A tuple: a
    `model=` may hold 100,000 of them, and tuples are built fastest.)
    """

    kind: ModelKind
    ids: UintRange | None = None
    codestreams: tuple[UintRange, ...] | None = None
    subtractive: bool = False
    tiles: UintRange | None = None
    components: UintRange | None = None
    resolutions: UintRange | None = None
    precincts: UintRange | None = None
    bytes: int | None = None
    layers: int | None = None

    @property
    def whole_bin(self) -> bool:
        return self.bytes is None and self.layers is None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A parsed `model`/`need` value, descriptors in request order."""

    items: tuple[ModelItem, ...]

    def __iter__(self) -> Iterator[ModelItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


_PLAIN_PRECINCT = re.compile(r"P([0-9]+)")  # 15 digits stay below MAX_BIN_ID
_RANGE_OR_STAR = r"\*|[0-9]+(?:-[0-9]*)?"
_IMPLICIT = re.compile(
    rf"(?:t({_RANGE_OR_STAR}))?(?:c({_RANGE_OR_STAR}))?"
    rf"(?:r({_RANGE_OR_STAR}))?(?:p({_RANGE_OR_STAR}))?"
)
_IMPLICIT_NAMES = ("tile", "component", "resolution", "precinct")


def parse_model(text: str, *, field: str = "model", max_items: int = MAX_MODEL_ITEMS,
                max_length: int = MAX_MODEL_TEXT) -> ModelSpec:
    """Parse a `model` or `need` value (already %-decoded); RequestError(400) if malformed."""
    items: list[ModelItem] = []
    codestreams: tuple[UintRange, ...] | None = None
    plain = _PLAIN_PRECINCT.fullmatch
    for element in _elements(text, field, max_length, max_items):
        if element.startswith("["):
            codestreams = _codestream_qualifier(element, field)
            continue
        m = plain(element)
        if m is not None and len(m.group(1)) <= 15:  # the common form, P<id>: no checks left
            n = int(m.group(1))
            items.append(ModelItem("P", UintRange(n, n), codestreams))
        else:
            items.append(_descriptor(element, codestreams, field))
        if len(items) > max_items:
            raise RequestError(field, f"more than {max_items} descriptors")
    return ModelSpec(tuple(items))


def _elements(text: str, field: str, max_length: int, max_items: int) -> list[str]:
    """Split on top-level commas; a comma inside [...] stays in its codestream qualifier."""
    if len(text) > max_length:
        raise RequestError(field, f"longer than {max_length} characters")
    if text.count(",") > 2 * max_items:  # before split() builds a list that long
        raise RequestError(field, f"more than {max_items} descriptors")
    pieces = text.split(",")
    if "[" in text:
        pieces = _rejoin_brackets(pieces)
    for piece in pieces:
        if not piece:
            raise RequestError(field, "empty element in the list")
    return pieces


def _rejoin_brackets(pieces: list[str]) -> list[str]:
    out: list[str] = []
    pending: list[str] = []
    depth = 0
    for piece in pieces:
        pending.append(piece)
        depth += piece.count("[") - piece.count("]")
        if depth <= 0:
            out.append(",".join(pending))
            pending, depth = [], 0
    if pending:  # unterminated '[': the qualifier parser reports it
        out.append(",".join(pending))
    return out


def _codestream_qualifier(element: str, field: str) -> tuple[UintRange, ...]:
    if not element.endswith("]") or element.count("[") != 1 or element.count("]") != 1:
        raise RequestError(field, f"malformed codestream qualifier {shorten(element)}")
    inner = element[1:-1]
    if not inner:
        raise RequestError(field, "empty codestream qualifier '[]'")
    parts = re.split(r"[;,]", inner)
    if len(parts) > MAX_QUALIFIER_RANGES:
        raise RequestError(field, f"more than {MAX_QUALIFIER_RANGES} ranges in a qualifier")
    return tuple(parse_uint_range(part, field, maximum=MAX_CODESTREAM, what="codestream range")
                 for part in parts)


def _descriptor(element: str, codestreams: tuple[UintRange, ...] | None,
                field: str) -> ModelItem:
    subtractive = element.startswith("-")
    body = element[1:] if subtractive else element
    head, colon, limit = body.partition(":")
    nbytes, layers = _limit(limit, field, element) if colon else (None, None)
    if head == "Hm":
        kind: ModelKind = "Hm"
        item = ModelItem("Hm", UintRange(0, 0), codestreams, subtractive, bytes=nbytes)
    elif head and head[0] in "HPTM":
        kind = head[0]  # type: ignore[assignment]
        ids = None if head[1:] == "*" else parse_uint_range(
            head[1:], field, maximum=MAX_BIN_ID, what=f"{kind} bin id")
        item = ModelItem(kind, ids, codestreams, subtractive, bytes=nbytes)
    else:
        kind = "implicit"
        item = _implicit(head, codestreams, subtractive, field, element)
        if nbytes is not None:
            raise RequestError(field, f"{shorten(element)}: implicit descriptors take only :L<n>")
    if layers is not None:
        if kind not in ("P", "implicit"):
            raise RequestError(field, f"{shorten(element)}: :L<n> applies to precinct bins only")
        item = item._replace(layers=layers)
    return item


def _limit(text: str, field: str, element: str) -> tuple[int | None, int | None]:
    """`:N` bytes or `:LN` layers, as (bytes, layers)."""
    if text.startswith("L"):
        return None, parse_uint(text[1:], field, maximum=MAX_LAYERS,
                                what=f"{shorten(element)} layer count")
    return parse_uint(text, field, maximum=MAX_BIN_BYTES,
                      what=f"{shorten(element)} byte count"), None


def _implicit(head: str, codestreams: tuple[UintRange, ...] | None, subtractive: bool,
              field: str, element: str) -> ModelItem:
    match = _IMPLICIT.fullmatch(head) if head else None
    if match is None:
        raise RequestError(field, f"unrecognised descriptor {shorten(element)}")
    ranges = [
        None if group is None or group == "*"
        else parse_uint_range(group, field, maximum=MAX_INDEX, what=f"{name} range")
        for group, name in zip(match.groups(), _IMPLICIT_NAMES, strict=True)
    ]
    return ModelItem("implicit", None, codestreams, subtractive, *ranges)


# --- tpmodel / tpneed -----------------------------------------------------------------------

_TILE_PART_ELEMENT = re.compile(r"(-?)([0-9]{1,5})\.([0-9]{1,3})(?:-([0-9]{1,5})\.([0-9]{1,3}))?")


class TilePartRange(NamedTuple):
    """One `["-"] tp ["-" tp]` of tpmodel/tpneed: tile-parts `first` .. `last` (tile, TPsot),
    in (tile, tile-part) order, with the codestream qualifier in force where it appeared."""

    first: tuple[int, int]
    last: tuple[int, int]
    subtractive: bool = False
    codestreams: tuple[UintRange, ...] | None = None


@dataclass(frozen=True, slots=True)
class TpSpec:
    """A parsed `tpmodel`/`tpneed` value, ranges in request order."""

    items: tuple[TilePartRange, ...]

    def __iter__(self) -> Iterator[TilePartRange]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def parse_tp_model(text: str, *, field: str = "tpmodel", max_items: int = MAX_MODEL_ITEMS,
                   max_length: int = MAX_MODEL_TEXT) -> TpSpec:
    """Parses a `tpmodel`/`tpneed` value: `1#(codestream-qualifier / ["-"] tp ["-" tp])`,
    tp = tile "." tile-part (the tile-parts of JPT-stream tile data-bins)."""
    items: list[TilePartRange] = []
    codestreams: tuple[UintRange, ...] | None = None
    for element in _elements(text, field, max_length, max_items):
        if element.startswith("["):
            codestreams = _codestream_qualifier(element, field)
            continue
        m = _TILE_PART_ELEMENT.fullmatch(element)
        if m is None:
            raise RequestError(field, f"expected [-]<tile>.<part>[-<tile>.<part>], got "
                               f"{shorten(element)}")
        minus, t0, p0, t1, p1 = m.groups()
        t0, p0 = int(t0), int(p0)
        t1, p1 = (t0, p0) if t1 is None else (int(t1), int(p1))
        if t0 > MAX_TILE or p0 > MAX_TILE_PART or t1 > MAX_TILE or p1 > MAX_TILE_PART or \
                (t1, p1) < (t0, p0):
            raise RequestError(field, f"{shorten(element)}: tile or tile-part out of range, "
                               "or a range running backwards")
        items.append(TilePartRange((t0, p0), (t1, p1), bool(minus), codestreams))
        if len(items) > max_items:
            raise RequestError(field, f"more than {max_items} descriptors")
    return TpSpec(tuple(items))


def check_tp_model(text: str, *, field: str = "tpmodel", max_items: int = MAX_MODEL_ITEMS,
                   max_length: int = MAX_MODEL_TEXT) -> None:
    """Checks a `tpmodel`/`tpneed` value (RequestError(400) if malformed)."""
    parse_tp_model(text, field=field, max_items=max_items, max_length=max_length)
