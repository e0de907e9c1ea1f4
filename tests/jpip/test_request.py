"""Request grammar (protocol note sections 1 and 9.1): real client strings, every field valid and
invalid, raw vs %-encoded delimiters, and fuzzing that only RequestError ever escapes."""
from __future__ import annotations

import pickle
import re
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jpip.errors import RequestError
from jpip.model import ModelItem, SampledRange, TilePartRange, UintRange
from jpip.request import (
    CHECKED_ONLY,
    FIELD_NAMES,
    REQUEST_FIELDS,
    BoxProp,
    ContextRange,
    FrameSize,
    JPIPRequest,
    MetaReq,
    MetaReqItem,
    Point,
    PrefSet,
    Size,
    parse_form_body,
    parse_query,
)

R = UintRange
S = SampledRange
CID = "0123456789abcdef0123456789abcdef"


def one(n: int) -> UintRange:
    return UintRange(n, n)


# --- what real clients send (note section 1.3) ------------------------------------------------

def test_jhelioviewer_channel_request():
    req = parse_query("cnew=http&type=jpp-stream&tid=0&len=512")
    assert req.cnew == ("http",) and req.type == ("jpp-stream",)
    assert req.tid == "0" and req.len == 512
    assert req.present == {"cnew", "type", "tid", "len"}
    assert req.cid is None and req.fsiz is None and not req.wait


def test_jhelioviewer_metadata_request():
    req = parse_query(f"cid={CID}&stream=0&metareq=[*]!!&len=2000000")
    assert req.cid == CID and req.stream == (S(0, 0),) and req.len == 2_000_000
    assert req.metareq == MetaReq((MetaReqItem((BoxProp("*"),)),), metadata_only=True)
    assert req.raw["metareq"] == "[*]!!"


def test_jhelioviewer_frame_request():
    req = parse_query(f"cid={CID}&stream=3&fsiz=1024,1024,closest&rsiz=1100,1100&len=2097152")
    assert req.stream == (S(3, 3),)
    assert req.fsiz == FrameSize(1024, 1024, "closest")
    assert req.rsiz == Size(1100, 1100) == (1100, 1100)
    assert req.roff is None and req.len == 2097152


def test_jhelioviewer_close():
    req = parse_query(f"cclose={CID}&len=0")
    assert req.cclose == (CID,) and req.len == 0


def test_old_jhelioviewer_request():
    req = parse_query("type=jpp-stream&tid=0&cnew=http-tcp,http&stream=0&len=1000")
    assert req.cnew == ("http-tcp", "http")


def test_opj_viewer_requests():
    req = parse_query("target=16.jp2&fsiz=170,170&cnew=http&type=jpp-stream")
    assert req.target == "16.jp2" and req.fsiz == FrameSize(170, 170, "round-down")
    assert req.cnew == ("http",) and req.type == ("jpp-stream",)
    req = parse_query(f"cid={CID}&metareq=[xml_]")
    prop = req.metareq.items[0].props[0]
    assert prop == BoxProp("xml_") and not req.metareq.metadata_only
    req = parse_query(f"cid={CID}&fsiz=340,340&roff=10,20&rsiz=100,80")
    assert req.roff == Point(10, 20) and req.rsiz == Size(100, 80)


def test_kakadu_style_request():
    req = parse_query("fsiz=640,480,round-up&model=Hm,H0,P0:20,P7:L2,[0-2],t0-3c0r2p5:L2,-P12"
                      "&pref=fullwindow&mset=0&wait=yes&qid=3&cnew=http-tcp,http")
    assert req.fsiz == FrameSize(640, 480, "round-up")
    assert req.model.items == (
        ModelItem("Hm", one(0)),
        ModelItem("H", one(0)),
        ModelItem("P", one(0), bytes=20),
        ModelItem("P", one(7), layers=2),
        ModelItem("implicit", codestreams=(R(0, 2),), tiles=R(0, 3), components=one(0),
                  resolutions=one(2), precincts=one(5), layers=2),
        ModelItem("P", one(12), codestreams=(R(0, 2),), subtractive=True),
    )
    assert req.pref == (PrefSet("fullwindow", ("fullwindow",), False),)
    assert "mset" in req.present and req.wait is True and req.qid == 3
    assert req.cnew == ("http-tcp", "http")


