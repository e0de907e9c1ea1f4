"""The precinct index of a codestream: where every packet of every precinct is, as numpy arrays.

Packets are located from PLT marker segments when they are present and add up exactly to the
tile data; otherwise by decoding packet headers (packets.py), with headers taken from PPM/PPT
when the file packs them there.

Decoding every packet header of a large file without PLT takes seconds (a 16384² RGB image in
64² precincts has 2.1M packets). When the resolution is the outermost loop of a tile's
progression (RLCP, RPCL, no POC), the packets of its lowest resolutions come first: an index
can then be built for the lowest `resolutions` only (`index_codestream(..., resolutions=n)`),
decoding that prefix of each tile and skipping the rest of it (tile-part lengths say where the
next tile starts). Such an index says so (`resolutions_indexed`); serving a window that needs
more resolutions first indexes further (`codestream.source.Source.index_codestreams`).
"""
from __future__ import annotations

import logging
import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import CodestreamError
from .geometry import (
    precinct_band_grids,
    precinct_id,
    resolution_grids,
    tile_component_bounds,
)
from .markers import Cod, CodingStyle, PocEntry, Siz
from .packets import BitReader, PrecinctState
from .parse import CodestreamLayout, TileHeaders, parse_codestream, tile_coding
from .progression import packet_sequence, tile_precincts

log = logging.getLogger(__name__)

# Bounds on what a header may claim beyond the data present (see _Builder._claim and
# index_codestream): rows of the precinct and resolution tables, and tiles without tile-parts.
ROW_MARGIN = 1 << 16
PAUSE_EVERY = (1 << 12) - 1  # `pause` is called once per 4096 packet headers decoded
ABSENT_TILE_FACTOR = 4
ABSENT_TILE_MARGIN = 1024

# Columns of the per (tile, component, resolution) table.
TCR_FIELDS = ("t", "c", "r", "levels", "x0", "y0", "x1", "y1", "ppx", "ppy", "npw", "nph",
              "prec_base", "s_base", "reversible")
PRECINCT_FIELDS = ("id", "t", "c", "r", "p", "x0", "y0", "x1", "y1", "gx0", "gy0", "gx1", "gy1",
                   "pkt_start", "pkt_count", "bin_length")
PACKET_FIELDS = ("precinct", "layer", "offset", "length", "header_length", "packed_offset",
                 "packed_length", "sop", "bin_end")
# packed_offset of a packet whose bytes cross a boundary between the file runs that hold a
# scattered codestream (a DICOM frame split over fragments, see scattered.py): its bytes are the
# rows of `CodestreamIndex.split_spans` for that packet, its `length` is 0 and its
# `packed_length` is its whole size (so servers take the assembled path, never one file run).
SPLIT = -2
# Columns of the tile-part table (`CodestreamIndex.tile_parts`), offsets relative to the
# codestream's first byte (SOC): where the SOT marker is, where the tile-part header ends (just
# after SOD) and where its data ends; `packed` is 1 for a tile whose packet headers are packed
# in PPM/PPT marker segments.
TILE_PART_FIELDS = ("tile", "tpsot", "tnsot", "sot", "header_end", "data_end", "packed")
PACKET_DTYPES = {"precinct": np.int32, "layer": np.int32, "offset": np.int64, "length": np.int64,
                 "header_length": np.int32, "packed_offset": np.int64, "packed_length": np.int32,
                 "sop": np.uint8, "bin_end": np.int64}


