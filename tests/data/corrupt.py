"""Corrupt copies of real files, for the tests that check what bad files do to the indexer
(tests/codestream/test_bad_files.py) and to the server (tests/reliability/).

Every variant is made from a real file by a seeded draw, so a failure names a variant that
can be made again: cuts at box, marker-segment and tile-part boundaries (and a byte either
side) and at random points, and single bit flips in the main header, tile-part headers, packet
headers and PLT bodies. DICOM objects get the same damage in their codestreams, plus cuts at
their item boundaries and flips in the dataset, the item headers and the Basic Offset Table.
"""
from __future__ import annotations

import random
import struct
import zlib

import numpy as np

from codestream.boxes import SUPERBOXES, read_layout, walk_boxes
from codestream.index import index_codestream
from codestream.parse import parse_codestream

CUTS_PER_FILE = 40
FLIPS_PER_REGION = 6
HEAVY_PACKETS = 10_000  # files with more packets (p1_05: 26,000) get a quarter of the variants
PACKET_HEADERS_SAMPLED = 64

Variant = tuple[str, bytes]  # (what was done, the damaged bytes)


def sample(positions: list, k: int, seed: int) -> list:
    """k of the items, chosen by a seeded draw, in their original order."""
    if len(positions) <= k:
        return positions
    return [positions[i] for i in sorted(random.Random(seed).sample(range(len(positions)), k))]


def seed_of(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "big")


def boundaries(data: bytes) -> list[int]:
    """Offsets where a box, a marker segment, a tile-part header or tile-part data starts or
    ends, and a byte either side of each."""
    points: set[int] = set()
    layout = read_layout(data)

    def boxes_at(start: int, end: int, depth: int) -> None:
        for box in walk_boxes(data, start, end):
            points.update((box.offset, box.content_offset, box.end))
            if box.box_type in SUPERBOXES and depth < 4:
                boxes_at(box.content_offset, box.end, depth + 1)

    if layout.is_jp2:
        boxes_at(0, len(data), 0)
    for off, ln in layout.codestreams:
        cs = parse_codestream(data, off, ln)
        points.update((off, off + 2, off + ln))
        for seg in cs.main.segments:
            points.update((seg.offset, seg.body_offset, seg.end))
        for part in cs.tile_parts:
            points.update((part.sot_offset, part.header_end, part.data_end))
            for seg in part.header_segments:
                points.update((seg.offset, seg.body_offset, seg.end))
    near = {p + d for p in points for d in (-1, 0, 1)}
    return sorted(p for p in near if 0 < p < len(data))


def flip_regions(data: bytes) -> tuple[dict[str, list[int]], int]:
    """Byte positions of the main headers, tile-part headers, packet headers and PLT bodies;
    and the number of packets. A packet located from PLT has no decoded header length: its
    first two bytes (where its header starts) stand for its header."""
    out: dict[str, list[int]] = {"main": [], "tile_header": [], "packet_header": [], "plt": []}
    packets = 0
    for off, ln in read_layout(data).codestreams:
        cs = parse_codestream(data, off, ln)
        out["main"] += range(off, cs.tile_parts[0].sot_offset if cs.tile_parts else off + ln)
        for part in cs.tile_parts:
            out["tile_header"] += range(part.sot_offset, part.header_end)
            for seg in part.header_segments:
                if seg.code == 0xFF58:
                    out["plt"] += range(seg.body_offset, seg.end)
        pk = index_codestream(data, off, ln).packets
        packets += len(pk["offset"])
        head = np.where(pk["header_length"] > 0, pk["header_length"],
                        np.minimum(pk["length"], 2))
        for k in sample(np.flatnonzero(head > 0).tolist(), PACKET_HEADERS_SAMPLED, seed=7):
            start = int(pk["offset"][k])
            out["packet_header"] += range(start, start + int(head[k]))
    return out, packets


def flip(data: bytes, pos: int, bit: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def corrupt_variants(name: str, data: bytes, *, cuts: int = CUTS_PER_FILE,
                     flips: int = FLIPS_PER_REGION) -> list[Variant]:
    """`cuts` cut copies (all but 8 at boundaries) and `flips` bit-flipped copies per region
    of a JPEG 2000 file (JP2, JPX or raw codestream), seeded by its name."""
    seed = seed_of(name)
    rng = random.Random(seed)
    regions, packets = flip_regions(data)
    share = 4 if packets > HEAVY_PACKETS else 1
    at = sample(boundaries(data), (cuts - 8) // share, seed=seed)
    at += sorted(rng.randrange(1, len(data)) for _ in range(8 // share))
    out = [(f"cut at {c}", data[:c]) for c in at]
    for region, positions in regions.items():
        for pos in sample(positions, -(-flips // share), seed=seed ^ zlib.crc32(region.encode())):
            bit = rng.randrange(8)
            out.append((f"{region} bit {bit} flipped at {pos}", flip(data, pos, bit)))
    return out


# --------------------------------------------------------------------------- DICOM
ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian


def dicom_regions(data: bytes, items_offset: int,
                  frames: list[tuple[int, bytes]]) -> tuple[list[int], dict[str, list[int]]]:
    """Cut points and flip regions of a DICOM object built by tests/data/dicom.py whose
    encapsulated Pixel Data items start at `items_offset`; `frames` are (file offset,
    codestream) of frames stored in one fragment each."""
    items: list[tuple[int, int]] = []  # (offset, value length) of each item
    pos = items_offset
    while pos + 8 <= len(data) and data[pos:pos + 4] == ITEM_TAG:
        (n,) = struct.unpack_from("<I", data, pos + 4)
        items.append((pos, n))
        pos += 8 + n
    points = {items_offset, *(p for p, _ in items), *(p + 8 for p, _ in items), pos}
    regions: dict[str, list[int]] = {
        "dataset": list(range(128, items_offset)),
        "item_header": [p + k for p, _ in items for k in range(8)],
        "offset_table": list(range(items[0][0] + 8, items[0][0] + 8 + items[0][1])),
    }
    for start, cs in frames:
        points.update({start, start + len(cs)})
        cs_regions, _ = flip_regions(cs)
        for region, positions in cs_regions.items():
            regions.setdefault(region, []).extend(start + p for p in positions)
        points.update(start + p for p in boundaries(cs))
    near = sorted(p + d for p in points for d in (-1, 0, 1) if 0 < p + d < len(data))
    return near, regions


def dicom_variants(name: str, data: bytes, items_offset: int, frames: list[tuple[int, bytes]],
                   *, cuts: int = CUTS_PER_FILE, flips: int = FLIPS_PER_REGION) -> list[Variant]:
    """Cut and bit-flipped copies of a DICOM object (see dicom_regions), seeded by its name."""
    seed = seed_of(name)
    rng = random.Random(seed)
    points, regions = dicom_regions(data, items_offset, frames)
    at = sample(points, cuts - 8, seed=seed)
    at += sorted(rng.randrange(1, len(data)) for _ in range(8))
    out = [(f"cut at {c}", data[:c]) for c in at]
    for region, positions in regions.items():
        for pos in sample(positions, flips, seed=seed ^ zlib.crc32(region.encode())):
            bit = rng.randrange(8)
            out.append((f"{region} bit {bit} flipped at {pos}", flip(data, pos, bit)))
    return out
