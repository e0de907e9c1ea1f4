"""The view-window a request resolves to, against values worked out by hand (ISO 15444-9 C.4).

Nothing here is computed with jpip/window.py: each expected value was derived on paper from
the file's SIZ and the rules below (shared/jpip-protocol.md sections 5.1 and 5.2), and the
comment on each row shows the working. Ceil is written ⌈⌉, floor ⌊⌋.

- Frame size after discarding d levels (C.4.1, T.800 reference-grid arithmetic):
  fx'(d) = ⌈Xsiz/2^d⌉ − ⌈XOsiz/2^d⌉, fy'(d) likewise (not ⌈(Xsiz − XOsiz)/2^d⌉).
- fsiz round-down (the default): the smallest d with fx' ≤ fx and fy' ≤ fy, else the smallest
  frame; round-up: the largest d with fx' ≥ fx and fy' ≥ fy, else the full frame; closest: the
  nearest in area fx'·fy', the larger frame on a tie. A frame other than the one asked for is
  reported as JPIP-fsiz.
- roff/rsiz are in the requested frame; rescaled to the chosen one, the start rounds down and
  the end up, then the region is clipped to the frame (JPIP-roff / JPIP-rsiz when a requested
  value changed). Without rsiz the region runs to the bottom-right corner.
- On the reference grid the region is X0 = (⌈XOsiz/2^d⌉ + ox')·2^d up to
  (⌈XOsiz/2^d⌉ + ox' + sx')·2^d, clipped to [XOsiz, Xsiz) (and so for Y): frame sample u stands
  for reference point (⌈XOsiz/2^d⌉ + u)·2^d.
- fsiz describes the reference-grid image, whatever the components' subsampling.
- comps: the listed components; where a tile uses a multi-component transform (RCT/ICT),
  components 0-2 go together, and the change is reported as JPIP-comps. layers above the
  file's count are capped and reported as JPIP-layers.

Files (their SIZ, from the corpus MANIFEST):
- p1_01.j2k: Xsiz 127, Ysiz 227, XOsiz 5, YOsiz 128 (a 122 x 99 image at an odd offset),
  one component subsampled 2x1, 3 levels, 5 layers. Frames:
  d0 (127−5, 227−128) = (122, 99); d1 (64−3, 114−64) = (61, 50); d2 (32−2, 57−32) = (30, 25)
  (not ⌈122/4⌉ = 31); d3 (16−1, 29−16) = (15, 13).
- p1_05.j2k: Xsiz 529, Ysiz 524, XOsiz 17, YOsiz 12, 7 levels, ICT. Frames: d0 (512, 512);
  d1 (265−9, 262−6) = (256, 256); d3 (67−3, 66−2) = (64, 64); d7 (5−1, 5−1) = (4, 4).
- p0_12.j2k: 3 x 5, no offsets, 3 levels. Frames: (3, 5), (2, 3), (1, 2), (1, 1).
- p0_09.j2k: 17 x 37, 5 levels. Frames: (17, 37), (9, 19), (5, 10), (3, 5), (2, 3), (1, 2).
- file3.jp2: 480 x 640, components 1x1, 2x2, 2x2, 5 levels, no MCT. Frames: 480/2^d x 640/2^d.
- p0_05.j2k: 1024 x 1024, 4 components (1x1, 1x1, 2x2, 2x2), no MCT; components with 6 and
  with 3 levels (frames down to d6 = (16, 16)).
- file1.jp2: 768 x 512, 3 components, RCT. basn6a08.jp2: 32 x 32, 4 components, RCT on 0-2.
"""
from __future__ import annotations

from functools import cache
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codestream.source import build_source
from jpip.window import choose_discard, frame_size, frame_sizes, resolve_window
from tests.conftest import CORPUS

FULL = "all"  # the expected comps: every component of the file


@cache
def index(name: str):
    with build_source(CORPUS / name) as src:
        return src.codestreams[0]


