"""Marker segments of a JPEG 2000 codestream (ISO 15444-1 Annex A), parsed into frozen dataclasses.

One parse function per marker in a dispatch table. Every read is bounded by the segment length,
which is checked against the bytes that exist before anything is read.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import CodestreamError
from .intmath import ceil_div

SOC, SOT, SOD, EOC = 0xFF4F, 0xFF90, 0xFF93, 0xFFD9
SIZ, COD, COC, QCD, QCC, RGN, POC = 0xFF51, 0xFF52, 0xFF53, 0xFF5C, 0xFF5D, 0xFF5E, 0xFF5F
TLM, PLM, PLT, PPM, PPT, CRG, COM, CAP, CPF = (0xFF55, 0xFF57, 0xFF58, 0xFF60, 0xFF61, 0xFF63,
                                               0xFF64, 0xFF50, 0xFF59)
SOP, EPH = 0xFF91, 0xFF92

MARKER_NAMES = {SOC: "SOC", SOT: "SOT", SOD: "SOD", EOC: "EOC", SIZ: "SIZ", COD: "COD",
                COC: "COC", QCD: "QCD", QCC: "QCC", RGN: "RGN", POC: "POC", TLM: "TLM",
                PLM: "PLM", PLT: "PLT", PPM: "PPM", PPT: "PPT", CRG: "CRG", COM: "COM",
                CAP: "CAP", CPF: "CPF", SOP: "SOP", EPH: "EPH"}

PROGRESSIONS = ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL")
MAX_COMPONENTS = 16384
MAX_LEVELS = 32
MAX_TILES = 65535  # Isot is 16 bits and 65535 is reserved: tiles 0..65534 (T.800 A.4.2)

# Code-block style bits (Table A.19) and the HT flag of ISO 15444-15.
CBLK_BYPASS, CBLK_RESET, CBLK_TERMALL, CBLK_VCAUSAL, CBLK_PTERM, CBLK_SEGSYM = 1, 2, 4, 8, 16, 32
CBLK_HT = 0x40


def marker_name(code: int) -> str:
    return MARKER_NAMES.get(code, f"0x{code:04X}")


def has_no_segment(code: int) -> bool:
    """Markers without a length field: SOC, SOD, EOC, EPH and the reserved 0xFF30..0xFF3F."""
    return code in (SOC, SOD, EOC, EPH) or 0xFF30 <= code <= 0xFF3F


@dataclass(frozen=True, slots=True)
class Segment:
    """A marker segment's place in the file: marker code, offset of the marker, total length."""

    code: int
    offset: int
    length: int  # bytes from the marker's first byte to the segment end (2 + Lxxx)

    @property
    def body_offset(self) -> int:
        return self.offset + 4

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class ComponentSize:
    precision: int  # bits
    signed: bool
    dx: int  # XRsiz
    dy: int  # YRsiz


