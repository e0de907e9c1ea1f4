"""The JPIP index writer (jpip_index.py) that lets opj_server serve the generated interop images.

Each index table is read back here with a small reader of its own and checked against the bytes
of the codestream itself, not against the codestream index it was built from: every offset must
land on the marker or packet it names, and the packets of each tile must follow one another
exactly as the encoder's own PLT markers list them (opj_compress wrote those). The working proof
that opj_server accepts the result is test_opj_server.py.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from codestream.markers import PLT, SOD, SOT, read_segment
from codestream.parse import parse_codestream
from tests.conftest import CORPUS, INTEROP
from tests.interop.jpip_index import add_jpip_index

INDEXED = [INTEROP / "med2048_idx.jp2", INTEROP / "rgb4096_idx.jp2"]
# Corpus JP2 files within the writer's limits (one tile-part per tile, no PPM/PPT): other
# encoders, subsampled components, a jp2c box with LBox 0 (MAROTECH), 16 and 12 bits.
CORPUS_JP2 = ["file3.jp2", "MAROTECH_CT_JP2Lossy.jp2", "nemo.jp2",
              "2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2",
              "test-card-lossy-tiled.jp2"]  # tiles in several tile-parts


def boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, content offset, end) of the boxes in [start, end); 8-byte headers only."""
    out = []
    while start < end:
        length, kind = struct.unpack_from(">I4s", data, start)
        assert length >= 8 and start + length <= end, f"bad box {kind!r} at {start}"
        out.append((kind, start + 8, start + length))
        start += length
    assert start == end
    return out


def one(found: list[tuple[bytes, int, int]], kind: bytes) -> tuple[int, int]:
    hits = [(a, b) for k, a, b in found if k == kind]
    assert len(hits) == 1, f"{len(hits)} {kind!r} boxes"
    return hits[0]


def read_mhix(data: bytes, start: int, end: int) -> tuple[int, list[tuple[int, int, int, int]]]:
    (tlen,) = struct.unpack_from(">Q", data, start)
    assert (end - start - 8) % 14 == 0
    return tlen, [struct.unpack_from(">HHQH", data, p) for p in range(start + 8, end, 14)]


def read_faix(data: bytes, start: int, end: int) -> np.ndarray:
    """A faix box's table as (rows, nmax, 2) of (offset, length); versions 0 and 1 only."""
    version = data[start]
    assert version in (0, 1), f"faix version {version}"
    dtype = ">u8" if version else ">u4"
    width = np.dtype(dtype).itemsize
    nmax, rows = np.frombuffer(data, dtype, 2, start + 1)
    table = np.frombuffer(data, dtype, int(rows * nmax * 2), start + 1 + 2 * width)
    assert start + 1 + 2 * width + table.nbytes == end
    return table.reshape(int(rows), int(nmax), 2).astype(np.int64)


