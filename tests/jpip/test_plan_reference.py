"""The planner against a straightforward reference on random windows (hypothesis).

The reference (`relevant_rows` of test_minimal_plan) walks every precinct of the file and
propagates its coefficients up through the synthesis filters; the planner goes down from the
window by precinct rectangles, per axis, and plans tiles wholly inside a window at once. Both
must give the same precinct rows, for any window, discard level, component subset and layer
count, on files with tiles at offsets, subsampled components, mixed 5/3 and 9/7 components and
many precincts; and each planned row's bin length must be its first `layers` packets'.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jpip.plan as plan
from codestream.source import build_source
from jpip.window import frame_size, resolve_window
from tests.conftest import CORPUS, INTEROP
from tests.jpip.test_minimal_plan import relevant_rows

# Varied geometry: tiles at offsets (p1_05: 225 tiles), tiles with subsampling (p0_10),
# subsampled and mixed-filter components (p0_05), 20 tiles (test-card), many precincts in
# one tile (the EUI image, med2048), layers (p0_04, p1_02).
FILES = [CORPUS / n for n in ("p1_05.j2k", "p0_10.j2k", "p0_05.j2k", "p0_04.j2k", "p1_02.j2k",
                              "test-card-lossy-tiled.jp2",
                              "2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2")]
FILES.append(INTEROP / "med2048.jp2")


@pytest.fixture(scope="module")
def indexes():
    sources = [build_source(p) for p in FILES]
    yield [s.codestreams[0] for s in sources]
    for s in sources:
        s.close()


def _reference_ends(ix, rows: np.ndarray, layers: int) -> list[int]:
    """Per row, the end of its `layers`-th packet in the bin (0: no packet), one by one."""
    pr, ends = ix.precincts, ix.packets["bin_end"]
    out = []
    for r in rows.tolist():
        n = min(int(pr["pkt_count"][r]), layers)
        out.append(int(ends[int(pr["pkt_start"][r]) + n - 1]) if n > 0 else 0)
    return out


@st.composite
def windows(draw, ixs):
    k = draw(st.integers(0, len(ixs) - 1))
    ix = ixs[k]
    d = draw(st.integers(0, ix.max_discard))
    fw, fh = frame_size(ix.siz, d)
    x, y = draw(st.integers(0, fw - 1)), draw(st.integers(0, fh - 1))
    w, h = draw(st.integers(1, fw - x)), draw(st.integers(1, fh - y))
    n = ix.num_components
    c0 = draw(st.integers(0, n - 1))
    comps = draw(st.sampled_from([None, ((c0, c0),), ((c0, None),)]))
    layers = draw(st.sampled_from([None, 1, max(1, ix.max_layers // 2)]))
    return k, resolve_window(ix, 0, fsiz=(fw, fh, "round-down"), roff=(x, y), rsiz=(w, h),
                             comps=comps, layers=layers)


@given(data=st.data(), interior=st.sampled_from([1, plan.INTERIOR_TILES]))
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_planner_matches_the_reference_on_random_windows(indexes, data, interior,
                                                         monkeypatch) -> None:
    monkeypatch.setattr(plan, "INTERIOR_TILES", interior)  # 1: tiles inside planned at once
    k, w = data.draw(windows(indexes))
    ix = indexes[k]
    got = plan._plan_window(ix, w)
    assert got.rows.tolist() == sorted(relevant_rows(ix, w)), (FILES[k].name, w)
    assert got.rows.dtype == np.int64
    assert plan.planned_ends(ix, got.rows, w.layers).tolist() == \
        _reference_ends(ix, got.rows, w.layers)
