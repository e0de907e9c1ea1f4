"""`jpip add-plt`: rewrite a JPEG 2000 file with PLT and TLM markers, without re-encoding.

A server without PLT markers must decode every packet header to find the packets (slow on big
images); with them it only adds up lengths. The rewrite works from the server's own index
(codestream.source.build_source), so the packet boundaries are the ones the server sees:

  * every tile-part header gets PLT segment(s) right before SOD listing the lengths of that
    tile-part's packets in bitstream order (SOP + header + EPH + body); a segment holds at most
    65535 bytes, Zplt counts up from 0. Existing PLT segments are replaced. A tile-part without
    packets gets one zero entry (Lplt may not be below 4; Kakadu pads PLT the same way);
  * each tile-part's Psot is set for the bytes added or removed (a Psot of 0 becomes the real
    length);
  * the main header gets TLM segment(s) (Stlm: 16-bit tile index, 32-bit lengths) listing
    every tile-part in order; existing TLM and PLM segments are dropped;
  * packed packet headers (PPM/PPT) are moved back into the packets by default and the PPM/PPT
    segments dropped: a precinct data-bin is header + body either way, so the bins do not change,
    and the output indexes from PLT alone. With `keep_packed_headers=True` PPM/PPT are kept and
    PLT lists the packets as they sit in the bitstream (SOP + body only); a server then still
    has to decode the packed headers (codestream/index.py does, and ignores PLT there);
  * bytes after a tile's last packet (encoder padding) or after EOC (DICOM pads) are dropped,
    and a missing EOC is added;
  * JP2-family files: every box is copied unchanged except the jp2c box(es), whose length is
    rewritten (LBox = 0 stays 0), and superboxes holding them.

The output is written beside the target and renamed into place once its index has been checked
against the input's (same packets and data-bin lengths, every packet located from PLT).
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from codestream.boxes import SUPERBOXES, Box, walk_boxes
from codestream.errors import CodestreamError
from codestream.index import CodestreamIndex
from codestream.markers import EOC, PLM, PLT, PPM, PPT, SOT, TLM, read_segment
from codestream.parse import CodestreamLayout, TilePart, parse_codestream
from codestream.source import Source, build_source

from .outputs import OutputError, check_output, write_error

MAX_SEGMENT_BODY = 65535 - 2  # Lxxx counts itself
MAX_PLT_DATA = MAX_SEGMENT_BODY - 1  # after Zplt
TLM_ENTRY = 6  # Ttlm (16 bits) + Ptlm (32 bits)
MAX_TLM_ENTRIES = (MAX_SEGMENT_BODY - 2) // TLM_ENTRY  # after Ztlm and Stlm
STLM = (2 << 4) | (1 << 6)  # ST = 2 (16-bit tile index), SP = 1 (32-bit lengths); T.800 A.7.1
EOC_BYTES = b"\xff\xd9"

# A piece of output: bytes to write, or an (offset, end) range of the input file.
Piece = bytes | tuple[int, int]


@dataclass
class AddPltReport:
    input: str
    output: str
    input_bytes: int
    output_bytes: int = 0
    codestreams: int = 0
    tile_parts: int = 0
    plt_segments: int = 0
    tlm_segments: int = 0
    packets: int = 0
    had_plt: bool = False
    packed_headers: bool = False  # the input had PPM/PPT
    ppm_ppt_kept: bool = False
    ppm_ppt_note: str = "no packed packet headers (PPM/PPT) in the input"
    padding_dropped: int = 0
    trailing_dropped: int = 0
    eoc_added: bool = False
    index_seconds_before: float = 0.0
    index_seconds_after: float = 0.0
    verified: bool = False  # the output was indexed and checked against the input
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        delta = self.output_bytes - self.input_bytes
        lines = [
            f"wrote {self.output} ({self.output_bytes:,} bytes, {delta:+,} from "
            f"{self.input_bytes:,})",
            f"  markers    {self.plt_segments} PLT segment(s) for {self.packets:,} packet(s) in "
            f"{self.tile_parts} tile-part(s), {self.tlm_segments} TLM segment(s)"
            + (" (replacing the input's PLT)" if self.had_plt else ""),
            f"  headers    {self.ppm_ppt_note}",
            f"  index      {self.index_seconds_before:.3f} s before"
            + (f", {self.index_seconds_after:.3f} s after (packets located from PLT, same "
               "data-bins)" if self.verified else " (output not checked)"),
        ]
        lines += [f"  note       {n}" for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------- marker encoding
def encode_lengths(lengths: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Iplt values: each length in 7-bit groups, most significant first, bit 7 set on all but
    the last byte (T.800 A.7.3). Returns the bytes and the end offset of every entry."""
    values = np.asarray(lengths, np.int64)
    if len(values) and (values.min() < 0 or values.max() >= 1 << 35):
        raise ValueError("packet length out of range for a PLT entry")
    nbytes = np.ones(len(values), np.int64)
    for k in range(1, 5):
        nbytes += values >= 1 << (7 * k)
    ends = np.cumsum(nbytes)
    out = np.zeros(int(ends[-1]) if len(ends) else 0, np.uint8)
    for k in range(5):  # k-th 7-bit group from the least significant end
        sel = nbytes > k
        group = (values[sel] >> (7 * k)) & 0x7F
        out[ends[sel] - 1 - k] = group | (0x80 if k else 0)
    return out.tobytes(), ends


