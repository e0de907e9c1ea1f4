"""The byte vectors the Python client and the viewer's JavaScript client are both tested with.

`python -m tests.viewer.vectors` writes `viewer/test/vectors.json` (committed). Everything in
it is produced here by the Python implementation: JPP-streams encoded by `jpip.jpp`, responses
of `jpip.respond` for real corpus windows, what `client.bincache` holds after them, the
codestreams `codestream.rebuild` makes of that, and `jpip.window`'s resolutions. The Python test
(tests/viewer/test_vectors.py) checks that this file still says what the Python code does; the
node tests (viewer/test/*.test.js) check that the JavaScript code says the same. So neither side
can drift without a test failing.
"""
from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

from cache.model import CacheModel
from client.bincache import BinCache, DataBin, StreamError
from client.metadata import box_tree, find_boxes
from codestream.rebuild import rebuild_codestream
from codestream.source import build_source
from jpip.jpp import (
    EXT_PRECINCT,
    EXT_TILE,
    MAIN_HEADER,
    METADATA,
    PRECINCT,
    TILE,
    TILE_HEADER,
    EndOfResponse,
    JPPError,
    MessageWriter,
    StreamParser,
    message_bytes,
)
from jpip.metareq import plan_metadata
from jpip.plan import plan_window
from jpip.respond import ResponseBuilder
from jpip.window import resolve_window
from tests.conftest import CORPUS, PROJECT_ROOT

VECTORS = PROJECT_ROOT / "viewer" / "test" / "vectors.json"


def b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _items(data: bytes) -> list[dict]:
    """A stream parsed by the Python parser, in the JSON form the tests compare."""
    parser = StreamParser()
    out = []
    for item in parser.feed(data):
        if isinstance(item, EndOfResponse):
            out.append({"eor": int(item.reason), "body": b64(item.body)})
        else:
            out.append({"class": item.bin_class, "csn": item.csn, "id": item.bin_id,
                        "offset": item.offset, "data": b64(item.data), "last": item.is_last,
                        "aux": item.aux})
    parser.close()
    return out


# ----- JPP-stream messages ---------------------------------------------------------------------

def _stream(messages: list[tuple], eor: tuple[int, bytes] | None = (2, b"")) -> bytes:
    w = MessageWriter()
    out = b"".join(message_bytes(w, *m) for m in messages)
    if eor is not None:
        out += w.eor(*eor)
    return out


def jpp_vectors() -> list[dict]:
    big = bytes(range(256)) * 40  # a 10 KiB body: two-byte lengths, split across chunks
    cases = {
        "eor only": ([], (1, b"")),
        "eor with a body": ([], (255, b"why not")),
        "every class": ([(METADATA, 0, 0, 0, b"meta", True),
                         (MAIN_HEADER, 0, 0, 0, b"\xff\x4f\xff\x51", True),
                         (TILE_HEADER, 0, 3, 0, b"th", True),
                         (PRECINCT, 0, 5, 0, b"abc", False),
                         (EXT_PRECINCT, 0, 5, 3, b"def", True, 2),
                         (TILE, 0, 1, 0, b"tile", False),
                         (EXT_TILE, 0, 1, 4, b"!", True, 7)], (2, b"")),
        "class and codestream carried over": ([(PRECINCT, 2, 1, 0, b"a", True),
                                               (PRECINCT, 2, 2, 0, b"b", True),
                                               (TILE_HEADER, 2, 0, 0, b"", True),
                                               (PRECINCT, 3, 9, 0, b"c", False)], (3, b"")),
        "long ids and offsets": ([(PRECINCT, 0, 15, 0, b"x", False),
                                  (PRECINCT, 0, 16, 127, b"y", False),
                                  (PRECINCT, 0, 2047, 128, b"z", True),
                                  (PRECINCT, 0, 2048, 16383, b"w", False),
                                  (PRECINCT, 0, (1 << 18) - 1, 16384, b"v", False),
                                  (PRECINCT, 0, 1 << 18, 2 ** 21, b"u", False),
                                  (PRECINCT, 0, 2 ** 45 + 12345, 2 ** 40 + 1, b"t", True),
                                  (PRECINCT, 300, 2 ** 52, 2 ** 50, b"s", False)], (4, b"")),
        "large body": ([(PRECINCT, 0, 7, 100, big, True)], (2, b"")),
        "empty messages": ([(PRECINCT, 0, 1, 0, b"", True), (MAIN_HEADER, 1, 0, 5, b"", False)],
                           (7, b"")),
    }
    out = []
    for name, (messages, eor) in cases.items():
        data = _stream(messages, eor)
        out.append({"name": name, "stream": b64(data), "items": _items(data)})
    return out


