"""A JP2-family file's boxes partitioned into JPIP metadata-bins (ISO 15444-9 A.3.6, Annex I).

Metadata-bin 0 holds the top-level boxes. A box either appears in its bin whole (copied from
the file) or is replaced there by a placeholder box (`phld`) pointing elsewhere:

- a contiguous codestream box (`jp2c`) by a codestream placeholder (Flags 4, CSID): its
  codestream lives in the main header, tile header, precinct and tile data-bins;
- a box worth fetching on its own by a placeholder whose metadata-bin (OrigID, Flags 1) holds
  the box's contents: for a superbox its sub-boxes, partitioned the same way one level down;
  for any other box its contents bytes.

Which boxes get their own bin (deterministic, from the box structure alone, so every request
for the same target sees the same partition, and a cached index reproduces it): every
non-empty grouping superbox (`jp2h`, `jpch`, `jplh`, `asoc`, `cgrp`, `comp`, `drep`), any box
longer than `SPLIT_THRESHOLD` bytes, and any superbox holding a codestream; never the first
sub-box of an association (its label, number list or ROI says what the association is about).
This is the rule of Kakadu's server, with a larger threshold (Kakadu's default is 32 bytes).
Bin ids are given in pre-order (a box's bin before the bins of its sub-boxes), so the bins
under a box form one contiguous range of ids.

Placeholder layout (big-endian): `LBox 'phld' Flags(4) OrigID(8) OrigBH [EquivID(8) EquivBH(8)
CSID(8)]`, OrigBH being the original box header (8 or 16 bytes) copied from the file; the
fields after OrigBH are written only for codestream placeholders, as Kakadu writes them (its
reader takes a placeholder of Flags 1 to end after OrigBH, as does OpenJPEG's).

Each box is also given a scope, for `metareq` qualifiers (C.5.2): the codestreams it is
associated with (none: global) and, for boxes under an ROI description, the regions it is
tied to. A `jp2c` box is associated with its codestream, the k-th codestream header (`jpch`)
and compositing layer header (`jplh`) boxes with codestream k (layers map one to one onto
codestreams in the files served), an association box with what its first sub-box names (a
number list: codestreams, compositing layers, or the rendered result; an ROI description:
regions); sub-boxes inherit their parent's scope, and an association also takes on the
union of its sub-boxes' (as Kakadu's server does, so that an association grouping per-frame
associations reaches every frame it groups).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from .boxes import SUPERBOXES, Box, FileLayout, walk_boxes
from .errors import CodestreamError

__all__ = ["PHLD_CODESTREAM", "PHLD_CONTENTS", "SPLIT_THRESHOLD", "MetadataBins", "Placeholder",
           "parse_placeholder", "partition_metadata", "placeholder_box"]

SPLIT_THRESHOLD = 64  # boxes longer than this (header included) are placed in their own bin
ALWAYS_SPLIT = frozenset((b"jp2h", b"jpch", b"jplh", b"asoc", b"cgrp", b"comp", b"drep"))
MAX_DEPTH = 8         # superboxes nested deeper are kept whole (as codestream discovery does)
MAX_NODES = 1 << 20   # boxes described (a file claiming more is refused as malformed)

PHLD_CONTENTS = 1     # Flags bit 0: the original box's contents are in metadata-bin OrigID
PHLD_CODESTREAM = 4   # Flags bit 2: a contiguous codestream, in the image bins of CSID

_PIECE_FILE, _PIECE_SYNTH = 0, 1
_NODE_FIELDS = ("type", "offset", "header_length", "length", "parent", "depth", "bin",
                "bin_offset", "entry_length", "contents_bin", "codestream", "stream_start",
                "stream_count", "region_start", "region_count")
_BIN_FIELDS = ("length", "owner", "subtree_end", "first_piece")


def placeholder_box(orig_header: bytes, *, contents_bin: int | None = None,
                    codestream: int | None = None) -> bytes:
    """A `phld` box standing for a box whose header is `orig_header`: its contents are in
    metadata-bin `contents_bin` (Flags 1), or it is codestream `codestream` (Flags 4)."""
    if (contents_bin is None) == (codestream is None):
        raise ValueError("a placeholder points to a metadata-bin or to a codestream")
    if codestream is not None:
        body = (struct.pack(">IQ", PHLD_CODESTREAM, 0) + bytes(orig_header)
                + struct.pack(">QQQ", 0, 0, codestream))
    else:
        body = struct.pack(">IQ", PHLD_CONTENTS, contents_bin) + bytes(orig_header)
    return struct.pack(">I4s", 8 + len(body), b"phld") + body


@dataclass(frozen=True, slots=True)
class Placeholder:
    """A parsed `phld` box (client side): the original box's header and where it went."""

    flags: int
    orig_id: int            # the metadata-bin holding the original contents (Flags 1)
    orig_header: bytes      # the original box header (8 or 16 bytes)
    box_type: bytes
    box_length: int         # the original box's length, header included (0: to the end)
    codestream: int | None  # CSID, for a codestream placeholder

    @property
    def header_length(self) -> int:
        return len(self.orig_header)


