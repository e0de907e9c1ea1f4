"""JPT-streams through the protocol machine, table-driven: return-type negotiation, tile
data-bins (classes 4 and 5), their order, `len` continuation, the session's cache model of
tile data-bins, `model=T...`, `tpmodel`, `tpneed`, EOR reasons."""
from __future__ import annotations

import numpy as np
import pytest

from cache.model import BinKind
from client.bincache import BinCache
from codestream.rebuild import whole_tile_parts
from codestream.source import build_source
from codestream.tilebins import tile_bins
from jpip.jpp import EOR, EXT_TILE, MAIN_HEADER, METADATA, PRECINCT, TILE, TILE_HEADER
from jpip.respond_jpt import layers_done
from tests.conftest import CORPUS
from tests.jpip.machine_driver import Wire
from tests.jpip.test_machine import ANY, Expect, model_of, run_table

JPT = "image/jpt-stream"
JPP = "image/jpp-stream"
WHOLE = "fsiz=640,480"    # test-card at full resolution
SMALL = "fsiz=160,120"    # two levels down


@pytest.fixture(scope="module")
def card():
    """test-card-lossy-tiled.jp2: 20 tiles of 128x128, 6 tile-parts each (interleaved in the
    file), 6 layers, RLCP."""
    with build_source(CORPUS / "test-card-lossy-tiled.jp2") as src:
        yield src


def typed(content_type: str):
    def check(wire, answer, names):
        assert answer.content_type == content_type
    return check


def test_return_type_negotiation(card) -> None:
    run_table(Wire(card), [
        (f"target=x&{SMALL}&type=jpt-stream", Expect(
            classes={METADATA, MAIN_HEADER, TILE}, check=typed(JPT))),
        (f"target=x&{SMALL}&type=image/jpt-stream", Expect(check=typed(JPT))),
        (f"target=x&{SMALL}&type=jpt-stream;ttype=ext", Expect(
            classes={METADATA, MAIN_HEADER, EXT_TILE}, check=typed(JPT))),
        # The first acceptable type of the list wins.
        (f"target=x&{SMALL}&type=jpp-stream,jpt-stream", Expect(
            classes={METADATA, MAIN_HEADER, TILE_HEADER, PRECINCT}, check=typed(JPP))),
        (f"target=x&{SMALL}&type=jpt-stream,jpp-stream", Expect(
            classes={METADATA, MAIN_HEADER, TILE}, check=typed(JPT))),
        (f"target=x&{SMALL}&type=jpp-stream;ptype=ext,jpt-stream", Expect(check=typed(JPT))),
        (f"target=x&{SMALL}", Expect(check=typed(JPP))),
        (f"target=x&{SMALL}&type=raw,jpt-stream;ttype=tiles", Expect(
            status=415, error="unknown parameters")),
    ])


def test_the_session_keeps_the_type_it_was_opened_with(card) -> None:
    names = run_table(Wire(card), [
        (f"target=x&cnew=http&type=jpt-stream&{SMALL}", Expect(check=typed(JPT))),
        # No type: the session's.
        (f"cid={{c0}}&{WHOLE}&len=2000", Expect(classes={TILE}, check=typed(JPT))),
        # A type named: that one (precinct data-bins; the tile data-bins held do not count).
        (f"cid={{c0}}&{SMALL}&type=jpp-stream", Expect(
            classes={TILE_HEADER, PRECINCT}, check=typed(JPP))),
        (f"cid={{c0}}&{SMALL}", Expect(classes=set(), check=typed(JPT))),
    ])
    assert names["c0"]
    run_table(Wire(card), [
        (f"target=x&cnew=http&{SMALL}", Expect(check=typed(JPP))),
        (f"cid={{c0}}&{WHOLE}&len=100", Expect(check=typed(JPP))),
    ])


