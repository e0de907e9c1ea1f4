"""Damaged files served through the real app: each window is either served so that it decodes
as OpenJPEG decodes that damaged file, or refused with a 4xx naming the problem.

Every case is a corrupt copy of a real file (tests/data/corrupt.py: cuts at box, marker and
tile-part boundaries and at random points, bit flips in headers, packet headers and PLT; DICOM
objects also in their dataset, item headers and offset table). It is put under the image root
of a running app and asked for two windows: a thumbnail (fsiz=64,64) and a 64x64 region at full
resolution in the middle of the intact image. What comes back is classified:

- "refused": 415 (not JPEG 2000) or 422 (damaged), with a one-line reason in a text/plain body.
- "exact": a complete JPP-stream whose bins, rebuilt into a codestream (client.decode.rebuild)
  and decoded by `opj_decompress`, give exactly the samples `opj_decompress` decodes from the
  damaged file itself for that window (tests/oracle.py, cropped the oracle's own way). Two
  things are not compared, because OpenJPEG's answer there is not the file's: samples of tiles
  that have no tile-part in the damaged file (OpenJPEG fills them with 0, a rebuilt codestream
  carries them as empty tiles), and a missing EOC (OpenJPEG refuses a codestream that ends
  right after its last tile-part; the reference then gets the EOC back).
- "neither decodes": OpenJPEG refuses the damaged file, and it refuses what was served too.
- "not read yet": OpenJPEG refuses the damaged file (it reads every packet header), the server
  served the window from a lazily built index (RLCP/RPCL without PLT: the lowest resolutions
  first, codestream.index) that has not reached the damage, and what it served decodes to
  exactly the samples OpenJPEG decodes from the intact file for that window. A window that
  reaches the damage is refused (422) once the index gets there.
- "PLT trusted": a packet header or PLT flipped in a file whose packets are located from PLT
  (the index trusts PLT lengths that add up, as documented; OpenJPEG ignores PLT and reads the
  damaged header): the bytes served are the ones PLT names, the pixels may differ from OpenJPEG's.

Anything else fails: another status (500 above all), a stream without its EOR, served pixels
that differ, a window OpenJPEG decodes from the file but not from what was served, a request
that hangs, an unhandled exception in the server's log.
"""
from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import numpy as np

from client.bincache import BinCache, StreamError
from client.decode import header_info, rebuild, window_region
from codestream.boxes import read_layout
from codestream.index import index_codestream
from codestream.intmath import ceil_div
from codestream.markers import Siz
from codestream.parse import parse_codestream
from jpip.jpp import StreamParser
from tests.conftest import corpus_files
from tests.data.corrupt import corrupt_variants, dicom_variants, sample
from tests.oracle import OracleError, decode_codestream, window_crops

ACCEPTED = ("refused", "exact", "neither decodes", "PLT trusted", "not read yet")
REFUSAL_STATUSES = (415, 422)
REQUEST_SECONDS = 60.0  # a window not answered within this is a hang
EOC = b"\xff\xd9"


@dataclass(frozen=True)
class Case:
    """One damaged file to serve."""

    source: str                 # the intact file it was made from
    what: str                   # what was done to it
    data: bytes
    suffix: str                 # its name's suffix under the root
    frame: tuple[int, int]      # the intact codestream's full frame size
    plt: bool                   # the intact file's packets are located from PLT
    dicom: bool = False
    streams: tuple[int, int] = (0, 0)  # codestream asked for by the thumbnail, the region
    intact: Path | None = None  # the intact file (JPEG 2000 cases)


@dataclass(frozen=True)
class Outcome:
    case: Case
    window: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.outcome in ACCEPTED

    def __str__(self) -> str:
        return (f"{self.case.source}, {self.case.what}, {self.window}: {self.outcome}"
                + (f" ({self.detail})" if self.detail else ""))