# --- every field, valid -----------------------------------------------------------------------

VALID = [
    ("target=16.jp2", "target", "16.jp2"),
    ("target=dir/sub%20dir/a%2Bb.jp2", "target", "dir/sub dir/a+b.jp2"),
    ("target=http://host/x.jp2?a=1", "target", "http://host/x.jp2?a=1"),
    ("subtarget=100-2000", "subtarget.byte_range", R(100, 2000)),
    ("subtarget=100-", "subtarget.byte_range", R(100, None)),
    ("subtarget=[0-3;5:2]", "subtarget.codestreams", (S(0, 3), S(5, 5, 2))),
    ("tid=0", "tid", "0"),
    ("tid=" + "a" * 255, "tid", "a" * 255),
    ("tid=abc-DEF_1.2~x", "tid", "abc-DEF_1.2~x"),
    (f"cid={CID}", "cid", CID),
    ("cid=JPH_1.a-b", "cid", "JPH_1.a-b"),
    ("cnew=http", "cnew", ("http",)),
    ("cnew=http-tcp,http,udp", "cnew", ("http-tcp", "http", "udp")),
    ("cclose=a1,b2", "cclose", ("a1", "b2")),
    (f"cclose=*&cid={CID}", "cclose", ("*",)),
    ("qid=0", "qid", 0),
    ("qid=123456", "qid", 123456),
    ("fsiz=1,1", "fsiz", FrameSize(1, 1)),
    ("fsiz=4294967296,7,round-down", "fsiz", FrameSize(2**32, 7, "round-down")),
    ("fsiz=64,64,closest", "fsiz.round", "closest"),
    ("fsiz=10,10&roff=0,0", "roff", Point(0, 0)),
    ("fsiz=10,10&roff=4294967296,3", "roff", (2**32, 3)),
    ("fsiz=10,10&rsiz=5,6", "rsiz", Size(5, 6)),
    ("comps=0-2,4", "comps", (R(0, 2), one(4))),
    ("comps=3-", "comps", (R(3, None),)),
    ("stream=0", "stream", (S(0, 0),)),
    ("stream=0-10:2,20-", "stream", (S(0, 10, 2), S(20, None))),
    ("context=jpxl<0-3>", "context.jpxl_layers", (S(0, 3),)),
    ("context=jpxl<2>[s0i1],mj2t<1+now>", "context.ranges",
     (ContextRange("jpxl", "2", S(2, 2), "s0i1"), ContextRange("mj2t", "1+now"))),
    ("context=jpxl%3C0-9%3A3%3E", "context.jpxl_layers", (S(0, 9, 3),)),
    ("layers=0", "layers", 0),
    ("layers=65535", "layers", 65535),
    ("metareq=[xml_:r/w!;jp2h:1024/sg]R0D3,[*]", "metareq",
     MetaReq((MetaReqItem((BoxProp("xml_", "r", frozenset("w"), True),
                           BoxProp("jp2h", 1024, frozenset("sg"))), 0, 3),
              MetaReqItem((BoxProp("*"),))))),
    ("metareq=[*/a]D0!!", "metareq",
     MetaReq((MetaReqItem((BoxProp("*", None, frozenset("a")),), None, 0),), True)),
    ("metareq=[xml%20]", "metareq.items", (MetaReqItem((BoxProp("xml "),)),)),
    ("len=0", "len", 0),
    ("len=9007199254740992", "len", 2**53),
    ("quality=0", "quality", 0),
    ("quality=100", "quality", 100),
    ("quality=-1", "quality", -1),
    ("wait=yes", "wait", True),
    ("wait=no", "wait", False),
    ("type=jpp-stream", "type", ("jpp-stream",)),
    ("type=image/jpp-stream", "type", ("jpp-stream",)),
    ("type=jpp-stream;ptype=ext,jpt-stream", "type", ("jpp-stream;ptype=ext", "jpt-stream")),
    ("type=image/JPT-stream%3B%20ttype=ext,raw", "type", ("jpt-stream;ttype=ext", "raw")),
    ("type=image/jpeg", "type", ("image/jpeg",)),
    ("model=Hm", "model.items", (ModelItem("Hm", one(0)),)),
    ("tpmodel=0.0-2.1", "tpmodel.items", (TilePartRange((0, 0), (2, 1)),)),
    ("tpmodel=[1],0.0,1.0-3.2,-4.1,[2],5.0", "tpmodel.items",
     (TilePartRange((0, 0), (0, 0), False, (R(1, 1),)),
      TilePartRange((1, 0), (3, 2), False, (R(1, 1),)),
      TilePartRange((4, 1), (4, 1), True, (R(1, 1),)),
      TilePartRange((5, 0), (5, 0), False, (R(2, 2),)))),
    ("tpneed=-3.0", "tpneed.items", (TilePartRange((3, 0), (3, 0), True),)),
    ("need=P1:L2", "need.items", (ModelItem("P", one(1), layers=2),)),
    ("upload=x", "upload", True),
    ("upload", "upload", True),
    ("pref=fullwindow,meta:incr;concise/r", "pref",
     (PrefSet("fullwindow", ("fullwindow",)), PrefSet("meta:incr;concise/r",
                                                       ("meta:incr", "concise"), True))),
    ("handled", "handled", True),
    ("handled=", "handled", True),
]