def plt_segments(lengths: np.ndarray) -> list[bytes]:
    """PLT marker segments (Zplt = 0, 1, ...) for one tile-part; entries are never split."""
    if len(lengths) == 0:
        lengths = np.zeros(1, np.int64)  # Lplt >= 4: one zero entry, which readers skip
    data, ends = encode_lengths(lengths)
    segments = []
    start = 0
    while start < len(data):
        k = int(np.searchsorted(ends, start + MAX_PLT_DATA, side="right"))
        stop = int(ends[k - 1])
        if len(segments) > 255:
            raise ValueError("a tile-part needs more than 256 PLT segments")
        body = bytes([len(segments)]) + data[start:stop]
        segments.append(struct.pack(">HH", PLT, 2 + len(body)) + body)
        start = stop
    return segments


def tlm_segments(entries: list[tuple[int, int]]) -> list[bytes]:
    """TLM marker segments (Ztlm = 0, 1, ...) for (tile index, Psot) of every tile-part."""
    segments = []
    for start in range(0, len(entries), MAX_TLM_ENTRIES):
        if len(segments) > 255:
            raise ValueError("more tile-parts than 256 TLM segments can list")
        chunk = entries[start:start + MAX_TLM_ENTRIES]
        body = bytes([len(segments), STLM]) + b"".join(struct.pack(">HI", t, n) for t, n in chunk)
        segments.append(struct.pack(">HH", TLM, 2 + len(body)) + body)
    return segments


# --------------------------------------------------------------------------- codestream plan
@dataclass
class _Plan:
    """The rewritten codestream as pieces, plus what went into it."""

    pieces: list[Piece] = field(default_factory=list)
    length: int = 0
    tile_parts: int = 0
    plt_segments: int = 0
    tlm_segments: int = 0
    packets: int = 0
    padding: int = 0
    eoc_added: bool = False
    trailing: int = 0  # bytes after EOC, dropped

    def add(self, piece: Piece) -> None:
        self.pieces.append(piece)
        self.length += _piece_length(piece)


def _kept_segments(buf, start: int, end: int, drop: set[int]) -> list[tuple[int, int]]:
    """Input ranges of the marker segments in [start, end), minus the `drop` codes."""
    out: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        seg = read_segment(buf, pos, end)
        if seg.code not in drop:
            if out and out[-1][1] == seg.offset:
                out[-1] = (out[-1][0], seg.end)
            else:
                out.append((seg.offset, seg.end))
        pos = seg.end
    return out


def _packets_by_part(ix: CodestreamIndex, parts: list[TilePart]) -> list[np.ndarray]:
    """Packet rows of each tile-part (file order), sorted by their place in the bitstream."""
    pk = ix.packets
    starts = pk["offset"] - 6 * pk["sop"].astype(np.int64)
    # Packets with packed headers may have empty bodies at one place: their packed headers
    # are in sequence order.
    order = np.lexsort((pk["packed_offset"], starts))
    starts = starts[order]
    header_ends = np.asarray([p.header_end for p in parts], np.int64)
    part_of = np.searchsorted(header_ends, starts, side="right") - 1
    if len(part_of) and part_of.min() < 0:
        raise CodestreamError(int(starts[0]), "a packet lies before the first tile-part's data")
    tiles = ix.precincts["t"][pk["precinct"][order]]
    bounds = np.searchsorted(part_of, np.arange(len(parts) + 1), side="left")
    out = []
    for n, part in enumerate(parts):
        rows = order[bounds[n]:bounds[n + 1]]
        if len(rows) and np.any(tiles[bounds[n]:bounds[n + 1]] != part.tile):
            raise CodestreamError(part.sot_offset, "the index puts another tile's packet in this "
                                  "tile-part")
        out.append(rows)
    return out