def parse_placeholder(body: bytes | memoryview) -> Placeholder:
    """Parses the contents of a `phld` box (after its own 8-byte header)."""
    body = bytes(body)
    if len(body) < 20:
        raise CodestreamError(0, f"placeholder box of {len(body)} content bytes (at least 20)")
    flags, orig_id, lbox, tbox = struct.unpack_from(">IQI4s", body, 0)
    header = 8
    length = lbox
    if lbox == 1:
        if len(body) < 28:
            raise CodestreamError(0, "placeholder with a cut XLBox")
        (length,) = struct.unpack_from(">Q", body, 20)
        header = 16
    orig_header = body[12:12 + header]
    codestream = None
    if flags & PHLD_CODESTREAM:
        rest = 12 + header
        if len(body) < rest + 24:
            raise CodestreamError(0, "codestream placeholder without CSID")
        (codestream,) = struct.unpack_from(">Q", body, rest + 16)
    return Placeholder(flags, orig_id, orig_header, tbox, length, codestream)


@dataclass(frozen=True)
class MetadataBins:
    """The metadata-bins of one target and the box tree they expose, as numpy arrays.

    Bins: `bins["length"]` per bin; `bins["owner"]` the node whose contents bin it is (-1 for
    bin 0); `bins["subtree_end"]` the first id after the bins below it (pre-order numbering);
    `bins["first_piece"]` where its pieces start in `pieces` (n + 1 entries). Pieces (rows of
    `pieces`: kind, a, b) are file ranges (kind 0: offset a, length b) or bytes of `synth`
    (kind 1: offset a, length b), in bin order.

    Nodes (one per box described, in file order within each parent): its 4CC (as a big-endian
    uint32), file offset, header length, total length, parent node (-1 at top level), depth
    (0 at top level), the bin holding it (or its placeholder), where it starts there and how
    many bytes it takes there (the box, or its placeholder), the bin of its contents (-1: none
    of its own), its codestream (-1: not a codestream box), and its scope: codestream indexes
    `streams[stream_start:+stream_count]` (none: global) and ROI rectangles (x0, y0, x1, y1 on
    the reference grid) `regions[region_start:+region_count]` (region_count -1: no ROI).
    """

    bins: dict[str, np.ndarray]
    pieces: np.ndarray   # (n, 3) int64
    synth: bytes
    nodes: dict[str, np.ndarray]
    streams: np.ndarray  # int64
    regions: np.ndarray  # (m, 4) int64
    # What users of the partition derive from it and keep (jpip.metareq's default plans).
    derived: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def empty(cls) -> MetadataBins:
        """The partition of a target without boxes: metadata-bin 0, empty."""
        bins = {"length": np.zeros(1, np.int64), "owner": np.full(1, -1, np.int64),
                "subtree_end": np.ones(1, np.int64), "first_piece": np.zeros(2, np.int64)}
        return cls(bins, np.zeros((0, 3), np.int64), b"",
                   {k: np.zeros(0, np.int64) for k in _NODE_FIELDS}, np.zeros(0, np.int64),
                   np.zeros((0, 4), np.int64))

    # --- what the server sends ---------------------------------------------------------------
    @property
    def count(self) -> int:
        """Number of metadata-bins (ids 0 .. count-1)."""
        return len(self.bins["length"])

    def length(self, bin_id: int) -> int:
        return int(self.bins["length"][bin_id])

    def pieces_of(self, bin_id: int, view, start: int = 0, end: int | None = None) -> list:
        """Bytes [start, end) of metadata-bin `bin_id` as buffers (file parts are views of
        `view`, the target's memory map)."""
        fp = self.bins["first_piece"]
        length = self.length(bin_id)
        end = length if end is None else min(end, length)
        out: list = []
        pos = 0
        for kind, a, n in self.pieces[int(fp[bin_id]):int(fp[bin_id + 1])].tolist():
            s, e = max(start, pos), min(end, pos + n)
            if s < e:
                if kind == _PIECE_FILE:
                    out.append(view[a + s - pos:a + e - pos])
                else:
                    out.append(self.synth[a + s - pos:a + e - pos])
            pos += n
            if pos >= end:
                break
        return out

    def bin_bytes(self, bin_id: int, view) -> bytes:
        return b"".join(bytes(p) for p in self.pieces_of(bin_id, view))

    def node_streams(self, i: int) -> np.ndarray:
        s, n = int(self.nodes["stream_start"][i]), int(self.nodes["stream_count"][i])
        return self.streams[s:s + n]

    def node_regions(self, i: int) -> np.ndarray | None:
        s, n = int(self.nodes["region_start"][i]), int(self.nodes["region_count"][i])
        return None if n < 0 else self.regions[s:s + n]

    @property
    def nbytes(self) -> int:
        arrays = [*self.bins.values(), *self.nodes.values(), self.pieces, self.streams,
                  self.regions]
        return sum(a.nbytes for a in arrays) + len(self.synth)

    # --- persistence (the index cache) -------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {f"bin_{k}": v for k, v in self.bins.items()}
        out.update({f"node_{k}": v for k, v in self.nodes.items()})
        out.update(pieces=self.pieces, synth=np.frombuffer(self.synth, np.uint8),
                   streams=self.streams, regions=self.regions)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> MetadataBins:
        bins = {k: arrays[f"bin_{k}"] for k in _BIN_FIELDS}
        nodes = {k: arrays[f"node_{k}"] for k in _NODE_FIELDS}
        out = cls(bins, arrays["pieces"].reshape(-1, 3), arrays["synth"].tobytes(), nodes,
                  arrays["streams"], arrays["regions"].reshape(-1, 4))
        out.check()
        return out

    def check(self) -> None:
        """Raises ValueError when the arrays do not describe a partition (a bad cache file)."""
        n = self.count
        b, nd = self.bins, self.nodes
        if n < 1 or any(len(b[k]) != n for k in ("length", "owner", "subtree_end")):
            raise ValueError("metadata-bins: bin columns disagree")
        fp = b["first_piece"]
        if len(fp) != n + 1 or fp[0] != 0 or fp[-1] != len(self.pieces) or (np.diff(fp) < 0).any():
            raise ValueError("metadata-bins: piece bounds")
        owner = np.repeat(np.arange(n), np.diff(fp))
        sizes = np.bincount(owner, weights=self.pieces[:, 2], minlength=n).astype(np.int64)
        if (self.pieces[:, 2] < 0).any() or not np.array_equal(sizes, b["length"]):
            raise ValueError("metadata-bins: pieces do not add up to the bin lengths")
        synth = self.pieces[self.pieces[:, 0] == _PIECE_SYNTH]
        if len(synth) and int((synth[:, 1] + synth[:, 2]).max()) > len(self.synth):
            raise ValueError("metadata-bins: synthesized piece outside its bytes")
        m = len(nd["type"])
        if any(len(nd[k]) != m for k in _NODE_FIELDS):
            raise ValueError("metadata-bins: node columns disagree")
        if m and (int(nd["bin"].max()) >= n or int(nd["contents_bin"].max()) >= n
                  or int(nd["parent"].max()) >= m):
            raise ValueError("metadata-bins: node references out of range")