# (file, d) -> the frame, from the formula in the module docstring.
FRAMES = {
    ("p1_01.j2k", 0): (122, 99), ("p1_01.j2k", 1): (61, 50), ("p1_01.j2k", 2): (30, 25),
    ("p1_01.j2k", 3): (15, 13),
    ("p1_05.j2k", 0): (512, 512), ("p1_05.j2k", 1): (256, 256), ("p1_05.j2k", 3): (64, 64),
    ("p1_05.j2k", 7): (4, 4),
    ("p0_12.j2k", 1): (2, 3), ("p0_12.j2k", 2): (1, 2), ("p0_12.j2k", 3): (1, 1),
    # ⌈17/2⌉ = 9, ⌈37/2⌉ = 19; ⌈17/4⌉ = 5, ⌈37/4⌉ = 10; ⌈17/32⌉ = 1, ⌈37/32⌉ = 2.
    ("p0_09.j2k", 1): (9, 19), ("p0_09.j2k", 2): (5, 10), ("p0_09.j2k", 5): (1, 2),
    ("file3.jp2", 1): (240, 320), ("file3.jp2", 5): (15, 20),
}


@pytest.mark.parametrize(("name", "d"), list(FRAMES))
def test_frame_size(name: str, d: int) -> None:
    assert frame_size(index(name).siz, d) == FRAMES[(name, d)]