# --------------------------------------------------------------------------- the cases
def _intact_facts(data: bytes) -> tuple[tuple[int, int], bool]:
    off, ln = read_layout(data).codestreams[0]
    ix = index_codestream(data, off, ln)
    return (ix.siz.width, ix.siz.height), ix.source != "headers"


def jpeg2000_cases(paths: Iterable[Path] | None = None, *, per_file: int | None = None,
                   cuts: int | None = None, flips: int | None = None) -> list[Case]:
    """Damaged copies of the corpus files (all of corrupt_variants' variants, or `per_file` of
    them drawn by a seeded sample)."""
    out = []
    for path in corpus_files() if paths is None else paths:
        data = path.read_bytes()
        frame, plt = _intact_facts(data)
        kw = {k: v for k, v in (("cuts", cuts), ("flips", flips)) if v is not None}
        variants = corrupt_variants(path.name, data, **kw)
        if per_file is not None:
            variants = sample(variants, per_file, seed=len(data))
        out += [Case(path.name, what, v, path.suffix, frame, plt, intact=path)
                for what, v in variants]
    return out


def dicom_cases(folder: Path, *, per_file: int | None = None, cuts: int | None = None,
                flips: int | None = None) -> list[Case]:
    """Damaged copies of two DICOM objects built here (tests/data/dicom.py): two frames of
    different corpus codestreams, one fragment each, with a Basic Offset Table."""
    from tests.conftest import CORPUS
    from tests.data.dicom import build_dicom, codestream_of, pixel_items_offset

    out = []
    for name, frames in (("two_ct.dcm", ["CT1.j2k", "693_J2KR.j2k"]),
                         ("two_rgb.dcm", ["US1_J2KR.j2k", "HTJ2KLossless_08_RGB.j2k"])):
        codestreams = [codestream_of((CORPUS / f).read_bytes()) for f in frames]
        codestreams = [c[:-1] if len(c) % 2 else c for c in codestreams]  # no pad byte
        path = folder / name
        build_dicom(path, [[c] for c in codestreams], table="bot")
        data = path.read_bytes()
        items = pixel_items_offset(data)
        located = [(data.index(c, items), c) for c in codestreams]
        kw = {k: v for k, v in (("cuts", cuts), ("flips", flips)) if v is not None}
        variants = dicom_variants(name, data, items, located, **kw)
        if per_file is not None:
            variants = sample(variants, per_file, seed=len(data))
        first, second = codestreams
        frame = min((_intact_facts(c)[0] for c in codestreams), key=lambda wh: wh[0] * wh[1])
        plt = any(_intact_facts(c)[1] for c in codestreams)
        out += [Case(name, what, v, ".dcm", frame, plt, dicom=True, streams=(1, 2))
                for what, v in variants]
    return out


# --------------------------------------------------------------------------- serving
def windows(case: Case) -> list[tuple[str, dict[str, str]]]:
    w, h = case.frame
    rw, rh = min(64, w), min(64, h)
    thumb = {"fsiz": "64,64"}
    region = {"fsiz": f"{w},{h}", "roff": f"{max(0, w // 2 - rw // 2)},{max(0, h // 2 - rh // 2)}",
              "rsiz": f"{rw},{rh}"}
    out = []
    for label, fields, stream in (("thumbnail", thumb, case.streams[0]),
                                  ("region", region, case.streams[1])):
        if stream:
            fields = {**fields, "stream": str(stream)}
        out.append((label, fields))
    return out


