"""Walks one codestream: main header, tile-parts and their headers (no packet data yet)."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import CodestreamError
from .markers import (
    CAP,
    COC,
    COD,
    COM,
    CPF,
    CRG,
    EOC,
    PLM,
    PLT,
    POC,
    PPM,
    PPT,
    QCC,
    QCD,
    RGN,
    SIZ,
    SOC,
    SOD,
    SOT,
    TLM,
    Cod,
    CodingStyle,
    HeaderMarkers,
    Reader,
    Segment,
    Siz,
    marker_name,
    parse_coc,
    parse_cod,
    parse_poc,
    parse_siz,
    read_segment,
)

MAIN_HEADER_ONLY = {SIZ, TLM, PLM, PPM, CRG, CAP, CPF}
TILE_HEADER_ALLOWED = {COD, COC, QCD, QCC, RGN, POC, PPT, PLT, COM}
# Dropped from header data-bins: they describe the original layout, not what a client rebuilds.
LAYOUT_MARKERS = {TLM, PLM, PPM, PLT, PPT}


@dataclass(slots=True)
class TilePart:
    tile: int
    index: int  # TPsot
    sot_offset: int
    header_end: int  # offset just after SOD
    data_end: int
    # Segments between SOT and SOD; most tile-parts have none, and share this empty tuple (a
    # file of 65,535 tiles is a million small objects otherwise).
    header_segments: list[Segment] | tuple = ()


# Shared by the tiles whose headers carry no segments (never changed: see _writable).
_NO_MARKERS = HeaderMarkers()


@dataclass(slots=True)
class TileHeaders:
    """What a tile's tile-part headers say, gathered over its tile-parts in order. Tiles whose
    headers hold nothing share empty values; `_writable` gives a tile its own before parsing a
    segment into it."""

    parts: list[TilePart] = field(default_factory=list)
    markers: HeaderMarkers = field(default_factory=lambda: _NO_MARKERS)
    plt: list[tuple[int, int, Segment]] | tuple = ()  # (tile-part, Zplt, segment)
    ppt: list[tuple[int, Segment]] | tuple = ()       # (Zppt, segment) in order


def _writable(th: TileHeaders) -> TileHeaders:
    if th.markers is _NO_MARKERS:
        th.markers, th.plt, th.ppt = HeaderMarkers(), list(th.plt), list(th.ppt)
    return th


@dataclass(slots=True)
class CodestreamLayout:
    offset: int
    end: int
    siz: Siz
    main: HeaderMarkers
    main_bin_ranges: list[tuple[int, int]]
    ppm: list[tuple[int, Segment]]
    tiles: dict[int, TileHeaders]
    tile_parts: list[TilePart]  # in file order
    markers_seen: set[str]
    has_eoc: bool


_SOT_SOD = struct.Struct(">HHHIBBH")  # SOT, Lsot, Isot, Psot, TPsot, TNsot, the next marker

# Rsiz bit 15: the codestream uses Part 2 (T.801) extensions.
PART2_RSIZ = 0x8000


def _parse_header_segment(buf, seg: Segment, siz: Siz, hm: HeaderMarkers) -> None:
    r = Reader(buf, seg.body_offset, seg.end)
    part2 = bool(siz.rsiz & PART2_RSIZ)
    if seg.code == COD:
        hm.cod = parse_cod(r, seg, part2)
    elif seg.code == COC:
        coc = parse_coc(r, seg, siz.num_components, part2)
        hm.cocs[coc.component] = coc
    elif seg.code == POC:
        hm.pocs.extend(parse_poc(r, seg, siz.num_components))
    elif seg.code in (QCD, QCC):
        hm.qcd_seen = hm.qcd_seen or seg.code == QCD


def _next_segment(buf, pos: int, end: int, prev: Segment) -> Segment:
    """The segment at pos, which follows `prev`. Where no marker is found there, the likelier
    fault is prev's length (SIZ and SOT lengths are checked when they are parsed), so the error
    names prev."""
    try:
        return read_segment(buf, pos, end)
    except CodestreamError as e:
        if prev.code in (SIZ, SOT) or not e.reason.startswith("expected a marker"):
            raise
        raise CodestreamError(prev.offset, f"{marker_name(prev.code)}: segment length "
                              f"{prev.length - 2} runs past its data (no marker follows it at "
                              f"byte {pos})") from None


def parse_codestream(buf, offset: int, length: int) -> CodestreamLayout:
    end = offset + length
    if length < 4 or (buf[offset] << 8 | buf[offset + 1]) != SOC:
        raise CodestreamError(offset, "codestream does not start with SOC")
    pos = offset + 2
    seg = read_segment(buf, pos, end)
    if seg.code != SIZ:
        raise CodestreamError(pos, f"expected SIZ after SOC, found {marker_name(seg.code)}")
    siz = parse_siz(Reader(buf, seg.body_offset, seg.end), seg)
    main = HeaderMarkers()
    seen = {"SOC", "SIZ"}
    ranges: list[tuple[int, int]] = [(offset, seg.end - offset)]
    ppm: list[tuple[int, Segment]] = []
    pos = seg.end
    while True:
        seg = _next_segment(buf, pos, end, seg)
        if seg.code == SOT:
            break
        if seg.code in (SOD, EOC, SOC, SIZ):
            raise CodestreamError(pos, f"{marker_name(seg.code)} in the main header")
        seen.add(marker_name(seg.code))
        _parse_header_segment(buf, seg, siz, main)
        if seg.code == PPM:
            if seg.length < 5:
                raise CodestreamError(pos, "PPM segment without Zppm")
            ppm.append((buf[seg.body_offset], seg))
        if seg.code not in LAYOUT_MARKERS:
            if ranges and ranges[-1][0] + ranges[-1][1] == seg.offset:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + seg.length)
            else:
                ranges.append((seg.offset, seg.length))
        main.segments.append(seg)
        pos = seg.end
    if main.cod is None:
        raise CodestreamError(offset, "main header has no COD")
    if not main.qcd_seen:
        raise CodestreamError(offset, "main header has no QCD")
    ppm.sort(key=lambda z: z[0])

    tiles: dict[int, TileHeaders] = {}
    parts: list[TilePart] = []
    has_eoc = length >= 2 and (buf[end - 2] << 8 | buf[end - 1]) == EOC
    stream_end = end - 2 if has_eoc else end
    num_tiles = siz.num_tiles
    while pos < stream_end:
        if pos + 14 <= end:
            # The common tile-part header: SOT right followed by SOD (no other segment).
            code, lsot, isot, psot, tpsot, _tnsot, after = _SOT_SOD.unpack_from(buf, pos)
            part_end = stream_end if psot == 0 else pos + psot
            if (code == SOT and lsot == 10 and after == SOD and isot < num_tiles
                    and (psot == 0 or psot >= 14) and pos + 14 <= part_end <= stream_end):
                th = tiles.get(isot)
                if th is None:
                    th = tiles[isot] = TileHeaders()
                if tpsot == len(th.parts):
                    part = TilePart(isot, tpsot, pos, pos + 14, part_end)
                    th.parts.append(part)
                    parts.append(part)
                    pos = part_end
                    continue
        seg = read_segment(buf, pos, end)
        if seg.code == EOC:
            break
        if seg.code != SOT:
            raise CodestreamError(pos, f"expected SOT, found {marker_name(seg.code)}")
        if seg.length != 12:
            raise CodestreamError(pos, f"SOT length {seg.length - 2} != 10")
        isot, psot, tpsot, _tnsot = struct.unpack_from(">HIBB", buf, pos + 4)
        if isot >= num_tiles:
            raise CodestreamError(pos, f"SOT: tile {isot} >= {num_tiles} tiles")
        part_end = stream_end if psot == 0 else pos + psot
        if psot and psot < 14:
            raise CodestreamError(pos, f"SOT: Psot {psot} too small")
        if part_end > stream_end:  # (into the EOC that ends the codestream, or past it)
            raise CodestreamError(pos, f"SOT: tile-part length {psot} runs past the codestream end")
        th = tiles.setdefault(isot, TileHeaders())
        if tpsot != len(th.parts):
            # Tile-parts of a tile are numbered in order from 0 (T.800 A.4.2); OpenJPEG refuses
            # a file that breaks this, so it is refused here too.
            raise CodestreamError(pos, f"SOT: tile-part {tpsot} of tile {isot} out of sequence "
                                  f"(expected {len(th.parts)})")
        part = TilePart(isot, tpsot, pos, 0, part_end, [])
        first_part = not th.parts
        hpos = seg.end
        prev = seg
        while True:
            hseg = _next_segment(buf, hpos, part_end, prev)
            if hseg.code == SOD:
                part.header_end = hseg.end
                break
            if hseg.code not in TILE_HEADER_ALLOWED:
                if 0xFF30 <= hseg.code <= 0xFF3F:
                    hpos = hseg.end
                    continue
                raise CodestreamError(hpos, f"{marker_name(hseg.code)} in a tile-part header")
            if hseg.code in (COD, COC) and not first_part:
                raise CodestreamError(hpos, f"{marker_name(hseg.code)} in a tile-part other than "
                                      "the tile's first")
            seen.add(marker_name(hseg.code))
            _parse_header_segment(buf, hseg, siz, _writable(th).markers)
            if hseg.code == PLT:
                if hseg.length < 5:
                    raise CodestreamError(hpos, "PLT segment without Zplt")
                th.plt.append((len(th.parts), buf[hseg.body_offset], hseg))
            elif hseg.code == PPT:
                if hseg.length < 5:
                    raise CodestreamError(hpos, "PPT segment without Zppt")
                th.ppt.append((buf[hseg.body_offset], hseg))
            part.header_segments.append(hseg)
            hpos = hseg.end
            prev = hseg
        th.parts.append(part)
        parts.append(part)
        pos = part_end
    return CodestreamLayout(offset, end, siz, main, ranges, ppm, tiles, parts, seen, has_eoc)


def tile_coding(layout: CodestreamLayout, t: int) -> tuple[Cod, list[CodingStyle]]:
    """Effective COD and per-component style of tile t.

    Precedence: tile COC > tile COD > main COC > main COD.
    """
    main = layout.main
    th = layout.tiles.get(t)
    tile_cod = th.markers.cod if th else None
    cod = tile_cod or main.cod
    styles = []
    for c in range(layout.siz.num_components):
        if th and c in th.markers.cocs:
            styles.append(th.markers.cocs[c].style)
        elif tile_cod is not None:
            styles.append(tile_cod.style)
        elif c in main.cocs:
            styles.append(main.cocs[c].style)
        else:
            styles.append(main.cod.style)
    return cod, styles


@dataclass(frozen=True, slots=True)
class MainCoding:
    """What a main header alone says about the coding (all a client knows before image data)."""

    siz: Siz
    cod: Cod
    styles: tuple[CodingStyle, ...]  # per component (main COC over main COD)

    @property
    def levels(self) -> int:
        return min(s.levels for s in self.styles)

    @property
    def progression(self) -> int:
        return self.cod.progression

    @property
    def ht(self) -> bool:
        return any(s.is_ht for s in self.styles)


def main_header_coding(main_header: bytes) -> MainCoding:
    """Parses a main header (a main header data-bin: SOC ... up to the first SOT) alone."""
    skeleton = bytes(main_header) + struct.pack(">HHHIBBH", SOT, 10, 0, 14, 0, 1, SOD)
    layout = parse_codestream(skeleton, 0, len(skeleton))
    cod, styles = tile_coding(layout, 0)
    return MainCoding(layout.siz, cod, tuple(styles))
