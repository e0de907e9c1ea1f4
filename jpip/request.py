"""JPIP request fields (15444-9 Annex C) parsed from a raw query string. Sans-I/O.

`parse_query` takes the query exactly as it came off the wire (aiohttp:
`request.rel_url.raw_query_string`), because real clients send `[ ] ! * : ; < >` unencoded
and others %-encode them, and a generic form decoder would turn '+' into a space (protocol
note section 1.1). Rules:

- pairs split on '&', name and value on the first '='; empty pairs ("&&", a trailing '&') are
  skipped; a pair without '=' has the empty value (only `handled` and `upload` accept one);
- names and values are %-decoded here, as UTF-8, strictly; '+' stays a literal '+';
- decoded names and values must not hold control characters (C0, DEL) or lone surrogates;
- every Annex C field name is recognised; an unknown name is a 400 naming it, unless
  `lenient=True`, which skips it and lists it in `ignored_fields` (esajpip's choice, useful for
  clients that send private fields); lenient mode does not excuse malformed known fields;
- a field given twice is a 400 (as CADI does); so is a value longer than `max_field_length`
  (measured before decoding);
- `roff` and `rsiz` are only meaningful in the frame `fsiz` defines (C.4.3, C.4.4), so either
  without `fsiz` is a 400 rather than a guess;
- `cclose=*` closes the channels of the session named by `cid`, so it needs a `cid` (400);
- `access_token` is not a JPIP field but an OAuth bearer token (RFC 6750 2.3), for clients
  that can only follow a URL: accepted (b64token characters), kept in `access_token` only
  (never in `raw` or `present`, never in a message: it is a credential); what it grants is
  the server's business (server/access.py).

What the server does with a well-formed request it cannot serve (501 for `upload`, 415/501
for an unusable `type`, 503 for an unknown `cid`, ...) is decided by the handler, not here.
Request-level statuses are carried by `jpip.errors.RequestError`.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Literal, NamedTuple
from urllib.parse import unquote

from .errors import RequestError, shorten
from .model import (
    MAX_BIN_ID,
    MAX_CODESTREAM,
    MAX_INDEX,
    MAX_LAYERS,
    ModelSpec,
    SampledRange,
    TpSpec,
    UintRange,
    parse_model,
    parse_sampled_range,
    parse_tp_model,
    parse_uint,
    parse_uint_range,
)

__all__ = [
    "DEFAULT_MAX_FIELD_LENGTH",
    "FIELD_NAMES",
    "REQUEST_FIELDS",
    "CHECKED_ONLY",
    "BoxProp",
    "Context",
    "ContextRange",
    "FrameSize",
    "JPIPRequest",
    "MetaReq",
    "MetaReqItem",
    "Point",
    "PrefSet",
    "RoundDirection",
    "SampledRange",
    "Size",
    "Subtarget",
    "UintRange",
    "parse_form_body",
    "parse_query",
]

DEFAULT_MAX_FIELD_LENGTH = 65536
MAX_COORD = 2**32  # frame sizes, offsets, region sizes (T.800 image sizes are 32-bit)
MAX_LEN = 2**53  # byte counts: len, subtarget byte ranges
MAX_QID = 2**53
MAX_TID_LENGTH = 255  # C.2.3
MAX_CID_LENGTH = 64  # ours are 32 hex digits; generous for other servers' tokens
MAX_LIST_ITEMS = 1024  # list fields other than model/need (their own bound is in jpip.model)
MAX_METAREQ_PROPS = 4096

# Annex C order: target (C.2), channels (C.3), view-window (C.4), metadata (C.5), limits
# (C.6), server control (C.7), cache (C.8), upload (C.9), client prefs (C.10), 2022 `handled`.
FIELD_NAMES: tuple[str, ...] = (
    "target", "subtarget", "tid",
    "cid", "cnew", "cclose", "qid",
    "fsiz", "roff", "rsiz", "comps", "stream", "context", "srate", "roi", "layers",
    "metareq",
    "len", "quality",
    "align", "wait", "type", "drate",
    "model", "tpmodel", "need", "tpneed", "mset",
    "upload",
    "cap", "pref", "csf",
    "handled",
)

# Besides the Annex C fields, a request may carry its credential (RFC 6750 2.3).
TOKEN_FIELD = "access_token"
REQUEST_FIELDS: tuple[str, ...] = (*FIELD_NAMES, TOKEN_FIELD)

RoundDirection = Literal["round-down", "round-up", "closest"]
_ROUND_DIRECTIONS: frozenset[str] = frozenset(("round-down", "round-up", "closest"))


# --- value types ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FrameSize:
    """`fsiz=fx,fy[,round-direction]`; round-down is the standard's default (C.4.2)."""

    fx: int
    fy: int
    round: RoundDirection = "round-down"