# --- building ----------------------------------------------------------------------------------

class _Builder:
    def __init__(self, buf, codestream_at: dict[int, int]) -> None:
        self.buf = buf
        self.codestream_at = codestream_at   # content offset of a jp2c box -> codestream index
        self.bin_pieces: list[list[tuple[int, int, int]]] = [[]]
        self.bin_length: list[int] = [0]
        self.bin_owner: list[int] = [-1]
        self.synth = bytearray()
        self.nodes: dict[str, list[int]] = {k: [] for k in _NODE_FIELDS}
        self.own_streams: list[set[int]] = []   # what each node itself names
        self.own_regions: list[list | None] = []
        self.jpch = 0
        self.jplh = 0

    # bins
    def _new_bin(self, owner: int) -> int:
        self.bin_pieces.append([])
        self.bin_length.append(0)
        self.bin_owner.append(owner)
        return len(self.bin_length) - 1

    def _append(self, bin_id: int, kind: int, a: int, n: int) -> int:
        """Appends a piece to a bin; returns where in the bin it starts."""
        at = self.bin_length[bin_id]
        self.bin_pieces[bin_id].append((kind, a, n))
        self.bin_length[bin_id] = at + n
        return at

    def _append_synth(self, bin_id: int, data: bytes) -> int:
        a = len(self.synth)
        self.synth += data
        return self._append(bin_id, _PIECE_SYNTH, a, len(data))

    # nodes
    def _node(self, box: Box, parent: int, depth: int, bin_id: int, at: int, size: int) -> int:
        if len(self.nodes["type"]) >= MAX_NODES:
            raise CodestreamError(box.offset, f"more than {MAX_NODES} boxes")
        values = (int.from_bytes(box.box_type, "big"), box.offset, box.header_length,
                  box.length, parent, depth, bin_id, at, size, -1, -1, 0, 0, 0, -1)
        for k, v in zip(_NODE_FIELDS, values, strict=True):
            self.nodes[k].append(v)
        self.own_streams.append(set())
        self.own_regions.append(None)
        return len(self.nodes["type"]) - 1

    def _children(self, box: Box) -> list[Box] | None:
        """The sub-boxes of a superbox, or None when its contents do not parse as boxes."""
        try:
            return walk_boxes(self.buf, box.content_offset, box.end)
        except CodestreamError:
            return None

    def _holds_codestream(self, box: Box) -> bool:
        return any(box.offset < off < box.end for off in self.codestream_at)

    def place(self, boxes: list[Box], bin_id: int, parent: int, depth: int,
              in_asoc: bool) -> None:
        """Places boxes (the top level of a bin) in `bin_id`."""
        for i, box in enumerate(boxes):
            first_of_asoc = in_asoc and i == 0
            header = bytes(self.buf[box.offset:box.content_offset])
            superbox = box.box_type in SUPERBOXES
            kids = self._children(box) if superbox and depth < MAX_DEPTH else None
            if box.box_type == b"jp2c" and box.content_offset in self.codestream_at:
                cs = self.codestream_at[box.content_offset]
                data = placeholder_box(header, codestream=cs)
                at = self._append_synth(bin_id, data)
                node = self._node(box, parent, depth, bin_id, at, len(data))
                self.nodes["codestream"][node] = cs
                self.own_streams[node].add(cs)
                continue
            split = not first_of_asoc and (
                (box.box_type in ALWAYS_SPLIT and box.content_length > 0)
                or box.length > SPLIT_THRESHOLD
                or (superbox and self._holds_codestream(box)))
            if not split:
                at = self._append(bin_id, _PIECE_FILE, box.offset, box.length)
                node = self._node(box, parent, depth, bin_id, at, box.length)
                self._scope_from_type(node, box)
                if kids is not None:
                    self._describe(kids, node, depth + 1, bin_id, at - box.offset)
                continue
            # Its placeholder goes here (with the next bin id, before the bins of its
            # sub-boxes: pre-order), its contents into the new bin.
            contents = len(self.bin_length)
            data = placeholder_box(header, contents_bin=contents)
            at = self._append_synth(bin_id, data)
            node = self._node(box, parent, depth, bin_id, at, len(data))
            self._new_bin(node)
            self.nodes["contents_bin"][node] = contents
            self._scope_from_type(node, box)
            if kids is not None:
                self.place(kids, contents, node, depth + 1, box.box_type == b"asoc")
            elif box.content_length:
                self._append(contents, _PIECE_FILE, box.content_offset, box.content_length)

    def _describe(self, boxes: list[Box], parent: int, depth: int, bin_id: int,
                  shift: int) -> None:
        """Nodes for the sub-boxes of a superbox copied whole into `bin_id` (shift: bin
        offset minus file offset)."""
        for box in boxes:
            node = self._node(box, parent, depth, bin_id, box.offset + shift, box.length)
            self._scope_from_type(node, box)
            if box.box_type in SUPERBOXES and depth < MAX_DEPTH:
                kids = self._children(box)
                if kids is not None:
                    self._describe(kids, node, depth + 1, bin_id, shift)

    def _scope_from_type(self, node: int, box: Box) -> None:
        """What a box names by itself: a codestream header or compositing layer header box
        names its codestream (counted in file order), a number list or ROI description the
        entities or regions of the association it opens."""
        t = box.box_type
        if t == b"jpch":
            self.own_streams[node].add(self.jpch)
            self.jpch += 1
        elif t == b"jplh":
            self.own_streams[node].add(self.jplh)
            self.jplh += 1
        elif t == b"nlst":
            n = box.content_length // 4
            values = struct.unpack_from(f">{n}I", self.buf, box.content_offset) if n else ()
            for v in values:
                kind, index = v >> 24, v & 0xFFFFFF
                if kind in (1, 2):  # codestream / compositing layer (one to one here)
                    self.own_streams[node].add(index)
        elif t == b"roid":
            self.own_regions[node] = _roid_rects(self.buf, box)

    def finish(self) -> MetadataBins:
        nd = {k: np.asarray(v, np.int64) for k, v in self.nodes.items()}
        streams, regions = self._scopes(nd)
        nbins = len(self.bin_length)
        lengths = np.asarray(self.bin_length, np.int64)
        owner = np.asarray(self.bin_owner, np.int64)
        # Pre-order ids: the bins below bin k are k+1 .. subtree_end-1.
        subtree_end = np.arange(1, nbins + 1, dtype=np.int64)
        for k in range(nbins - 1, 0, -1):
            up = int(nd["bin"][owner[k]])
            subtree_end[up] = max(subtree_end[up], subtree_end[k])
        counts = [len(p) for p in self.bin_pieces]
        first = np.zeros(nbins + 1, np.int64)
        np.cumsum(counts, out=first[1:])
        pieces = np.asarray([p for ps in self.bin_pieces for p in ps], np.int64).reshape(-1, 3)
        bins = {"length": lengths, "owner": owner, "subtree_end": subtree_end,
                "first_piece": first}
        return MetadataBins(bins, pieces, bytes(self.synth), nd, streams, regions)

    def _scopes(self, nd: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Each node's codestreams and regions: its own, its parent's, and for an association
        what its first sub-box names and then the union of its sub-boxes'."""
        m = len(nd["type"])
        parent = nd["parent"].tolist()
        kids: list[list[int]] = [[] for _ in range(m)]
        roots = []
        for i, p in enumerate(parent):
            (kids[p] if p >= 0 else roots).append(i)
        asoc = int.from_bytes(b"asoc", "big")
        types = nd["type"].tolist()
        streams: list[set[int]] = [set() for _ in range(m)]
        regions: list[list | None] = [None] * m

        def visit(i: int, inherited: set[int], region: list | None) -> None:
            own = inherited | self.own_streams[i]
            reg = self.own_regions[i] if self.own_regions[i] is not None else region
            rest = kids[i]
            if types[i] == asoc and rest:
                # The first sub-box says what the association is about: its scope is the
                # association's, and so that of the other sub-boxes.
                first, rest = rest[0], rest[1:]
                visit(first, own, reg)
                own = own | streams[first]
                if self.own_regions[first] is not None:
                    reg = self.own_regions[first]
            streams[i], regions[i] = set(own), reg
            for c in rest:
                visit(c, own, reg)
            if types[i] == asoc:
                for c in kids[i]:
                    streams[i] |= streams[c]

        for r in roots:
            visit(r, set(), None)
        flat: list[int] = []
        rects: list[tuple[int, int, int, int]] = []
        for i in range(m):
            nd["stream_start"][i] = len(flat)
            nd["stream_count"][i] = len(streams[i])
            flat.extend(sorted(streams[i]))
            if regions[i] is not None:
                nd["region_start"][i] = len(rects)
                nd["region_count"][i] = len(regions[i])
                rects.extend(regions[i])
        return (np.asarray(flat, np.int64),
                np.asarray(rects, np.int64).reshape(-1, 4))


def _roid_rects(buf, box: Box) -> list[tuple[int, int, int, int]]:
    """The regions of an ROI description box (15444-2 M.11.24: NR, then per region Rstatic,
    Rtyp, Rcp, Rlcx, Rlcy, Rwidth, Rheight) as bounding rectangles on the reference grid; an
    elliptical region (Rtyp 1) is taken as its bounding box around the centre (Rlcx, Rlcy)."""
    data = bytes(buf[box.content_offset:box.end])
    if not data:
        return []
    rects = []
    for k in range(data[0]):
        at = 1 + 19 * k
        if at + 19 > len(data):
            break
        _static, rtyp, _rcp, x, y, w, h = struct.unpack_from(">BBBIIII", data, at)
        if rtyp == 1:
            rects.append((x - w, y - h, x + w + 1, y + h + 1))
        else:
            rects.append((x, y, x + w, y + h))
    return rects


def partition_metadata(buf, layout: FileLayout) -> MetadataBins:
    """The metadata-bins of a file (see the module docstring); a raw codestream has none but
    an empty bin 0."""
    if not layout.is_jp2:
        return MetadataBins.empty()
    builder = _Builder(buf, {off: n for n, (off, _) in enumerate(layout.codestreams)})
    builder.place(list(layout.top_boxes), 0, -1, 0, False)
    return builder.finish()