def _packet_pieces(ix: CodestreamIndex, part: TilePart, rows: np.ndarray, unpack: bool
                   ) -> tuple[list[Piece], np.ndarray, int]:
    """The tile-part's new data as pieces, the packet lengths for PLT, and the padding dropped.

    Packets must follow each other without gaps from the start of the tile-part's data."""
    pk = ix.packets
    sop = pk["sop"][rows].astype(np.int64)
    off = pk["offset"][rows]
    ln = pk["length"][rows]
    starts, ends = off - 6 * sop, off + ln
    pos = part.header_end
    if len(rows) and (starts[0] != pos or np.any(starts[1:] != ends[:-1])):
        raise CodestreamError(pos, "the index's packets do not tile the tile-part data")
    data_end = int(ends[-1]) if len(rows) else pos
    if data_end > part.data_end:
        raise CodestreamError(pos, "a packet runs past its tile-part")
    padding = part.data_end - data_end
    plens = pk["packed_length"][rows].astype(np.int64)
    if not unpack or not plens.any():
        pieces: list[Piece] = [(pos, data_end)] if data_end > pos else []
        return pieces, ends - starts, padding
    # Unpacking: SOP, then the header from PPM/PPT, then the body, packet by packet.
    pieces = []
    poffs = pk["packed_offset"][rows]
    for k in range(len(rows)):
        s, o, e = int(starts[k]), int(off[k]), int(ends[k])
        if o > s:
            pieces.append((s, o))
        if plens[k]:
            pieces.append(ix.packed_headers[int(poffs[k]):int(poffs[k]) + int(plens[k])])
        if e > o:
            pieces.append((o, e))
    return pieces, ends - starts + plens, padding


def _piece_length(p: Piece) -> int:
    return len(p) if isinstance(p, bytes) else p[1] - p[0]


def _plan_tile_part(buf, ix: CodestreamIndex, part: TilePart, rows: np.ndarray, unpack: bool
                    ) -> tuple[list[Piece], int, int, int]:
    """SOT (with the new Psot), the kept header segments, PLT, SOD and the packets.

    Returns the pieces, Psot, the number of PLT segments and the padding dropped."""
    drop = {PLT} | ({PPT} if unpack else set())
    header = _kept_segments(buf, part.sot_offset + 12, part.header_end - 2, drop)
    data, lengths, padding = _packet_pieces(ix, part, rows, unpack)
    plts = plt_segments(lengths)
    body: list[Piece] = [*header, *plts, b"\xff\x93", *data]
    psot = 12 + sum(map(_piece_length, body))
    if psot >= 1 << 32:
        raise ValueError(f"tile-part at byte {part.sot_offset} would be 4 GiB or more")
    sot = bytearray(buf[part.sot_offset:part.sot_offset + 12])
    struct.pack_into(">I", sot, 6, psot)
    return [bytes(sot), *body], psot, len(plts), padding


def _plan_codestream(buf, ix: CodestreamIndex, layout: CodestreamLayout, unpack: bool) -> _Plan:
    plan = _Plan()
    parts = layout.tile_parts
    main_end = parts[0].sot_offset if parts else _main_header_end(buf, layout)
    tile_pieces: list[Piece] = []
    tlm: list[tuple[int, int]] = []
    for part, rows in zip(parts, _packets_by_part(ix, parts), strict=True):
        pieces, psot, nplt, padding = _plan_tile_part(buf, ix, part, rows, unpack)
        tile_pieces += pieces
        tlm.append((part.tile, psot))
        plan.plt_segments += nplt
        plan.packets += len(rows)
        plan.padding += padding
    tlms = tlm_segments(tlm)
    drop_main = {TLM, PLM} | ({PPM} if unpack else set())
    plan.add((layout.offset, layout.offset + 2))  # SOC
    for p in [*_kept_segments(buf, layout.offset + 2, main_end, drop_main), *tlms, *tile_pieces,
              EOC_BYTES]:
        plan.add(p)
    last = parts[-1].data_end if parts else main_end
    if bytes(buf[last:last + 2]) == EOC_BYTES:
        plan.trailing = layout.end - last - 2
    else:
        plan.eoc_added = True
    plan.tile_parts = len(parts)
    plan.tlm_segments = len(tlms)
    return plan


