"""The client's data-bin cache: what JPP- and JPT-streams delivered, per codestream and bin.

Bytes are kept per bin as a contiguous prefix plus any pieces that arrived ahead of it; a bin is
complete once its last byte (the message with the completeness bit) and everything before it
are held. Bytes received twice are counted (`duplicate_bytes`) and checked for consistency.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from jpip.jpp import (
    EXT_PRECINCT,
    EXT_TILE,
    MAIN_HEADER,
    METADATA,
    PRECINCT,
    TILE,
    TILE_HEADER,
    EndOfResponse,
    Message,
)

MAX_BIN_BYTES = 1 << 31


class StreamError(ValueError):
    """A JPP-stream the client cannot accept (inconsistent bytes, bins past limits)."""


@dataclass
class DataBin:
    data: bytearray = field(default_factory=bytearray)
    pending: dict[int, bytes] = field(default_factory=dict)  # offset -> bytes beyond the prefix
    length: int | None = None  # total length, known once the last byte arrived

    @property
    def complete(self) -> bool:
        return self.length is not None and len(self.data) >= self.length

    def add(self, offset: int, chunk: bytes, is_last: bool) -> int:
        """Stores a message body; returns how many of its bytes were already held."""
        end = offset + len(chunk)
        if end > MAX_BIN_BYTES:
            raise StreamError(f"data-bin grows past {MAX_BIN_BYTES} bytes")
        if is_last:
            if self.length is not None and self.length != end:
                raise StreamError(f"bin length changes from {self.length} to {end}")
            self.length = end
        if self.length is not None and end > self.length:
            raise StreamError("message beyond the end of its data-bin")
        dup = 0
        have = len(self.data)
        if offset < have:
            overlap = min(end, have) - offset
            if bytes(self.data[offset:offset + overlap]) != chunk[:overlap]:
                raise StreamError(f"bytes at offset {offset} differ from those already held")
            dup = overlap
            chunk, offset = chunk[overlap:], have
        if not chunk:
            return dup
        if offset == len(self.data):
            self.data += chunk
            self._absorb_pending()
        else:
            self.pending[offset] = bytes(chunk)
        return dup

    def _absorb_pending(self) -> None:
        progressed = True
        while progressed and self.pending:
            progressed = False
            for off in sorted(self.pending):
                piece = self.pending[off]
                have = len(self.data)
                if off <= have:
                    del self.pending[off]
                    if off + len(piece) > have:
                        self.data += piece[have - off:]
                    progressed = True
                    break


@dataclass
class CodestreamBins:
    main_header: DataBin = field(default_factory=DataBin)
    tile_headers: dict[int, DataBin] = field(default_factory=dict)
    precincts: dict[int, DataBin] = field(default_factory=dict)
    tiles: dict[int, DataBin] = field(default_factory=dict)  # tile data-bins (JPT-streams)


class BinCache:
    """Everything the client holds, by codestream; fed with parsed JPP messages."""

    def __init__(self) -> None:
        self.streams: dict[int, CodestreamBins] = {}
        self.metadata: dict[int, DataBin] = {}
        self.duplicate_bytes = 0
        self.messages = 0
        self.data_bytes = 0
        self.last_eor: int | None = None
        self.tid: str | None = None  # the server's target id of what is held (JPIP-tid)

    def clear(self) -> None:
        """Forgets every bin (they belong to another version of the target)."""
        self.streams.clear()
        self.metadata.clear()

    def stream(self, cs: int) -> CodestreamBins:
        s = self.streams.get(cs)
        if s is None:
            s = self.streams[cs] = CodestreamBins()
        return s

    def add(self, item: Message | EndOfResponse) -> None:
        if isinstance(item, EndOfResponse):
            self.last_eor = item.reason
            return
        self.messages += 1
        self.data_bytes += len(item.data)
        cls = item.bin_class
        if cls in (PRECINCT, EXT_PRECINCT):
            b = self.stream(item.csn).precincts.setdefault(item.bin_id, DataBin())
        elif cls == TILE_HEADER:
            b = self.stream(item.csn).tile_headers.setdefault(item.bin_id, DataBin())
        elif cls == MAIN_HEADER:
            if item.bin_id != 0:
                raise StreamError(f"main header bin id {item.bin_id} (only 0 exists)")
            b = self.stream(item.csn).main_header
        elif cls in (TILE, EXT_TILE):
            b = self.stream(item.csn).tiles.setdefault(item.bin_id, DataBin())
        elif cls == METADATA:
            b = self.metadata.setdefault(item.bin_id, DataBin())
        else:
            raise StreamError(f"data-bin class {cls} is not part of a JPP- or JPT-stream")
        self.duplicate_bytes += b.add(item.offset, bytes(item.data), item.is_last)

    # --- what the client tells a stateless server --------------------------------------------
    def model_string(self, cs: int) -> str:
        """The `model=` descriptors of what is held for codestream `cs`."""
        s = self.streams.get(cs)
        items: list[str] = []

        def describe(prefix: str, b: DataBin) -> None:
            if b.complete:
                items.append(prefix)
            elif b.data:
                items.append(f"{prefix}:{len(b.data)}")

        for i, b in sorted(self.metadata.items()):
            describe(f"M{i}", b)
        if s is not None:
            describe("Hm", s.main_header)
            for t, b in sorted(s.tile_headers.items()):
                describe(f"H{t}", b)
            for i, b in sorted(s.precincts.items()):
                describe(f"P{i}", b)
            for t, b in sorted(s.tiles.items()):
                describe(f"T{t}", b)
        if not items:
            return ""
        return f"[{cs}]," + ",".join(items)

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Writes the cache (held prefixes and completeness) to one file."""
        index, blobs = [], []
        pos = 0

        def put(kind: str, cs: int, ident: int, b: DataBin) -> None:
            nonlocal pos
            index.append([kind, cs, ident, pos, len(b.data), b.length])
            blobs.append(bytes(b.data))
            pos += len(b.data)

        for cs, s in self.streams.items():
            put("M", cs, 0, s.main_header)
            for t, b in s.tile_headers.items():
                put("H", cs, t, b)
            for i, b in s.precincts.items():
                put("P", cs, i, b)
            for t, b in s.tiles.items():
                put("T", cs, t, b)
        for i, b in self.metadata.items():
            put("m", 0, i, b)
        head = json.dumps({"version": 1, "tid": self.tid, "bins": index}).encode()
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"JPIPCACHE" + struct.pack(">I", len(head)) + head)
            for blob in blobs:
                f.write(blob)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> BinCache:
        raw = path.read_bytes()
        if raw[:9] != b"JPIPCACHE":
            raise StreamError(f"{path} is not a saved JPIP cache")
        (n,) = struct.unpack(">I", raw[9:13])
        meta = json.loads(raw[13:13 + n])
        base = 13 + n
        cache = cls()
        cache.tid = meta.get("tid")
        for kind, cs, ident, pos, ln, total in meta["bins"]:
            b = DataBin(bytearray(raw[base + pos:base + pos + ln]), {}, total)
            if kind == "M":
                cache.stream(cs).main_header = b
            elif kind == "H":
                cache.stream(cs).tile_headers[ident] = b
            elif kind == "P":
                cache.stream(cs).precincts[ident] = b
            elif kind == "T":
                cache.stream(cs).tiles[ident] = b
            else:
                cache.metadata[ident] = b
        return cache