# Checked and then dropped (nothing acts on them): a valid value is accepted and named in
# `present`/`raw`, and the request keeps no attribute for it.
CHECKED = [
    "srate=2.5", "srate=30", "srate=.5", "roi=dynamic", "align=yes", "align=no", "drate=1.5",
    "mset=0-5:5", "cap=mbw:1M,foo", "csf=abc",
]


@pytest.mark.parametrize("query", CHECKED)
def test_checked_only_fields(query):
    name, _, value = query.partition("=")
    req = parse_query(query)
    assert name in CHECKED_ONLY and req.present == {name} and req.raw[name] == value
    assert not hasattr(req, name)


def _get(obj: object, path: str) -> object:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


@pytest.mark.parametrize("query, path, expected", VALID, ids=[v[0][:40] for v in VALID])
def test_valid_fields(query, path, expected):
    req = parse_query(query)
    assert _get(req, path) == expected
    assert path.split(".")[0] in req.present


def test_every_annex_c_field_has_a_valid_example():
    covered = {v[1].split(".")[0] for v in VALID} | {q.partition("=")[0] for q in CHECKED}
    assert covered == set(FIELD_NAMES)
    assert set(FIELD_NAMES) - CHECKED_ONLY == set(JPIPRequest.__dataclass_fields__) - {
        "present", "ignored_fields", "raw", "access_token"}


def test_defaults_when_absent():
    req = parse_query("")
    assert req == JPIPRequest()
    assert req.present == frozenset() and req.ignored_fields == () and dict(req.raw) == {}
    assert not (req.wait or req.upload or req.handled)
    assert all(getattr(req, name) is None for name in FIELD_NAMES
               if name not in ("wait", "upload", "handled") and name not in CHECKED_ONLY)


# --- every field, invalid ---------------------------------------------------------------------