def _main_header_end(buf, layout: CodestreamLayout) -> int:
    """Where the main header stops in a codestream without tile-parts (at EOC or its end)."""
    pos = layout.offset + 2
    while pos < layout.end:
        seg = read_segment(buf, pos, layout.end)
        if seg.code in (SOT, EOC):
            return pos
        pos = seg.end
    return pos


# --------------------------------------------------------------------------- boxes
def _box_header(buf, box: Box, new_length: int) -> bytes:
    """The box's header for a new total length (keeps LBox = 0 and the XLBox form)."""
    (lbox,) = struct.unpack_from(">I", buf, box.offset)
    if lbox == 0:
        return bytes(buf[box.offset:box.offset + 8])
    if box.header_length == 16 or new_length - 8 >= 1 << 32:
        return struct.pack(">I4sQ", 1, box.box_type, new_length + 16 - box.header_length)
    return struct.pack(">I4s", new_length, box.box_type)


def _box_pieces(buf, boxes: list[Box], plans: dict[int, _Plan], depth: int = 0) -> list[Piece]:
    """The boxes with every jp2c holding a planned codestream rebuilt (and their superboxes)."""
    out: list[Piece] = []
    for box in boxes:
        inner = [off for off in plans if box.offset < off < box.end]
        if not inner:
            out.append((box.offset, box.end))
            continue
        if box.box_type == b"jp2c" and box.content_offset in plans:
            content = plans[box.content_offset].pieces
        elif box.box_type in SUPERBOXES and depth < 8:
            kids = walk_boxes(buf, box.content_offset, box.end)
            content = _box_pieces(buf, kids, plans, depth + 1)
        else:
            raise CodestreamError(box.offset, f"codestream inside a {box.type_name!r} box")
        length = sum(map(_piece_length, content))
        out.append(_box_header(buf, box, box.header_length + length))
        out.extend(content)
    return out


# --------------------------------------------------------------------------- checks
def _index_seconds(path: Path) -> tuple[Source, float]:
    t0 = time.perf_counter()
    src = build_source(path)
    return src, time.perf_counter() - t0


def _check_output(before: Source, after: Source, packed_kept: bool) -> None:
    """The output must index to the same packets, bins and header bins, from PLT alone unless
    packed headers were kept (then the headers are decoded from PPM/PPT)."""
    if len(before.codestreams) != len(after.codestreams):
        raise ValueError("output has a different number of codestreams")
    for cs, (a, b) in enumerate(zip(before.codestreams, after.codestreams, strict=True)):
        if b.source != "plt" and len(b.packets["offset"]) and not packed_kept:
            raise ValueError(f"codestream {cs}: output packets located by '{b.source}', not PLT")
        for key in ("pkt_count", "bin_length"):
            if not np.array_equal(a.precincts[key], b.precincts[key]):
                raise ValueError(f"codestream {cs}: precinct {key} differs after the rewrite")
        if before.main_header_bin(cs) != after.main_header_bin(cs):
            raise ValueError(f"codestream {cs}: main header bin differs after the rewrite")
        for t in range(a.num_tiles):
            if before.tile_header_bin(cs, t) != after.tile_header_bin(cs, t):
                raise ValueError(f"codestream {cs}: tile {t} header bin differs after the rewrite")


# --------------------------------------------------------------------------- rewrite
def _write(path: Path, buf, pieces: list[Piece]) -> int:
    written = 0
    with open(path, "wb") as f:
        for p in pieces:
            chunk = p if isinstance(p, bytes) else buf[p[0]:p[1]]
            f.write(chunk)
            written += len(chunk)
    return written


def _ppm_ppt_note(packed: bool, keep: bool) -> str:
    if not packed:
        return "no packed packet headers (PPM/PPT) in the input"
    if keep:
        return ("PPM/PPT kept unchanged: PLT lists the packets as they sit in the bitstream "
                "(SOP + body, headers excluded)")
    return ("PPM/PPT packet headers moved back into the packets (SOP + header + body) and the "
            "PPM/PPT segments dropped; precinct data-bins are unchanged")


