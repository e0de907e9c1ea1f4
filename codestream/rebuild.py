"""Rebuilds a decodable codestream from data-bins (what a JPIP client holds).

Used by the client (client/) and by the index round-trip tests. Every precinct's packets are
emitted together, in RPCL order (layer innermost), so a precinct bin that holds only its first
k layers is followed by empty packets for the rest. Markers that describe the original layout
(TLM, PLM, PLT, PPM, PPT, POC) are dropped, SOP markers are dropped (the bins carry none) and
the progression order written into COD becomes RPCL.
"""
from __future__ import annotations

import struct

from .errors import CodestreamError
from .geometry import precinct_band_grids, precinct_id, resolution_grids
from .markers import COD, EOC, POC, SOC, SOD, SOP, SOT, read_segment
from .packets import BitReader, PrecinctState
from .parse import LAYOUT_MARKERS, parse_codestream, tile_coding
from .progression import packet_sequence, tile_precincts

RPCL = 2
_DROP = LAYOUT_MARKERS | {POC}
_SOT_BODY = struct.Struct(">HHIBB")  # Lsot Isot Psot TPsot TNsot


def tile_header_segments(data: bytes, t: int) -> bytes:
    """The marker segments of tile-header bin `t`, in whichever of two conventions it came.

    Standard reading (shared/jpip-protocol.md 4.2): the bin holds the tile-part header's marker
    segments only, so it is empty or starts with a marker code (FF xx). OpenJPEG's opj_server
    (openjpip) instead sends the header from just after the SOT marker code up to and including
    SOD: `Lsot Isot Psot TPsot TNsot <segments> FF93`. Lsot is always 10, so such a bin starts
    with 00 0A, which no marker segment can; its SOT body and SOD are dropped here (we write our
    own SOT and SOD). Anything else is returned as is and parsed as marker segments.
    """
    if len(data) < _SOT_BODY.size + 2 or data[:2] != b"\x00\x0a":
        return data
    _, isot, _, _, _ = _SOT_BODY.unpack_from(data)
    if isot != t or data[-2:] != b"\xff\x93":
        raise CodestreamError(-1, f"tile-header bin {t} starts with an SOT body (Isot {isot}) "
                                 "but is not SOT body ... SOD")
    return data[_SOT_BODY.size:-2]


def _rewrite_header(data: bytes, start: int) -> bytes:
    """Header marker segments with layout markers dropped and COD set to RPCL without SOP."""
    out = bytearray()
    pos = start
    while pos < len(data):
        seg = read_segment(data, pos, len(data))
        chunk = bytearray(data[seg.offset:seg.end])
        if seg.code == COD:
            chunk[4] &= ~0x02 & 0xFF  # Scod: no SOP markers in the rebuilt stream
            chunk[5] = RPCL
        if seg.code not in _DROP:
            out += chunk
        pos = seg.end
    return bytes(out)


def complete_packets(state: PrecinctState, data: bytes, eph: bool, max_layers: int) -> int:
    """How many whole packets (layers) the start of a precinct bin holds."""
    pos = 0
    for layer in range(max_layers):
        if pos >= len(data):
            return layer
        try:
            bits = BitReader(data, pos, len(data))
            body = state.read_header(bits, layer)
            end = bits.align()
        except CodestreamError:
            return layer
        if eph and end + 2 <= len(data) and data[end] == 0xFF and data[end + 1] == 0x92:
            end += 2
        if end + body > len(data):
            return layer
        pos = end + body
    return max_layers