INVALID = [
    # (query, field named in the error)
    ("fsiz=abc", "fsiz"),
    ("fsiz=a,b", "fsiz"),
    ("fsiz=-5,10", "fsiz"),
    ("fsiz=1000000000000,10", "fsiz"),
    ("fsiz=0,10", "fsiz"),
    ("fsiz=10,0", "fsiz"),
    ("fsiz=10", "fsiz"),
    ("fsiz=10,10,", "fsiz"),
    ("fsiz=10,10,round", "fsiz"),
    ("fsiz=10,10,ROUND-UP", "fsiz"),
    ("fsiz=10,10,closest,x", "fsiz"),
    ("fsiz=1.5,2", "fsiz"),
    ("fsiz=+5,5", "fsiz"),
    ("fsiz=5 ,5", "fsiz"),
    ("fsiz=10,10&roff=-1,0", "roff"),
    ("fsiz=10,10&roff=1", "roff"),
    ("fsiz=10,10&roff=1,2,3", "roff"),
    ("fsiz=10,10&roff=99999999999,0", "roff"),
    ("fsiz=10,10&rsiz=0,5", "rsiz"),
    ("fsiz=10,10&rsiz=5,x", "rsiz"),
    ("roff=0,0", "roff"),
    ("rsiz=10,10", "rsiz"),
    ("target=", "target"),
    ("target", "target"),
    ("target=a%00b", "target"),
    ("target=a%0Ab", "target"),
    ("target=%ff", "target"),
    ("target=%C3%28", "target"),
    ("subtarget=x", "subtarget"),
    ("subtarget=5-1", "subtarget"),
    ("subtarget=[]", "subtarget"),
    ("subtarget=[0", "subtarget"),
    ("tid=" + "a" * 256, "tid"),
    ("tid=a%20b", "tid"),
    ("tid=%C3%A9", "tid"),
    ("cid=" + "a" * 65, "cid"),
    ("cid=a/b", "cid"),
    ("cid=a,b", "cid"),
    ("cid=*", "cid"),
    ("cnew=", "cnew"),
    ("cnew=http,", "cnew"),
    ("cnew=ht tp", "cnew"),
    ("cnew=-http", "cnew"),
    ("cclose=a,*", "cclose"),
    ("cclose=*", "cclose"),  # needs a cid
    ("cclose=a,,b", "cclose"),
    ("qid=-1", "qid"),
    ("qid=x", "qid"),
    ("qid=1.0", "qid"),
    ("qid=99999999999999999999999", "qid"),
    ("comps=2-1", "comps"),
    ("comps=a", "comps"),
    ("comps=0,", "comps"),
    ("comps=-3", "comps"),
    ("stream=0:0", "stream"),
    ("stream=5-2", "stream"),
    ("stream=x", "stream"),
    ("stream=0;1", "stream"),
    ("context=jpxl", "context"),
    ("context=jpxl<a>", "context"),
    ("context=jpxl<3-1>", "context"),
    ("context=jpxl<0>,", "context"),
    ("context=<0>", "context"),
    ("context=jpxl<0>x", "context"),
    ("srate=-1", "srate"),
    ("srate=1e5", "srate"),
    ("srate=nan", "srate"),
    ("srate=inf", "srate"),
    ("srate=1.2.3", "srate"),
    ("roi=a%20b", "roi"),
    ("layers=65536", "layers"),
    ("layers=99999999999999", "layers"),
    ("layers=-1", "layers"),
    ("metareq=", "metareq"),
    ("metareq=*", "metareq"),
    ("metareq=[]", "metareq"),
    ("metareq=[*", "metareq"),
    ("metareq=[xml]", "metareq"),
    ("metareq=[xml_;]", "metareq"),
    ("metareq=[xml_:]", "metareq"),
    ("metareq=[xml_:x]", "metareq"),
    ("metareq=[xml_/]", "metareq"),
    ("metareq=[xml_/q]", "metareq"),
    ("metareq=[xml_!!]", "metareq"),
    ("metareq=[*]R", "metareq"),
    ("metareq=[*]Rx", "metareq"),
    ("metareq=[*]D-1", "metareq"),
    ("metareq=[*]!", "metareq"),
    ("metareq=[*]!!!", "metareq"),
    ("metareq=[*],", "metareq"),
    ("metareq=[*][*]", "metareq"),
    ("metareq=[*]!!,[*]", "metareq"),
    ("len=-1", "len"),
    ("len=abc", "len"),
    ("len=9007199254740993", "len"),
    ("len=1e6", "len"),
    ("quality=101", "quality"),
    ("quality=-2", "quality"),
    ("quality=high", "quality"),
    ("align=true", "align"),
    ("align=YES", "align"),
    ("align=", "align"),
    ("wait=1", "wait"),
    ("type=", "type"),
    ("type=jpp stream", "type"),
    ("type=jpp-stream;ptype", "type"),
    ("type=jpp-stream,", "type"),
    ("type=a/b/c", "type"),
    ("drate=fast", "drate"),
    ("model=Hm,", "model"),
    ("model=Hp3", "model"),
    ("model=P1:L", "model"),
    ("model=[0", "model"),
    ("need=X", "need"),
    ("tpmodel=1", "tpmodel"),
    ("tpneed=1.x", "tpneed"),
    ("mset=a", "mset"),
    ("cap=a%20b", "cap"),
    ("cap=a,", "cap"),
    ("pref=", "pref"),
    ("pref=/r", "pref"),
    ("pref=a;;b", "pref"),
    ("pref=a,,b", "pref"),
    ("csf=a%20b", "csf"),
]