class Point(NamedTuple):
    """`roff=x,y`."""

    x: int
    y: int


class Size(NamedTuple):
    """`rsiz=w,h`."""

    w: int
    h: int


@dataclass(frozen=True, slots=True)
class Subtarget:
    """`subtarget=UINT-RANGE` (a byte range of the target file), or, a form the note leaves
    UNCONFIRMED, `subtarget=[1$sampled-range]` (codestreams of the target)."""

    raw: str
    byte_range: UintRange | None = None
    codestreams: tuple[SampledRange, ...] | None = None


@dataclass(frozen=True, slots=True)
class ContextRange:
    """One `kind<spec>[geometry]` element of `context`.

    `jpxl<sampled-range>` (JPX compositing layers) fills `layers`; other kinds (`mj2t<...>`,
    reserved ones) keep `spec` and `geometry` as text for the server to judge.
    """

    kind: str
    spec: str
    layers: SampledRange | None = None
    geometry: str | None = None


@dataclass(frozen=True, slots=True)
class Context:
    raw: str
    ranges: tuple[ContextRange, ...]

    @property
    def jpxl_layers(self) -> tuple[SampledRange, ...]:
        return tuple(r.layers for r in self.ranges if r.layers is not None)


@dataclass(frozen=True, slots=True)
class BoxProp:
    """`box-type [":" (UINT / "r")] ["/" 1*(w/s/g/a)] ["!"]` inside `metareq=[...]`.

    `box_type` is the 4 characters as sent, or '*'. `limit` is a byte limit per box, 'r' for
    headers only, None for none. `qualifiers` is empty when the client gave none (openjpip
    reads that as "wsg"). `priority` is the trailing '!'.
    """

    box_type: str
    limit: int | Literal["r"] | None = None
    qualifiers: frozenset[str] = frozenset()
    priority: bool = False


@dataclass(frozen=True, slots=True)
class MetaReqItem:
    """`"[" 1$req-box-prop "]" ["R" UINT] ["D" UINT]`."""

    props: tuple[BoxProp, ...]
    root_bin: int | None = None
    max_depth: int | None = None


@dataclass(frozen=True, slots=True)
class MetaReq:
    """`metareq=1#MetaReqItem ["!!"]`; '!!' (metadata only) sets `metadata_only`."""

    items: tuple[MetaReqItem, ...]
    metadata_only: bool = False


@dataclass(frozen=True, slots=True)
class PrefSet:
    """One related-pref-set of `pref`: tokens split on ';', `required` for a '/r' suffix.

    `raw` is the set as sent, to echo verbatim in `JPIP-pref` when it cannot be honoured.
    """

    raw: str
    tokens: tuple[str, ...]
    required: bool = False