def test_tile_data_bins_hold_the_tile_parts_in_order(card) -> None:
    """Every message is one tile-part (or what remains of one); tile-parts go round by round
    (the first tile-part of every tile, then the second...); the bins rebuilt by a client are
    the tile data-bins."""
    wire = Wire(card)
    answer = wire.request(f"target=x&type=jpt-stream&{WHOLE}")
    assert answer.eor == EOR.IMAGE_DONE
    ix = card.codestreams[0]
    tb = tile_bins(ix)
    tiles = [m for m in answer.messages if m.bin_class == TILE]
    assert len(tiles) == len(tb.rows) == 120
    rounds = [int(np.searchsorted(tb.start[tb.first[m.bin_id]:tb.first[m.bin_id + 1]],
                                  m.offset, side="right")) - 1 for m in tiles]
    assert rounds == sorted(rounds) and [m.bin_id for m in tiles[:20]] == list(range(20))
    cache = BinCache()
    for m in answer.messages:
        cache.add(m)
    for t, b in cache.streams[0].tiles.items():
        assert b.complete and len(b.data) == tb.bin_length[t]
        assert len(whole_tile_parts(bytes(b.data), t)) == 6
    # The main header data-bin is the same bin in both stream types.
    jpp = wire.request(f"target=x&{WHOLE}")
    assert [m.data for m in jpp.messages if m.bin_class == MAIN_HEADER] == [
        m.data for m in answer.messages if m.bin_class == MAIN_HEADER]


def test_a_reduced_window_gets_the_tile_parts_its_resolutions_need(card) -> None:
    """RLCP tile-parts by resolution: two levels down needs the first 4 of each tile's 6."""
    answer = Wire(card).request(f"target=x&type=jpt-stream&{SMALL}")
    tb = tile_bins(card.codestreams[0])
    got = {m.bin_id: m.offset + len(m.data) for m in answer.messages if m.bin_class == TILE}
    assert answer.eor == EOR.WINDOW_DONE
    assert got == {t: int(tb.end[tb.first[t] + 3]) for t in range(20)}


def test_len_continuation_and_the_session_model(card) -> None:
    wire = Wire(card)
    names = run_table(wire, [(f"target=x&cnew=http&type=jpt-stream&{WHOLE}&len=3000",
                              Expect(eor=EOR.BYTE_LIMIT))])
    cid = names["c0"]
    cache = BinCache()
    sent = 0
    for _ in range(100):
        answer = wire.request(f"cid={cid}&{WHOLE}&len=3000")
        for m in answer.messages:
            cache.add(m)
        sent += len(answer.body)
        if answer.eor in (EOR.WINDOW_DONE, EOR.IMAGE_DONE):
            break
    assert answer.eor == EOR.IMAGE_DONE and cache.duplicate_bytes == 0
    held = model_of(wire, names).stream(0).tiles
    tb = tile_bins(card.codestreams[0])
    assert held.rows.tolist() == list(range(20))
    assert held.held.tolist() == tb.bin_length.tolist()
    run_table(wire, [(f"cid={cid}&{WHOLE}", Expect(eor=EOR.IMAGE_DONE, classes=set()))])