@pytest.mark.parametrize("query, field", INVALID, ids=[v[0][:40] for v in INVALID])
def test_invalid_fields(query, field):
    with pytest.raises(RequestError) as info:
        parse_query(query)
    err = info.value
    assert err.status == 400 and err.field == field
    message = str(err)
    assert message.startswith(f"{field}: ") and "\n" not in message and len(message) < 200


def test_error_message_shape():
    with pytest.raises(RequestError) as info:
        parse_query("fsiz=abc")
    assert str(info.value) == "fsiz: expected fx,fy[,round-up|round-down|closest]"
    with pytest.raises(RequestError) as info:
        parse_query("fsiz=10,10,sideways")
    assert "round direction" in str(info.value)


# --- query-level rules ------------------------------------------------------------------------

def test_duplicate_field_is_rejected_naming_it():
    with pytest.raises(RequestError) as info:
        parse_query("len=1&fsiz=2,2&len=2")
    assert info.value.field == "len" and "more than once" in info.value.reason
    with pytest.raises(RequestError):  # the same name once %-encoded is still a duplicate
        parse_query("len=1&%6Cen=2")


def test_unknown_field_is_rejected_naming_it():
    with pytest.raises(RequestError) as info:
        parse_query("fsiz=2,2&zoom=3")
    assert info.value.field == "zoom" and info.value.status == 400
    with pytest.raises(RequestError):
        parse_query("FSIZ=2,2")  # names are case-sensitive lowercase tokens


def test_lenient_mode_skips_and_lists_unknown_fields():
    req = parse_query("zoom=3&fsiz=2,2&mbw=10&zoom=4&=x", lenient=True)
    assert req.fsiz == FrameSize(2, 2)
    assert req.ignored_fields == ("zoom", "mbw", "")
    assert req.present == {"fsiz"} and "zoom" not in req.raw
    with pytest.raises(RequestError):  # lenient does not excuse malformed known fields
        parse_query("zoom=3&fsiz=x", lenient=True)
    with pytest.raises(RequestError):
        parse_query("len=1&len=1", lenient=True)


def test_over_long_values():
    assert parse_query("target=" + "a" * 100, max_field_length=100).target == "a" * 100
    with pytest.raises(RequestError) as info:
        parse_query("target=" + "a" * 101, max_field_length=100)
    assert info.value.field == "target" and "longer than 100" in str(info.value)
    with pytest.raises(RequestError) as info:
        parse_query("model=" + ",".join(["P1"] * 30000))
    assert info.value.field == "model"


def test_empty_pairs_are_ignored():
    req = parse_query("&&fsiz=1,1&&len=5&")
    assert req.present == {"fsiz", "len"}


def test_plus_stays_literal():
    assert parse_query("target=a+b.jp2").target == "a+b.jp2"
    assert parse_query("context=mj2t<1+now>").context.ranges[0].spec == "1+now"
    for query in ("len=+5", "fsiz=1+1,2", "model=P+1"):
        with pytest.raises(RequestError):
            parse_query(query)


def test_lone_surrogates_are_rejected():
    for query in ("target=\ud800", "target=\udcff%41", "\ud800=1"):
        with pytest.raises(RequestError):
            parse_query(query)


def test_unknown_field_with_bad_encoding_is_still_an_error_in_lenient_mode():
    with pytest.raises(RequestError):
        parse_query("%ff=1", lenient=True)


def test_raw_keeps_decoded_values_and_is_read_only():
    req = parse_query("metareq=%5B*%5D%21%21&len=5&handled")
    assert dict(req.raw) == {"metareq": "[*]!!", "len": "5", "handled": ""}
    with pytest.raises(TypeError):
        req.raw["len"] = "6"  # type: ignore[index]
    with pytest.raises(AttributeError):
        req.len = 6  # type: ignore[misc]
    assert req.has("len") and not req.has("fsiz")


def test_request_is_hashable():
    query = "fsiz=2,2&model=Hm&metareq=[*/w]&pref=a/r"
    assert hash(parse_query(query)) == hash(parse_query(query))


# --- raw vs %-encoded delimiters --------------------------------------------------------------

ENCODED_PAIRS = [
    "metareq=[*]!!",
    "metareq=[xml_:r/w!;jp2h:1024]R0D3,[*]!!",
    "model=[0;2-4],Hm,H*,P1:120,P7:L2,t0-3c0r2p5:L2,-P12",
    "need=[0-9],Hm,H*",
    "tpmodel=[1],0.0-2.1",
    "context=jpxl<0-3:2>[s0i0]",
    "stream=0-10:2",
    "subtarget=[0;2]",
    "cclose=*&cid=abc",
    "pref=meta:incr;concise/r",
]


