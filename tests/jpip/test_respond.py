"""ResponseBuilder's streams, checked message by message against the source's bins.

Whatever the path a message took (batched or one by one, cut by `len` or not), the parsed
stream must hold exactly the planned bytes of each bin, once, in order: headers first, then
quality layer by quality layer; and a response cut by `len` must continue, in the next
response over the same model, exactly where it stopped.
"""
from __future__ import annotations

import numpy as np
import pytest

from cache.model import CacheModel
from codestream.source import build_source
from jpip.jpp import MAIN_HEADER, METADATA, PRECINCT, TILE_HEADER, EndOfResponse, parse_stream
from jpip.plan import bin_runs, plan_window
from jpip.respond import CHUNK_TARGET, ResponseBuilder
from jpip.window import resolve_window
from tests.conftest import CORPUS, INTEROP

CASES = [  # file, fsiz, roff, rsiz, layers
    (INTEROP / "rgb4096.jp2", (4096, 4096), (1000, 1200), (1500, 900), None),  # many chunks
    (INTEROP / "med2048.jp2", (512, 512), None, None, 3),
    (CORPUS / "HTJ2KLossless_08_RGB.j2k", (640, 480), None, None, None),  # one big layer
    (CORPUS / "p1_05.j2k", (512, 512), (100, 50), (300, 200), None),       # PPM, 225 tiles
    (CORPUS / "p0_05.j2k", (1024, 1024), None, None, None),                # SOP/EPH
]


# Fewest precinct messages a case's whole response holds: the HTJ2K file at full size, one
# layer, 3 components x 6 resolutions with one precinct each.
MIN_PRECINCTS = 18


def _planned(src, fsiz, roff, rsiz, layers):
    """The index, resolved window and plan of one case."""
    ix = src.codestreams[0]
    w = resolve_window(ix, 0, fsiz=(*fsiz, "round-down"), roff=roff, rsiz=rsiz, layers=layers)
    return ix, w, plan_window(ix, w)


def _respond(src, plan, model, limit=None) -> tuple[bytes, list]:
    chunks = list(ResponseBuilder(src, [plan], model, byte_limit=limit).chunks())
    for chunk in chunks:
        if chunk.records:
            model.apply(chunk.records)
    return b"".join(c.data for c in chunks), chunks


def _check(src, ix, plan, messages, held: dict, counts: dict | None = None) -> int:
    """Every message is the source's bytes at its place, continues what was held, and the
    precinct messages go layer by layer. Returns the EOR reason; `counts` gets the number of
    messages checked per bin class."""
    pr, pk = ix.precincts, ix.packets
    row_of = {int(pr["id"][r]): int(r) for r in plan.rows}
    last_layer = -1
    for m in messages[:-1]:
        key = (m.bin_class, m.bin_id)
        if counts is not None:
            counts[m.bin_class] = counts.get(m.bin_class, 0) + 1
        assert m.offset == held.get(key, 0), f"{key}: a gap or a byte sent twice"
        held[key] = m.offset + len(m.data)
        if m.bin_class == PRECINCT:
            row = row_of[m.bin_id]
            whole = src.precinct_bin(0, row)
            assert m.data == whole[m.offset:m.offset + len(m.data)]
            assert m.is_last == (m.offset + len(m.data) == len(whole))
            first = int(pr["pkt_start"][row])
            layer = int(np.searchsorted(pk["bin_end"][first:first + int(pr["pkt_count"][row])],
                                        m.offset, side="right"))
            assert layer >= last_layer, "a lower layer after a higher one"
            last_layer = layer
        else:
            assert last_layer < 0, "a header bin after precinct data"
            if m.bin_class == MAIN_HEADER:
                whole = src.main_header_bin(0)
            elif m.bin_class == TILE_HEADER:
                whole = src.tile_header_bin(0, m.bin_id)
            else:
                assert m.bin_class == METADATA
                whole = src.metadata0
            assert m.data == whole[m.offset:m.offset + len(m.data)]
    assert isinstance(messages[-1], EndOfResponse)
    return messages[-1].reason


@pytest.mark.parametrize("path,fsiz,roff,rsiz,layers", CASES, ids=lambda v: getattr(v, "name",
                                                                                     None))
def test_whole_responses_hold_exactly_the_planned_bytes(path, fsiz, roff, rsiz, layers) -> None:
    with build_source(path) as src:
        ix, w, plan = _planned(src, fsiz, roff, rsiz, layers)
        model = CacheModel()
        data, chunks = _respond(src, plan, model)
        held: dict = {}
        counts: dict = {}
        assert _check(src, ix, plan, parse_stream(data), held, counts) == 2
        # Something of every kind was checked: the main header and precinct data.
        assert counts.get(MAIN_HEADER) == 1 and counts.get(PRECINCT, 0) >= MIN_PRECINCTS, counts
        # Everything planned came, up to the layer limit.
        for r in plan.rows.tolist():
            first, count = int(ix.precincts["pkt_start"][r]), int(ix.precincts["pkt_count"][r])
            if count:
                want = int(ix.packets["bin_end"][first + min(count, w.layers) - 1])
                assert held.get((PRECINCT, int(ix.precincts["id"][r])), 0) == want
        assert all(len(c.data) <= CHUNK_TARGET + (1 << 20) for c in chunks)
        # The model took it all: the same window again is the EOR alone.
        again, _ = _respond(src, plan, model)
        assert again == b"\x00\x02\x00"