def manifest(data: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    return [struct.unpack_from(">I4s", data, p) for p in range(start, end, 8)]


def check_index(data: bytes) -> None:
    top = boxes(data, 0, len(data))
    kinds = [k for k, _, _ in top]
    jp2c_at = next(a - 8 for k, a, _ in top if k == b"jp2c")
    cidx_at = next(a - 8 for k, a, _ in top if k == b"cidx")
    fidx = one(top, b"fidx")
    assert kinds.index(b"iptr") < kinds.index(b"jp2c") < kinds.index(b"cidx")

    # iptr -> fidx; prxy -> jp2c and cidx, with copies of their box headers.
    iptr = one(top, b"iptr")
    assert struct.unpack_from(">QQ", data, iptr[0]) == (fidx[0] - 8, fidx[1] - fidx[0] + 8)
    prxy = one(boxes(data, *fidx), b"prxy")
    body = data[prxy[0]:prxy[1]]
    assert struct.unpack_from(">Q", body)[0] == jp2c_at
    assert body[8:16] == data[jp2c_at:jp2c_at + 8] and body[16] == 1
    assert struct.unpack_from(">Q", body, 17)[0] == cidx_at
    assert body[25:33] == data[cidx_at:cidx_at + 8] and len(body) == 33

    # cptr -> the codestream; manf lists what follows it.
    inside = boxes(data, *one(top, b"cidx"))
    dr, cont, coff, clen = struct.unpack_from(">HHQQ", data, one(inside, b"cptr")[0])
    assert (dr, cont, coff) == (0, 0, jp2c_at + 8) and coff + clen == one(top, b"jp2c")[1]
    cs = data[coff:coff + clen]
    assert cs[:2] == b"\xff\x4f"
    assert [k for _, k in manifest(data, *one(inside, b"manf"))] == [
        b"mhix", b"tpix", b"thix", b"ppix", b"phix"]
    assert [k for k, _, _ in inside] == [b"cptr", b"manf", b"mhix", b"tpix", b"thix", b"ppix",
                                         b"phix"]

    def check_markers(entries: list[tuple[int, int, int, int]]) -> None:
        for n, (code, nr, off, length) in enumerate(entries):
            assert struct.unpack_from(">H", cs, off - 2)[0] == code
            if code != SOD:
                assert struct.unpack_from(">H", cs, off)[0] == length
            assert nr == sum(1 for e in entries[n + 1:] if e[0] == code)

    # Main header: up to the first SOT, every segment after SOC.
    tlen, entries = read_mhix(data, *one(inside, b"mhix"))
    assert cs[tlen:tlen + 2] == b"\xff\x90"
    check_markers(entries)
    assert entries[0][:3] == (0xFF51, 0, 4)
    assert entries[-1][2] + entries[-1][3] == tlen

    # Tile-parts: element k of row t the SOT of tile t's tile-part k with its Psot (zeros past
    # the tile's last tile-part).
    parts = read_faix(data, *boxes(data, *one(inside, b"tpix"))[0][1:])
    for t, row in enumerate(parts):
        for k, (off, length) in enumerate(row):
            if length == 0:
                assert not row[k:].any()
                break
            isot, psot, tpsot = struct.unpack_from(">HHIB", cs, off + 2)[1:]
            assert cs[off:off + 2] == b"\xff\x90" and (isot, psot, tpsot) == (t, length, k)

    # Tile headers: SOT ... SOD of each tile.
    thix = boxes(data, *one(inside, b"thix"))
    assert thix[0][0] == b"manf" and len(manifest(data, *thix[0][1:])) == len(thix) - 1
    for t, (kind, a, b) in enumerate(thix[1:]):
        assert kind == b"mhix"
        tlen, entries = read_mhix(data, a, b)
        sot = int(parts[t, 0, 0])
        assert cs[sot + tlen - 2:sot + tlen] == b"\xff\x93"
        assert entries[0][0] == SOT and entries[-1][0] == SOD and entries[-1][2] == sot + tlen
        check_markers(entries)

    # Packets: over all components, each tile's packets follow one another from SOD to the
    # tile-part end with the lengths the encoder's PLT lists, in that order; headers start
    # where packets start and are shorter.
    layout = parse_codestream(cs, 0, len(cs))
    ppix = boxes(data, *one(inside, b"ppix"))
    phix = boxes(data, *one(inside, b"phix"))
    ncomp = layout.siz.num_components
    assert len(ppix) == len(phix) == ncomp + 1
    packets = [read_faix(data, a, b) for _, a, b in ppix[1:]]
    headers = [read_faix(data, a, b) for _, a, b in phix[1:]]
    for t, th in layout.tiles.items():
        got = np.concatenate([p[t] for p in packets])
        got = got[got[:, 1] > 0]
        got = got[np.argsort(got[:, 0])]
        for part in th.parts:  # each tile-part's packets fill it, one after another
            mine = got[(got[:, 0] >= part.header_end) & (got[:, 0] < part.data_end)]
            if len(mine) == 0:
                assert part.header_end == part.data_end
                continue
            assert mine[0, 0] == part.header_end and mine[-1].sum() == part.data_end
            assert (mine[1:, 0] == mine[:-1].sum(axis=1)).all(), "packets overlap or leave gaps"
            plt = plt_lengths(cs, part.sot_offset, part.header_end)
            if plt is not None:
                assert mine[:, 1].tolist() == plt
        assert sum(len(got[(got[:, 0] >= p.header_end) & (got[:, 0] < p.data_end)])
                   for p in th.parts) == len(got), "packets outside the tile's tile-parts"
        for p, h in zip(packets, headers, strict=True):
            used = p[t, :, 1] > 0
            assert (h[t, :, 0] == p[t, :, 0]).all()
            assert (h[t, used, 1] > 0).all() and (h[t, :, 1] <= p[t, :, 1]).all()


def plt_lengths(cs: bytes, sot: int, header_end: int) -> list[int] | None:
    """The packet lengths a tile-part's PLT segments list (None without PLT), without the
    zero entries some encoders reserve at the end (no packet is 0 bytes long)."""
    values: list[int] = []
    pos, seen, value = read_segment(cs, sot, header_end).end, False, 0
    while pos < header_end - 2:
        seg = read_segment(cs, pos, header_end)
        if seg.code == PLT:
            seen = True
            for byte in cs[seg.body_offset + 1:seg.end]:
                value = value << 7 | byte & 0x7F
                if not byte & 0x80:
                    values.append(value)
                    value = 0
        pos = seg.end
    while values and values[-1] == 0:
        values.pop()
    return values if seen else None


@pytest.mark.parametrize("path", INDEXED, ids=lambda p: p.name)
def test_generated_interop_index(path: Path) -> None:
    data = path.read_bytes()
    check_index(data)
    plain = (INTEROP / path.name.replace("_idx", "")).read_bytes()
    assert add_jpip_index(plain) == data, "the cached file is not what the writer makes now"


@pytest.mark.parametrize("name", CORPUS_JP2)
def test_index_of_corpus_file(name: str) -> None:
    check_index(add_jpip_index((CORPUS / name).read_bytes()))


@pytest.mark.parametrize(("name", "error"), [
    ("p0_01.j2k", "JP2 file with one codestream"),
    ("heliov.jpx", "JP2 file with one codestream"),
])
def test_files_outside_the_writers_limits_are_refused(name: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        add_jpip_index((CORPUS / name).read_bytes())


def test_an_indexed_file_is_not_indexed_twice() -> None:
    with pytest.raises(ValueError, match="already has JPIP index"):
        add_jpip_index(INDEXED[0].read_bytes())