# Each row: file, request fields, expected window. Expected keys: d (discard), frame, offset,
# size, region (X0, Y0, X1, Y1 on the reference grid), comps, layers, headers (JPIP-* sent).
ROWS = [
    # --- fsiz round-down --------------------------------------------------------------------
    # The full frame exactly: d0; whole region from (XOsiz, YOsiz) to (Xsiz, Ysiz).
    ("p1_01.j2k", dict(fsiz=(122, 99, "round-down")),
     dict(d=0, frame=(122, 99), offset=(0, 0), size=(122, 99), region=(5, 128, 127, 227),
          headers={})),
    # One column short: d0 (122) > 121, d1 (61, 50) fits. Region at d1: ⌈5/2⌉ = 3, ⌈128/2⌉ =
    # 64; X0 = max(5, 3·2) = 6, X1 = min(127, (3+61)·2 = 128) = 127; Y0 = 128, Y1 = min(227,
    # (64+50)·2) = 227. The region is the requested frame (121, 99) rescaled: x1 = ⌈121·61/121⌉.
    ("p1_01.j2k", dict(fsiz=(121, 99, "round-down")),
     dict(d=1, frame=(61, 50), offset=(0, 0), size=(61, 50), region=(6, 128, 127, 227),
          headers={"JPIP-fsiz": "61,50"})),
    # 60 wide: d1 is 61 > 60, d2 (30, 25) fits.
    ("p1_01.j2k", dict(fsiz=(60, 50)),
     dict(d=2, frame=(30, 25), offset=(0, 0), size=(30, 25), region=(8, 128, 127, 227),
          headers={"JPIP-fsiz": "30,25"})),
    # (31, 25) is ⌈122/4⌉ x ⌈99/4⌉ but the offset-aware d2 frame is (30, 25): it fits, and
    # differs from the request. Region: ⌈5/4⌉ = 2, ⌈128/4⌉ = 32: X0 = max(5, 8) = 8,
    # X1 = min(127, (2+30)·4) = 127, Y0 = 128, Y1 = min(227, (32+25)·4 = 228) = 227.
    ("p1_01.j2k", dict(fsiz=(31, 25, "round-down")),
     dict(d=2, frame=(30, 25), offset=(0, 0), size=(30, 25), region=(8, 128, 127, 227),
          headers={"JPIP-fsiz": "30,25"})),
    # Smaller than the smallest frame (15, 13): the smallest. The default region is the whole
    # requested frame (10, 10), rescaled: x1 = ⌈10·15/10⌉ = 15, y1 = 13. Region: ⌈5/8⌉ = 1,
    # ⌈128/8⌉ = 16: X0 = 8, X1 = min(127, 16·8) = 127; Y0 = 128, Y1 = min(227, 29·8) = 227.
    ("p1_01.j2k", dict(fsiz=(10, 10)),
     dict(d=3, frame=(15, 13), offset=(0, 0), size=(15, 13), region=(8, 128, 127, 227),
          headers={"JPIP-fsiz": "15,13"})),
    # Odd sizes: (2, 2) against (3, 5), (2, 3), (1, 2): d1 is 3 high > 2, d2 (1, 2) fits.
    ("p0_12.j2k", dict(fsiz=(2, 2, "round-down")),
     dict(d=2, frame=(1, 2), size=(1, 2), region=(0, 0, 3, 5), headers={"JPIP-fsiz": "1,2"})),
    # (9, 19) is d1 of 17 x 37 exactly: no header. Region: (0+9)·2 = 18 clipped to 17,
    # (0+19)·2 = 38 clipped to 37.
    ("p0_09.j2k", dict(fsiz=(9, 19)),
     dict(d=1, frame=(9, 19), size=(9, 19), region=(0, 0, 17, 37), headers={})),
    # Subsampling does not enter: (240, 320) is d1 of the reference grid, although
    # components 1 and 2 then have only 120 x 160 samples.
    ("file3.jp2", dict(fsiz=(240, 320)),
     dict(d=1, frame=(240, 320), size=(240, 320), region=(0, 0, 480, 640), headers={})),
    # With image offsets (17, 12), (64, 64) is d3 exactly. The region starts at the first d3
    # sample: X0 = max(17, ⌈17/8⌉·8 = 24) = 24, Y0 = max(12, ⌈12/8⌉·8 = 16) = 16 (the same
    # samples as from 17 and 12); X1 = min(529, (3+64)·8) = 529, Y1 = min(524, (2+64)·8) = 524.
    ("p1_05.j2k", dict(fsiz=(64, 64)),
     dict(d=3, frame=(64, 64), size=(64, 64), region=(24, 16, 529, 524), headers={})),
    # --- fsiz round-up ----------------------------------------------------------------------
    # At least (31, 25): d2 (30 wide) is too small, d1 (61, 50) is the largest d that covers.
    ("p1_01.j2k", dict(fsiz=(31, 25, "round-up")),
     dict(d=1, frame=(61, 50), size=(61, 50), region=(6, 128, 127, 227),
          headers={"JPIP-fsiz": "61,50"})),
    # Exactly the smallest frame: d3, no header.
    ("p1_01.j2k", dict(fsiz=(15, 13, "round-up")),
     dict(d=3, frame=(15, 13), size=(15, 13), region=(8, 128, 127, 227), headers={})),
    # Larger than the image: no frame covers it, so the full frame.
    ("p1_01.j2k", dict(fsiz=(200, 200, "round-up")),
     dict(d=0, frame=(122, 99), size=(122, 99), region=(5, 128, 127, 227),
          headers={"JPIP-fsiz": "122,99"})),
    # (2, 2): d1 (2, 3) covers it, d2 (1, 2) does not.
    ("p0_12.j2k", dict(fsiz=(2, 2, "round-up")),
     dict(d=1, frame=(2, 3), size=(2, 3), region=(0, 0, 3, 5), headers={"JPIP-fsiz": "2,3"})),
    # --- fsiz closest -----------------------------------------------------------------------
    # Area 50·45 = 2250: d1 3050 (off by 800), d2 750 (off by 1500): d1, where round-down
    # would take d2 (61 > 50).
    ("p1_01.j2k", dict(fsiz=(50, 45, "closest")),
     dict(d=1, frame=(61, 50), size=(61, 50), region=(6, 128, 127, 227),
          headers={"JPIP-fsiz": "61,50"})),
    # Area 38·50 = 1900: d1 3050 and d2 750 are both 1150 away: the tie goes to the larger.
    ("p1_01.j2k", dict(fsiz=(38, 50, "closest")),
     dict(d=1, frame=(61, 50), size=(61, 50), region=(6, 128, 127, 227),
          headers={"JPIP-fsiz": "61,50"})),
    # Area 4: d1 (2, 3) = 6 and d2 (1, 2) = 2 are both 2 away (d0 15, d3 1): the larger, d1.
    ("p0_12.j2k", dict(fsiz=(2, 2, "closest")),
     dict(d=1, frame=(2, 3), size=(2, 3), region=(0, 0, 3, 5), headers={"JPIP-fsiz": "2,3"})),
    # Area 1600: d2 750 (850 away) beats d1 3050 (1450) and d3 195 (1405).
    ("p1_01.j2k", dict(fsiz=(40, 40, "closest")),
     dict(d=2, frame=(30, 25), size=(30, 25), region=(8, 128, 127, 227),
          headers={"JPIP-fsiz": "30,25"})),
    # --- roff / rsiz ------------------------------------------------------------------------
    # Asked in a frame twice the full one (244, 198): d0, scale 1/2 on both axes.
    # x0 = ⌊11·122/244⌋ = ⌊5.5⌋ = 5, y0 = ⌊21·99/198⌋ = ⌊10.5⌋ = 10;
    # x1 = ⌈(11+100)·122/244⌉ = ⌈55.5⌉ = 56, y1 = ⌈(21+56)·99/198⌉ = ⌈38.5⌉ = 39;
    # size (51, 29). Region: (5+5, 128+10) to (5+56, 128+39).
    ("p1_01.j2k", dict(fsiz=(244, 198), roff=(11, 21), rsiz=(100, 56)),
     dict(d=0, frame=(122, 99), offset=(5, 10), size=(51, 29), region=(10, 138, 61, 167),
          headers={"JPIP-fsiz": "122,99", "JPIP-roff": "5,10", "JPIP-rsiz": "51,29"})),
    # roff without rsiz: the region runs to the corner of the requested frame, (244−100,
    # 198−100); x0 = ⌊100·122/244⌋ = 50, y0 = ⌊100·99/198⌋ = 50, x1 = 122, y1 = 99.
    # JPIP-rsiz is not sent: no rsiz was asked for.
    ("p1_01.j2k", dict(fsiz=(244, 198), roff=(100, 100)),
     dict(d=0, frame=(122, 99), offset=(50, 50), size=(72, 49), region=(55, 178, 127, 227),
          headers={"JPIP-fsiz": "122,99", "JPIP-roff": "50,50"})),
    # Clipped at the frame's edge: x1 = min(122, 150), y1 = min(99, 140): size (22, 9).
    ("p1_01.j2k", dict(fsiz=(122, 99), roff=(100, 90), rsiz=(50, 50)),
     dict(d=0, frame=(122, 99), offset=(100, 90), size=(22, 9), region=(105, 218, 127, 227),
          headers={"JPIP-rsiz": "22,9"})),
    # An offset past the frame: x0 = min(130, 122) = 122, nothing left across: empty.
    ("p1_01.j2k", dict(fsiz=(122, 99), roff=(130, 5), rsiz=(10, 10)),
     dict(d=0, frame=(122, 99), offset=(122, 5), size=(0, 10), region=(127, 133, 127, 143),
          headers={"JPIP-roff": "122,5", "JPIP-rsiz": "0,10"}, empty=True)),
    # A region at d1, no rescaling: [10, 17) x [20, 29). On the reference grid, frame sample u
    # is (3 + u)·2 across and (64 + u)·2 down: X0 = 26, X1 = 40, Y0 = 168, Y1 = 186.
    ("p1_01.j2k", dict(fsiz=(61, 50), roff=(10, 20), rsiz=(7, 9)),
     dict(d=1, frame=(61, 50), offset=(10, 20), size=(7, 9), region=(26, 168, 40, 186),
          headers={})),
    # The last sample of d2: roff (29, 24), rsiz (5, 5) clipped to (1, 1). X0 = (2+29)·4 = 124,
    # X1 = min(127, (2+30)·4) = 127; Y0 = (32+24)·4 = 224, Y1 = min(227, 57·4) = 227.
    ("p1_01.j2k", dict(fsiz=(30, 25), roff=(29, 24), rsiz=(5, 5)),
     dict(d=2, frame=(30, 25), offset=(29, 24), size=(1, 1), region=(124, 224, 127, 227),
          headers={"JPIP-rsiz": "1,1"})),
    # The first sample of d3 with XOsiz 17, YOsiz 12: it stands for reference point
    # (⌈17/8⌉ + 0)·8 = 24 across and (⌈12/8⌉ + 0)·8 = 16 down, not (17, 12).
    ("p1_05.j2k", dict(fsiz=(64, 64), roff=(0, 0), rsiz=(1, 1)),
     dict(d=3, frame=(64, 64), offset=(0, 0), size=(1, 1), region=(24, 16, 32, 24),
          headers={})),
    # A region at d3: X0 = (3+10)·8 = 104, X1 = (3+15)·8 = 144, Y0 = (2+20)·8 = 176,
    # Y1 = (2+26)·8 = 224.
    ("p1_05.j2k", dict(fsiz=(64, 64), roff=(10, 20), rsiz=(5, 6)),
     dict(d=3, frame=(64, 64), offset=(10, 20), size=(5, 6), region=(104, 176, 144, 224),
          headers={})),
    # The smallest frame of p1_05, asked as (4, 4): d7; ⌈17/128⌉ = 1, ⌈12/128⌉ = 1:
    # X0 = max(17, 128) = 128, X1 = min(529, 5·128) = 529, Y0 = 128, Y1 = 524.
    ("p1_05.j2k", dict(fsiz=(4, 4)),
     dict(d=7, frame=(4, 4), size=(4, 4), region=(128, 128, 529, 524), headers={})),
    # --- comps --------------------------------------------------------------------------------
    # No MCT: exactly the listed component, whatever its subsampling.
    ("file3.jp2", dict(fsiz=(120, 160), comps=((1, 1),)),
     dict(d=2, frame=(120, 160), comps=(1,), region=(0, 0, 480, 640), headers={})),
    # An open range runs to the last component.
    ("p0_05.j2k", dict(fsiz=(1024, 1024), comps=((2, None),)),
     dict(d=0, comps=(2, 3), headers={})),
    # RCT: component 1 needs 0 and 2 to be reconstructed; the change is reported.
    ("file1.jp2", dict(fsiz=(768, 512), comps=((1, 1),)),
     dict(d=0, comps=(0, 1, 2), headers={"JPIP-comps": "0-2"})),
    # RCT on 0-2 of 4 components: the alpha component alone needs nothing else ...
    ("basn6a08.jp2", dict(fsiz=(32, 32), comps=((3, 3),)),
     dict(d=0, comps=(3,), headers={})),
    # ... but with component 0 it brings 1 and 2.
    ("basn6a08.jp2", dict(fsiz=(32, 32), comps=((0, 0), (3, 3))),
     dict(d=0, comps=(0, 1, 2, 3), headers={"JPIP-comps": "0-3"})),
    # --- layers -------------------------------------------------------------------------------
    ("p1_01.j2k", dict(fsiz=(122, 99), layers=3), dict(d=0, layers=3, headers={})),
    # 9 > the file's 5 layers: capped and reported.
    ("p1_01.j2k", dict(fsiz=(122, 99), layers=9),
     dict(d=0, layers=5, headers={"JPIP-layers": "5"})),
    # No layers field: all of them, nothing reported.
    ("p1_01.j2k", dict(fsiz=(122, 99)), dict(d=0, layers=5, comps=FULL, headers={})),
]