def test_model_and_tpmodel_describe_tile_data_bins(card) -> None:
    tb = tile_bins(card.codestreams[0])
    end0 = int(tb.end[tb.first[3]])
    run_table(Wire(card), [
        # Stateless: the model says what is held.
        (f"target=x&type=jpt-stream&{SMALL}&model=Hm,M*,T*", Expect(
            eor=EOR.WINDOW_DONE, classes=set())),
        (f"target=x&type=jpt-stream&{SMALL}&model=Hm,M*,T0-2,T4-", Expect(
            classes={TILE}, bins={(TILE, 0, 3): (0, int(tb.end[tb.first[3] + 3]))})),
        (f"target=x&type=jpt-stream&{SMALL}&model=Hm,M*,T0-2,T4-,T3:100", Expect(
            bins={(TILE, 0, 3): (100, int(tb.end[tb.first[3] + 3]) - 100)})),
        # Tile-parts: 3.0 held means tile 3's bin up to the end of its first tile-part.
        (f"target=x&type=jpt-stream&{SMALL}&model=Hm,M*,T0-2,T4-&tpmodel=3.0", Expect(
            bins={(TILE, 0, 3): (end0, int(tb.end[tb.first[3] + 3]) - end0)})),
        (f"target=x&type=jpt-stream&{SMALL}&model=Hm,M*&tpmodel=0.0-19.5", Expect(
            classes=set())),
        (f"target=x&type=jpt-stream&{SMALL}&model=Hm,M*&tpmodel=0.0-19.3", Expect(
            eor=EOR.WINDOW_DONE, classes=set())),
        (f"target=x&type=jpt-stream&{SMALL}&tpmodel=0.x", Expect(status=400, error="tpmodel")),
    ])
    # In a session: tile-parts dropped from the cache are sent again.
    wire = Wire(card)
    names = run_table(wire, [
        (f"target=x&cnew=http&type=jpt-stream&{SMALL}", Expect()),
        (f"cid={{c0}}&{SMALL}&tpmodel=-3.1", Expect(
            classes={TILE}, bins={(TILE, 0, 3): (end0, int(tb.end[tb.first[3] + 3]) - end0)})),
        (f"cid={{c0}}&{SMALL}&model=-T5", Expect(
            classes={TILE}, bins={(TILE, 0, 5): (0, int(tb.end[tb.first[5] + 3]))})),
    ])
    assert model_of(wire, names).stream(0).tiles.get(np.asarray([3]))[0] == \
        tb.end[tb.first[3] + 3]


def test_need_and_tpneed_restrict_the_tiles(card) -> None:
    tb = tile_bins(card.codestreams[0])
    run_table(Wire(card), [
        (f"target=x&type=jpt-stream&{WHOLE}&tpneed=7.0-7.1", Expect(
            classes={METADATA, MAIN_HEADER, TILE},
            bins={(TILE, 0, 7): (0, int(tb.end[tb.first[7] + 1]))})),
        (f"target=x&type=jpt-stream&{WHOLE}&need=T7,T9:50", Expect(
            bins={(TILE, 0, 7): (0, int(tb.bin_length[7])), (TILE, 0, 9): (0, 50)},
            check=lambda w, a, n: {m.bin_id for m in a.messages if m.bin_class == TILE}
            == {7, 9})),
        # tpneed within a reduced window: no more than the window needs.
        (f"target=x&type=jpt-stream&{SMALL}&tpneed=7.0-7.5", Expect(
            bins={(TILE, 0, 7): (0, int(tb.end[tb.first[7] + 3]))})),
    ])


def test_extended_tile_messages_carry_the_layers_they_complete(card) -> None:
    answer = Wire(card).request(f"target=x&type=jpt-stream;ttype=ext&{WHOLE}")
    ix = card.codestreams[0]
    tb = tile_bins(ix)
    done = layers_done(ix, tb)
    ext = [m for m in answer.messages if m.bin_class == EXT_TILE]
    assert len(ext) == 120
    for m in ext:
        q = int(np.searchsorted(tb.end[tb.first[m.bin_id]:tb.first[m.bin_id + 1]],
                                m.offset + len(m.data))) + int(tb.first[m.bin_id])
        assert m.aux == done[q]
    assert {m.aux for m in ext if m.is_last} == {6}


def test_a_fresh_clients_cached_response_is_per_return_type(card) -> None:
    wire = Wire(card, response_cache_bytes=1 << 24)
    jpp = wire.request(f"target=x&{SMALL}")
    jpt = wire.request(f"target=x&type=jpt-stream&{SMALL}")
    again = wire.request(f"target=x&type=jpt-stream&{SMALL}")
    assert TILE in jpt.classes() and TILE not in jpp.classes()
    assert again.body == jpt.body and again.content_type == JPT


def test_tile_records_name_tiles(card) -> None:
    wire = Wire(card)
    names = run_table(wire, [("target=x&cnew=http&type=jpt-stream&fsiz=640,480&roff=0,0"
                              "&rsiz=100,100", Expect(headers={"JPIP-cnew": ANY}))])
    model = model_of(wire, names)
    assert model.stream(0).tiles.rows.tolist() == [0]
    assert not len(model.stream(0).precincts) and not model.stream(0).tile_headers
    assert BinKind.TILE == TILE