def rebuild_codestream(main_header: bytes, tile_headers: dict[int, bytes],
                       precinct_bins: dict[int, bytes], *, max_layers: int | None = None
                       ) -> bytes:
    """A codestream from a main header bin, tile header bins and precinct bins (by in-class id).

    Tiles without a tile header bin are still written (every packet empty), so the decoder sees
    every tile. `max_layers` caps the layers taken from each bin (the rest become empty).
    """
    if main_header[:2] != b"\xff\x4f":
        raise CodestreamError(0, "main header bin does not start with SOC")
    tile_headers = {t: tile_header_segments(th, t) for t, th in tile_headers.items()}
    # Parse the headers through a skeleton codestream: one empty tile-part per known tile.
    skeleton = bytearray(main_header)
    for t, th in sorted(tile_headers.items()):
        skeleton += struct.pack(">HHHIBB", SOT, 10, t, 12 + len(th) + 2, 0, 1) + th
        skeleton += struct.pack(">H", SOD)
    skeleton += struct.pack(">H", EOC)
    layout = parse_codestream(bytes(skeleton), 0, len(skeleton))
    siz = layout.siz
    out = bytearray(struct.pack(">H", SOC))
    out += _rewrite_header(main_header, 2)
    ncomp, ntiles = siz.num_components, siz.num_tiles
    for t in range(ntiles):
        cod, styles = tile_coding(layout, t)
        layers = cod.layers
        take = layers if max_layers is None else min(layers, max_layers)
        tx0, ty0, _, _ = siz.tile_bounds(t)
        grids = [resolution_grids(siz, t, c, styles[c]) for c in range(ncomp)]
        prec = tile_precincts(grids, [(cm.dx, cm.dy) for cm in siz.components], (tx0, ty0))
        seq_p, _ = packet_sequence(prec, 1, RPCL, [])
        empty = b"\x00\xff\x92" if cod.eph else b"\x00"
        body = bytearray()
        s_base: dict[tuple[int, int], int] = {}
        for c in range(ncomp):
            s = 0
            for g in grids[c]:
                s_base[(c, g.r)] = s
                s += g.num_precincts
        for local in seq_p.tolist():
            c, r, p = int(prec.comp[local]), int(prec.res[local]), int(prec.index[local])
            ident = precinct_id(t, c, s_base[(c, r)] + p, ncomp, ntiles)
            data = precinct_bins.get(ident, b"")
            have = 0
            if data:
                bands = precinct_band_grids(siz, t, c, styles[c], grids[c][r], p)
                state = PrecinctState(bands, styles[c].cb_style)
                have = complete_packets(state, data, cod.eph, take)
                if have:
                    state2 = PrecinctState(bands, styles[c].cb_style)
                    body += data[:_packets_end(state2, data, cod.eph, have)]
            body += empty * (layers - have)
        th = _rewrite_header(tile_headers.get(t, b""), 0)
        psot = 12 + len(th) + 2 + len(body)
        out += struct.pack(">HHHIBB", SOT, 10, t, psot, 0, 1) + th + struct.pack(">H", SOD)
        out += body
    out += struct.pack(">H", EOC)
    return bytes(out)


def _packets_end(state: PrecinctState, data: bytes, eph: bool, count: int) -> int:
    pos = 0
    for layer in range(count):
        bits = BitReader(data, pos, len(data))
        body = state.read_header(bits, layer)
        end = bits.align()
        if eph and end + 2 <= len(data) and data[end] == 0xFF and data[end + 1] == 0x92:
            end += 2
        pos = end + body
    return pos


def whole_tile_parts(data: bytes, t: int) -> list[bytes]:
    """The whole tile-parts at the start of tile data-bin `t` (a prefix may end inside one)."""
    parts = []
    pos = 0
    while pos + _SOT_BODY.size + 2 <= len(data):
        marker = (data[pos] << 8) | data[pos + 1]
        lsot, isot, psot, _, _ = _SOT_BODY.unpack_from(data, pos + 2)
        if marker != SOT or lsot != 10 or isot != t or psot < 14:
            raise CodestreamError(pos, f"tile data-bin {t}: no SOT of tile {t} at byte {pos}")
        if pos + psot > len(data):
            break
        parts.append(data[pos:pos + psot])
        pos += psot
    return parts


def _empty_tile(layout, t: int) -> bytes:
    """A tile-part of tile t whose every packet is empty (a tile the client holds nothing of),
    coded as the main header says."""
    siz = layout.siz
    cod, styles = tile_coding(layout, t)
    count = sum(g.num_precincts for c in range(siz.num_components)
                for g in resolution_grids(siz, t, c, styles[c])) * cod.layers
    empty = b"\x00\xff\x92" if cod.eph else b"\x00"
    if cod.sop:  # the main header says packets start with SOP: give them one (Nsop counts)
        body = b"".join(struct.pack(">HHH", SOP, 4, n & 0xFFFF) + empty for n in range(count))
    else:
        body = empty * count
    return struct.pack(">HHHIBB", SOT, 10, t, 14 + len(body), 0, 1) + struct.pack(">H", SOD) + body


def rebuild_from_tiles(main_header: bytes, tile_bins: dict[int, bytes]) -> bytes:
    """A codestream from a main header data-bin and tile data-bins (JPT-streams, by tile
    index; each bin may be a prefix): every tile's whole tile-parts, in order. A tile of which
    only some tile-parts are held says so (TNsot 0: the count is not given), and a tile held
    not at all gets one tile-part of empty packets, so the decoder sees every tile."""
    if main_header[:2] != b"\xff\x4f":
        raise CodestreamError(0, "main header bin does not start with SOC")
    # The main header alone says how a tile is coded when nothing of it is held.
    skeleton = bytes(main_header) + struct.pack(">HHHIBBHH", SOT, 10, 0, 14, 0, 1, SOD, EOC)
    layout = parse_codestream(skeleton, 0, len(skeleton))
    out = bytearray(main_header)
    for t in range(layout.siz.num_tiles):
        parts = whole_tile_parts(tile_bins.get(t, b""), t)
        if not parts:
            out += _empty_tile(layout, t)
            continue
        tnsot = parts[0][11]
        if tnsot and len(parts) < tnsot:
            parts = [p[:11] + b"\x00" + p[12:] for p in parts]
        for p in parts:
            out += p
    out += struct.pack(">H", EOC)
    return bytes(out)