@pytest.mark.parametrize("limit", [700, 5000, 70000])
@pytest.mark.parametrize("path,fsiz,roff,rsiz,layers", CASES[:4], ids=lambda v: getattr(
    v, "name", None))
def test_len_cut_responses_continue_where_they_stopped(path, fsiz, roff, rsiz, layers,
                                                        limit) -> None:
    with build_source(path) as src:
        ix, w, plan = _planned(src, fsiz, roff, rsiz, layers)
        model = CacheModel()
        whole, _ = _respond(src, plan, CacheModel())
        held: dict = {}
        pieces = 0
        for _ in range(4 * len(whole) // limit + 10):
            data, _ = _respond(src, plan, model, limit)
            assert len(data) <= limit + 3  # the EOR is outside the budget
            reason = _check(src, ix, plan, parse_stream(data), held)
            pieces += 1
            if reason == 2:
                break
            assert reason == 4
        assert reason == 2 and (pieces > 1 or len(whole) <= limit)
        total = sum(len(m.data) for m in parse_stream(whole)[:-1])
        assert total > 0 and sum(held.values()) == total


@pytest.mark.parametrize("path,fsiz,roff,rsiz,layers", CASES, ids=lambda v: getattr(v, "name",
                                                                                     None))
def test_small_responses_carry_one_message_per_precinct(path, fsiz, roff, rsiz, layers) -> None:
    with build_source(path) as src:
        ix, w, plan = _planned(src, fsiz, roff, rsiz, layers)
        model = CacheModel()
        builder = ResponseBuilder(src, [plan], model, whole_bins_up_to=1 << 30)
        chunks = list(builder.chunks())
        for chunk in chunks:
            model.apply(chunk.records)
        messages = parse_stream(b"".join(c.data for c in chunks))
        held: dict = {}
        counts: dict = {}
        assert _check(src, ix, plan, messages, held, counts) == 2
        wanted = {int(ix.precincts["id"][r]): int(e)
                  for r, e in zip(plan.rows.tolist(), plan.ends.tolist(), strict=True) if e}
        assert {k[1]: v for k, v in held.items() if k[0] == PRECINCT} == wanted
        # One message per precinct whose bin is one run of the file; a message per packet
        # (with data) for the others (PPM, SOP markers, LRCP/RLCP layers apart in the file).
        runs = bin_runs(ix)
        per_bin: dict[int, int] = {}
        for m in messages[:-1]:
            if m.bin_class == PRECINCT:
                per_bin[m.bin_id] = per_bin.get(m.bin_id, 0) + 1
        pr = ix.precincts
        for r, e in zip(plan.rows.tolist(), plan.ends.tolist(), strict=True):
            if not e:
                continue
            first = int(pr["pkt_start"][r])
            sizes = np.diff(ix.packets["bin_end"][first:first + min(int(pr["pkt_count"][r]),
                                                                    w.layers)], prepend=0)
            want = 1 if runs[r] else int((sizes > 0).sum())
            assert per_bin[int(pr["id"][r])] == want, (r, runs[r])
        if path.name == "rgb4096.jp2":  # RPCL with PLT: every bin is one run
            assert runs[plan.rows].all()
        if path.name == "p1_05.j2k":    # headers in PPM: no bin is
            assert not runs[plan.rows].any()
        # The same window again, over the model: the EOR alone.
        again = list(ResponseBuilder(src, [plan], model, whole_bins_up_to=1 << 30).chunks())
        assert b"".join(c.data for c in again) == b"\x00\x02\x00"
        # A byte limit that cuts the response: layer by layer again (what a cut shows first).
        cut = list(ResponseBuilder(src, [plan], CacheModel(), byte_limit=5000,
                                   whole_bins_up_to=1 << 30).chunks())
        assert _check(src, ix, plan, parse_stream(b"".join(c.data for c in cut)), {}) == 4


@pytest.mark.parametrize("lazy", [False, True], ids=["whole", "lazy"])
def test_per_index_tables_from_the_precinct_rows_are_the_ones_computed_per_packet(lazy) -> None:
    """bin_runs, the send order and the whole bins' lengths come from each precinct's rows
    (first and last packet, its resolution row) for the usual files; the same as computed
    packet by packet or by sorting every precinct, in every file of the corpus (SOP markers,
    PPM/PPT, many tiles, partial indexes)."""
    from jpip.plan import _bin_ends, _contiguous_bins, _runs_by_packets, _whole_bins
    from jpip.respond import _rank_by_resolution_rows, _rank_by_sorting
    from tests.conftest import corpus_files

    fast_runs = 0
    for path in corpus_files():
        with build_source(path, lazy=lazy) as src:
            for ix in src.codestreams:
                runs = _contiguous_bins(ix)
                if runs is not None:
                    fast_runs += 1
                    assert np.array_equal(runs, _runs_by_packets(ix)), path.name
                rank = _rank_by_resolution_rows(ix)
                assert rank is not None and np.array_equal(rank, _rank_by_sorting(ix)), path.name
                assert np.array_equal(_whole_bins(ix),
                                      _bin_ends(ix, slice(None), max(ix.max_layers, 1)))
    assert fast_runs >= len(corpus_files()) // 2