@pytest.mark.parametrize("query", ENCODED_PAIRS)
@pytest.mark.parametrize("safe", ["=&", "=&,", "=&,[]", "=&*!"])
def test_raw_and_percent_encoded_forms_agree(query, safe):
    encoded = quote(query, safe=safe)
    assert parse_query(encoded) == parse_query(query)
    lower = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)
    assert parse_query(lower) == parse_query(query)  # %5b as well as %5B


def test_fully_encoded_form_differs_on_the_wire():
    assert all(quote(q, safe="=&") != q for q in ENCODED_PAIRS)


# --- POST bodies ------------------------------------------------------------------------------

def test_form_body():
    body = b"cid=abc&model=Hm,H0,P1%3A120&fsiz=64,64\r\n"
    req = parse_form_body(body)
    assert req.cid == "abc" and req.fsiz == FrameSize(64, 64)
    assert req.model.items[-1] == ModelItem("P", one(1), bytes=120)
    assert parse_form_body(body) == parse_query("cid=abc&model=Hm,H0,P1:120&fsiz=64,64")


def test_form_body_rules():
    with pytest.raises(RequestError) as info:
        parse_form_body(b"target=\xff")
    assert info.value.field is None and "UTF-8" in str(info.value)
    with pytest.raises(RequestError):
        parse_form_body(b"zoom=1")
    assert parse_form_body(b"zoom=1", lenient=True).ignored_fields == ("zoom",)
    long_model = ("model=" + ",".join(f"P{i}" for i in range(20000))).encode()
    with pytest.raises(RequestError):
        parse_form_body(long_model)
    assert len(parse_form_body(long_model, max_field_length=2**20).model) == 20000


# --- RequestError -----------------------------------------------------------------------------

def test_request_error_helpers():
    assert RequestError("fsiz", "bad").status == 400
    assert RequestError.not_found("target", "no such file").status == 404
    assert RequestError.unsupported_type("type", "no jpt").status == 415
    err = RequestError.not_implemented("pref", "cannot", headers={"JPIP-pref": "x/r"})
    assert err.status == 501 and err.headers == {"JPIP-pref": "x/r"}
    assert RequestError.unavailable("cid", "unknown channel").status == 503
    assert str(RequestError(None, "body\nbroken")) == "body broken"
    assert str(RequestError("len", "bad")) == "len: bad"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.field, copy.reason, copy.status, copy.headers) == (
        err.field, err.reason, err.status, err.headers)


def test_messages_cut_long_input():
    with pytest.raises(RequestError) as info:
        parse_query("len=" + "x" * 5000)
    assert len(str(info.value)) < 120


# --- access_token: a credential, accepted and never shown -------------------------------------

JWT = ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"
       "tc2ln")


@pytest.mark.parametrize("query", [
    f"access_token={JWT}&target=a.jp2&fsiz=8,8",
    f"target=a.jp2&fsiz=8,8&access_token={JWT}",
    f"target=a.jp2&fsiz=8,8&acc%65ss_token={JWT}",  # names are %-decoded
])
def test_access_token_is_kept_apart(query):
    req = parse_query(query)
    assert req.access_token == JWT and req.target == "a.jp2"
    assert req.present == {"target", "fsiz"} and "access_token" not in req.raw
    assert JWT not in repr(req) and JWT not in str(dict(req.raw))
    assert REQUEST_FIELDS == (*FIELD_NAMES, "access_token")


def test_access_token_other_b64token_forms():
    for token in ("abc", "a+b/c==", "A-._~+/z="):
        assert parse_query(f"access_token={token.replace('+', '%2B')}").access_token == token
    assert parse_query("access_token=a+b").access_token == "a+b"  # '+' stays '+'
    assert parse_query("fsiz=1,1").access_token is None


