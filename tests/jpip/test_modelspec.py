"""model=/need= descriptors resolved against an index: the records they make, checked against a
plain one-descriptor-at-a-time reading (the batched lookup must agree with it)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from cache.model import BinKind, CacheModel, Evicted, EvictedRows, Received, ReceivedRows
from codestream.source import build_source
from jpip.model import parse_model
from jpip.modelspec import model_records, need_rows
from tests.conftest import CORPUS, INTEROP


@pytest.fixture(scope="module")
def tiled():
    with build_source(CORPUS / "p1_05.j2k") as src:  # 225 tiles, 13236 precincts, 2 layers
        yield src


def naive_held(src, text: str, cs: int = 0) -> dict[int, int]:
    """Row -> bytes held after applying `text` to an empty model, one descriptor at a time,
    each resolved by comparing every precinct (the obvious reading of C.8)."""
    ix = src.codestreams[cs]
    pr, pk = ix.precincts, ix.packets
    held: dict[int, int] = {}
    for item in parse_model(text):
        if item.kind == "P":
            lo = 0 if item.ids is None else item.ids.lo
            hi = None if item.ids is None else item.ids.hi
            rows = [r for r in range(len(pr["id"])) if pr["id"][r] >= lo
                    and (hi is None or pr["id"][r] <= hi)]
        elif item.kind == "implicit":
            def inside(v, rng):
                return rng is None or (v >= rng.lo and (rng.hi is None or v <= rng.hi))
            rows = [r for r in range(len(pr["id"])) if inside(pr["t"][r], item.tiles)
                    and inside(pr["c"][r], item.components)
                    and inside(pr["r"][r], item.resolutions)
                    and inside(pr["p"][r], item.precincts)]
        else:
            continue
        for r in rows:
            full = int(pr["bin_length"][r])
            if item.bytes is not None:
                value = min(full, item.bytes)
            elif item.layers is not None:
                n = min(int(pr["pkt_count"][r]), item.layers)
                value = int(pk["bin_end"][int(pr["pkt_start"][r]) + n - 1]) if n else 0
            else:
                value = 0 if item.subtractive else full
            old = held.get(r, 0)
            held[r] = min(old, value) if item.subtractive else max(old, value)
    return {r: v for r, v in held.items() if v}


def applied(src, text: str) -> dict[int, int]:
    model = CacheModel()
    model.apply(model_records(parse_model(text), src, 0))
    hold = model.stream(0).precincts
    return dict(zip(hold.rows.tolist(), hold.held.tolist(), strict=True))


def test_explicit_and_implicit_descriptors_agree_with_the_plain_reading(tiled) -> None:
    ids = tiled.codestreams[0].precincts["id"]
    rng = random.Random(5)
    parts = []
    for _ in range(300):
        i = int(ids[rng.randrange(len(ids))])
        parts.append(rng.choice([f"P{i}", f"P{i}:{rng.randrange(1, 90)}", f"P{i}:L1",
                                 f"P{i}-{i + rng.randrange(40)}", f"-P{i}", f"-P{i}:5",
                                 f"t{rng.randrange(225)}c{rng.randrange(3)}r{rng.randrange(6)}",
                                 f"t{rng.randrange(225)}r0-2:L1", f"-t{rng.randrange(225)}"]))
    text = ",".join(parts)
    assert applied(tiled, text) == naive_held(tiled, text)


def test_wildcards_and_open_ranges(tiled) -> None:
    for text in ("P*", "P*:L1", "P13000-", "P0-20,-P5-10", "t3-4c*r1p0-1:L2", "r0",
                 "P*,-t0-100", "P99999999"):
        assert applied(tiled, text) == naive_held(tiled, text), text


def test_header_and_metadata_records() -> None:
    with build_source(CORPUS / "test-card-lossy-tiled.jp2") as src:
        mh, meta = len(src.main_header_bin(0)), len(src.metadata0)
        recs = model_records(parse_model("Hm,H1-2,M0,-Hm:7,-H*,-M*:3,Hm:9999999"), src, 0)
        assert recs[:4] == [Received(BinKind.MAIN_HEADER, 0, 0, mh),
                            Received(BinKind.TILE_HEADER, 0, 1, 0),
                            Received(BinKind.TILE_HEADER, 0, 2, 0),
                            Received(BinKind.METADATA, 0, 0, meta)]
        assert recs[4] == Evicted(BinKind.MAIN_HEADER, 0, 0, 7)
        assert recs[5:25] == [Evicted(BinKind.TILE_HEADER, 0, t, 0) for t in range(20)]
        # M* names every metadata-bin of the partition (three here: bin 0, jp2h's
        # contents, the contents of the 109-byte rreq box).
        assert src.metadata.count == 3
        assert recs[25:] == [Evicted(BinKind.METADATA, 0, k, 3) for k in range(3)] + [
            Received(BinKind.MAIN_HEADER, 0, 0, mh)]


def test_codestream_qualifiers_name_numbers() -> None:
    with build_source(CORPUS / "heliov.jpx") as src:
        recs = model_records(parse_model("[1-2],Hm,[5],Hm"), src, 0)
        assert [(r.kind, r.codestream) for r in recs] == [(BinKind.MAIN_HEADER, 1),
                                                           (BinKind.MAIN_HEADER, 2)]
        src.first_codestream = 1  # numbered from 1 (as a DICOM target): number 2 is index 1
        recs = model_records(parse_model("[2],Hm,-P*"), src, 1)
        assert [r.codestream for r in recs] == [1, 1]
        assert isinstance(recs[1], EvictedRows)
        recs = model_records(parse_model("Hm"), src, 1)  # the default codestream: number 1
        assert recs == [Received(BinKind.MAIN_HEADER, 0, 0, len(src.main_header_bin(0)))]


def test_need_rows(tiled) -> None:
    rows = need_rows(parse_model("P5,t0c0r0,-P7,Hm"), tiled, 0)[0]
    pr = tiled.codestreams[0].precincts
    expect = set(np.flatnonzero(pr["id"] == 5).tolist())
    expect |= set(np.flatnonzero((pr["t"] == 0) & (pr["c"] == 0) & (pr["r"] == 0)).tolist())
    assert set(rows.tolist()) == expect


def test_defect_8_a_hundred_thousand_descriptors_resolve_in_one_pass() -> None:
    """100,000 explicit precinct descriptors become one record (the time is measured by
    `python -m bench request`, not here)."""
    with build_source(INTEROP / "rgb4096.jp2") as src:
        ids = src.codestreams[0].precincts["id"]
        rng = random.Random(8)
        picked = [int(ids[rng.randrange(len(ids))]) for _ in range(100_000)]
        recs = model_records(parse_model(",".join(f"P{i}" for i in picked)), src, 0)
        assert len(recs) == 1 and isinstance(recs[0], ReceivedRows)
        assert len(recs[0].rows) == 100_000
        assert set(ids[recs[0].rows].tolist()) == set(picked)