@dataclass(frozen=True, slots=True)
class Siz:
    rsiz: int
    xsiz: int
    ysiz: int
    xosiz: int
    yosiz: int
    xtsiz: int
    ytsiz: int
    xtosiz: int
    ytosiz: int
    components: tuple[ComponentSize, ...]

    @property
    def num_components(self) -> int:
        return len(self.components)

    @property
    def tiles_x(self) -> int:
        return ceil_div(self.xsiz - self.xtosiz, self.xtsiz)

    @property
    def tiles_y(self) -> int:
        return ceil_div(self.ysiz - self.ytosiz, self.ytsiz)

    @property
    def num_tiles(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def width(self) -> int:
        return self.xsiz - self.xosiz

    @property
    def height(self) -> int:
        return self.ysiz - self.yosiz

    def tile_bounds(self, t: int) -> tuple[int, int, int, int]:
        """(tx0, ty0, tx1, ty1) of tile t on the reference grid (T.800 B-7)."""
        p, q = t % self.tiles_x, t // self.tiles_x
        tx0 = max(self.xtosiz + p * self.xtsiz, self.xosiz)
        ty0 = max(self.ytosiz + q * self.ytsiz, self.yosiz)
        tx1 = min(self.xtosiz + (p + 1) * self.xtsiz, self.xsiz)
        ty1 = min(self.ytosiz + (q + 1) * self.ytsiz, self.ysiz)
        return tx0, ty0, tx1, ty1


@dataclass(frozen=True, slots=True)
class CodingStyle:
    """The SPcod/SPcoc part: what varies per component."""

    levels: int
    cb_w: int  # code-block width exponent (xcb + 2)
    cb_h: int
    cb_style: int
    reversible: bool  # 5/3 wavelet
    precincts: tuple[tuple[int, int], ...]  # (PPx, PPy) per resolution 0..levels

    @property
    def is_ht(self) -> bool:
        return bool(self.cb_style & CBLK_HT)


@dataclass(frozen=True, slots=True)
class Cod:
    scod: int
    progression: int
    layers: int
    mct: int
    style: CodingStyle

    @property
    def sop(self) -> bool:
        return bool(self.scod & 2)

    @property
    def eph(self) -> bool:
        return bool(self.scod & 4)


@dataclass(frozen=True, slots=True)
class Coc:
    component: int
    style: CodingStyle


@dataclass(frozen=True, slots=True)
class PocEntry:
    rs: int
    cs: int
    lye: int
    re: int
    ce: int
    progression: int


@dataclass(slots=True)
class HeaderMarkers:
    """What a main header or a tile's tile-part headers say (only the fields the index needs)."""

    cod: Cod | None = None
    cocs: dict[int, Coc] = field(default_factory=dict)
    pocs: list[PocEntry] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    qcd_seen: bool = False


class Reader:
    """Big-endian reads bounded by an end offset; every overrun is a CodestreamError."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: memoryview | bytes, pos: int, end: int) -> None:
        self.buf, self.pos, self.end = buf, pos, end

    def _need(self, n: int) -> None:
        if self.pos + n > self.end:
            raise CodestreamError(self.pos, f"segment too short: need {n} more bytes")

    def u8(self) -> int:
        self._need(1)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        self._need(2)
        (v,) = struct.unpack_from(">H", self.buf, self.pos)
        self.pos += 2
        return v

    def u32(self) -> int:
        self._need(4)
        (v,) = struct.unpack_from(">I", self.buf, self.pos)
        self.pos += 4
        return v

    def comp(self, csiz: int) -> int:
        return self.u16() if csiz >= 257 else self.u8()


def parse_siz(r: Reader, seg: Segment) -> Siz:
    rsiz = r.u16()
    vals = [r.u32() for _ in range(8)]
    csiz = r.u16()
    xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz = vals
    if not 1 <= csiz <= MAX_COMPONENTS:
        raise CodestreamError(seg.offset, f"SIZ: {csiz} components (1..{MAX_COMPONENTS} allowed)")
    if seg.length != 2 + 38 + 3 * csiz:
        raise CodestreamError(seg.offset,
                              f"SIZ: length {seg.length - 2} does not match {csiz} components")
    if xsiz <= xosiz or ysiz <= yosiz:
        raise CodestreamError(seg.offset, "SIZ: empty image (Xsiz <= XOsiz or Ysiz <= YOsiz)")
    if xtsiz == 0 or ytsiz == 0:
        raise CodestreamError(seg.offset, "SIZ: zero tile size")
    if xtosiz > xosiz or ytosiz > yosiz or xtosiz + xtsiz <= xosiz or ytosiz + ytsiz <= yosiz:
        raise CodestreamError(seg.offset, "SIZ: tile grid offset does not cover the image origin")
    comps = []
    for _ in range(csiz):
        ssiz, dx, dy = r.u8(), r.u8(), r.u8()
        if dx == 0 or dy == 0:
            raise CodestreamError(seg.offset, "SIZ: zero component subsampling")
        if (ssiz & 0x7F) + 1 > 38:
            raise CodestreamError(seg.offset, f"SIZ: bit depth {(ssiz & 0x7F) + 1} > 38")
        comps.append(ComponentSize((ssiz & 0x7F) + 1, bool(ssiz & 0x80), dx, dy))
    siz = Siz(rsiz, xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz, tuple(comps))
    if siz.num_tiles > MAX_TILES:
        # Not a feature we lack: SOT could not address the tiles, so the file is malformed.
        raise CodestreamError(seg.offset, f"SIZ: {siz.num_tiles} tiles, more than SOT can "
                              f"address ({MAX_TILES}, T.800 A.4.2)")
    return siz


def _parse_style(r: Reader, seg: Segment, explicit_precincts: bool, part2: bool) -> CodingStyle:
    levels = r.u8()
    if levels > MAX_LEVELS:
        raise CodestreamError(seg.offset, f"{marker_name(seg.code)}: {levels} decomposition levels")
    xcb, ycb, style, transform = r.u8(), r.u8(), r.u8(), r.u8()
    if xcb > 8 or ycb > 8 or xcb + ycb > 8:
        raise CodestreamError(seg.offset,
                              f"{marker_name(seg.code)}: bad code-block size {xcb},{ycb}")
    if transform > 1:
        # Reserved in Part 1; an ATK kernel only where Rsiz announces Part 2 extensions.
        if not part2:
            raise CodestreamError(seg.offset, f"{marker_name(seg.code)}: wavelet {transform} is "
                                  "reserved (Rsiz announces no Part 2 extensions)")
        raise CodestreamError(seg.offset, f"{marker_name(seg.code)}: wavelet {transform} "
                              "(Part 2 arbitrary wavelets are not served)", unsupported=True)
    if explicit_precincts:
        precincts = []
        for _ in range(levels + 1):
            b = r.u8()
            precincts.append((b & 0x0F, b >> 4))
        for n, (ppx, ppy) in enumerate(precincts):
            if n > 0 and (ppx == 0 or ppy == 0):
                raise CodestreamError(seg.offset, "precinct size 1 above resolution 0 is invalid")
    else:
        precincts = [(15, 15)] * (levels + 1)
    return CodingStyle(levels, xcb + 2, ycb + 2, style, transform == 1, tuple(precincts))


def parse_cod(r: Reader, seg: Segment, part2: bool = False) -> Cod:
    """COD; `part2`: Rsiz announces Part 2 extensions (T.801), which makes more values valid."""
    scod = r.u8()
    prog, layers, mct = r.u8(), r.u16(), r.u8()
    if prog > 4:
        raise CodestreamError(seg.offset, f"COD: unknown progression order {prog}")
    if layers == 0:
        raise CodestreamError(seg.offset, "COD: zero layers")
    return Cod(scod, prog, layers, mct, _parse_style(r, seg, bool(scod & 1), part2))


def parse_coc(r: Reader, seg: Segment, csiz: int, part2: bool = False) -> Coc:
    c = r.comp(csiz)
    if c >= csiz:
        raise CodestreamError(seg.offset, f"COC: component {c} >= Csiz {csiz}")
    scoc = r.u8()
    return Coc(c, _parse_style(r, seg, bool(scoc & 1), part2))


def parse_poc(r: Reader, seg: Segment, csiz: int) -> list[PocEntry]:
    entry = 9 if csiz >= 257 else 7
    body = seg.length - 4
    if body <= 0 or body % entry:
        raise CodestreamError(seg.offset, f"POC: length {body} is not a multiple of {entry}")
    out = []
    for _ in range(body // entry):
        rs, cs, lye, re_, ce, prog = r.u8(), r.comp(csiz), r.u16(), r.u8(), r.comp(csiz), r.u8()
        if prog > 4:
            raise CodestreamError(seg.offset, f"POC: unknown progression order {prog}")
        if ce == 0 and csiz < 257:
            ce = 256  # CEpoc = 0 means 256 (Table A.32)
        elif ce == 0:
            ce = 16384
        out.append(PocEntry(rs, cs, lye, re_, ce, prog))
    return out


def read_segment(buf: memoryview | bytes, pos: int, end: int) -> Segment:
    """The marker segment at pos (marker + length), checked to fit before `end`."""
    if pos + 2 > end:
        raise CodestreamError(pos, "truncated: expected a marker")
    code = (buf[pos] << 8) | buf[pos + 1]
    if buf[pos] != 0xFF or code < 0xFF01:
        raise CodestreamError(pos, f"expected a marker, found bytes {code:04X}")
    if has_no_segment(code):
        return Segment(code, pos, 2)
    if pos + 4 > end:
        raise CodestreamError(pos, f"truncated {marker_name(code)} segment")
    length = (buf[pos + 2] << 8) | buf[pos + 3]
    if length < 2:
        raise CodestreamError(pos, f"{marker_name(code)}: segment length {length} < 2")
    if pos + 2 + length > end:
        raise CodestreamError(pos, f"{marker_name(code)}: segment length {length} runs past "
                              "the end")
    return Segment(code, pos, 2 + length)