def add_plt(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], *,
            keep_packed_headers: bool = False, verify: bool = True) -> AddPltReport:
    """Rewrite `input_path` to `output_path` with PLT (and TLM) markers; see the module doc.

    Raises CodestreamError when the input cannot be indexed, ValueError when the rewrite cannot
    be expressed or (with `verify`) when the output does not index like the input."""
    t0 = time.perf_counter()
    out = Path(output_path)
    check_output(out)
    src, seconds_before = _index_seconds(Path(input_path))
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    report = AddPltReport(str(input_path), str(out), src.identity.size,
                          index_seconds_before=seconds_before)
    try:
        with open(src.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                plans = _plan_all(buf, src, keep_packed_headers, report)
                if src.layout.is_jp2:
                    top = list(src.layout.top_boxes)
                    pieces = _box_pieces(buf, top, plans)
                else:
                    pieces = plans[0].pieces
                try:
                    report.output_bytes = _write(tmp, buf, pieces)
                except OSError as e:
                    raise write_error(out, e) from None
            finally:
                buf.release()
        if verify:
            after, report.index_seconds_after = _index_seconds(tmp)
            with after:
                _check_output(src, after, report.ppm_ppt_kept)
        report.verified = verify
        os.replace(tmp, out)
    finally:
        src.close()
        if tmp.exists():
            tmp.unlink()
    report.seconds = time.perf_counter() - t0
    return report


def _plan_all(buf, src: Source, keep: bool, report: AddPltReport) -> dict[int, _Plan]:
    plans: dict[int, _Plan] = {}
    for ix, (off, ln) in zip(src.codestreams, src.layout.codestreams, strict=True):
        layout = parse_codestream(buf, off, ln)
        packed = bool(layout.ppm) or any(th.ppt for th in layout.tiles.values())
        report.packed_headers |= packed
        report.had_plt |= "PLT" in ix.markers
        plan = _plan_codestream(buf, ix, layout, unpack=not keep)
        plans[off] = plan
        report.codestreams += 1
        report.tile_parts += plan.tile_parts
        report.plt_segments += plan.plt_segments
        report.tlm_segments += plan.tlm_segments
        report.packets += plan.packets
        report.padding_dropped += plan.padding
        report.trailing_dropped += plan.trailing
        report.eoc_added |= plan.eoc_added
    report.ppm_ppt_kept = report.packed_headers and keep
    report.ppm_ppt_note = _ppm_ppt_note(report.packed_headers, keep)
    if report.padding_dropped:
        report.notes.append(f"dropped {report.padding_dropped} byte(s) of padding after the "
                            "last packet of a tile (PLT lengths must add up to the tile data)")
    if report.trailing_dropped:
        report.notes.append(f"dropped {report.trailing_dropped} byte(s) after EOC (e.g. DICOM "
                            "even-length padding)")
    if report.eoc_added:
        report.notes.append("no EOC after the last tile-part: wrote one")
    if report.packed_headers and keep:
        report.notes.append("with PPM/PPT kept, a server must still decode the packed headers")
    return plans


# --------------------------------------------------------------------------- command line
def add_addplt_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `jpip add-plt INPUT OUTPUT [...]`."""
    parser.add_argument("input", help="JPEG 2000 file (JP2/JPX or raw codestream)")
    parser.add_argument("output", help="where to write the rewritten file (may be the input)")
    parser.add_argument("--keep-packed-headers", action="store_true",
                        help="keep PPM/PPT packed packet headers instead of moving them into "
                             "the packets")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_addplt(args: argparse.Namespace) -> int:
    """Run `jpip add-plt`; prints the report. Exit status 0, or 2 with 'path: reason' on
    stderr when the input cannot be indexed or rewritten."""
    try:
        report = add_plt(args.input, args.output,
                         keep_packed_headers=getattr(args, "keep_packed_headers", False))
    except OutputError as e:
        print(f"jpip add-plt: {e}", file=sys.stderr)
        return 2
    except (CodestreamError, OSError, ValueError) as e:
        print(f"{args.input}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict()) if args.json else report.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m filetools.addplt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_addplt_arguments(parser)
    return run_addplt(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
