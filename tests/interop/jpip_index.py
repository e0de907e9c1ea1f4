"""JPIP index boxes (ISO/IEC 15444-9 Annex I) written into a JP2 file: test scaffolding.

OpenJPEG's opj_server serves only JP2 files that carry such an index, and Debian's
`opj_compress -jpip` writes it empty. `add_jpip_index` takes a JP2 file with one codestream and
returns the same file with the index added, built from our own codestream index (every marker
segment, tile-part and packet located by codestream/parse.py and codestream/index.py). The
codestream bytes are not touched, only moved: the result decodes exactly like the input.

Layout written (the one opj_server 2.5 accepts, as OpenJPEG 1.5's encoder wrote it):

    jP  ftyp  jp2h ... | iptr | jp2c | ... | cidx | fidx

- `iptr` (index finder): OFF, LEN of the fidx box (8 bytes each).
- `cidx` (codestream index), holding in order:
  - `cptr`: DR = 0 and CONT = 0 (the codestream is contiguous, in this file), COFF and CLEN of
    the codestream (file offset of the jp2c contents, and its length; 8 bytes each);
  - `manf`: the box headers (LBox, TBox) of the boxes that follow in the cidx;
  - `mhix` (main header index): TLEN, the main header's length from SOC up to the first SOT,
    then one entry per marker segment after SOC: code (2), NR (2: how many later segments of
    the header have the same code), OFF (8: offset of the segment's length field from the start
    of the codestream) and LEN (2: the Lmar value, 0 for a marker without a segment);
  - `tpix` (tile-part index): one `faix` of (offset of SOT, Psot) per tile-part, a row per tile;
  - `thix` (tile header index): a `manf` listing one `mhix` per tile, then those mhix boxes:
    TLEN from the SOT marker up to and including SOD, and entries for SOT, the marker segments
    and SOD of the tile's first tile-part (the only one openjpip reads: its tile header bin);
  - `ppix` (precinct packet index): a `manf` listing one `faix` per component, then those faix
    boxes: a row per tile, element s x L + l the (offset, length) of the packet of layer l of
    precinct s (the precinct's sequence number within its tile-component, resolution by
    resolution, as in the precinct data-bin id), zeros past the tile's last precinct;
  - `phix` (packet header index): the same table with each packet's header length.
- `fidx` (file index) holding `prxy`: OOFF and the header of the jp2c box, NI = 1, IOFF and the
  header of the cidx box.

faix version 0 (4-byte fields, no AUX) when every value fits, version 1 (8-byte) otherwise.
All offsets inside cidx are from the start of the codestream; cptr, prxy and iptr hold file
offsets. Packets are indexed without SOP marker segments (as precinct data-bins carry them).

What opj_server reads of it (openjpip index_manager.c): cptr, the manf's list (mhix, tpix, thix
and ppix must be present), the main mhix entries for SIZ and COD (their Lmar is checked against
LEN), TLEN of the main header (the main header bin), tpix, TLEN of each tile's mhix (its tile
header bin is the TLEN - 2 bytes after the SOT marker code: openjpip's SOT body ... SOD
convention) and the ppix tables; iptr, fidx and prxy are checked and only warned about. Its
precinct arithmetic assumes a precinct grid anchored at the tile origin, which holds for the
interop images (one tile at the origin, power-of-two sizes).

Tiles in several tile-parts are indexed too (tpix has a column per tile-part): opj_server
serves JPT-streams only for such files, sending tile-parts 0 .. n - 1 - d for a window d levels
down (it takes each tile-part to hold one resolution, as `opj_compress -TP R` writes them).

Limits (the generated interop images are inside them): one codestream, a top-level jp2c box,
no PPM/PPT (packet headers in the packets), no marker segments in a tile's later tile-parts
(openjpip reads only the first one's header).
"""
from __future__ import annotations

import struct
from collections import Counter

import numpy as np

