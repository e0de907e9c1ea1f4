"""Seed inputs for each fuzz target, built from what the test suite already holds.

- codestream: every corpus file under 1 MB, and a cut of each interop image (its headers, PLT
  and first packets, kept consistent: Psot, Lplt and the jp2c box rewritten) so the fuzzer
  starts from a 4096² RPCL file with PLT without paying for 10 MB inputs.
- boxes: the JP2/JPX files with each codestream cut to its main header (box lengths fixed),
  so mutations land on boxes, not on packet data.
- request: the query strings of the request tests and of the real clients' sequences in
  tests/e2e/test_protocol.py (every string literal, and the literal parts of f-strings, read
  with `ast`), each in the four modes of the target (strict/lenient, query/form body).
- model: the model/need/tpmodel values of tests/jpip/test_model.py and test_request.py.
"""
from __future__ import annotations

import ast
import hashlib
import struct
from pathlib import Path

from codestream.boxes import read_layout
from codestream.parse import parse_codestream
from tests.conftest import INTEROP, PROJECT_ROOT, corpus_files

from .targets import MAX_INPUT

TESTS = PROJECT_ROOT / "tests"
REQUEST_SOURCES = [TESTS / "jpip" / "test_request.py", TESTS / "e2e" / "test_protocol.py",
                   TESTS / "e2e" / "test_sessions.py", TESTS / "server" / "test_app.py"]
MODEL_SOURCES = [TESTS / "jpip" / "test_model.py", TESTS / "jpip" / "test_request.py"]
INTEROP_CUT = 160_000  # bytes of packet data kept from each interop image
SEED_TILE_PARTS = 16


def _string_literals(path: Path) -> list[str]:
    """Every str constant of a Python file, f-strings' literal parts included."""
    if not path.exists():
        return []
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
    return out


def _query_of(text: str) -> str | None:
    """The query part of a literal that holds one ('...?a=b&c=d', 'a=b&c', 'fsiz=1,2')."""
    if "?" in text:
        text = text.split("?", 1)[1]
    text = text.lstrip("&")
    head = text.split("&", 1)[0]
    if "=" not in head or not head.split("=", 1)[0].isalpha():
        return None
    return text


def request_seeds() -> dict[str, bytes]:
    queries = sorted({q for path in REQUEST_SOURCES for s in _string_literals(path)
                      if (q := _query_of(s)) is not None and len(q) < 4096})
    seeds = {}
    for q in queries:
        for mode in range(4):
            seeds[f"q{mode}-{_digest(q)}"] = bytes([mode]) + q.encode("utf-8", "surrogatepass")
    return seeds


_MODEL_START = "HPTMtcrp[-"


def model_seeds() -> dict[str, bytes]:
    values = set()
    for path in MODEL_SOURCES:
        for s in _string_literals(path):
            for part in s.split("&"):
                name, eq, value = part.partition("=")
                if eq and name in ("model", "need", "tpmodel", "tpneed"):
                    values.add(value)
                elif not eq and s and s[0] in _MODEL_START and len(s) < 2048 and " " not in s:
                    values.add(s)
    seeds = {}
    for v in sorted(values):
        tp = "." in v and not v.startswith(("H", "P", "T", "M", "t", "c", "r", "p"))
        for mode in ((1, 3) if tp else (0, 2, 4, 6)):
            seeds[f"m{mode}-{_digest(v)}"] = bytes([mode]) + v.encode("utf-8", "surrogatepass")
    return seeds


def _digest(text: str | bytes) -> str:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:12]


# --------------------------------------------------------------------------- files
def _fix_jp2c(data: bytearray, old: bytes, cs_off: int, cs_len: int) -> bytearray:
    """Sets the length of the jp2c box holding the codestream at cs_off to cs_len bytes."""
    for box in read_layout(old).top_boxes:
        if box.box_type == b"jp2c" and box.content_offset == cs_off:
            if box.header_length == 8:
                struct.pack_into(">I", data, box.offset, 8 + cs_len)
            else:
                struct.pack_into(">Q", data, box.offset + 8, 16 + cs_len)
    return data