async def serve_case(http: aiohttp.ClientSession, base: str, root: Path, case: Case,
                     n: int) -> list[Outcome]:
    """Puts the case under the root as its own file, asks for both windows, classifies."""
    name = f"case{n:05d}{case.suffix}"
    path = root / name
    path.write_bytes(case.data)
    out = []
    try:
        for label, fields in windows(case):
            query = "&".join(f"{k}={v}" for k, v in {"target": name, **fields,
                                                     "type": "jpp-stream"}.items())
            t0 = time.perf_counter()
            try:
                async with http.get(f"{base}/jpip?{query}",
                                    timeout=aiohttp.ClientTimeout(total=REQUEST_SECONDS)) as r:
                    body = await r.read()
                    status, ctype = r.status, r.headers.get("Content-Type", "")
            except TimeoutError:
                out.append(Outcome(case, label, "hang", f"no answer in {REQUEST_SECONDS:g} s"))
                continue
            seconds = time.perf_counter() - t0
            if status == 200:
                kind, detail = await asyncio.to_thread(_check_served, case, fields, body)
            else:
                kind, detail = _check_refusal(status, ctype, body)
            out.append(Outcome(case, label, kind, detail, seconds))
    finally:
        path.unlink()
    return out


def _check_refusal(status: int, ctype: str, body: bytes) -> tuple[str, str]:
    text = body.decode("utf-8", "replace")
    if status not in REFUSAL_STATUSES:
        return f"status {status}", text.strip()[:200]
    if (not ctype.startswith("text/plain") or text.count("\n") != 1 or len(text.strip()) < 10
            or "internal error" in text or "Traceback" in text):
        return "unclear refusal", text[:200]
    return "refused", text.strip()


def _check_served(case: Case, fields: dict[str, str], body: bytes) -> tuple[str, str]:
    cache = BinCache()
    parser = StreamParser()
    try:
        for item in parser.feed(body):
            cache.add(item)
        parser.close()
    except (StreamError, ValueError) as e:
        return "bad stream", str(e)[:200]
    if parser.end is None:
        return "bad stream", "no EOR at the end"
    csn = int(fields.get("stream", 0))
    bins = cache.streams.get(csn)
    if bins is None or not bins.main_header.complete:
        return "bad stream", f"no main header for codestream {csn}"
    info = header_info(bytes(bins.main_header.data))
    fsiz = tuple(int(v) for v in fields["fsiz"].split(","))
    roff = tuple(int(v) for v in fields["roff"].split(",")) if "roff" in fields else None
    rsiz = tuple(int(v) for v in fields["rsiz"].split(",")) if "rsiz" in fields else None
    reg = window_region(info, (fsiz[0], fsiz[1], "round-down"), roff, rsiz)
    reference = reference_codestream(case, csn)
    try:
        ref = decode_codestream(reference, rlevel=reg.discard) if reference else None
        ref_error = "" if reference else "the damaged file holds no such codestream"
    except OracleError as e:
        ref, ref_error = None, str(e)
    try:
        got = decode_codestream(rebuild(cache, csn), rlevel=reg.discard)
        got_error = ""
    except (OracleError, StreamError, ValueError) as e:
        got, got_error = None, f"{type(e).__name__}: {e}"
    trusted = case.plt and ("packet_header" in case.what or case.what.startswith("plt"))
    if ref is None and got is None:
        return "neither decodes", ref_error[:200]
    if got is None:
        return ("PLT trusted" if trusted else "served fails"), got_error[:200]
    if ref is None:
        if case.intact is None:
            return "file fails", ref_error[:200]
        # The damage may lie where a lazily built index has not read yet: then what was
        # served is the intact file's window.
        reference = reference_codestream(replace(case, data=case.intact.read_bytes()), csn)
        try:
            ref = decode_codestream(reference, rlevel=reg.discard)
        except OracleError as e:
            return "file fails", f"{ref_error[:200]}; intact: {e}"[:300]
        unread = True
    else:
        unread = False
    a = window_crops(ref, info.siz, reg.discard, reg.region)
    b = window_crops(got, info.siz, reg.discard, reg.region)
    present = _present_tiles(reference, info.siz)
    differ = 0
    for c, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape != y.shape:
            return "differs", f"component {c}: {x.shape} vs {y.shape}"
        mask = _tile_mask(info.siz, present, c, reg.discard, reg.region)
        differ += int(((x != y) & mask).sum())
    if differ:
        if unread:
            return "file fails", (f"{ref_error[:200]}; {differ} samples differ from the "
                                  "intact file's")
        return ("PLT trusted" if trusted else "differs"), f"{differ} samples differ"
    return ("not read yet" if unread else "exact"), ""