@dataclass(frozen=True)
class JPIPRequest:
    """Every Annex C request field the server acts on, typed; None (or False) when absent.

    The fields in `CHECKED_ONLY` (hints, capabilities) are checked
    against their grammar (400 if malformed) and not kept: nothing acts on them. `present`
    names the recognised fields the request carried, `ignored_fields` the unknown ones skipped
    in lenient mode, and `raw` maps each present field to its %-decoded value (for echoing in
    `JPIP-*` response headers and for logs).
    """

    # target (C.2)
    target: str | None = None
    subtarget: Subtarget | None = None
    tid: str | None = None
    # channels (C.3)
    cid: str | None = None
    cnew: tuple[str, ...] | None = None
    cclose: tuple[str, ...] | None = None  # ('*',) closes every channel of cid's session
    qid: int | None = None
    # view-window (C.4)
    fsiz: FrameSize | None = None
    roff: Point | None = None
    rsiz: Size | None = None
    comps: tuple[UintRange, ...] | None = None
    stream: tuple[SampledRange, ...] | None = None
    context: Context | None = None
    layers: int | None = None
    # metadata (C.5)
    metareq: MetaReq | None = None
    # data limits (C.6)
    len: int | None = None
    quality: int | None = None  # 0..100, or -1 (no quality limit)
    # server control (C.7)
    wait: bool = False
    type: tuple[str, ...] | None = None  # normalised, preference order: 'jpp-stream', ...
    # cache management (C.8)
    model: ModelSpec | None = None
    tpmodel: TpSpec | None = None
    need: ModelSpec | None = None
    tpneed: TpSpec | None = None
    # upload (C.9): recognised so the server can answer 501
    upload: bool = False
    # client capabilities and preferences (C.10)
    pref: tuple[PrefSet, ...] | None = None
    # 2022 edition: the client asks for JPIP-handled
    handled: bool = False
    # not JPIP: a bearer token (RFC 6750 2.3), out of every repr, `raw` and `present`
    access_token: str | None = field(default=None, repr=False)
    # bookkeeping
    present: frozenset[str] = frozenset()
    ignored_fields: tuple[str, ...] = ()
    raw: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False,
                                   compare=False)

    def has(self, name: str) -> bool:
        return name in self.present


# --- entry points ---------------------------------------------------------------------------

