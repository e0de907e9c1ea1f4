"""The protocol machine, table-driven (in the manner of h11's tests): request sequences in;
status, headers, message classes/ids/ranges, EOR reasons and committed models out.

Every numbered defect of the issue that moved the protocol here has a case below, named
"defect N"; they failed before the fix.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from cache.model import BinKind
from codestream.source import build_source
from jpip.errors import RequestError
from jpip.jpp import EOR, MAIN_HEADER, METADATA, PRECINCT, TILE, TILE_HEADER, MessageWriter
from jpip.machine import TurnKind
from jpip.window import frame_size
from tests.conftest import CORPUS
from tests.jpip.machine_driver import Answer, Wire, cnew_cid

ANY = object()


@pytest.fixture(scope="module")
def raw():
    """p0_02.j2k: a raw codestream (metadata-bin 0 empty), one tile with an empty tile header,
    6 layers, 4 precincts, 127x126."""
    with build_source(CORPUS / "p0_02.j2k") as src:
        yield src


@pytest.fixture(scope="module")
def jpx():
    """heliov.jpx: three codestreams (frames), metadata boxes."""
    with build_source(CORPUS / "heliov.jpx") as src:
        yield src


@dataclass
class Expect:
    """What one answer must show; fields left None are not checked."""

    status: int | None = 200
    eor: int | None = None
    headers: dict[str, Any] = field(default_factory=dict)   # name -> value (or ANY)
    absent: tuple[str, ...] = ()                            # headers that must not be there
    classes: set[int] | None = None                         # exactly these message classes
    bins: dict[tuple[int, int, int], tuple[int, int]] = field(default_factory=dict)
    no_bins: tuple[tuple[int, int, int], ...] = ()
    error: str | None = None                                # text in the refusal
    check: Callable[[Wire, Answer, dict], None] | None = None


def run_table(wire: Wire, steps: list[tuple[str, Expect]]) -> dict:
    """Runs queries in order; `{c0}`, `{c1}`... are the cids announced so far, `{tid}` the
    last JPIP-tid. Returns the names for further checks."""
    names: dict[str, str] = {}
    for n, (template, expect) in enumerate(steps):
        query = template.format(**names)
        try:
            answer = wire.request(query)
        except RequestError as e:
            assert expect.status == e.status, f"step {n} {query}: {e.status} {e}"
            if expect.error is not None:
                assert expect.error in str(e), f"step {n}: {e}"
            for name, value in expect.headers.items():
                assert value is ANY or e.headers.get(name) == value, (n, name, e.headers)
            continue
        where = f"step {n} {query}"
        assert expect.status is None or answer.status == expect.status, where
        assert expect.eor is None or answer.eor == expect.eor, (where, answer.eor)
        for name, value in expect.headers.items():
            assert name in answer.headers, (where, name, answer.headers)
            assert value is ANY or answer.headers[name] == value, (where, name, answer.headers)
        for name in expect.absent:
            assert name not in answer.headers, (where, name, answer.headers)
        if expect.classes is not None:
            assert answer.classes() == expect.classes, (where, answer.classes())
        got = answer.bins
        for key, span in expect.bins.items():
            assert got.get(key) == span, (where, key, got.get(key))
        for key in expect.no_bins:
            assert key not in got, (where, key)
        if expect.check is not None:
            expect.check(wire, answer, names)
        if "JPIP-cnew" in answer.headers:
            names[f"c{sum(k.startswith('c') for k in names)}"] = cnew_cid(answer)
        if "JPIP-tid" in answer.headers:
            names["tid"] = answer.headers["JPIP-tid"]
    return names


WHOLE = "fsiz=127,126"     # p0_02 at full resolution: the whole image
THUMB = "fsiz=32,32"       # p0_02 two levels down


def model_of(wire: Wire, names: dict, cid: str = "c0"):
    return wire.session_of(names[cid]).model


# --- sessions and channels --------------------------------------------------------------------

def test_session_sends_each_byte_once(raw) -> None:
    mh = len(raw.main_header_bin(0))
    run_table(Wire(raw), [
        (f"target=x&cnew=http&tid=0&{THUMB}", Expect(
            eor=EOR.WINDOW_DONE, headers={"JPIP-cnew": "cid=id0,path=jpip,transport=http",
                                          "JPIP-tid": ANY}, absent=("JPIP-fsiz",),
            classes={METADATA, MAIN_HEADER, TILE_HEADER, PRECINCT},
            bins={(METADATA, 0, 0): (0, 0), (MAIN_HEADER, 0, 0): (0, mh),
                  (TILE_HEADER, 0, 0): (0, 0)})),
        # The same window again: the EOR alone.
        (f"cid={{c0}}&{THUMB}", Expect(eor=EOR.WINDOW_DONE, classes=set(),
                                       absent=("JPIP-cnew", "JPIP-tid"))),
        # The whole image: only what the thumbnail did not bring, and "image done".
        (f"cid={{c0}}&{WHOLE}", Expect(eor=EOR.IMAGE_DONE, classes={PRECINCT})),
        (f"cid={{c0}}&{WHOLE}", Expect(eor=EOR.IMAGE_DONE, classes=set())),
    ])


def test_committed_model_is_what_was_written(raw) -> None:
    wire = Wire(raw)
    names = run_table(wire, [(f"target=x&cnew=http&{WHOLE}", Expect(eor=EOR.IMAGE_DONE))])
    model = model_of(wire, names)
    ix = raw.codestreams[0]
    hold = model.stream(0)
    assert hold.main_header == len(raw.main_header_bin(0))
    assert hold.tile_headers == {0: 0}  # the empty tile header is held (it was sent)
    assert model.metadata == {0: 0}    # so is the empty metadata-bin 0
    rows = np.arange(len(ix.precincts["id"]))
    assert hold.precincts.get(rows).tolist() == ix.precincts["bin_length"].tolist()


def test_a_second_channel_shares_the_session(raw) -> None:
    wire = Wire(raw)
    run_table(wire, [
        (f"target=x&cnew=http&{THUMB}", Expect()),
        (f"cid={{c0}}&cnew=http&{THUMB}", Expect(classes=set(),
                                                 headers={"JPIP-cnew": ANY})),
        (f"cid={{c1}}&{WHOLE}", Expect(classes={PRECINCT}, eor=EOR.IMAGE_DONE)),
        (f"cid={{c0}}&{WHOLE}", Expect(classes=set(), eor=EOR.IMAGE_DONE)),
    ])


def test_cclose_closes_one_channel_or_all_of_one_session_only(raw) -> None:
    wire = Wire(raw)
    names = run_table(wire, [
        (f"target=x&cnew=http&{THUMB}", Expect()),             # session A: c0
        (f"cid={{c0}}&cnew=http&{THUMB}", Expect()),           # A: c1
        (f"cid={{c0}}&cnew=http&{THUMB}", Expect()),           # A: c2
        (f"target=x&cnew=http&{THUMB}", Expect()),             # session B: c3
        ("cclose={c1}", Expect(eor=EOR.WINDOW_DONE, classes=set())),
        (f"cid={{c1}}&{THUMB}", Expect(status=503, error="unknown or closed channel")),
        (f"cid={{c0}}&{THUMB}", Expect()),
        # Naming B's channel beside A's closes A's only: cclose names channels of one session.
        ("cclose={c2},{c3}", Expect()),
        (f"cid={{c3}}&{THUMB}", Expect()),
        ("cclose={c2}", Expect()),                             # already closed: a no-op
        (f"cid={{c0}}&cclose=*&{THUMB}", Expect()),            # served, then A is closed
        (f"cid={{c0}}&{THUMB}", Expect(status=503)),
        (f"cid={{c3}}&{THUMB}", Expect(classes=set())),
    ])
    assert wire.session_of(names["c3"]) is not None and len(wire.store) == 1


def test_channel_errors(raw) -> None:
    run_table(Wire(raw), [
        (f"cid=0123456789abcdef0123456789abcdef&{THUMB}", Expect(status=503, error="cid")),
        (f"target=x&cnew=http-tcp&{THUMB}", Expect(status=501, error="http")),
        (f"target=x&cnew=http-tcp,http&{THUMB}", Expect(headers={
            "JPIP-cnew": "cid=id0,path=jpip,transport=http"})),
        ("target=x&upload=1", Expect(status=501, error="upload")),
        (f"{THUMB}", Expect(status=400, error="no target")),
    ])


def test_a_channel_is_bound_to_its_target(raw) -> None:
    wire = Wire(raw)
    names = run_table(wire, [(f"target=x&cnew=http&{THUMB}", Expect())])
    ex = wire.machine.exchange(__import__("jpip.request").request.parse_query(
        f"cid={names['c0']}&{THUMB}"))
    with pytest.raises(RequestError, match="another target"):
        ex.bind(wire.session_of(names["c0"]), raw, "/images/other")


def test_a_session_records_the_owner_of_the_request_opening_it(raw) -> None:
    from jpip.request import parse_query
    wire = Wire(raw)
    for owner in ("alice", None):
        ex = wire.machine.exchange(parse_query(f"target=x&cnew=http&{THUMB}"), owner=owner)
        ex.bind(None, raw, "/images/target")
        assert ex.opening is not None and ex.opening.owner == owner and ex.owner == owner


# --- target ids -------------------------------------------------------------------------------

def test_tid_and_a_stale_tid_ignores_the_model(raw) -> None:
    wire = Wire(raw)
    tid = raw.identity.target_id
    held = "Hm,H0,M0,P0,P1,P2,P3"
    run_table(wire, [
        (f"target=x&tid=0&{WHOLE}", Expect(headers={"JPIP-tid": tid}, absent=("JPIP-cnew",),
                                           eor=EOR.IMAGE_DONE)),
        (f"target=x&tid={tid}&{WHOLE}&model={held}", Expect(classes=set(),
                                                            headers={"JPIP-tid": tid})),
        # A tid that is not the target's: model= is ignored, everything comes.
        (f"target=x&tid=stale&{WHOLE}&model={held}", Expect(
            headers={"JPIP-tid": tid}, classes={METADATA, MAIN_HEADER, TILE_HEADER,
                                                PRECINCT})),
        (f"target=x&{WHOLE}&model={held}", Expect(classes=set(), absent=("JPIP-tid",))),
    ])


def test_a_changed_file_resets_the_session_model(raw) -> None:
    wire = Wire(raw)
    names = run_table(wire, [(f"target=x&cnew=http&{THUMB}", Expect())])
    wire.session_of(names["c0"]).target_id = "the file as it was"
    run_table(wire, [(f"cid={names['c0']}&{THUMB}", Expect(
        headers={"JPIP-tid": raw.identity.target_id}, classes={METADATA, MAIN_HEADER,
                                                                TILE_HEADER, PRECINCT}))])


# --- qid order and pre-emption ----------------------------------------------------------------

def test_the_opening_requests_qid_counts_on_its_new_channel(raw) -> None:
    wire = Wire(raw)
    names = run_table(wire, [(f"target=x&cnew=http&qid=1&{THUMB}", Expect())])
    second = wire.start(f"cid={names['c0']}&qid=2&{THUMB}")
    assert wire.turn(second) is TurnKind.GO  # qid 1 was the opening request: no wait for it


def test_qid_order(raw) -> None:
    wire = Wire(raw)
    names = run_table(wire, [(f"target=x&cnew=http&{THUMB}", Expect())])
    c0 = names["c0"]
    first = wire.request(f"cid={c0}&qid=1&{THUMB}")
    assert first.headers["JPIP-qid"] == "1"
    late = wire.start(f"cid={c0}&qid=3&{THUMB}")
    assert wire.turn(late) is TurnKind.WAIT_QID  # qid 2 has not had its turn
    two = wire.start(f"cid={c0}&qid=2&wait=yes&{THUMB}")
    assert wire.turn(two) is TurnKind.GO
    assert wire.turn(late) is TurnKind.WAIT_BUSY  # 2 is being served
    wire.go(two)
    while wire.step(two):
        pass
    assert wire.finish(two).headers["JPIP-qid"] == "2"
    assert wire.turn(late) is TurnKind.GO
    # A qid that never comes: the server stops waiting and says so.
    gap = wire.start(f"cid={c0}&qid=9&wait=yes&{THUMB}")
    wire.go(late)
    while wire.step(late):
        pass
    wire.finish(late)
    assert wire.turn(gap) is TurnKind.WAIT_QID
    assert wire.turn(gap, waited_out=True) is TurnKind.GO


def test_preemption_ends_the_response_with_eor_3_and_answers_queued_ones_202(
        raw, monkeypatch) -> None:
    monkeypatch.setattr("jpip.respond.CHUNK_TARGET", 256)  # responses of several chunks
    monkeypatch.setattr("jpip.machine.WHOLE_BINS_BYTES", 0)  # (not one, as a small one is)
    wire = Wire(raw)
    names = run_table(wire, [("target=x&cnew=http&fsiz=16,16", Expect())])
    c0 = names["c0"]
    a = wire.start(f"cid={c0}&{WHOLE}&qid=1")
    assert wire.turn(a) is TurnKind.GO
    wire.go(a)
    assert wire.step(a)                        # A has written its first chunk
    b = wire.start(f"cid={c0}&{WHOLE}&qid=2")  # B arrives: wait=no pre-empts A
    assert wire.turn(b) is TurnKind.WAIT_BUSY
    c = wire.start(f"cid={c0}&fsiz=64,64&qid=3")  # C pre-empts A and B
    assert not wire.step(a)                    # A ends at a message boundary: EOR 3
    a_answer = wire.finish(a)
    assert a_answer.status == 200 and a_answer.eor == EOR.WINDOW_CHANGE
    assert wire.turn(b) is TurnKind.PREEMPTED  # B never started: 202, EOR 3
    wire.go(b)
    while wire.step(b):
        pass
    b_answer = wire.finish(b)
    assert (b_answer.status, b_answer.eor, b_answer.messages) == (202, EOR.WINDOW_CHANGE, [])
    assert b_answer.headers["JPIP-qid"] == "2"
    assert wire.turn(c) is TurnKind.GO
    wire.go(c)
    while wire.step(c):
        pass
    assert wire.finish(c).eor == EOR.WINDOW_DONE
    # What A wrote before it was cut is in the model, and only that.
    ch = wire.session_of(c0).channels[c0]
    assert not ch.busy and ch.last_qid == 3
    # wait=yes does not pre-empt: a response in progress finishes.
    d = wire.start(f"cid={c0}&{WHOLE}")
    assert wire.turn(d) is TurnKind.GO
    wire.go(d)
    wire.step(d)
    e = wire.start(f"cid={c0}&fsiz=8,8&wait=yes")
    while wire.step(d):
        pass
    assert wire.finish(d).eor == EOR.IMAGE_DONE
    assert wire.turn(e) is TurnKind.GO


def test_a_preempted_response_commits_only_what_was_written(raw) -> None:
    wire = Wire(raw)
    names = run_table(wire, [("target=x&cnew=http&fsiz=8,8", Expect())])
    c0 = names["c0"]
    before = model_of(wire, names).stream(0).precincts.total()
    a = wire.start(f"cid={c0}&{WHOLE}")
    wire.turn(a)
    wire.go(a)
    wire.start(f"cid={c0}&fsiz=8,8")  # arrives before A wrote anything
    assert not wire.step(a)
    assert wire.finish(a).messages == []
    assert model_of(wire, names).stream(0).precincts.total() == before



def test_a_window_asked_again_with_nothing_new_is_answered_without_planning(raw) -> None:
    wire = Wire(raw)
    names = run_table(wire, [(f"target=x&cnew=http&{THUMB}", Expect())])
    c0 = names["c0"]
    model = model_of(wire, names)

    def again(query: str):
        p = wire.start(f"cid={c0}&{query}")
        wire.turn(p)
        wire.go(p)
        while wire.step(p):
            pass
        return wire.finish(p), p.ex.outcome

    first, found = again(THUMB)  # the builder finds nothing to send; the conclusion is kept
    assert first.messages == [] and first.eor == EOR.WINDOW_DONE and found.bytes_skipped > 0
    kept = model.complete_for
    assert kept is not None and kept[1] == model.version
    second, repeated = again(THUMB)  # answered from it: the same EOR and bytes saved
    assert second.body == first.body and repeated.bytes_skipped == found.bytes_skipped
    assert model.complete_for is kept
    # Anything applied to the model since makes it stale: a model= statement evicting a
    # precinct (applied before the answer is built) brings that precinct again.
    pr = raw.codestreams[0].precincts
    evicted = wire.request(f"cid={c0}&{THUMB}&model=-P{int(pr['id'][0])}")
    assert evicted.classes() == {PRECINCT}
    assert model.complete_for is kept  # not replaced: this answer sent data
    third, _ = again(THUMB)
    assert third.messages == [] and model.complete_for[1] == model.version != kept[1]
    # Another window is another question (here with data to send), and len= is part of it.
    assert again(WHOLE)[0].eor == EOR.IMAGE_DONE
    assert again(f"{WHOLE}&len=0")[0].eor == EOR.IMAGE_DONE
    assert again(WHOLE)[0].messages == [] and model.complete_for[0] != kept[0]
    # A copy (a shared store's worker keeps one) holds the same: the conclusion goes with it,
    # and the copy's own changes make it stale there alone.
    twin = model.copy()
    assert twin.complete_for == model.complete_for and twin.version == model.version
    twin.apply([])
    assert twin.version != model.version == model.complete_for[1]
    # So is the return type: the same window as a JPT-stream needs its tile data-bins.
    assert again(f"{THUMB}&type=jpt-stream")[0].messages


# --- len and EOR reasons ----------------------------------------------------------------------

def test_len_continues_where_it_stopped(raw) -> None:
    wire = Wire(raw)
    names = run_table(wire, [(f"target=x&cnew=http&len=300&{WHOLE}",
                              Expect(eor=EOR.BYTE_LIMIT))])
    seen: dict[tuple, int] = {}
    for _ in range(100):
        answer = wire.request(f"cid={names['c0']}&len=300&{WHOLE}")
        assert len(answer.body) <= 300 + 3
        for m in answer.messages:
            key = (m.bin_class, m.bin_id)
            assert m.offset == seen.get(key, m.offset)  # each byte once, in order
            seen[key] = m.offset + len(m.data)
        if answer.eor != EOR.BYTE_LIMIT:
            break
    assert answer.eor == EOR.IMAGE_DONE


def test_defect_2_an_empty_bin_cut_by_len_is_not_recorded(raw) -> None:
    # The first messages are the empty metadata-bin 0 and the main header; len stops right
    # before the empty tile-header message that follows.
    writer = MessageWriter()
    mh = len(raw.main_header_bin(0))
    cut = (len(writer.header(METADATA, 0, 0, 0, 0, True))
           + len(writer.header(MAIN_HEADER, 0, 0, 0, mh, True)) + mh)
    full = Wire(raw).request(f"target=x&{WHOLE}")
    assert full.messages[2].bin_class == TILE_HEADER and len(full.messages[2].data) == 0
    wire = Wire(raw)
    names = run_table(wire, [
        (f"target=x&cnew=http&len={cut}&{WHOLE}", Expect(
            eor=EOR.BYTE_LIMIT, classes={METADATA, MAIN_HEADER},
            no_bins=((TILE_HEADER, 0, 0),))),
    ])
    assert 0 not in model_of(wire, names).stream(0).tile_headers
    run_table(wire, [(f"cid={names['c0']}&{WHOLE}", Expect(
        eor=EOR.IMAGE_DONE, bins={(TILE_HEADER, 0, 0): (0, 0)},
        no_bins=((MAIN_HEADER, 0, 0), (METADATA, 0, 0))))])


def test_defect_2_the_empty_metadata_bin_of_a_raw_codestream(raw) -> None:
    wire = Wire(raw)
    names = run_table(wire, [(f"target=x&cnew=http&len=0&{WHOLE}", Expect(
        eor=EOR.BYTE_LIMIT, classes=set()))])
    assert model_of(wire, names).metadata == {}
    run_table(wire, [(f"cid={names['c0']}&{WHOLE}", Expect(bins={(METADATA, 0, 0): (0, 0)}))])


def test_defect_3_subtractive_header_and_metadata_descriptors(jpx) -> None:
    mh = len(jpx.main_header_bin(0))
    meta = len(jpx.metadata0)
    run_table(Wire(jpx), [
        ("target=x&cnew=http&fsiz=64,64", Expect(bins={(MAIN_HEADER, 0, 0): (0, mh),
                                                       (METADATA, 0, 0): (0, meta)})),
        ("cid={c0}&fsiz=64,64", Expect(classes=set())),
        ("cid={c0}&fsiz=64,64&model=-Hm", Expect(classes={MAIN_HEADER},
                                                 bins={(MAIN_HEADER, 0, 0): (0, mh)})),
        ("cid={c0}&fsiz=64,64&model=-Hm:50", Expect(bins={(MAIN_HEADER, 0, 0): (50, mh - 50)})),
        ("cid={c0}&fsiz=64,64&model=-H*", Expect(classes={TILE_HEADER},
                                                 bins={(TILE_HEADER, 0, 0): (0, 0)})),
        ("cid={c0}&fsiz=64,64&model=-M0", Expect(classes={METADATA},
                                                 bins={(METADATA, 0, 0): (0, meta)})),
        ("cid={c0}&fsiz=64,64&model=-M*:100", Expect(bins={(METADATA, 0, 0):
                                                           (100, meta - 100)})),
        ("cid={c0}&fsiz=64,64&model=[1],-Hm", Expect(classes=set())),  # codestream 1's
        ("cid={c0}&fsiz=64,64&model=-P*", Expect(classes={PRECINCT})),
        ("cid={c0}&fsiz=64,64", Expect(classes=set())),
    ])


def test_defect_4_eor_reasons(raw) -> None:
    # The server's own cap, with no len from the client: response limit (7), not 4.
    run_table(Wire(raw, max_response_bytes=200), [
        (f"target=x&{WHOLE}", Expect(eor=EOR.RESPONSE_LIMIT, absent=("JPIP-len",))),
        (f"target=x&len=100&{WHOLE}", Expect(eor=EOR.BYTE_LIMIT)),
    ])
    # len=0 once the metadata is held: nothing of the window was sent, so not "window done".
    run_table(Wire(raw), [
        ("target=x&cnew=http&metareq=[*]!!", Expect(classes={METADATA})),
        (f"cid={{c0}}&len=0&{WHOLE}", Expect(eor=EOR.BYTE_LIMIT, classes=set())),
        (f"cid={{c0}}&{THUMB}", Expect(eor=EOR.WINDOW_DONE)),
        (f"cid={{c0}}&len=0&{THUMB}", Expect(eor=EOR.WINDOW_DONE, classes=set())),
        # A whole-image window fully delivered: image done.
        (f"cid={{c0}}&{WHOLE}", Expect(eor=EOR.IMAGE_DONE)),
        (f"cid={{c0}}&len=0&{WHOLE}", Expect(eor=EOR.IMAGE_DONE)),
        (f"cid={{c0}}&{WHOLE}&layers=2", Expect(eor=EOR.WINDOW_DONE)),  # not every layer
        (f"cid={{c0}}&{WHOLE}&comps=0", Expect(eor=EOR.IMAGE_DONE)),  # p0_02 has 1 component
    ])


def test_defect_5_jpip_len_when_the_server_changes_len(raw) -> None:
    run_table(Wire(raw, max_response_bytes=500), [
        # The client's len, lowered and said so: its limit was reached (4).
        (f"target=x&len=100000&{WHOLE}", Expect(eor=EOR.BYTE_LIMIT,
                                                headers={"JPIP-len": "500"})),
    ])
    # A len below one message header is raised so that a repeating client progresses.
    wire = Wire(raw)
    names = run_table(wire, [("target=x&cnew=http&len=3&metareq=[*]!!", Expect(
        headers={"JPIP-len": "5"}, classes={METADATA}, eor=EOR.WINDOW_DONE))])
    got = 0
    for n in range(500):
        answer = wire.request(f"cid={names['c0']}&len=2&{WHOLE}")
        assert answer.messages and "JPIP-len" in answer.headers, n
        got += sum(len(m.data) for m in answer.messages)
        if answer.eor == EOR.IMAGE_DONE:
            break
    assert answer.eor == EOR.IMAGE_DONE and got > 0
    assert "JPIP-len" not in wire.request(f"cid={names['c0']}&len=2&{WHOLE}").headers


def test_defect_9_bytes_saved_are_known_after_the_response(raw) -> None:
    wire = Wire(raw)
    names = run_table(wire, [(f"target=x&cnew=http&{THUMB}", Expect())])
    session = wire.session_of(names["c0"])
    assert session.bytes_saved == 0 and session.bytes_sent > 0
    p = wire.start(f"cid={names['c0']}&{WHOLE}")
    wire.turn(p)
    wire.go(p)
    while wire.step(p):
        pass
    wire.finish(p)
    thumb_bytes = int(raw.codestreams[0].precincts["bin_length"][:1].sum())
    assert p.ex.outcome.bytes_skipped > 0
    assert session.bytes_saved == p.ex.outcome.bytes_skipped >= min(thumb_bytes, 1)


# --- fields that change the answer (defect 10) ------------------------------------------------

def test_defect_10_fields_honoured_or_refused(raw, jpx) -> None:
    size = raw.identity.size
    run_table(Wire(raw), [
        (f"target=x&{THUMB}&pref=fullwindow", Expect()),
        (f"target=x&{THUMB}&pref=fullwindow,concise;meta:incr/r&qid=4", Expect(
            status=501, headers={"JPIP-pref": "concise;meta:incr/r", "JPIP-qid": "4"})),
        (f"target=x&{THUMB}&handled&len=0&quality=50&align=yes", Expect(headers={
            "JPIP-handled": "target,fsiz,len,handled", "JPIP-quality": "-1"})),
        (f"target=x&{THUMB}&cnew=http&handled", Expect(headers={
            "JPIP-handled": "target,cnew=http,fsiz,handled"})),
        (f"target=x&{THUMB}&subtarget=0-{size - 1}", Expect()),
        (f"target=x&{THUMB}&subtarget=0-", Expect()),
        (f"target=x&{THUMB}&subtarget=10-20", Expect(status=501, error="subtarget")),
        (f"target=x&{THUMB}&subtarget=[0]", Expect(status=501, error="subtarget")),
        (f"target=x&{THUMB}&type=jpp-stream;ptype=ext", Expect(
            status=415, error="extended precinct messages")),
        (f"target=x&{THUMB}&type=jpt-stream", Expect(classes={METADATA, MAIN_HEADER, TILE})),
        (f"target=x&{THUMB}&type=jpt-stream;ttype=foo", Expect(
            status=415, error="unknown parameters")),
        (f"target=x&{THUMB}&type=raw", Expect(status=415, error="jpp-stream and jpt-stream")),
        (f"target=x&{THUMB}&type=jpp-stream;ptype=ext,jpp-stream", Expect()),
        (f"target=x&{THUMB}&type=image/jpp-stream", Expect()),
    ])
    run_table(Wire(jpx), [
        ("target=x&fsiz=16,16&stream=1-2", Expect(absent=("JPIP-stream",))),
        ("target=x&fsiz=16,16&stream=1-9", Expect(headers={"JPIP-stream": "1-2"})),
        ("target=x&fsiz=16,16&stream=0-", Expect(headers={"JPIP-stream": "0-2"})),
        ("target=x&fsiz=16,16&stream=0-9:2", Expect(headers={"JPIP-stream": "0-2:2"})),
        ("target=x&fsiz=16,16&context=jpxl<1-5>", Expect(headers={"JPIP-stream": "1-2"})),
        ("target=x&fsiz=16,16&stream=7", Expect(status=404, error="no codestream 7")),
    ])


# --- codestream numbering (first_codestream) --------------------------------------------------

def _csns(answer: Answer, cls: int = MAIN_HEADER) -> set[int]:
    return {m.csn for m in answer.messages if m.bin_class == cls}


def test_jpx_codestreams_by_number(jpx) -> None:
    wire = Wire(jpx)
    assert _csns(wire.request("target=x&fsiz=16,16")) == {0}
    assert _csns(wire.request("target=x&fsiz=16,16&stream=2")) == {2}
    names = run_table(wire, [("target=x&cnew=http&fsiz=16,16&stream=1-2", Expect())])
    hold = model_of(wire, names).streams
    assert sorted(k for k, h in hold.items() if h.main_header) == [1, 2]
    # model= qualifiers name codestream numbers.
    answer = wire.request("target=x&fsiz=16,16&stream=1&model=[1],Hm,H*,P*,M*")
    assert answer.messages == []


def test_a_source_numbering_its_codestreams_from_one(raw) -> None:
    """A DICOM target numbers frames from 1: codestream n is codestreams[n - 1]."""
    with build_source(CORPUS / "p0_02.j2k") as src:
        src.first_codestream = 1
        wire = Wire(src)
        answer = wire.request(f"target=x&{THUMB}")  # no stream=: the first codestream, 1
        assert _csns(answer) == {1} and _csns(answer, PRECINCT) == {1}
        assert _csns(answer, METADATA) == {0}  # metadata belongs to the target
        assert _csns(wire.request(f"target=x&{THUMB}&stream=1")) == {1}
        run_table(wire, [
            (f"target=x&{THUMB}&stream=0", Expect(status=404, error="it has only codestream 1")),
            (f"target=x&{THUMB}&stream=0-1", Expect(headers={"JPIP-stream": "1"})),
            (f"target=x&{THUMB}&model=[1],Hm,H0,P*,M0", Expect(classes=set())),
            (f"target=x&{THUMB}&model=Hm", Expect(no_bins=((MAIN_HEADER, 1, 0),))),
            (f"target=x&{THUMB}&model=[0],Hm", Expect(bins={(MAIN_HEADER, 1, 0): (
                0, len(src.main_header_bin(0)))})),
        ])
        names = run_table(wire, [(f"target=x&cnew=http&{THUMB}", Expect())])
        assert model_of(wire, names).stream(0).main_header  # held by index, sent as CSn 1


# --- model= in sessions and stateless ---------------------------------------------------------

def test_model_statements_in_a_session(raw) -> None:
    pr = raw.codestreams[0].precincts
    first = int(pr["bin_length"][0])
    wire = Wire(raw)
    names = run_table(wire, [
        (f"target=x&cnew=http&{WHOLE}&model=Hm,H0,M0,P0", Expect(
            classes={PRECINCT}, no_bins=((PRECINCT, 0, int(pr["id"][0])),))),
        (f"cid={{c0}}&{WHOLE}&model=-P0:10", Expect(bins={(PRECINCT, 0, int(pr["id"][0])):
                                                          (10, first - 10)})),
    ])
    hold = model_of(wire, names).stream(0)
    assert hold.precincts.get(np.array([0]))[0] == first


def test_need_restricts_the_precincts(raw) -> None:
    pr = raw.codestreams[0].precincts
    ids = sorted(int(i) for i in pr["id"])
    answer = Wire(raw).request(f"target=x&{WHOLE}&need=P{ids[1]}")
    assert {m.bin_id for m in answer.messages if m.bin_class == PRECINCT} == {ids[1]}
    assert answer.eor == EOR.WINDOW_DONE  # not the whole image, although the window is


def test_records_use_typed_kinds(raw) -> None:
    wire = Wire(raw)
    p = wire.start(f"target=x&{THUMB}")
    wire.go(p)
    kinds = set()
    chunk = p.pending_chunk
    while chunk is not None:
        kinds |= {r.kind for r in chunk.records}
        chunk = next(p.chunks, None)
    assert kinds == {BinKind.METADATA, BinKind.MAIN_HEADER, BinKind.TILE_HEADER,
                     BinKind.PRECINCT}


def test_defect_7_discard_is_bounded_by_the_fewest_levels() -> None:
    with build_source(CORPUS / "p0_05.j2k") as src:  # COC: 3 and 6 decomposition levels
        siz = src.codestreams[0].siz
        frame = "{},{}".format(*frame_size(siz, 3))
        run_table(Wire(src), [
            ("target=x&fsiz=1,1", Expect(headers={"JPIP-fsiz": frame})),
            ("target=x&fsiz=1,1,round-up", Expect(headers={"JPIP-fsiz": frame})),
            ("target=x&fsiz=2,2,closest", Expect(headers={"JPIP-fsiz": frame})),
        ])
