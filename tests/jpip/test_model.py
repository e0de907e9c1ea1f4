"""Cache-model descriptor lists (protocol note section 6.3) and the shared range grammar."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jpip.errors import RequestError
from jpip.model import (
    MAX_LAYERS,
    ModelItem,
    ModelSpec,
    SampledRange,
    UintRange,
    check_tp_model,
    parse_model,
    parse_sampled_range,
    parse_uint,
    parse_uint_range,
)

R = UintRange


def one(n: int) -> UintRange:
    return UintRange(n, n)


# --- shared grammar pieces ------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("0", R(0, 0)), ("7", R(7, 7)), ("2-5", R(2, 5)), ("3-", R(3, None)), ("4-4", R(4, 4)),
    ("007", R(7, 7)),
])
def test_uint_range_valid(text, expected):
    assert parse_uint_range(text, "f", maximum=100) == expected


@pytest.mark.parametrize("text", ["", "-", "-3", "5-2", "a", "1-b", "1--2", "+1", " 1", "1_0",
                                  "١", "²", "101", "1-101", "1.5", "0x10"])
def test_uint_range_invalid(text):
    with pytest.raises(RequestError) as info:
        parse_uint_range(text, "f", maximum=100)
    assert info.value.field == "f" and info.value.status == 400


def test_uint_rejects_huge_digit_strings_without_converting():
    with pytest.raises(RequestError, match="above the limit"):
        parse_uint("9" * 5000, "len", maximum=2**53)
    assert parse_uint("0" * 30 + "12", "len", maximum=100) == 12


@pytest.mark.parametrize("text, expected", [
    ("0", SampledRange(0, 0, 1)), ("0-9:3", SampledRange(0, 9, 3)),
    ("5-:2", SampledRange(5, None, 2)), ("4:1", SampledRange(4, 4, 1)),
])
def test_sampled_range_valid(text, expected):
    assert parse_sampled_range(text, "stream", maximum=100) == expected


@pytest.mark.parametrize("text", ["0:0", "0:", ":2", "0-9:x", "0:2:3", "9-0:1"])
def test_sampled_range_invalid(text):
    with pytest.raises(RequestError):
        parse_sampled_range(text, "stream", maximum=100)


def test_range_str_and_covers():
    assert [str(r) for r in (R(3, 3), R(1, 4), R(2, None))] == ["3", "1-4", "2-"]
    assert str(SampledRange(0, 10, 2)) == "0-10:2" and str(SampledRange(1, None)) == "1-"
    assert R(2, None).covers(10**9) and not R(2, 4).covers(5) and not R(2, 4).covers(1)
    s = SampledRange(1, 9, 4)
    assert [v for v in range(12) if s.covers(v)] == [1, 5, 9]


# --- model / need: the note's examples --------------------------------------------------------

def test_note_example_explicit_bins():
    spec = parse_model("Hm,H0,M0,P0,P1:120,P7:L2")
    assert spec.items == (
        ModelItem("Hm", one(0)),
        ModelItem("H", one(0)),
        ModelItem("M", one(0)),
        ModelItem("P", one(0)),
        ModelItem("P", one(1), bytes=120),
        ModelItem("P", one(7), layers=2),
    )
    assert [i.whole_bin for i in spec] == [True, True, True, True, False, False]
    assert len(spec) == 6


def test_note_example_codestream_qualifier_and_wildcard():
    spec = parse_model("[0-9],Hm,H*")
    assert spec.items == (
        ModelItem("Hm", one(0), codestreams=(R(0, 9),)),
        ModelItem("H", None, codestreams=(R(0, 9),)),
    )


def test_note_example_subtractive():
    assert parse_model("-P12").items == (ModelItem("P", one(12), subtractive=True),)


def test_qualifier_applies_until_the_next_one():
    spec = parse_model("P0,[1;3-4],P1,M2:10,[5-],-H*")
    assert [i.codestreams for i in spec] == [None, (one(1), R(3, 4)), (one(1), R(3, 4)),
                                            (R(5, None),)]
    assert spec.items[2] == ModelItem("M", one(2), codestreams=(one(1), R(3, 4)), bytes=10)
    assert spec.items[3].subtractive and spec.items[3].ids is None


def test_qualifier_accepts_commas_inside_brackets():
    assert parse_model("[0,2-4],Hm") == parse_model("[0;2-4],Hm")


@pytest.mark.parametrize("text, expected", [
    ("t0-3c0r2p5:L2", ModelItem("implicit", tiles=R(0, 3), components=one(0),
                                resolutions=one(2), precincts=one(5), layers=2)),
    ("t*", ModelItem("implicit")),
    ("r1", ModelItem("implicit", resolutions=one(1))),
    ("c1-p*", ModelItem("implicit", components=R(1, None))),
    ("t2c*r0-1", ModelItem("implicit", tiles=one(2), resolutions=R(0, 1))),
    ("-p4:L1", ModelItem("implicit", precincts=one(4), subtractive=True, layers=1)),
])
def test_implicit_form(text, expected):
    assert parse_model(text).items == (expected,)


@pytest.mark.parametrize("text, expected", [
    ("P5-10", ModelItem("P", R(5, 10))),  # OpenHTJ2K private range form
    ("P5-", ModelItem("P", R(5, None))),
    ("H2-3:0", ModelItem("H", R(2, 3), bytes=0)),
    ("T*", ModelItem("T", None)),
    ("T4:100", ModelItem("T", one(4), bytes=100)),
    ("M0:L0", None),  # layers apply to precinct bins only
    ("Hm:113", ModelItem("Hm", one(0), bytes=113)),
    ("P*:L3", ModelItem("P", None, layers=3)),
])
def test_explicit_forms(text, expected):
    if expected is None:
        with pytest.raises(RequestError):
            parse_model(text)
    else:
        assert parse_model(text).items == (expected,)


@pytest.mark.parametrize("text", [
    "", ",", "Hm,", ",Hm", "Hm,,H0", "X1", "Hp3", "Hn", "H", "P", "Pa", "P-1", "P1:", "P1:L",
    "P1:x", "P1:1:2", "P1:-1", "P10-5", "Hm:L1", "H0:L1", "T0:L1", "t0:5", "t0c0:12", "ct0",
    "p0t0", "t", "tx", "t0-x", "[", "[]", "[0", "0]", "[a]", "[0]Hm", "-[0]", "--P1", "-",
    "[0-]]", "[[0]]", "[3-1],Hm", "P1 ", " P1", "P+1", "P1:L70000", "P99999999999999999999",
    "P1:" + "9" * 30, "t99999999999",
])
def test_invalid_models(text):
    with pytest.raises(RequestError) as info:
        parse_model(text, field="need")
    assert info.value.field == "need" and info.value.status == 400
    assert "\n" not in str(info.value)


def test_bounds_on_items_and_length():
    assert len(parse_model(",".join(["P1"] * 1000), max_items=1000)) == 1000
    with pytest.raises(RequestError, match="more than 1000 descriptors"):
        parse_model(",".join(["P1"] * 1001), max_items=1000)
    with pytest.raises(RequestError, match="longer than"):
        parse_model("P1," * 100, max_length=50)


def test_hundred_thousand_items_parse():
    text = ",".join(f"P{i}:{i % 977}" for i in range(100_000))
    spec = parse_model(text)
    assert len(spec) == 100_000 and spec.items[-1] == ModelItem("P", one(99_999),
                                                                bytes=99_999 % 977)


def test_spec_is_immutable_and_hashable():
    spec = parse_model("Hm,P1")
    with pytest.raises(AttributeError):
        spec.items = ()  # type: ignore[misc]
    assert hash(spec) == hash(parse_model("Hm,P1"))


# --- tpmodel / tpneed -----------------------------------------------------------------------

def test_tp_model_forms():
    check_tp_model("0.0,1.0-3.2,-4.1,[2],5.0")
    check_tp_model("[0;2-4],65534.254")


@pytest.mark.parametrize("text", ["", "0", "0.", ".0", "0.0-", "0.0-1", "3.0-1.0", "0.0.0",
                                  "a.b", "0.255", "65535.0", "0.0,", "P1", "--0.0"])
def test_tp_model_invalid(text):
    with pytest.raises(RequestError) as info:
        check_tp_model(text, field="tpneed")
    assert info.value.field == "tpneed"


# --- properties -----------------------------------------------------------------------------

_range = st.one_of(
    st.integers(0, 10**6).map(lambda n: R(n, n)),
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)).map(lambda t: R(min(t), max(t))),
    st.integers(0, 10**6).map(lambda n: R(n, None)),
)
_maybe_range = st.one_of(st.none(), _range)


def _fmt(r: UintRange | None) -> str:
    return "*" if r is None else str(r)


@st.composite
def _explicit(draw) -> ModelItem:
    kind = draw(st.sampled_from(["Hm", "H", "P", "T", "M"]))
    ids = R(0, 0) if kind == "Hm" else draw(_maybe_range)
    limit = draw(st.sampled_from(["none", "bytes"] + (["layers"] if kind == "P" else [])))
    return ModelItem(kind, ids, subtractive=draw(st.booleans()),
                     bytes=draw(st.integers(0, 2**40)) if limit == "bytes" else None,
                     layers=draw(st.integers(0, MAX_LAYERS)) if limit == "layers" else None)


@st.composite
def _implicit(draw) -> tuple[ModelItem, str]:
    ranges = draw(st.tuples(_maybe_range, _maybe_range, _maybe_range, _maybe_range))
    shown = draw(st.tuples(*[st.booleans()] * 4))
    if not any(shown):
        shown = (True, False, False, False)
    ranges = tuple(r if s else None for r, s in zip(ranges, shown, strict=True))
    item = ModelItem("implicit", None, None, draw(st.booleans()), *ranges,
                     layers=draw(st.one_of(st.none(), st.integers(0, MAX_LAYERS))))
    text = "".join(f"{letter}{_fmt(r)}" for letter, r, s in zip("tcrp", ranges, shown, strict=True)
                   if s)
    return item, text


def _explicit_text(item: ModelItem) -> str:
    head = "Hm" if item.kind == "Hm" else item.kind + _fmt(item.ids)
    if item.bytes is not None:
        head += f":{item.bytes}"
    if item.layers is not None:
        head += f":L{item.layers}"
    return head


@given(st.lists(st.one_of(
    _explicit().map(lambda i: (i, _explicit_text(i))),
    _implicit(),
    st.lists(_range, min_size=1, max_size=3).map(lambda rs: (tuple(rs), None)),
), max_size=30))
@settings(max_examples=300)
def test_generated_models_round_trip(elements):
    parts, expected, qualifier = [], [], None
    for element, text in elements:
        if text is None:  # a codestream qualifier
            qualifier = element
            parts.append("[" + ";".join(str(r) for r in element) + "]")
            continue
        if element.kind == "implicit":
            layers = "" if element.layers is None else f":L{element.layers}"
            text = text + layers
        parts.append(("-" if element.subtractive else "") + text)
        expected.append(ModelItem(element.kind, element.ids, qualifier, element.subtractive,
                                  element.tiles, element.components, element.resolutions,
                                  element.precincts, element.bytes, element.layers))
    if not parts:
        return
    assert parse_model(",".join(parts)) == ModelSpec(tuple(expected))


_model_alphabet = st.sampled_from(list("0123456789HmPTMtcrpL*:-,[];!x "))


@given(st.one_of(st.text(max_size=80), st.text(_model_alphabet, max_size=80)))
@settings(max_examples=1500)
def test_random_text_raises_only_request_error(text):
    for parse in (parse_model, check_tp_model):
        try:
            parse(text)
        except RequestError as err:
            assert err.status == 400 and "\n" not in str(err)


def test_bounds_on_separators():
    with pytest.raises(RequestError, match="more than 10 descriptors"):
        parse_model("," * 50, max_items=10)
    with pytest.raises(RequestError, match="ranges in a qualifier"):
        parse_model("[" + ";".join(["0"] * 2000) + "],Hm")
