"""The DICOM objects the tests serve, built from corpus codestreams (tests/data/dicom.py).

Each case names its frames (corpus files), how they are cut into fragments, the offset table
and the transfer syntax; `expected` are the codestreams OpenJPEG decodes as the reference for
each frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from codestream.parse import parse_codestream
from tests.conftest import CORPUS
from tests.data.dicom import (
    HTJ2K_LOSSLESS,
    HTJ2K_RPCL,
    JPEG2000,
    JPEG2000_LOSSLESS,
    build_dicom,
    codestream_of,
    split_at,
)

CT_FRAMES = ["CT1.j2k", "693_J2KR.j2k", "TOSHIBA_J2K_SIZ1_PixRep0.j2k"]  # all 512x512 grey


def _even(n: int) -> int:
    return n - n % 2


def awkward_cuts(data: bytes) -> list[int]:
    """Even cut points inside the main header (SIZ), inside the first tile-part header, and
    inside the largest packet bodies and a few others, of a raw codestream."""
    layout = parse_codestream(data, 0, len(data))
    cuts = {10}  # inside SIZ
    first = layout.tile_parts[0]
    cuts.add(_even(first.sot_offset + 5))  # inside SOT
    if first.header_end - first.sot_offset > 14:
        cuts.add(_even(first.sot_offset + 13))
    from codestream.index import index_codestream

    pk = index_codestream(data, 0, len(data)).packets
    order = sorted(range(len(pk["offset"])), key=lambda k: -int(pk["length"][k]))
    for k in order[:4] + order[len(order) // 2:len(order) // 2 + 3]:
        off, n = int(pk["offset"][k]), int(pk["length"][k])
        if n > 4:
            cuts.add(_even(off + n // 2))
            cuts.add(_even(off + 1) if n > 2 else off)
    return sorted(c for c in cuts if 0 < c < len(data) - 1)


def _unpadded(data: bytes) -> bytes:
    """Several corpus files were taken from DICOM objects with their 00h pad after EOC: the
    server serves the codestream without it."""
    return data[:-1] if data.endswith(b"\xff\xd9\x00") else data


def every(step: int, data: bytes) -> list[int]:
    return list(range(step, len(data) - 1, step))


@dataclass
class Case:
    name: str
    files: list[str]                       # corpus file per frame
    table: str = "bot"
    syntax: str = JPEG2000
    cut: object = None                     # callable(frame bytes) -> cut points, or None
    expected: list[bytes] = field(default_factory=list)

    def frames(self) -> list[list[bytes]]:
        out = []
        for f in self.files:
            data = (CORPUS / f).read_bytes()
            out.append(split_at(data, self.cut(data)) if self.cut else [data])
        return out

    def build(self, folder: Path) -> Path:
        path = folder / self.name
        build_dicom(path, self.frames(), transfer_syntax=self.syntax, table=self.table)
        self.expected = [_unpadded(codestream_of((CORPUS / f).read_bytes())) for f in self.files]
        return path


CASES = [
    Case("ct1.dcm", ["CT1.j2k"]),
    Case("CT1_EMPTY_BOT", ["CT1.j2k"], table="none"),           # no suffix, empty BOT
    Case("ct_bot.dcm", CT_FRAMES),
    Case("ct_eot.dcm", CT_FRAMES, table="eot"),
    Case("ct_nobot.dcm", CT_FRAMES, table="none"),
    Case("ct_split_bot.dcm", CT_FRAMES, cut=awkward_cuts),
    Case("ct_split_nobot.dcm", CT_FRAMES, table="none", cut=awkward_cuts),
    Case("rgb_lossless.dcm", ["US1_J2KR.j2k"], syntax=JPEG2000_LOSSLESS, cut=awkward_cuts),
    Case("mr.dcm", ["MR2_J2KI.j2k"], table="none"),
    Case("odd.dcm", ["p1_01.j2k", "p0_02.j2k", "p0_12.j2k"], cut=lambda d: every(64, d)),
    Case("odd_whole.dcm", ["p1_01.j2k", "p0_02.j2k", "p0_12.j2k"], table="none"),
    Case("liver.dcm", ["liver_j2k.j2k", "liver_j2k.j2k"], syntax=JPEG2000_LOSSLESS),
    Case("htj2k.dcm", ["HTJ2KLossless_08_RGB.j2k", "HTJ2KLossless_08_RGB.j2k"],
         syntax=HTJ2K_LOSSLESS),
    Case("htj2k_rpcl_split.dcm", ["HTJ2KLossless_08_RGB.j2k"], syntax=HTJ2K_RPCL,
         cut=awkward_cuts),
    Case("jp2_frames.dcm", ["MAROTECH_CT_JP2Lossy.jp2", "MAROTECH_CT_JP2Lossy.jp2"]),
    Case("jp2_split.dcm", ["MAROTECH_CT_JP2Lossy.jp2", "MAROTECH_CT_JP2Lossy.jp2"],
         table="none", cut=lambda d: [40, 96, *every(4096, d)[1:]]),
    Case("psot0_noeoc.dcm", ["CT1_psot0_noeoc.j2k"], cut=awkward_cuts),
    Case("tiles_ppm_split.dcm", ["p1_05.j2k"], cut=lambda d: every(998, d)),
    Case("ppt_split.dcm", ["p1_02.j2k"], cut=awkward_cuts),
    Case("tileparts_split.dcm", ["p0_10.j2k"], cut=lambda d: every(200, d)),
]
# Served through the app and checked window by window against OpenJPEG (the others are
# checked bin by bin against the unsplit codestream's index, which is cheaper).
PIXEL_CASES = ["ct1.dcm", "CT1_EMPTY_BOT", "ct_eot.dcm", "ct_split_nobot.dcm",
               "rgb_lossless.dcm", "odd.dcm", "htj2k_rpcl_split.dcm", "jp2_split.dcm",
               "psot0_noeoc.dcm", "tileparts_split.dcm", "liver.dcm"]


def build_all(folder: Path) -> dict[str, Case]:
    folder.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        case.build(folder)
    return {c.name: c for c in CASES}