@pytest.mark.parametrize("query", [
    "access_token=", "access_token=ab%20cd", "access_token=a=b", "access_token=%C3%A9t%C3%A9",
    "access_token=secretA&access_token=secretB", "access_token=secretA,secretB",
    "access_token=" + "s" * 70000,
])
def test_bad_access_token_is_refused_without_quoting_it(query):
    with pytest.raises(RequestError) as info:
        parse_query(query)
    assert info.value.status == 400 and info.value.field == "access_token"
    assert "secret" not in str(info.value) and "cd" not in str(info.value)
    assert "sss" not in str(info.value) and "t\xe9" not in str(info.value)


# --- fuzzing ----------------------------------------------------------------------------------

def _parse_or_request_error(query: str, lenient: bool) -> None:
    try:
        req = parse_query(query, lenient=lenient)
    except RequestError as err:
        assert err.status == 400 and "\n" not in str(err)
    else:
        assert isinstance(req, JPIPRequest)
        assert req.present <= set(FIELD_NAMES)


@given(st.one_of(st.text(max_size=200),
                 st.text(st.characters(exclude_categories=()), max_size=60)),  # with surrogates
       st.booleans())
@settings(max_examples=1000)
def test_random_text_raises_only_request_error(query, lenient):
    _parse_or_request_error(query, lenient)


_value_chars = st.sampled_from(list("0123456789,-:;[]!*<>/.%+=&_ rRDLHmPTMtcpswgaxyeno")
                               + ["%5B", "%5D", "%2C", "%3A", "%ff", "%C3", "%00", "%"])
_values = st.lists(_value_chars, max_size=25).map("".join)
_names = st.one_of(st.sampled_from(REQUEST_FIELDS), st.text("abcdefz%", max_size=6))
_pairs = st.tuples(_names, st.sampled_from(["=", "", "=="]), _values).map("".join)


@given(st.lists(_pairs, max_size=8).map("&".join), st.booleans())
@settings(max_examples=1500)
def test_grammar_ish_queries_raise_only_request_error(query, lenient):
    _parse_or_request_error(query, lenient)


_metareq_chars = st.sampled_from(list("[]*;:/!,RD0123456789rwsga") + ["xml_", "jp2h", "uuid"])


@given(st.lists(_metareq_chars, max_size=30).map("".join))
@settings(max_examples=1500)
def test_metareq_fuzz(value):
    _parse_or_request_error("metareq=" + value, False)


@given(st.integers(1, 2**32), st.integers(1, 2**32),
       st.sampled_from(["", ",round-up", ",round-down", ",closest"]),
       st.integers(0, 2**32), st.integers(0, 2**32))
def test_fsiz_roff_round_trip(fx, fy, rounding, ox, oy):
    req = parse_query(f"fsiz={fx},{fy}{rounding}&roff={ox},{oy}")
    assert req.fsiz == FrameSize(fx, fy, rounding[1:] or "round-down")
    assert req.roff == (ox, oy)


_box_types = st.sampled_from(["*", "xml_", "jp2h", "uuid", "res ", "asoc"])
_box_props = st.builds(
    BoxProp, _box_types,
    st.one_of(st.none(), st.just("r"), st.integers(0, 2**40)),
    st.frozensets(st.sampled_from("wsga")),
    st.booleans(),
)
_metareq_items = st.builds(
    MetaReqItem, st.lists(_box_props, min_size=1, max_size=4).map(tuple),
    st.one_of(st.none(), st.integers(0, 2**40)), st.one_of(st.none(), st.integers(0, 99)),
)


def _format_metareq(req: MetaReq) -> str:
    def prop(p: BoxProp) -> str:
        text = p.box_type + ("" if p.limit is None else f":{p.limit}")
        text += "/" + "".join(sorted(p.qualifiers)) if p.qualifiers else ""
        return text + ("!" if p.priority else "")

    items = ("[" + ";".join(prop(p) for p in item.props) + "]"
             + ("" if item.root_bin is None else f"R{item.root_bin}")
             + ("" if item.max_depth is None else f"D{item.max_depth}") for item in req.items)
    return ",".join(items) + ("!!" if req.metadata_only else "")


@given(st.builds(MetaReq, st.lists(_metareq_items, min_size=1, max_size=4).map(tuple),
                 st.booleans()))
@settings(max_examples=500)
def test_generated_metareq_round_trip(metareq):
    text = _format_metareq(metareq)
    assert parse_query("metareq=" + text).metareq == metareq
    assert parse_query("metareq=" + quote(text, safe="")).metareq == metareq