from codestream.boxes import read_box_header, read_layout
from codestream.index import CodestreamIndex, index_codestream
from codestream.markers import SOD, SOT, read_segment
from codestream.parse import CodestreamLayout, parse_codestream

INDEX_BOXES = (b"iptr", b"cidx", b"fidx")


def _box(box_type: bytes, content: bytes) -> bytes:
    if 8 + len(content) >= 1 << 32:
        raise ValueError(f"{box_type!r} box over 4 GiB")
    return struct.pack(">I4s", 8 + len(content), box_type) + content


def _manf(boxes: list[bytes]) -> bytes:
    """A manifest: the headers of the boxes that follow it (all written with 8-byte headers)."""
    return _box(b"manf", b"".join(b[:8] for b in boxes))


def _faix(table: np.ndarray) -> bytes:
    """A fragment array index box from a (rows, nmax, 2) table of (offset, length)."""
    rows, nmax = table.shape[:2]
    wide = max(int(table.max(initial=0)), rows, nmax) >= 1 << 32
    dtype = ">u8" if wide else ">u4"
    head = bytes([1 if wide else 0]) + np.array([nmax, rows], dtype).tobytes()
    return _box(b"faix", head + np.ascontiguousarray(table, dtype).tobytes())


def _mhix(tlen: int, entries: list[tuple[int, int, int]]) -> bytes:
    """A header index box: TLEN, then (code, NR, offset, length) for each (code, offset, Lmar)."""
    remaining = Counter(code for code, _, _ in entries)
    out = bytearray(struct.pack(">Q", tlen))
    for code, offset, lmar in entries:
        remaining[code] -= 1
        out += struct.pack(">HHQH", code, remaining[code], offset, lmar)
    return _box(b"mhix", bytes(out))


def _main_header(buf: bytes, cs: int, first_sot: int) -> bytes:
    entries = []
    pos = cs + 2  # after SOC
    while pos < first_sot:
        seg = read_segment(buf, pos, first_sot)
        entries.append((seg.code, seg.offset + 2 - cs, seg.length - 2))
        pos = seg.end
    return _mhix(first_sot - cs, entries)


def _tile_headers(buf: bytes, cs: int, layout: CodestreamLayout) -> bytes:
    boxes = []
    for t in range(layout.siz.num_tiles):
        th = layout.tiles.get(t)
        if th is None or not th.parts:
            raise ValueError(f"tile {t} has no tile-part")
        if any(p.header_segments for p in th.parts[1:]):
            raise ValueError(f"tile {t}: marker segments after its first tile-part, which "
                             "openjpip's tile header index does not hold")
        part = th.parts[0]
        entries = [(SOT, part.sot_offset + 2 - cs, 10)]
        entries += [(seg.code, seg.offset + 2 - cs, seg.length - 2)
                    for seg in part.header_segments]
        entries.append((SOD, part.header_end - cs, 0))
        boxes.append(_mhix(part.header_end - part.sot_offset, entries))
    return _box(b"thix", _manf(boxes) + b"".join(boxes))


def _tile_parts(cs: int, layout: CodestreamLayout) -> bytes:
    ntiles = layout.siz.num_tiles
    nmax = max(len(th.parts) for th in layout.tiles.values())
    table = np.zeros((ntiles, nmax, 2), np.int64)
    for t, th in layout.tiles.items():
        for k, part in enumerate(th.parts):
            table[t, k] = (part.sot_offset - cs, part.data_end - part.sot_offset)
    return _box(b"tpix", _faix(table))