@dataclass
class CodestreamIndex:
    """Everything needed to serve one codestream, held in numpy arrays (structure of arrays)."""

    offset: int
    length: int
    siz: Siz
    layers: np.ndarray           # per tile: number of quality layers
    tile_mct: np.ndarray         # per tile: MCT flag of the tile's COD
    main_header_ranges: np.ndarray   # (n, 2) offset, length
    tile_header_ranges: np.ndarray   # (n, 3) tile, offset, length (in order per tile)
    tiles_present: np.ndarray    # per tile: 1 if it has tile-parts
    tile_parts: np.ndarray       # (n, 7) TILE_PART_FIELDS per tile-part, in file order
    tcr: dict[str, np.ndarray]
    precincts: dict[str, np.ndarray]
    packets: dict[str, np.ndarray]
    packed_headers: bytes        # PPM/PPT packet headers, referenced by packed_offset
    source: str                  # "plt", "headers" or "mixed": how packets were located
    markers: tuple[str, ...]
    progression: int
    cod_scod: int
    tile_data_bytes: int         # bytes of packet data in tile-parts (for accounting)
    padding_bytes: int = 0       # bytes after a tile's last packet (encoder padding)
    # A codestream whose bytes are not one run of the file (fragments of a DICOM frame):
    # (n, 2) file offset, length of the runs that hold it, in order; None: the one run
    # [offset, offset + length). All offsets in the index are file offsets either way.
    runs: np.ndarray | None = None
    # (m, 3) packet row, where, length: the pieces of the packets marked SPLIT, in order;
    # `where` >= 0 is a file offset, < 0 a run of packed_headers starting at -1 - where.
    split_spans: np.ndarray | None = None
    # The packets of the lowest `resolutions_indexed` resolutions of every tile are located,
    # those above are not (their precincts show no packets yet); None: every packet is.
    resolutions_indexed: int | None = None

    @property
    def num_tiles(self) -> int:
        return self.siz.num_tiles

    @property
    def num_components(self) -> int:
        return self.siz.num_components

    @cached_property
    def max_layers(self) -> int:
        return int(self.layers.max()) if len(self.layers) else 0

    @property
    def max_discard(self) -> int:
        """The most resolution levels a request may discard: the fewest decomposition levels
        of any tile-component (COD/COC may differ per component), since a decoder cannot drop
        more levels than a tile-component has (OpenJPEG refuses to)."""
        return int(self.tcr["levels"].min()) if len(self.tcr["levels"]) else 0


def _vbas_values(data: np.ndarray) -> np.ndarray | None:
    """The Iplt values of concatenated PLT bodies (7 bits a byte, high bit = more bytes), or
    None when the last value is cut off."""
    if len(data) == 0:
        return np.zeros(0, np.int64)
    last = (data & 0x80) == 0  # the last byte of each value
    if not last[-1]:
        return None
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if int((ends - starts).max()) > 8:  # over 56 bits: no packet is that long
        return None
    # Each byte contributes its 7 bits shifted by 7 x (bytes after it in its value).
    owner = np.repeat(np.arange(len(ends)), ends - starts + 1)
    shift = 7 * (ends[owner] - np.arange(len(data)))
    return np.add.reduceat((data & 0x7F).astype(np.int64) << shift, starts)


def _plt_lengths(buf, th: TileHeaders) -> list[np.ndarray] | None:
    """Packet lengths per tile-part from PLT, or None when a tile-part has none or its PLT
    does not decode."""
    by_part: dict[int, list[tuple[int, object]]] = {}
    for part_no, z, seg in th.plt:
        by_part.setdefault(part_no, []).append((z, seg))
    out: list[np.ndarray] = []
    for part_no in range(len(th.parts)):
        segs = sorted(by_part.get(part_no, []), key=lambda zs: zs[0])
        if not segs:
            return None
        data = np.concatenate([np.frombuffer(buf, np.uint8, seg.end - seg.body_offset - 1,
                                             seg.body_offset + 1) for _, seg in segs])
        lengths = _vbas_values(data)
        if lengths is None:
            return None  # the last length is cut off: the PLT cannot be trusted
        # Kakadu reserves PLT space with zero entries at the end.
        nonzero = np.flatnonzero(lengths)
        out.append(lengths[:nonzero[-1] + 1] if len(nonzero) else lengths[:0])
    return out