def jpp_error_vectors() -> list[dict]:
    """Malformed streams: the error's reason and stream offset, as the Python parser says."""
    ok = _stream([(PRECINCT, 0, 1, 0, b"abc", True)], None)
    cases = {
        "bb=0 Bin-ID": ok + b"\x05\x00\x01x",
        "unknown class": b"\x41\x03\x00\x01x",
        "VBAS longer than 8 bytes": ok + b"\x20" + b"\x81" * 8 + b"\x01",
        "Bin-ID longer than 8 bytes": ok + b"\xa0" + b"\x80" * 7 + b"\x81\x00\x01x",
        "Bin-ID of exactly 8 bytes, unfinished": ok + b"\xa0" + b"\x80" * 7,
        "data after the EOR": ok + b"\x00\x02\x00" + b"\x21\x00\x00",
        "stream ends inside a message": ok + b"\x21\x00\x05ab",
        "stream ends inside an EOR": ok + b"\x00\x02\x05ab",
        "message over the length limit": b"\x21\x00\x84\x80\x01",
    }
    out = []
    for name, data in cases.items():
        parser = StreamParser(max_message_length=1 << 16)
        try:
            parser.feed(data)
            parser.close()
        except JPPError as e:
            out.append({"name": name, "stream": b64(data), "max_message_length": 1 << 16,
                        "reason": e.reason, "offset": e.offset})
        else:
            raise AssertionError(f"{name}: the Python parser accepted it")
    return out


# ----- the data-bin cache ----------------------------------------------------------------------

def _bin_json(b: DataBin) -> dict:
    return {"held": b64(b.data), "length": b.length, "complete": b.complete,
            "pending": sorted(b.pending)}


def _cache_json(cache: BinCache) -> dict:
    streams = {}
    for cs, s in sorted(cache.streams.items()):
        streams[str(cs)] = {
            "main": _bin_json(s.main_header),
            "tiles": {str(t): _bin_json(b) for t, b in sorted(s.tile_headers.items())},
            "precincts": {str(i): _bin_json(b) for i, b in sorted(s.precincts.items())},
            "model": cache.model_string(cs),
        }
    return {"streams": streams,
            "metadata": {str(i): _bin_json(b) for i, b in sorted(cache.metadata.items())},
            "duplicate_bytes": cache.duplicate_bytes, "messages": cache.messages,
            "data_bytes": cache.data_bytes, "last_eor": cache.last_eor}


def bincache_vectors() -> list[dict]:
    d = bytes(range(40))
    cases = {
        "in order": [[(PRECINCT, 0, 3, 0, d[:10], False), (PRECINCT, 0, 3, 10, d[10:20], True)]],
        "out of order": [[(PRECINCT, 0, 3, 10, d[10:20], True),
                          (PRECINCT, 0, 3, 0, d[:10], False)]],
        "overlap counted once": [[(PRECINCT, 0, 3, 0, d[:10], False),
                                  (PRECINCT, 0, 3, 5, d[5:15], False)],
                                 [(PRECINCT, 0, 3, 0, d[:15], True)]],
        "pieces ahead of a gap": [[(PRECINCT, 0, 8, 20, d[20:30], False),
                                   (PRECINCT, 0, 8, 32, d[32:40], True),
                                   (PRECINCT, 0, 8, 0, d[:10], False),
                                   (PRECINCT, 0, 8, 8, d[8:21], False)]],
        "headers, metadata and two codestreams": [
            [(METADATA, 0, 0, 0, b"jP  ", True), (MAIN_HEADER, 0, 0, 0, d[:12], False),
             (MAIN_HEADER, 0, 0, 12, d[12:16], True), (TILE_HEADER, 0, 0, 0, b"", True),
             (TILE_HEADER, 0, 4, 0, d[:3], False), (PRECINCT, 1, 0, 0, d[:4], False),
             (EXT_PRECINCT, 1, 0, 4, d[4:6], False, 1), (MAIN_HEADER, 1, 0, 0, d[:2], False)],
            [(PRECINCT, 0, 70000, 0, d, True), (METADATA, 0, 2, 0, d[:1], False)],
        ],
    }
    errors = {
        "bytes differ": [(PRECINCT, 0, 1, 0, b"abc", False), (PRECINCT, 0, 1, 1, b"xc", False)],
        "length changes": [(PRECINCT, 0, 1, 0, b"abc", True), (PRECINCT, 0, 1, 0, b"abcd", True)],
        "beyond the end": [(PRECINCT, 0, 1, 0, b"abc", True), (PRECINCT, 0, 1, 3, b"d", False)],
        "main header id": [(MAIN_HEADER, 0, 1, 0, b"x", True)],
    }
    out = []
    for name, responses in cases.items():
        cache = BinCache()
        streams = []
        for n, messages in enumerate(responses):
            data = _stream(messages, (2 if n == len(responses) - 1 else 1, b""))
            streams.append(b64(data))
            for item in StreamParser().feed(data):
                cache.add(item)
        out.append({"name": name, "responses": streams, "expect": _cache_json(cache)})
    for name, messages in errors.items():
        cache = BinCache()
        data = _stream(messages, None)
        try:
            for item in StreamParser().feed(data):
                cache.add(item)
        except StreamError as e:
            out.append({"name": name, "responses": [b64(data)], "error": str(e)})
        else:
            raise AssertionError(f"{name}: the Python cache accepted it")
    return out