def _packet_tables(ix: CodestreamIndex, cs: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per component, (tiles, nmax, 2) tables of packets and of packet headers."""
    siz = ix.siz
    ntiles, ncomp = siz.num_tiles, siz.num_components
    prec, pk = ix.precincts, ix.packets
    if (pk["header_length"] < 0).any() or (pk["packed_length"] > 0).any():
        raise ValueError("packet header lengths unknown (PPM/PPT, or indexed from PLT)")
    # The precinct's sequence number s in its tile-component, from its data-bin id
    # (id = t + (c + s * components) * tiles).
    s = ((prec["id"] - prec["t"]) // ntiles - prec["c"]) // ncomp
    owner = pk["precinct"]
    t, c = prec["t"][owner], prec["c"][owner]
    layers = ix.layers[t].astype(np.int64)
    slot = s[owner] * layers + pk["layer"]
    packets, headers = [], []
    for comp in range(ncomp):
        mine = c == comp
        per_tile = np.zeros(ntiles, np.int64)
        np.maximum.at(per_tile, t[mine], slot[mine] + 1)
        nmax = max(int(per_tile.max(initial=0)), 1)
        full = np.zeros((ntiles, nmax, 2), np.int64)
        head = np.zeros((ntiles, nmax, 2), np.int64)
        rows, cols = t[mine], slot[mine]
        full[rows, cols, 0] = head[rows, cols, 0] = pk["offset"][mine] - cs
        full[rows, cols, 1] = pk["length"][mine]
        head[rows, cols, 1] = pk["header_length"][mine]
        packets.append(full)
        headers.append(head)
    return packets, headers


def _codestream_index(buf: bytes, cs: int, length: int) -> bytes:
    layout = parse_codestream(buf, cs, length)
    if layout.ppm or any(th.ppt for th in layout.tiles.values()):
        raise ValueError("packed packet headers (PPM/PPT) are not indexed by this writer")
    ix = index_codestream(buf, cs, length, use_plt=False)  # decoded headers: their lengths
    packets, headers = _packet_tables(ix, cs)
    ppix_faix = [_faix(p) for p in packets]
    phix_faix = [_faix(h) for h in headers]
    parts = [
        _main_header(buf, cs, layout.tile_parts[0].sot_offset),
        _tile_parts(cs, layout),
        _tile_headers(buf, cs, layout),
        _box(b"ppix", _manf(ppix_faix) + b"".join(ppix_faix)),
        _box(b"phix", _manf(phix_faix) + b"".join(phix_faix)),
    ]
    return _manf(parts) + b"".join(parts)


def add_jpip_index(jp2: bytes) -> bytes:
    """`jp2` with iptr, cidx and fidx boxes added (see the module docstring)."""
    layout = read_layout(jp2)
    if not layout.is_jp2 or len(layout.codestreams) != 1:
        raise ValueError("expected a JP2 file with one codestream")
    if any(b.box_type in INDEX_BOXES for b in layout.top_boxes):
        raise ValueError("the file already has JPIP index boxes")
    jp2c = next((b for b in layout.top_boxes if b.box_type == b"jp2c"), None)
    if jp2c is None:
        raise ValueError("the codestream is not in a top-level jp2c box")
    cs, length = layout.codestreams[0]
    before, after = jp2[:jp2c.offset], jp2[jp2c.end:]
    # The jp2c box with its length written out (LBox 0, "to the end of the file", would
    # swallow the boxes appended after it).
    jp2c_box = _box(b"jp2c", jp2[cs:cs + length])
    body = _codestream_index(jp2, cs, length)

    iptr_length = 8 + 16
    jp2c_at = len(before) + iptr_length
    cidx_at = jp2c_at + len(jp2c_box) + len(after)
    cptr = _box(b"cptr", struct.pack(">HHQQ", 0, 0, jp2c_at + 8, length))
    cidx = _box(b"cidx", cptr + body)
    prxy = _box(b"prxy", struct.pack(">Q", jp2c_at) + jp2c_box[:8]
                + bytes([1]) + struct.pack(">Q", cidx_at) + cidx[:8])
    fidx = _box(b"fidx", prxy)
    iptr = _box(b"iptr", struct.pack(">QQ", cidx_at + len(cidx), len(fidx)))
    out = before + iptr + jp2c_box + after + cidx + fidx
    # The codestream only moved.
    moved = read_box_header(out, jp2c_at, len(out))
    assert out[moved.content_offset:moved.end] == jp2[cs:cs + length]
    return out