def interop_cut(path: Path, keep: int = INTEROP_CUT) -> bytes:
    """The file with its (single) tile-part cut after the first packets that fit in `keep`
    bytes: the PLT cut to those packets, Psot, Lplt and the jp2c box set to match, EOC added.
    Both paths of the indexer (PLT and packet headers) accept the result."""
    data = path.read_bytes()
    layout = read_layout(data)
    off, ln = layout.codestreams[0]
    cs = parse_codestream(data, off, ln)
    part = cs.tile_parts[0]
    plt = [s for s in part.header_segments if s.code == 0xFF58]
    if len(cs.tile_parts) != 1 or len(plt) != 1:
        raise ValueError(f"{path.name}: expected one tile-part with one PLT")
    seg = plt[0]
    lengths, value = [], 0
    for b in data[seg.body_offset + 1:seg.end]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            lengths.append(value)
            value = 0
    kept, total = 0, 0
    while kept < len(lengths) and total + lengths[kept] <= keep:
        total += lengths[kept]
        kept += 1
    body = bytearray()
    for v in lengths[:kept]:
        groups = [v & 0x7F]
        v >>= 7
        while v:
            groups.append(0x80 | (v & 0x7F))
            v >>= 7
        body += bytes(reversed(groups))
    new_plt = struct.pack(">HHB", 0xFF58, 3 + len(body), data[seg.body_offset]) + body
    head = data[off:part.sot_offset] + data[part.sot_offset:seg.offset] + new_plt \
        + data[seg.end:part.header_end]
    psot = (part.header_end - part.sot_offset) - (seg.end - seg.offset) + len(new_plt) + total
    stream = bytearray(head + data[part.header_end:part.header_end + total] + b"\xff\xd9")
    struct.pack_into(">I", stream, part.sot_offset - off + 6, psot)
    out = bytearray(data[:off]) + stream
    return bytes(_fix_jp2c(out, data, off, len(stream)))


def header_only(data: bytes) -> bytes | None:
    """A JP2/JPX file with each top-level jp2c box cut to its codestream's main header."""
    layout = read_layout(data)
    if not layout.is_jp2:
        return None
    out = bytearray()
    for box in layout.top_boxes:
        if box.box_type != b"jp2c":
            out += data[box.offset:box.end]
            continue
        cs = parse_codestream(data, box.content_offset, box.content_length)
        keep = cs.tile_parts[0].sot_offset - box.content_offset
        cut = bytearray(data[box.offset:box.content_offset + keep])
        if box.header_length == 8:
            struct.pack_into(">I", cut, 0, 8 + keep)
        else:
            struct.pack_into(">Q", cut, 8, 16 + keep)
        out += cut
    return bytes(out)


def first_tile_parts(data: bytes, keep: int = SEED_TILE_PARTS) -> bytes:
    """The file with its first codestream cut after `keep` tile-parts (EOC added, the jp2c box
    length fixed): the other tiles are then absent, which the indexer serves as empty."""
    off, ln = read_layout(data).codestreams[0]
    cs = parse_codestream(data, off, ln)
    if len(cs.tile_parts) <= keep:
        return data
    cut = cs.tile_parts[keep].sot_offset
    stream = data[off:cut] + b"\xff\xd9"
    out = bytearray(data[:off]) + stream + data[off + ln:]
    return bytes(_fix_jp2c(out, data, off, len(stream)))


def codestream_seeds() -> dict[str, bytes]:
    # Instrumented code runs 10-20 times slower: files with many tile-parts (p1_05: 225 tiles,
    # 26,000 packets) are cut to their first ones, so one input stays well under a second.
    seeds = {p.name: first_tile_parts(p.read_bytes()) for p in corpus_files()
             if p.stat().st_size < MAX_INPUT}
    for name in ("rgb4096.jp2", "med2048.jp2"):
        path = INTEROP / name
        if path.exists():
            seeds[f"cut-{name}"] = interop_cut(path)
    return seeds


def box_seeds() -> dict[str, bytes]:
    seeds = {}
    for p in corpus_files():
        if p.suffix.lower() in (".jp2", ".jpx", ".jpf"):
            cut = header_only(p.read_bytes())
            if cut is not None:
                seeds[f"head-{p.name}"] = cut
    return seeds


SEEDS = {
    "codestream": codestream_seeds,
    "boxes": box_seeds,
    "request": request_seeds,
    "model": model_seeds,
}