# ----- responses for real windows, and the codestreams rebuilt from them ---------------------

REBUILD_CASES = [  # file, fsiz, roff, rsiz, byte limits of successive responses (None: no limit)
    ("p0_12.j2k", (3, 5), None, None, [None]),                  # SOP, TERMALL, 3x5
    ("p0_09.j2k", (17, 37), None, None, [None]),                # Kakadu, 9/7
    ("p1_01.j2k", (122, 99), (30, 20), (50, 40), [None]),       # offsets, SOP/EPH, COC
    ("p0_02.j2k", (127, 126), None, None, [900, None]),         # 6 layers, cut by len
    ("p0_10.j2k", (256, 256), (100, 0), (100, 200), [None]),    # 4 tiles, interleaved parts
    ("basn6a08.jp2", (32, 32), None, None, [None]),             # RGBA JP2
    ("liver_j2k.j2k", (512, 512), None, None, [None]),          # 1-bit
    ("p1_05.j2k", (64, 64), None, None, [None]),                # PPM, 225 tiles, BYPASS
    ("p1_02.j2k", (80, 60), None, None, [700, None]),           # PPT, RESET/VCAUSAL
    ("file3.jp2", (60, 80), None, None, [None]),                # subsampled components
    ("CT1.j2k", (32, 32), None, None, [None]),                  # 16-bit signed
    ("HTJ2KLossless_08_RGB.j2k", (40, 30), None, None, [None]),  # HT code-blocks
    ("test-card-lossy-tiled.jp2", (80, 60), None, None, [1500, 3000, None]),  # tiles, 6 layers
]


def _cache_rebuild(cache: BinCache, cs: int, max_layers: int | None) -> bytes:
    s = cache.streams[cs]
    tiles = {t: bytes(b.data) for t, b in s.tile_headers.items() if b.complete}
    bins = {i: bytes(b.data) for i, b in s.precincts.items()}
    return rebuild_codestream(bytes(s.main_header.data), tiles, bins, max_layers=max_layers)


def rebuild_vectors() -> list[dict]:
    out = []
    for name, fsiz, roff, rsiz, limits in REBUILD_CASES:
        with build_source(CORPUS / name) as src:
            ix = src.codestreams[0]
            window = resolve_window(ix, 0, fsiz=(*fsiz, "round-down"), roff=roff, rsiz=rsiz)
            plan = plan_window(ix, window)
            model = CacheModel()
            cache = BinCache()
            responses = []
            for limit in limits:
                chunks = list(ResponseBuilder(src, [plan], model, byte_limit=limit).chunks())
                for chunk in chunks:
                    if chunk.records:
                        model.apply(chunk.records)
                data = b"".join(c.data for c in chunks)
                for item in StreamParser().feed(data):
                    cache.add(item)
                layers = {}
                for cap in (None, 1):
                    rebuilt = _cache_rebuild(cache, 0, cap)
                    layers["all" if cap is None else str(cap)] = {
                        "length": len(rebuilt), "sha256": hashlib.sha256(rebuilt).hexdigest()}
                responses.append({"stream": b64(data), "eor": cache.last_eor,
                                  "rebuilt": layers})
        out.append({"file": name, "fsiz": list(fsiz), "roff": roff and list(roff),
                    "rsiz": rsiz and list(rsiz), "responses": responses})
    return out