def parse_query(raw_query: str, *, lenient: bool = False,
                max_field_length: int = DEFAULT_MAX_FIELD_LENGTH) -> JPIPRequest:
    """Parse a raw (not yet %-decoded) query string; RequestError on anything malformed."""
    values: dict[str, str] = {}
    ignored: dict[str, None] = {}  # ordered set
    for pair in raw_query.split("&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition("=")
        name = _decode(raw_name, None, "field name")
        if name not in _PARSERS:
            if not lenient:
                raise RequestError(name[:64], "unknown request field")
            ignored.setdefault(name[:64])
            continue
        if name in values:
            raise RequestError(name, "field given more than once")
        if len(raw_value) > max_field_length:
            raise RequestError(name, f"value longer than {max_field_length} characters")
        values[name] = _decode(raw_value, name, "value")
    return _build(values, tuple(ignored))


def parse_form_body(body: bytes, *, lenient: bool = False,
                    max_field_length: int = DEFAULT_MAX_FIELD_LENGTH) -> JPIPRequest:
    """Parse a POSTed application/x-www-form-urlencoded body with the rules of `parse_query`.

    Deliberately not HTML-form decoding: '+' stays '+', as in the query string, because
    `model`-like values are written the same way whichever way they travel.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(None, "request body is not UTF-8 text") from None
    return parse_query(text.rstrip("\r\n"), lenient=lenient, max_field_length=max_field_length)


# --- decoding -------------------------------------------------------------------------------

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def _decode(text: str, name: str | None, what: str) -> str:
    if "%" in text:
        try:
            text = unquote(text, errors="strict")
        except UnicodeError:  # bad UTF-8 after decoding, or lone surrogates in the input
            raise RequestError(name, f"{what} is not valid %-encoded UTF-8") from None
    if _FORBIDDEN.search(text):
        raise RequestError(name, f"{what} contains control characters or lone surrogates")
    return text


def _build(values: dict[str, str], ignored: tuple[str, ...]) -> JPIPRequest:
    parsed: dict[str, object] = {}
    token = values.pop(TOKEN_FIELD, None)
    if token is not None:
        parsed[TOKEN_FIELD] = _p_access_token(token)
    for name, value in values.items():
        if not value and name not in _EMPTY_OK:
            raise RequestError(name, "empty value")
        result = _PARSERS[name](value)
        if name not in CHECKED_ONLY:
            parsed[name] = result
    for name in ("roff", "rsiz"):
        if name in parsed and "fsiz" not in parsed:
            raise RequestError(name, "only valid together with fsiz")
    if parsed.get("cclose") == ("*",) and "cid" not in parsed:
        raise RequestError("cclose", "cclose=* needs a cid naming the session")
    return JPIPRequest(**parsed, present=frozenset(values), ignored_fields=ignored,
                       raw=MappingProxyType(dict(values)))


# --- field parsers (each gets the decoded, non-empty value) -----------------------------------

def _list(value: str, name: str) -> list[str]:
    items = value.split(",")
    if len(items) > MAX_LIST_ITEMS:
        raise RequestError(name, f"more than {MAX_LIST_ITEMS} list items")
    if "" in items:
        raise RequestError(name, "empty item in the list")
    return items


_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII
_CID = re.compile(rf"[A-Za-z0-9_.~-]{{1,{MAX_CID_LENGTH}}}")
_TRANSPORT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_UFLOAT = re.compile(r"[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15}")


def _p_target(value: str) -> str:
    return value


_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 2.1


def _p_access_token(value: str) -> str:
    # The value is a credential: no message quotes it.
    if not _B64TOKEN.fullmatch(value):
        raise RequestError(TOKEN_FIELD, "not a bearer token (letters, digits, -._~+/ then "
                                        "'=' padding)")
    return value


def _p_subtarget(value: str) -> Subtarget:
    if value.startswith("["):
        if not value.endswith("]") or len(value) < 3:
            raise RequestError("subtarget", "expected UINT-RANGE or [sampled-range;...]")
        parts = value[1:-1].split(";")
        if len(parts) > MAX_LIST_ITEMS:
            raise RequestError("subtarget", f"more than {MAX_LIST_ITEMS} codestream ranges")
        streams = tuple(parse_sampled_range(part, "subtarget", maximum=MAX_CODESTREAM,
                                            what="codestream range") for part in parts)
        return Subtarget(value, codestreams=streams)
    return Subtarget(value, byte_range=parse_uint_range(value, "subtarget", maximum=MAX_LEN,
                                                        what="byte range"))


def _p_tid(value: str) -> str:
    if len(value) > MAX_TID_LENGTH:
        raise RequestError("tid", f"longer than {MAX_TID_LENGTH} characters")
    if not _TOKEN.fullmatch(value):
        raise RequestError("tid", "only visible ASCII characters are allowed")
    return value


def _channel_id(value: str, name: str) -> str:
    if not _CID.fullmatch(value):
        raise RequestError(name, f"channel id {shorten(value)} is not 1-{MAX_CID_LENGTH} "
                                 "characters of A-Z a-z 0-9 _ . ~ -")
    return value


def _p_cid(value: str) -> str:
    return _channel_id(value, "cid")


def _p_cnew(value: str) -> tuple[str, ...]:
    items = _list(value, "cnew")
    for item in items:
        if not _TRANSPORT.fullmatch(item):
            raise RequestError("cnew", f"malformed transport name {shorten(item)}")
    return tuple(items)


def _p_cclose(value: str) -> tuple[str, ...]:
    if value == "*":
        return ("*",)
    return tuple(_channel_id(item, "cclose") for item in _list(value, "cclose"))


def _p_qid(value: str) -> int:
    return parse_uint(value, "qid", maximum=MAX_QID)


def _pair(value: str, name: str, labels: tuple[str, str], syntax: str) -> tuple[int, int]:
    parts = value.split(",")
    if len(parts) != 2:
        raise RequestError(name, f"expected {syntax}")
    return (parse_uint(parts[0], name, maximum=MAX_COORD, what=labels[0]),
            parse_uint(parts[1], name, maximum=MAX_COORD, what=labels[1]))


def _p_fsiz(value: str) -> FrameSize:
    syntax = "fx,fy[,round-up|round-down|closest]"
    parts = value.split(",")
    if len(parts) not in (2, 3):
        raise RequestError("fsiz", f"expected {syntax}")
    fx, fy = _pair(",".join(parts[:2]), "fsiz", ("fx", "fy"), syntax)
    if fx == 0 or fy == 0:
        raise RequestError("fsiz", "frame size must be at least 1x1")
    direction = parts[2] if len(parts) == 3 else "round-down"
    if direction not in _ROUND_DIRECTIONS:
        raise RequestError("fsiz", f"unknown round direction {shorten(direction)} "
                                   "(expected round-up, round-down or closest)")
    return FrameSize(fx, fy, direction)


def _p_roff(value: str) -> Point:
    return Point(*_pair(value, "roff", ("x offset", "y offset"), "ox,oy"))


def _p_rsiz(value: str) -> Size:
    size = Size(*_pair(value, "rsiz", ("width", "height"), "sx,sy"))
    if size.w == 0 or size.h == 0:
        raise RequestError("rsiz", "region size must be at least 1x1")
    return size


def _p_comps(value: str) -> tuple[UintRange, ...]:
    return tuple(parse_uint_range(item, "comps", maximum=MAX_INDEX, what="component range")
                 for item in _list(value, "comps"))


def _sampled_ranges(value: str, name: str) -> tuple[SampledRange, ...]:
    return tuple(parse_sampled_range(item, name, maximum=MAX_CODESTREAM, what="codestream range")
                 for item in _list(value, name))


_CONTEXT_RANGE = re.compile(r"([A-Za-z][A-Za-z0-9]*)<([^<>\[\],]*)>(?:\[([^<>\[\]]*)\])?")


def _p_context(value: str) -> Context:
    ranges: list[ContextRange] = []
    pos = 0
    while True:
        match = _CONTEXT_RANGE.match(value, pos)
        if match is None:
            raise RequestError("context", f"expected kind<range>[geometry] at "
                                          f"{shorten(value[pos:])}")
        kind, spec, geometry = match.groups()
        layers = None
        if kind == "jpxl":
            layers = parse_sampled_range(spec, "context", maximum=MAX_CODESTREAM,
                                         what="jpxl layer range")
        ranges.append(ContextRange(kind, spec, layers, geometry))
        if len(ranges) > MAX_LIST_ITEMS:
            raise RequestError("context", f"more than {MAX_LIST_ITEMS} context ranges")
        pos = match.end()
        if pos == len(value):
            return Context(value, tuple(ranges))
        if value[pos] != "," or pos + 1 == len(value):
            raise RequestError("context", f"expected ',' between context ranges at "
                                          f"{shorten(value[pos:])}")
        pos += 1


def _ufloat(value: str, name: str) -> float:
    if not _UFLOAT.fullmatch(value):
        raise RequestError(name, f"expected an unsigned decimal number, got {shorten(value)}")
    return float(value)


def _p_roi(value: str) -> str:
    if len(value) > 255 or not _TOKEN.fullmatch(value):
        raise RequestError("roi", "expected a region name of up to 255 visible ASCII characters")
    return value


def _p_layers(value: str) -> int:
    return parse_uint(value, "layers", maximum=MAX_LAYERS)


def _p_len(value: str) -> int:
    return parse_uint(value, "len", maximum=MAX_LEN)


def _p_quality(value: str) -> int:
    if value == "-1":
        return -1
    return parse_uint(value, "quality", maximum=100)


def _yes_no(value: str, name: str) -> bool:
    if value not in ("yes", "no"):
        raise RequestError(name, f"expected yes or no, got {shorten(value)}")
    return value == "yes"


_MEDIA_TYPES = {"image/jpp-stream": "jpp-stream", "image/jpt-stream": "jpt-stream"}
_TYPE_PART = re.compile(r"[a-z0-9][a-z0-9.+-]*(?:/[a-z0-9][a-z0-9.+-]*)?")
_TYPE_PARAM = re.compile(r"[a-z0-9.+-]+=[a-z0-9.+-]+")


def _p_type(value: str) -> tuple[str, ...]:
    """Normalise each return type: lower case, no blanks, `image/jpp-stream` -> `jpp-stream`."""
    out = []
    for item in _list(value, "type"):
        base, *params = (part.strip() for part in item.lower().split(";"))
        if not _TYPE_PART.fullmatch(base) or not all(_TYPE_PARAM.fullmatch(p) for p in params):
            raise RequestError("type", f"malformed image return type {shorten(item)}")
        out.append(";".join([_MEDIA_TYPES.get(base, base), *params]))
    return tuple(out)


def _tokens(value: str, name: str) -> tuple[str, ...]:
    items = _list(value, name)
    for item in items:
        if not _TOKEN.fullmatch(item):
            raise RequestError(name, f"malformed item {shorten(item)}")
    return tuple(items)


def _p_pref(value: str) -> tuple[PrefSet, ...]:
    sets = []
    for raw in _list(value, "pref"):
        required = raw.endswith("/r")
        body = raw[:-2] if required else raw
        tokens = body.split(";")
        if not all(_TOKEN.fullmatch(t) for t in tokens):
            raise RequestError("pref", f"malformed preference set {shorten(raw)}")
        sets.append(PrefSet(raw, tuple(tokens), required))
    return tuple(sets)


def _p_csf(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise RequestError("csf", "only visible ASCII characters are allowed")
    return value


def _flag(value: str) -> bool:
    return True  # presence is what counts; the value (if any) stays in `raw`


# metareq ----------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")
_QUALIFIERS = re.compile(r"[wsga]+")
_NOT_IN_BOX_TYPE = frozenset("[];,:/!*")


def _p_metareq(value: str) -> MetaReq:
    items: list[MetaReqItem] = []
    pos, end, nprops = 0, len(value), 0
    while True:
        if pos >= end or value[pos] != "[":
            raise RequestError("metareq", f"expected '[' at {shorten(value[pos:])}")
        props, pos = _box_props(value, pos + 1)
        nprops += len(props)
        if nprops > MAX_METAREQ_PROPS:
            raise RequestError("metareq", f"more than {MAX_METAREQ_PROPS} box properties")
        root_bin, pos = _tagged_uint(value, pos, "R", "root-bin", MAX_BIN_ID)
        max_depth, pos = _tagged_uint(value, pos, "D", "max-depth", MAX_INDEX)
        items.append(MetaReqItem(props, root_bin, max_depth))
        if pos == end:
            return MetaReq(tuple(items))
        if value[pos:] == "!!":
            return MetaReq(tuple(items), metadata_only=True)
        if value[pos] != ",":
            raise RequestError("metareq", f"expected ',' or '!!' at {shorten(value[pos:])}")
        pos += 1


def _box_props(value: str, pos: int) -> tuple[tuple[BoxProp, ...], int]:
    """The `1$req-box-prop "]"` after a '['; returns the props and the position after ']'.
    A ',' between props is taken as a ';' (Kakadu's parser does the same)."""
    props = []
    while True:
        prop, pos = _box_prop(value, pos)
        props.append(prop)
        if pos < len(value) and value[pos] in ";,":
            pos += 1
        elif pos < len(value) and value[pos] == "]":
            return tuple(props), pos + 1
        else:
            raise RequestError("metareq", f"expected ';' or ']' at {shorten(value[pos:])}")


def _box_prop(value: str, pos: int) -> tuple[BoxProp, int]:
    if value.startswith("*", pos):
        box_type, pos = "*", pos + 1
    else:
        box_type = value[pos:pos + 4]
        if len(box_type) != 4 or not _NOT_IN_BOX_TYPE.isdisjoint(box_type):
            raise RequestError("metareq", f"box type must be 4 characters or '*', at "
                                          f"{shorten(value[pos:])}")
        pos += 4
    limit: int | Literal["r"] | None = None
    if value.startswith(":", pos):
        if value.startswith("r", pos + 1):
            limit, pos = "r", pos + 2
        else:
            digits = _DIGITS.match(value, pos + 1)
            if digits is None:
                raise RequestError("metareq", "expected a byte limit or 'r' after ':'")
            limit, pos = parse_uint(digits.group(), "metareq", maximum=MAX_LEN,
                                    what="box limit"), digits.end()
    qualifiers: frozenset[str] = frozenset()
    if value.startswith("/", pos):
        letters = _QUALIFIERS.match(value, pos + 1)
        if letters is None:
            raise RequestError("metareq", "expected w, s, g or a after '/'")
        qualifiers, pos = frozenset(letters.group()), letters.end()
    priority = value.startswith("!", pos)
    return BoxProp(box_type, limit, qualifiers, priority), pos + priority


def _tagged_uint(value: str, pos: int, tag: str, what: str,
                 maximum: int) -> tuple[int | None, int]:
    if not value.startswith(tag, pos):
        return None, pos
    digits = _DIGITS.match(value, pos + 1)
    if digits is None:
        raise RequestError("metareq", f"expected a number after {tag!r} ({what})")
    return parse_uint(digits.group(), "metareq", maximum=maximum, what=what), digits.end()


# --- dispatch -------------------------------------------------------------------------------

_EMPTY_OK = frozenset(("handled", "upload"))
# Checked, then dropped: `srate` (needs timing: MJ2), `roi` (no ROI descriptions are served),
# `align`, `drate` (hints), `mset` (every model is kept), `cap`, `csf` (client capabilities).
CHECKED_ONLY = frozenset(("srate", "roi", "align", "drate", "mset", "cap", "csf"))

_PARSERS: dict[str, Callable[[str], object]] = {
    "target": _p_target,
    "subtarget": _p_subtarget,
    "tid": _p_tid,
    "cid": _p_cid,
    "cnew": _p_cnew,
    "cclose": _p_cclose,
    "qid": _p_qid,
    "fsiz": _p_fsiz,
    "roff": _p_roff,
    "rsiz": _p_rsiz,
    "comps": _p_comps,
    "stream": partial(_sampled_ranges, name="stream"),
    "context": _p_context,
    "srate": partial(_ufloat, name="srate"),
    "roi": _p_roi,
    "layers": _p_layers,
    "metareq": _p_metareq,
    "len": _p_len,
    "quality": _p_quality,
    "align": partial(_yes_no, name="align"),
    "wait": partial(_yes_no, name="wait"),
    "type": _p_type,
    "drate": partial(_ufloat, name="drate"),
    "model": partial(parse_model, field="model"),
    "tpmodel": partial(parse_tp_model, field="tpmodel"),
    "need": partial(parse_model, field="need"),
    "tpneed": partial(parse_tp_model, field="tpneed"),
    "mset": partial(_sampled_ranges, name="mset"),
    "upload": _flag,
    "cap": partial(_tokens, name="cap"),
    "pref": _p_pref,
    "csf": _p_csf,
    "handled": _flag,
    TOKEN_FIELD: _p_access_token,
}
assert set(_PARSERS) == set(REQUEST_FIELDS)