def _ppm_chunks(buf, layout: CodestreamLayout) -> dict[int, bytes]:
    """PPM packet-header bytes per tile-part (keyed by SOT offset)."""
    if not layout.ppm:
        return {}
    stream = b"".join(bytes(buf[seg.body_offset + 1:seg.end]) for _, seg in layout.ppm)
    # Where each PPM segment's data starts in `stream`, to name the segment an error is in.
    starts = np.cumsum([0] + [seg.end - seg.body_offset - 1 for _, seg in layout.ppm])

    def segment_at(pos: int) -> int:
        k = min(int(np.searchsorted(starts, pos, side="right")) - 1, len(layout.ppm) - 1)
        return layout.ppm[k][1].offset

    chunks: dict[int, bytes] = {}
    pos = 0
    for part in layout.tile_parts:
        if pos + 4 > len(stream):
            raise CodestreamError(layout.ppm[-1][1].offset,
                                  "PPM: fewer Nppm chunks than tile-parts")
        (n,) = struct.unpack_from(">I", stream, pos)
        if pos + 4 + n > len(stream):
            raise CodestreamError(segment_at(pos), f"PPM: Nppm {n} runs past the PPM data")
        chunks[part.sot_offset] = stream[pos + 4:pos + 4 + n]
        pos += 4 + n
    return chunks


def _after_eph(buf, pos: int, end: int, t: int, where: int | None = None) -> int:
    """The position after the EPH marker that must end a packet header when COD announces EPH
    markers (T.800 A.8.2); a header without one is corrupt (and OpenJPEG refuses it). `where`
    is the file offset to name when `buf` is not the file (packed headers)."""
    if pos + 2 > end or buf[pos] != 0xFF or buf[pos + 1] != 0x92:
        raise CodestreamError(pos if where is None else where, f"tile {t}: packet header not "
                              "followed by EPH (COD announces EPH markers)")
    return pos + 2