# ----- view-window resolution ------------------------------------------------------------------

WINDOW_FILES = ["p1_01.j2k", "file1.jp2", "p0_05.j2k",
                "small_world_non_consecutive_tilepart_tlm.jp2",
                "2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2", "p0_12.j2k"]
WINDOW_REQUESTS = [  # fsiz (with rounding), roff, rsiz
    ((64, 64, "round-down"), None, None),
    ((64, 64, "round-up"), None, None),
    ((64, 64, "closest"), None, None),
    ((100000, 100000, "round-down"), None, None),
    ((1, 1, "round-down"), None, None),
    ((200, 150, "round-down"), (13, 7), (50, 41)),
    ((200, 150, "round-up"), (190, 140), (50, 50)),
    ((300, 300, "closest"), (299, 0), (1, 300)),
    ((96, 90, "round-down"), (500, 500), (10, 10)),
    ((3040, 3072, "round-down"), (1000, 2000), (640, 480)),
]


def window_vectors() -> list[dict]:
    out = []
    for name in WINDOW_FILES:
        with build_source(CORPUS / name) as src:
            ix = src.codestreams[0]
            siz = ix.siz
            cases = []
            for fsiz, roff, rsiz in WINDOW_REQUESTS:
                w = resolve_window(ix, 0, fsiz=fsiz, roff=roff, rsiz=rsiz)
                cases.append({"fsiz": list(fsiz), "roff": roff and list(roff),
                              "rsiz": rsiz and list(rsiz), "discard": w.discard,
                              "frame": list(w.frame), "offset": list(w.offset),
                              "size": list(w.size), "region": list(w.region)})
            out.append({"file": name, "max_levels": ix.max_discard,
                        "siz": {"xsiz": siz.xsiz, "ysiz": siz.ysiz, "xosiz": siz.xosiz,
                                "yosiz": siz.yosiz},
                        "main_header": b64(src.main_header_bin(0)), "cases": cases})
    return out


# ----- metadata-bins: the colour space the viewer reads through placeholders -------------------

COLOUR_FILES = ["file3.jp2", "nemo.jp2", "MAROTECH_CT_JP2Lossy.jp2", "basn6a08.jp2",
                "test-card-lossy-tiled.jp2", "heliov.jpx", "p0_12.j2k"]


def _colour_space(bins: dict[int, bytes]):
    """The enumerated colour space of the first `colr` of the JP2 header box, as the
    viewer's jp2.js names it (None: none)."""
    for box in find_boxes(box_tree(bins), b"jp2h"):
        for colr in find_boxes(box.children or [], b"colr"):
            c = colr.contents
            if c is None or len(c) < 7 or c[0] != 1:
                continue
            value = int.from_bytes(c[3:7], "big")
            return {16: "srgb", 17: "grey", 18: "sycc"}.get(value, value)
    return None


def colour_vectors() -> list[dict]:
    """The metadata-bins of a first answer (bin 0 and the boxes the image needs)."""
    out = []
    for name in COLOUR_FILES:
        with build_source(CORPUS / name) as src:
            ix = src.codestreams[0]
            window = resolve_window(ix, 0, fsiz=(64, 64, "round-down"), roff=None, rsiz=None)
            plan = plan_metadata(src.metadata, None, [window], False)
            bins = {k: src.metadata.bin_bytes(k, src.view)[:end] for k, end in plan.first}
            out.append({"file": name, "bins": {str(k): b64(v) for k, v in bins.items()},
                        "colour": _colour_space(bins)})
    return out


def build_vectors() -> dict:
    return {
        "about": "Made by tests/viewer/vectors.py from the Python implementation; "
                 "regenerate with `python -m tests.viewer.vectors`.",
        "jpp": jpp_vectors(),
        "jpp_errors": jpp_error_vectors(),
        "bincache": bincache_vectors(),
        "rebuild": rebuild_vectors(),
        "window": window_vectors(),
        "colour": colour_vectors(),
    }


def render(vectors: dict) -> str:
    return json.dumps(vectors, indent=1, sort_keys=True) + "\n"


def main(path: Path = VECTORS) -> None:
    path.write_text(render(build_vectors()))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else VECTORS)