def _row_id(row) -> str:
    name, request, _ = row
    return f"{name.split('.')[0]}-" + "-".join(
        f"{k}={v}".replace(" ", "") for k, v in request.items())


@pytest.mark.parametrize(("name", "request_fields", "want"), ROWS, ids=map(_row_id, ROWS))
def test_window_matches_the_hand_worked_value(name: str, request_fields: dict, want: dict
                                              ) -> None:
    ix = index(name)
    fields = dict(request_fields)
    fsiz = fields.pop("fsiz")
    if len(fsiz) == 2:
        fsiz = (*fsiz, "round-down")  # the default round-direction
    w = resolve_window(ix, 0, fsiz=fsiz, **fields)
    got = {"d": w.discard, "frame": w.frame, "offset": w.offset, "size": w.size,
           "region": w.region, "comps": w.comps, "layers": w.layers, "headers": w.changed,
           "empty": w.empty}
    expected = dict(want)
    expected.setdefault("empty", False)
    if expected.get("comps") == FULL:
        expected["comps"] = tuple(range(ix.num_components))
    for key, value in expected.items():
        assert got[key] == value, f"{key}: got {got[key]}, worked out {value}"


# --- the discard rule against its wording, on random frames (hypothesis) -----------------------

def _rule(sizes, fx: int, fy: int, rounding: str) -> int:
    """The rules above, as written: round-up the largest d whose frame holds fx x fy (else 0),
    round-down the smallest d whose frame fits in it (else the last), closest the nearest
    area, the larger frame on a tie."""
    if rounding == "round-up":
        return max([d for d, (w, h) in enumerate(sizes) if w >= fx and h >= fy], default=0)
    if rounding == "closest":
        return min(range(len(sizes)), key=lambda d: (abs(sizes[d][0] * sizes[d][1] - fx * fy), d))
    return min([d for d, (w, h) in enumerate(sizes) if w <= fx and h <= fy],
               default=len(sizes) - 1)


@given(st.integers(1, 1 << 20), st.integers(1, 1 << 20), st.integers(0, 1 << 12),
       st.integers(0, 1 << 12), st.integers(0, 12), st.integers(1, 1 << 21),
       st.integers(1, 1 << 21), st.sampled_from(["round-down", "round-up", "closest"]))
@settings(max_examples=300)
def test_choose_discard_follows_the_rule(w, h, xo, yo, levels, fx, fy, rounding) -> None:
    siz = SimpleNamespace(xsiz=xo + w, ysiz=yo + h, xosiz=xo, yosiz=yo)
    sizes = frame_sizes(siz, levels)
    assert choose_discard(sizes, fx, fy, rounding) == _rule(sizes, fx, fy, rounding)