class _Builder:
    """Accumulates the arrays of one codestream tile by tile."""

    def __init__(self, buf, layout: CodestreamLayout, *, use_plt: bool, verify_plt: bool,
                 resolutions: int | None = None,
                 pause: Callable[[], None] | None = None) -> None:
        self.buf = buf
        self.pause = pause
        self.resolutions = resolutions
        self.cut = False  # a tile's packets above `resolutions` were left out
        self.layout = layout
        self.use_plt = use_plt
        self.verify_plt = verify_plt
        self.siz = layout.siz
        self.tcr: dict[str, list] = {k: [] for k in TCR_FIELDS}
        self.prec_cols: dict[str, list[np.ndarray]] = {k: [] for k in PRECINCT_FIELDS}
        self.pk: dict[str, list] = {k: [] for k in PACKET_FIELDS[:-1]}
        self.packed = bytearray()
        self.sources: set[str] = set()
        self.prec_total = 0
        self.ppm = _ppm_chunks(buf, layout)
        self.data_bytes = 0
        self.padding_bytes = 0
        self.packed_tiles: set[int] = set()
        self.rows_claimed = 0
        self.row_budget = ROW_MARGIN + (layout.end - layout.offset)

    def add_tile(self, t: int) -> tuple[int, int]:
        siz = self.siz
        cod, styles = tile_coding(self.layout, t)
        tx0, ty0, _, _ = siz.tile_bounds(t)
        grids_by_comp = [resolution_grids(siz, t, c, styles[c]) for c in range(siz.num_components)]
        self._claim(t, sum(g.num_precincts + 1 for grids in grids_by_comp for g in grids))
        self._add_geometry(t, styles, grids_by_comp)
        prec = tile_precincts(grids_by_comp, [(cm.dx, cm.dy) for cm in siz.components], (tx0, ty0))
        base = self.prec_total
        self.prec_total += len(prec.comp)
        th = self.layout.tiles.get(t)
        if th is None or len(prec.comp) == 0:
            return cod.layers, cod.mct
        pocs = th.markers.pocs or self.layout.main.pocs
        tile_bytes = sum(part.data_end - part.header_end for part in th.parts)
        self.data_bytes += tile_bytes
        # With packed headers (PPM/PPT) the headers must be decoded anyway to split the packed
        # stream packet by packet, and decoding them also gives the body lengths PLT would.
        packed = bool(th.ppt) or bool(self.ppm)
        if packed:
            self.packed_tiles.add(t)
        if tile_bytes == 0 and not packed:
            # Every packet is at least one byte (its header) unless headers are packed
            # elsewhere: tile-parts without a byte of data are cut or corrupt.
            raise CodestreamError(th.parts[0].sot_offset, f"tile {t}: its tile-parts hold no "
                                  "packet data")
        may_use_plt = self.use_plt and bool(th.plt) and not packed
        prefix = self._resolution_prefix(prec, cod, pocs) if not may_use_plt else False
        if prefix:
            # Resolution outermost: the lowest resolutions' packets are the sequence's prefix,
            # which is the sequence of those resolutions alone (a POC-like restriction).
            only = [PocEntry(0, 0, cod.layers, self.resolutions, 1 << 30, cod.progression)]
            seq_p, seq_l = packet_sequence(prec, cod.layers, cod.progression, only)
            self.cut = True
        else:
            seq_p, seq_l = packet_sequence(prec, cod.layers, cod.progression, pocs)
        plt = _plt_lengths(self.buf, th) if may_use_plt else None
        located = None
        if plt is not None:
            located = self._locate_with_plt(th, plt, len(seq_p), cod)
            if located is None:
                log.warning("tile %d: PLT does not match the tile data; decoding packet headers", t)
            elif self.verify_plt:
                decoded = self._decode_headers(t, th, cod, styles, grids_by_comp, prec, seq_p,
                                               seq_l)
                if not (np.array_equal(decoded[0], located[0])
                        and np.array_equal(decoded[1], located[1])):
                    raise CodestreamError(th.parts[0].sot_offset,
                                          f"tile {t}: PLT lengths disagree with packet headers")
        if located is None:
            located = self._decode_headers(t, th, cod, styles, grids_by_comp, prec, seq_p,
                                           seq_l, partial=prefix)
            self.sources.add("headers")
        else:
            self.sources.add("plt")
        offsets, lengths, hlens, poffs, plens, sops = located
        n = len(offsets)
        # Packets go in (precinct, layer) order. Every precinct has a prefix of its layers (a
        # cut tile loses a suffix of the sequence), so a packet's place is its precinct's
        # first slot plus its layer: a scatter, no sort.
        local, layer = seq_p[:n], seq_l[:n]
        counts = np.bincount(local, minlength=len(prec.comp))
        first = np.zeros(len(counts), np.int64)
        np.cumsum(counts[:-1], out=first[1:])
        dest = first[local] + layer
        del first, counts
        columns = (("precinct", local + base, np.int32), ("layer", layer, np.int32),
                   ("offset", offsets, np.int64), ("length", lengths, np.int64),
                   ("header_length", hlens, np.int32), ("packed_offset", poffs, np.int64),
                   ("packed_length", plens, np.int32), ("sop", sops, np.uint8))
        for name, values, dtype in columns:
            column = np.empty(n, dtype)
            column[dest] = np.asarray(values)
            self.pk[name].append(column)
        return cod.layers, cod.mct

    def _resolution_prefix(self, prec, cod: Cod, pocs) -> bool:
        """True when only the tile's lowest `resolutions` resolutions are to be located: they
        come first in its sequence (RLCP, RPCL without POC) and some precinct is above them."""
        if self.resolutions is None or pocs or cod.progression not in (1, 2):
            return False
        return bool((prec.res >= self.resolutions).any())

    def _claim(self, t: int, rows: int) -> None:
        """Counts the precinct and resolution rows tile t adds, and refuses (as malformed, not
        unsupported) a header that claims more than the file could hold: every precinct of a
        complete codestream has at least one packet of at least one byte, so the rows stay
        below the codestream's length (plus a margin). Memory and time then follow the file,
        not what its header claims."""
        self.rows_claimed += rows
        if self.rows_claimed > self.row_budget:
            raise CodestreamError(self.layout.offset, f"the header claims more precincts (over "
                                  f"{self.rows_claimed} by tile {t}) than the codestream's "
                                  f"{self.layout.end - self.layout.offset} bytes can hold")

    def _add_geometry(self, t: int, styles: list[CodingStyle], grids_by_comp) -> None:
        siz = self.siz
        ncomp, ntiles = siz.num_components, siz.num_tiles
        row = self.prec_total
        for c, grids in enumerate(grids_by_comp):
            style = styles[c]
            nl = style.levels
            dx, dy = siz.components[c].dx, siz.components[c].dy
            tcx0, tcy0, tcx1, tcy1 = tile_component_bounds(siz, t, c)
            s_base = 0
            for g in grids:
                for k, v in zip(TCR_FIELDS, (t, c, g.r, nl, g.x0, g.y0, g.x1, g.y1, g.ppx, g.ppy,
                                             g.npw, g.nph, row, s_base, int(style.reversible)),
                                strict=True):
                    self.tcr[k].append(v)
                n = g.num_precincts
                if n:
                    p = np.arange(n, dtype=np.int64)
                    px, py = p % g.npw, p // g.npw
                    x0 = np.maximum((g.px_origin + px) << g.ppx, g.x0)
                    y0 = np.maximum((g.py_origin + py) << g.ppy, g.y0)
                    x1 = np.minimum((g.px_origin + px + 1) << g.ppx, g.x1)
                    y1 = np.minimum((g.py_origin + py + 1) << g.ppy, g.y1)
                    sx, sy = dx << (nl - g.r), dy << (nl - g.r)
                    cols = self.prec_cols
                    cols["id"].append(precinct_id(t, c, s_base + p, ncomp, ntiles))
                    cols["t"].append(np.full(n, t, np.int32))
                    cols["c"].append(np.full(n, c, np.int32))
                    cols["r"].append(np.full(n, g.r, np.int32))
                    cols["p"].append(p)
                    cols["x0"].append(x0)
                    cols["y0"].append(y0)
                    cols["x1"].append(x1)
                    cols["y1"].append(y1)
                    # On the reference grid, clipped to the tile-component's footprint.
                    cols["gx0"].append(np.maximum(x0 * sx, tcx0 * dx))
                    cols["gy0"].append(np.maximum(y0 * sy, tcy0 * dy))
                    cols["gx1"].append(np.minimum(x1 * sx, tcx1 * dx))
                    cols["gy1"].append(np.minimum(y1 * sy, tcy1 * dy))
                row += n
                s_base += n

    def _locate_with_plt(self, th: TileHeaders, plt: list[np.ndarray], npackets: int, cod: Cod):
        """Packet offsets and lengths from PLT, if they tile each tile-part's data exactly."""
        if sum(len(x) for x in plt) > npackets:
            return None
        offsets, lengths = [], []
        for part, part_lengths in zip(th.parts, plt, strict=True):
            ends = part.header_end + np.cumsum(part_lengths)
            if len(ends) and int(ends[-1]) != part.data_end or not len(ends) and \
                    part.data_end != part.header_end:
                return None
            lengths.append(part_lengths)
            offsets.append(ends - part_lengths)
        offsets = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        sops = np.zeros(len(offsets), np.uint8)
        if cod.sop and len(offsets):
            # A packet may start with an SOP marker segment (6 bytes): found by looking.
            big = lengths >= 6
            at = offsets[big]
            file = np.frombuffer(self.buf, np.uint8)
            sops[big] = (file[at] == 0xFF) & (file[at + 1] == 0x91)
            offsets = offsets + 6 * sops
            lengths = lengths - 6 * sops
        n = len(offsets)
        minus = np.full(n, -1, np.int64)
        return offsets, lengths, minus, minus, np.zeros(n, np.int64), sops

    def _decode_headers(self, t, th, cod: Cod, styles, grids_by_comp, prec, seq_p, seq_l,
                        partial: bool = False):
        """Locates the packets of `seq_p`/`seq_l` by decoding their headers; `partial`: the
        sequence is a prefix of the tile's (the tile's data goes on after it)."""
        buf = self.buf
        siz = self.siz
        packed_stream = None
        if th.ppt:
            order = sorted(th.ppt, key=lambda zs: zs[0])
            packed_stream = b"".join(bytes(buf[s.body_offset + 1:s.end]) for _, s in order)
        elif self.ppm:
            packed_stream = b"".join(self.ppm[p.sot_offset] for p in th.parts)
        packed_base = len(self.packed)
        if packed_stream is not None:
            self.packed += packed_stream
        hpos = 0
        states: dict[int, PrecinctState] = {}  # precincts with packets still to come
        last_layer = cod.layers - 1
        # Compact growing arrays, not lists of Python ints: a tile may have millions of packets.
        offsets, lengths, hlens, poffs, plens = (array("q") for _ in range(5))
        sops = array("B")
        parts = th.parts
        part_no = 0
        pos, end = parts[0].header_end, parts[0].data_end
        comp_arr, res_arr, idx_arr = prec.comp, prec.res, prec.index
        pause = self.pause
        for k in range(len(seq_p)):
            if pause is not None and not k & PAUSE_EVERY:
                pause()
            while pos >= end and part_no + 1 < len(parts):
                part_no += 1
                pos, end = parts[part_no].header_end, parts[part_no].data_end
            if pos >= end and packed_stream is None:
                break  # the tile's data ends here: later packets are absent
            if packed_stream is not None and hpos >= len(packed_stream):
                break
            local = int(seq_p[k])
            state = states.get(local)
            if state is None:
                c, r = int(comp_arr[local]), int(res_arr[local])
                grid = grids_by_comp[c][r]
                bands = precinct_band_grids(siz, t, c, styles[c], grid, int(idx_arr[local]))
                state = PrecinctState(bands, styles[c].cb_style)
                states[local] = state
            sop = 0
            if cod.sop and pos + 6 <= end and buf[pos] == 0xFF and buf[pos + 1] == 0x91:
                sop = 1
                pos += 6
            if packed_stream is None:
                bits = BitReader(buf, pos, end)
                body = state.read_header(bits, int(seq_l[k]))
                hend = bits.align()
                if cod.eph:
                    hend = _after_eph(buf, hend, end, t)
                hlen = hend - pos
                if hend + body > end:
                    raise CodestreamError(pos, f"tile {t}: packet body runs past the tile-part")
                offsets.append(pos)
                lengths.append(hlen + body)
                hlens.append(hlen)
                poffs.append(-1)
                plens.append(0)
                pos = hend + body
            else:
                bits = BitReader(packed_stream, hpos, len(packed_stream))
                body = state.read_header(bits, int(seq_l[k]))
                hend = bits.align()
                if cod.eph:
                    hend = _after_eph(packed_stream, hend, len(packed_stream), t,
                                      parts[part_no].sot_offset)
                if pos + body > end:
                    raise CodestreamError(pos, f"tile {t}: packet body runs past the tile-part")
                offsets.append(pos)
                lengths.append(body)
                hlens.append(hend - hpos)
                poffs.append(packed_base + hpos)
                plens.append(hend - hpos)
                hpos = hend
                pos += body
            sops.append(sop)
            if seq_l[k] == last_layer:
                del states[local]  # the precinct's last packet: its state is not needed again
        if not partial and (pos < end or part_no + 1 < len(parts)):
            left = end - pos + sum(p.data_end - p.header_end for p in parts[part_no + 1:])
            if left > 0 and len(offsets) < len(seq_p):
                raise CodestreamError(pos, f"tile {t}: {left} bytes of tile data after its last "
                                      "packet")
            # Some encoders pad the last tile-part (e.g. zero bytes before a missing EOC).
            self.padding_bytes += max(left, 0)
        return offsets, lengths, hlens, poffs, plens, sops

    def finish(self, layers: list[int], mct: list[int]) -> CodestreamIndex:
        layout = self.layout
        tcr = {k: np.asarray(v, np.int64) for k, v in self.tcr.items()}
        precincts = {}
        for k, parts in self.prec_cols.items():
            precincts[k] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        for k in ("t", "c", "r"):
            precincts[k] = precincts[k].astype(np.int32)
        # Tiles were added in order, each sorted by (precinct, layer): so is the whole.
        pk = {}
        for k, parts in self.pk.items():
            pk[k] = parts[0] if len(parts) == 1 else (
                np.concatenate(parts) if parts else np.zeros(0, PACKET_DTYPES[k]))
            parts.clear()
        nprec = len(precincts["id"])
        counts = np.bincount(pk["precinct"], minlength=nprec).astype(np.int32)
        starts = np.zeros(nprec, np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        sizes = pk["length"] + pk["packed_length"]
        csum = np.cumsum(sizes)
        nz_start, nz_count = starts[counts > 0], counts[counts > 0]
        group_base = np.repeat(csum[nz_start] - sizes[nz_start], nz_count)
        pk["bin_end"] = (csum - group_base).astype(np.int64)
        bin_length = np.zeros(nprec, np.int64)
        nz = counts > 0
        bin_length[nz] = pk["bin_end"][starts[nz] + counts[nz] - 1]
        precincts["pkt_start"] = starts
        precincts["pkt_count"] = counts
        precincts["bin_length"] = bin_length
        th_rows = []
        for t in sorted(layout.tiles):
            for part in layout.tiles[t].parts:
                for seg in part.header_segments:
                    if seg.code not in (0xFF58, 0xFF61):  # PLT, PPT
                        th_rows.append((t, seg.offset, seg.length))
        present = np.zeros(self.siz.num_tiles, np.uint8)
        present[list(layout.tiles)] = 1
        base = layout.offset
        parts = np.asarray([(p.tile, p.index, self.buf[p.sot_offset + 11], p.sot_offset - base,
                             p.header_end - base, p.data_end - base,
                             int(p.tile in self.packed_tiles or bool(self.ppm)))
                            for p in layout.tile_parts], np.int64).reshape(-1, 7)
        src = "mixed" if len(self.sources) > 1 else (next(iter(self.sources)) if self.sources
                                                       else "none")
        return CodestreamIndex(
            offset=layout.offset, length=layout.end - layout.offset, siz=self.siz,
            layers=np.asarray(layers, np.int32), tile_mct=np.asarray(mct, np.uint8),
            main_header_ranges=np.asarray(layout.main_bin_ranges, np.int64).reshape(-1, 2),
            tile_header_ranges=np.asarray(th_rows, np.int64).reshape(-1, 3),
            tiles_present=present, tile_parts=parts, tcr=tcr, precincts=precincts, packets=pk,
            packed_headers=bytes(self.packed), source=src,
            markers=tuple(sorted(layout.markers_seen)), progression=layout.main.cod.progression,
            cod_scod=layout.main.cod.scod, tile_data_bytes=self.data_bytes,
            padding_bytes=self.padding_bytes,
            resolutions_indexed=self.resolutions if self.cut else None)


def index_codestream(buf, offset: int, length: int, *, use_plt: bool = True,
                     verify_plt: bool = False, resolutions: int | None = None,
                     pause: Callable[[], None] | None = None) -> CodestreamIndex:
    """Indexes the codestream at buf[offset:offset+length]; with `resolutions`, only the
    packets of that many lowest resolutions where the rest can be skipped (see the module
    docstring). `pause` is called every few thousand packet headers decoded (background
    work yields there)."""
    layout = parse_codestream(buf, offset, length)
    siz = layout.siz
    # Every tile of a complete codestream has a tile-part. A few missing ones (a cut file) are
    # served as empty tiles; a header claiming far more tiles than the file holds is refused
    # (as malformed) before anything is done per claimed tile.
    if siz.num_tiles > ABSENT_TILE_FACTOR * len(layout.tiles) + ABSENT_TILE_MARGIN:
        raise CodestreamError(offset, f"SIZ claims {siz.num_tiles} tiles but only "
                              f"{len(layout.tiles)} have tile-parts")
    if siz.num_tiles * siz.num_components > 4_000_000:
        raise CodestreamError(offset, f"{siz.num_tiles} tiles x {siz.num_components} components is "
                              "more than we serve", unsupported=True)
    builder = _Builder(buf, layout, use_plt=use_plt, verify_plt=verify_plt,
                       resolutions=resolutions, pause=pause)
    layers, mct = [], []
    for t in range(siz.num_tiles):
        nl, m = builder.add_tile(t)
        layers.append(nl)
        mct.append(m)
    return builder.finish(layers, mct)