def reference_codestream(case: Case, csn: int) -> bytes | None:
    """The codestream OpenJPEG is given: the damaged file's codestream `csn` as its box
    structure says, or for the DICOM objects here (one fragment per frame) fragment `csn` as
    pydicom reads the damaged Pixel Data (the offset table is not trusted, as the server does
    not trust one that does not fit the fragments); with EOC restored if the damage removed
    it."""
    try:
        if case.dicom:
            import pydicom
            from pydicom.encaps import generate_fragments

            ds = pydicom.dcmread(io.BytesIO(case.data))
            fragments = list(generate_fragments(ds.PixelData))[1:]  # after the offset table
            data = fragments[csn - 1]
            if data.endswith(EOC + b"\0"):
                data = data[:-1]  # the pad of an odd fragment
        else:
            off, ln = read_layout(case.data).codestreams[csn]
            data = case.data[off:off + ln]
    except Exception:  # pydicom's and our reader's refusals alike: no reference
        return None
    return data if data.endswith(EOC) else data + EOC


def _present_tiles(codestream: bytes, siz: Siz) -> np.ndarray:
    """Per tile: True if the codestream has a tile-part for it (all True if it cannot say)."""
    present = np.ones(siz.num_tiles, bool)
    try:
        layout = parse_codestream(codestream, 0, len(codestream))
    except Exception:
        return present
    present[:] = False
    present[[t for t in layout.tiles if t < siz.num_tiles]] = True
    return present


def _tile_mask(siz: Siz, present: np.ndarray, c: int, discard: int,
               region: tuple[int, int, int, int]) -> np.ndarray:
    """Which samples of a window crop (as window_crops cuts it) lie in tiles that are present.
    A tile covers samples [ceil(x0 / s), ceil(x1 / s)) of a component sampled every s grid
    points (T.800 B-12, B-14), clipped to the image."""
    comp = siz.components[c]
    sx, sy = comp.dx << discard, comp.dy << discard
    x0, y0, x1, y1 = region

    def tile_of(start: int, end: int, origin: int, t_origin: int, t_size: int, count: int,
                s: int) -> np.ndarray:
        starts = [ceil_div(max(t_origin + k * t_size, origin), s) for k in range(count)]
        samples = np.arange(ceil_div(start, s), ceil_div(end, s))
        return np.searchsorted(np.asarray(starts), samples, side="right") - 1

    cols = tile_of(x0, x1, siz.xosiz, siz.xtosiz, siz.xtsiz, siz.tiles_x, sx)
    rows = tile_of(y0, y1, siz.yosiz, siz.ytosiz, siz.ytsiz, siz.tiles_y, sy)
    return present[rows[:, None] * siz.tiles_x + cols[None, :]]


async def sweep(base: str, root: Path, cases: list[Case], *, concurrency: int = 2
                ) -> list[Outcome]:
    """Serves every case (a few at a time) and returns every window's outcome."""
    out: list[Outcome] = []
    queue = list(enumerate(cases))
    async with aiohttp.ClientSession() as http:
        async def worker() -> None:
            while queue:
                n, case = queue.pop(0)
                out.extend(await serve_case(http, base, root, case, n))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def summary(outcomes: list[Outcome]) -> str:
    counts = Counter(o.outcome for o in outcomes)
    cases = len({(o.case.source, o.case.what) for o in outcomes})
    slowest = max((o.seconds for o in outcomes), default=0.0)
    parts = ", ".join(f"{k} {v}" for k, v in counts.most_common())
    return (f"{cases} damaged files, {len(outcomes)} windows: {parts}; slowest answer "
            f"{slowest:.2f} s")
