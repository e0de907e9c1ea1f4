"""`jpip inspect`: what a JPEG 2000 file is made of, and how well it browses over JPIP.

The report lists the file type and boxes, then per codestream the image geometry, components,
tiling, coding style (levels, layers, progression, precincts, code-blocks, wavelet, MCT), the
markers present and how the server located the packets (PLT or packet-header decoding), with
the time the server's index took. It ends with a verdict: one advice item per rule the file
breaks, each naming the `jpip prepare` / `jpip add-plt` option that fixes it. A file with no
advice is browse-efficient: untiled, >= 5 levels with a lowest resolution <= 256 px, precincts
of 64..512 at the top resolutions, RPCL/PCRL progression and PLT markers.

DICOM files (Part 10) are reported as the server serves them: transfer syntax, frames,
fragments per frame and offset table, then each frame's codestream (frames coded alike are
shown once) and the same advice, naming the frames it applies to (frame N is codestream N).
A DICOM file the server does not serve (uncompressed, JPEG, RLE...) is reported as such, with
the `jpip prepare IN.dcm OUT.dcm` that re-encodes it.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
import time
from pathlib import Path

from codestream.errors import CodestreamError
from codestream.index import CodestreamIndex
from codestream.intmath import ceil_div
from codestream.markers import (
    CBLK_BYPASS,
    CBLK_HT,
    CBLK_PTERM,
    CBLK_RESET,
    CBLK_SEGSYM,
    CBLK_TERMALL,
    CBLK_VCAUSAL,
    PROGRESSIONS,
    CodingStyle,
)
from codestream.parse import CodestreamLayout, parse_codestream, tile_coding
from codestream.source import Source, build_source
from dicom.errors import DicomError
from dicom.part10 import is_part10_file, read_header, syntax_name
from dicom.source import open_dicom

from .prepare import DEFAULT_TILE_THRESHOLD_PIXELS, choose_levels

REPORTED_MARKERS = ("PLT", "TLM", "SOP", "EPH", "PPM", "PPT", "POC", "COC", "QCC", "RGN", "COM",
                    "CAP")
CBLK_FLAGS = ((CBLK_BYPASS, "BYPASS"), (CBLK_RESET, "RESET"), (CBLK_TERMALL, "TERMALL"),
              (CBLK_VCAUSAL, "VCAUSAL"), (CBLK_PTERM, "PTERM"), (CBLK_SEGSYM, "SEGSYM"),
              (CBLK_HT, "HT"))
BROWSE_PROGRESSIONS = ("RPCL", "PCRL")
PRECINCT_MIN, PRECINCT_MAX = 64, 512
MANY_LINES = 5000  # above this, decoding packet headers makes the first request slow
MAX_PRECINCT_EXP = 15  # PPx = PPy = 15: no precinct partition
PREPARE_PRECINCTS = "jpip prepare --precincts 256,128"


# --------------------------------------------------------------------------- per codestream
def _flags(style: int) -> list[str]:
    return [name for bit, name in CBLK_FLAGS if style & bit]


def _style_dict(style: CodingStyle) -> dict:
    return {
        "levels": style.levels,
        "precincts": [[1 << ppx, 1 << ppy] for ppx, ppy in style.precincts],  # r0 first
        "codeblock": [1 << style.cb_w, 1 << style.cb_h],
        "codeblock_style": _flags(style.cb_style),
        "wavelet": "5/3 reversible" if style.reversible else "9/7 irreversible",
    }


def _coding_groups(styles: list[CodingStyle]) -> list[dict]:
    """Components sharing one coding style, as [{components: [...], **style}]."""
    groups: dict[CodingStyle, list[int]] = {}
    for c, st in enumerate(styles):
        groups.setdefault(st, []).append(c)
    return [{"components": comps, **_style_dict(st)} for st, comps in groups.items()]


def _tile_overrides(layout: CodestreamLayout, first: int) -> bool:
    """True when some tile's own COD/COC gives it a coding style other than tile `first`'s."""
    ref = tile_coding(layout, first)
    for t, th in layout.tiles.items():
        if (th.markers.cod or th.markers.cocs) and tile_coding(layout, t) != ref:
            return True
    return False


def _mct(mct: int, styles: list[CodingStyle]) -> str:
    if mct == 0 or len(styles) < 3:
        return "none"
    if mct == 1:
        return "RCT (reversible)" if styles[0].reversible else "ICT (irreversible)"
    return f"Part 2 ({mct})"


def _resolution_sizes(ix: CodestreamIndex, t: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(component, resolution) -> (width, height) of tile t on the resolution grid."""
    tcr = ix.tcr
    sel = tcr["t"] == t
    cols = [tcr[k][sel].tolist() for k in ("c", "r", "x0", "y0", "x1", "y1")]
    return {(c, r): (x1 - x0, y1 - y0) for c, r, x0, y0, x1, y1 in zip(*cols, strict=True)}


def _codestream_report(ix: CodestreamIndex, layout: CodestreamLayout) -> dict:
    siz = ix.siz
    first = min(layout.tiles) if layout.tiles else 0
    cod, styles = tile_coding(layout, first)
    levels = [st.levels for st in styles]
    pocs = list(layout.main.pocs) + [p for th in layout.tiles.values() for p in th.markers.pocs]
    tile_cods = [th.markers.cod for th in layout.tiles.values() if th.markers.cod]
    all_cods = [layout.main.cod, *tile_cods]
    seen = set(ix.markers)
    if any(c.sop for c in all_cods):
        seen.add("SOP")
    if any(c.eph for c in all_cods):
        seen.add("EPH")
    comps = siz.components
    return {
        "offset": ix.offset,
        "length": ix.length,
        "width": siz.width,
        "height": siz.height,
        "x_offset": siz.xosiz,
        "y_offset": siz.yosiz,
        "rsiz": f"0x{siz.rsiz:04X}",
        "components": {
            "count": siz.num_components,
            "bit_depth": [c.precision for c in comps],
            "signed": [c.signed for c in comps],
            "subsampling": [[c.dx, c.dy] for c in comps],
        },
        "tiles": {
            "count": siz.num_tiles, "across": siz.tiles_x, "down": siz.tiles_y,
            "width": siz.xtsiz, "height": siz.ytsiz, "x_offset": siz.xtosiz,
            "y_offset": siz.ytosiz, "tile_parts": len(layout.tile_parts),
        },
        "levels": levels[0] if len(set(levels)) == 1 else levels,
        "layers": cod.layers,
        "progression": PROGRESSIONS[cod.progression],
        "poc": bool(pocs),
        "poc_progressions": sorted({PROGRESSIONS[p.progression] for p in pocs}),
        "coding": _coding_groups(styles),
        "coding_tile": first,
        "coding_varies_by_tile": _tile_overrides(layout, first),
        "ht": any(st.is_ht for st in styles) or bool(siz.rsiz & 0x4000),
        "mct": _mct(cod.mct, styles),
        "markers": {m: m in seen for m in REPORTED_MARKERS},
        "all_markers": sorted(seen),
        "packets_located": {"plt": "PLT", "headers": "header decoding"}.get(ix.source, ix.source),
        "index_source": ix.source,
        "precinct_count": len(ix.precincts["id"]),
        "packet_count": len(ix.packets["offset"]),
        "tile_data_bytes": ix.tile_data_bytes,
        "padding_bytes": ix.padding_bytes,
        "_resolutions": _resolution_sizes(ix, first),  # for the advice; dropped from the report
        "_styles": styles,
        "_progressions": sorted({PROGRESSIONS[c.progression] for c in all_cods}
                                | {PROGRESSIONS[p.progression] for p in pocs}),
    }


# --------------------------------------------------------------------------- advice
def _item(key: str, advice: str, reason: str, severity: str = "normal") -> dict:
    return {"id": key, "advice": advice, "reason": reason, "severity": severity}


def _tiling_advice(cs: dict) -> list[dict]:
    tiles = cs["tiles"]
    if tiles["count"] <= 1:
        return []
    big_image = cs["width"] * cs["height"] > DEFAULT_TILE_THRESHOLD_PIXELS
    if big_image and min(tiles["width"], tiles["height"]) >= 1024:
        return []  # what jpip prepare itself writes for very large images
    return [_item("tiling", "disable tiling (jpip prepare)",
                  f"{tiles['count']} tiles of {tiles['width']}x{tiles['height']}: each tile is "
                  "coded on its own, so views crossing tile borders need more data-bins and the "
                  "low resolutions are split into per-tile pieces")]


def _top_precincts(cs: dict) -> list[tuple[int, int, int, int]]:
    """(precinct w, h, resolution w, h) at the two highest resolutions of every component."""
    out = []
    for c, st in enumerate(cs["_styles"]):
        for r in range(max(0, st.levels - 1), st.levels + 1):
            ppx, ppy = st.precincts[r]
            rw, rh = cs["_resolutions"].get((c, r), (0, 0))
            out.append((1 << ppx, 1 << ppy, rw, rh))
    return out


def _precinct_advice(cs: dict) -> list[dict]:
    styles = cs["_styles"]
    top = _top_precincts(cs)
    largest = max((max(rw, rh) for _, _, rw, rh in top), default=0)
    unpartitioned = all(p == (MAX_PRECINCT_EXP, MAX_PRECINCT_EXP)
                        for st in styles for p in st.precincts)
    if unpartitioned:
        if largest <= 256:
            return []  # the whole resolution fits in one 256x256 precinct anyway
        return [_item("precincts", f"use precincts, e.g. 256/128 ({PREPARE_PRECINCTS})",
                      "one precinct per resolution (no precinct partition): any view of a "
                      "resolution needs all of its data")]
    items = []
    large = [(pw, ph) for pw, ph, rw, rh in top
             if (pw > PRECINCT_MAX and rw > PRECINCT_MAX)
             or (ph > PRECINCT_MAX and rh > PRECINCT_MAX)]
    if large:
        pw, ph = max(large)
        items.append(_item("precincts-large", f"use smaller precincts, e.g. 256/128 "
                           f"({PREPARE_PRECINCTS})",
                           f"precincts of {pw}x{ph} at the highest resolutions (> {PRECINCT_MAX}):"
                           " a small view still fetches large precincts"))
    small = [(pw, ph) for pw, ph, rw, rh in top
             if (pw < PRECINCT_MIN and rw > pw) or (ph < PRECINCT_MIN and rh > ph)]
    if small:
        pw, ph = min(small)
        items.append(_item("precincts-small", f"use larger precincts, e.g. 256/128 "
                           f"({PREPARE_PRECINCTS})",
                           f"precincts of {pw}x{ph} (< {PRECINCT_MIN}): many small precincts cost "
                           "index time, memory and per-bin overhead in every response"))
    return items


def _progression_advice(cs: dict) -> list[dict]:
    bad = [p for p in cs["_progressions"] if p not in BROWSE_PROGRESSIONS]
    if not bad:
        return []
    what = f"{cs['progression']} progression" + (" with POC" if cs["poc"] else "")
    return [_item("progression", "use RPCL (jpip prepare --progression RPCL)",
                  f"{what}: a precinct's packets are spread over the file, so serving a view "
                  "reads many scattered pieces")]


def _levels_advice(cs: dict) -> list[dict]:
    current = min(st.levels for st in cs["_styles"])
    want = choose_levels(cs["height"], cs["width"])
    if want <= current:
        return []
    longer = max(cs["width"], cs["height"])
    lowest = ceil_div(longer, 1 << current)
    return [_item("levels", f"use {want} levels (jpip prepare --levels {want})",
                  f"{current} decomposition level(s): the lowest resolution is {lowest} px on its "
                  f"longer side, so an overview costs more than it should (want >= 5 levels and "
                  f"<= 256 px)")]


def _plt_advice(cs: dict, seconds: float) -> list[dict]:
    if cs["index_source"] == "plt" or cs["packet_count"] == 0:
        return []
    severity = "high" if cs["height"] > MANY_LINES else "normal"
    if cs["markers"]["PLT"]:
        why = "the PLT markers do not match the packets, so the server decodes packet headers"
    else:
        why = "no PLT markers: the server decodes every packet header to index the file"
    why += f" (index built in {seconds:.3f} s)"
    if severity == "high":
        why += f"; with {cs['height']} lines this makes the first request slow"
    return [_item("plt", "add PLT markers (jpip add-plt) so the server indexes without decoding "
                  "packet headers", why, severity)]


def browse_advice(codestreams: list[dict], index_seconds: float) -> list[dict]:
    """Advice items for the rules the file breaks; an item seen in several codestreams is
    listed once, with the codestreams it applies to."""
    items: dict[str, dict] = {}
    for n, cs in enumerate(codestreams):
        for rule in (_tiling_advice, _precinct_advice, _progression_advice, _levels_advice):
            for item in rule(cs):
                items.setdefault(item["id"], {**item, "codestreams": []})["codestreams"].append(n)
        for item in _plt_advice(cs, index_seconds):
            items.setdefault(item["id"], {**item, "codestreams": []})["codestreams"].append(n)
    return list(items.values())


# --------------------------------------------------------------------------- file report
def inspect_file(path: str | os.PathLike[str]) -> dict:
    """Index `path` as the server would and report on it (a JSON-ready dict).

    Raises CodestreamError, DicomError or OSError when the file cannot be served."""
    path = Path(path)
    if is_part10_file(path):
        return inspect_dicom(path)
    t0 = time.perf_counter()
    src = build_source(path)
    seconds = time.perf_counter() - t0
    try:
        return _file_report(path, src, seconds)
    finally:
        src.close()


def _file_report(path: Path, src: Source, seconds: float) -> dict:
    layout = src.layout
    streams = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for ix, (off, ln) in zip(src.codestreams, layout.codestreams, strict=True):
            streams.append(_codestream_report(ix, parse_codestream(mm, off, ln)))
    advice = browse_advice(streams, seconds)
    for cs in streams:
        for key in [k for k in cs if k.startswith("_")]:
            del cs[key]
    return {
        "path": str(path),
        "bytes": src.identity.size,
        "file_type": "JP2 family" if layout.is_jp2 else "raw codestream",
        "brand": layout.brand.decode("latin-1") if layout.brand else None,
        "boxes": [b.type_name for b in layout.top_boxes],
        "servable": True,
        "index_seconds": seconds,
        "codestreams": streams,
        "advice": advice,
        "browse_efficient": not advice,
    }


# --------------------------------------------------------------------------- DICOM files
def _offset_table(path: Path, header) -> str:
    if header.extended_offsets is not None:
        return "extended"
    with open(path, "rb") as f:
        f.seek(header.items_offset + 4)
        bot_length = int.from_bytes(f.read(4), "little")
    return "basic" if bot_length else "none"


def inspect_dicom(path: Path) -> dict:
    """A DICOM file as the server serves it: transfer syntax, frames, fragments per frame, and
    each frame's codestream report and advice (frame N is codestream N). Indexes every frame.

    Raises DicomError when the file is not served (its message names the transfer syntax and,
    for those `jpip prepare` re-encodes, says so)."""
    t0 = time.perf_counter()
    header = read_header(path)
    src = open_dicom(path)
    try:
        streams = []
        for i in range(len(src.codestreams)):
            data = src.codestream_bytes(i)
            try:
                layout = parse_codestream(data, 0, len(data))
            except CodestreamError as e:
                raise DicomError(f"frame {i + 1}: {e}") from None
            streams.append(_codestream_report(src.codestreams[i], layout))
        seconds = time.perf_counter() - t0
        fragments = src.frames.fragments_per_frame().tolist()
        advice = browse_advice(streams, seconds / max(1, len(streams)))
        for item in advice:
            item["frames"] = [n + 1 for n in item["codestreams"]]
        for cs in streams:
            for key in [k for k in cs if k.startswith("_")]:
                del cs[key]
        return {
            "path": str(path),
            "bytes": src.identity.size,
            "file_type": "DICOM",
            "brand": None,
            "boxes": [],
            "transfer_syntax": header.transfer_syntax,
            "transfer_syntax_name": syntax_name(header.transfer_syntax),
            "frames": len(streams),
            "first_codestream": 1,
            "fragments_per_frame": fragments,
            "offset_table": _offset_table(path, header),
            "servable": True,
            "index_seconds": seconds,
            "codestreams": streams,
            "advice": advice,
            "browse_efficient": not advice,
        }
    finally:
        src.close()


def _dicom_lines(report: dict) -> list[str]:
    frags = report["fragments_per_frame"]
    spread = (f"{frags[0]} per frame" if len(set(frags)) == 1
              else f"{min(frags)} to {max(frags)} per frame ({sum(frags)} in all)")
    return [f"{report['path']}: DICOM, {report['transfer_syntax_name']}, "
            f"{report['bytes']:,} bytes",
            f"  frames      {report['frames']} (frame N is codestream N), fragments {spread}, "
            f"{report['offset_table']} offset table"]


def _frame_runs(numbers: list[int]) -> str:
    return _runs(numbers).replace(",", ", ")


# --------------------------------------------------------------------------- text output
def _runs(values: list[int]) -> str:
    """Component indices as ranges: 0-2,5."""
    out, start = [], None
    for k, v in enumerate(values):
        if start is None:
            start = v
        if k + 1 == len(values) or values[k + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)


def _precinct_text(sizes: list[list[int]]) -> str:
    """'r0-r2 128x128, r3-r5 max' (max = no partition)."""
    parts, r0 = [], 0
    for r, size in enumerate(sizes):
        if r + 1 == len(sizes) or sizes[r + 1] != size:
            label = "max" if size == [1 << MAX_PRECINCT_EXP] * 2 else f"{size[0]}x{size[1]}"
            parts.append(f"{'r' + str(r0) if r0 == r else f'r{r0}-r{r}'} {label}")
            r0 = r + 1
    return ", ".join(parts)


def _components_text(comp: dict) -> str:
    groups: dict[tuple, list[int]] = {}
    for c in range(comp["count"]):
        key = (comp["bit_depth"][c], comp["signed"][c], *comp["subsampling"][c])
        groups.setdefault(key, []).append(c)
    parts = [f"{bits}-bit {'signed' if sg else 'unsigned'} {dx}x{dy} (c{_runs(cs)})"
             for (bits, sg, dx, dy), cs in groups.items()]
    return f"{comp['count']}: " + "; ".join(parts)


def _codestream_text(n: int, cs: dict) -> list[str]:
    t = cs["tiles"]
    levels = cs["levels"] if isinstance(cs["levels"], int) else "/".join(map(str, cs["levels"]))
    poc = f" + POC ({', '.join(cs['poc_progressions'])})" if cs["poc"] else ""
    lines = [
        f"  codestream {n} (offset {cs['offset']}, {cs['length']:,} bytes)",
        f"    image       {cs['width']}x{cs['height']} at ({cs['x_offset']},{cs['y_offset']}), "
        f"Rsiz {cs['rsiz']}",
        f"    components  {_components_text(cs['components'])}",
        f"    tiles       {t['count']} ({t['across']}x{t['down']} of {t['width']}x{t['height']}), "
        f"{t['tile_parts']} tile-part(s)",
        f"    coding      {levels} level(s), {cs['layers']} layer(s), {cs['progression']}{poc}, "
        f"MCT {cs['mct']}" + (", HT" if cs["ht"] else ""),
    ]
    for g in cs["coding"]:
        who = "" if len(cs["coding"]) == 1 else f" [c{_runs(g['components'])}]"
        style = ",".join(g["codeblock_style"]) or "none"
        lines.append(f"    style{who:7s} {g['levels']} level(s), {g['wavelet']}, code-blocks "
                     f"{g['codeblock'][0]}x{g['codeblock'][1]} ({style}), precincts "
                     f"{_precinct_text(g['precincts'])}")
    if cs["coding_varies_by_tile"]:
        lines.append(f"                (tile {cs['coding_tile']}; other tiles override it)")
    present = [m for m, on in cs["markers"].items() if on]
    absent = [m for m, on in cs["markers"].items() if not on]
    lines += [
        f"    markers     present: {' '.join(present) or '-'}; absent: {' '.join(absent) or '-'}",
        f"    index       packets located by {cs['packets_located']}: "
        f"{cs['precinct_count']:,} precinct(s), {cs['packet_count']:,} packet(s)",
    ]
    return lines


def format_report(report: dict) -> str:
    """The report as text for a terminal."""
    if not report.get("servable", True):
        return f"{report['path']}: cannot be served: {report.get('error', '')}"
    dicom = report["file_type"] == "DICOM"
    if dicom:
        lines = _dicom_lines(report)
    else:
        kind = report["file_type"] + (f" (brand {report['brand']!r})" if report["brand"] else "")
        lines = [f"{report['path']}: {kind}, {report['bytes']:,} bytes"]
    if report["boxes"]:
        lines.append(f"  boxes       {' '.join(b.strip() for b in report['boxes'])}")
    first = report.get("first_codestream", 0)
    shown: list[tuple[list[str], list[int]]] = []  # frames coded alike are shown once
    for n, cs in enumerate(report["codestreams"]):
        text = _codestream_text(n + first, cs)
        if dicom and shown and shown[-1][0][1:] == text[1:]:
            shown[-1][1].append(n + first)
            continue
        shown.append((text, [n + first]))
    for text, numbers in shown:
        if dicom:
            size = f"{report['codestreams'][numbers[0] - first]['length']:,} bytes"
            if len(numbers) > 1:
                size = "coded alike"
            text = [f"  frame{'s' if len(numbers) > 1 else ''} {_frame_runs(numbers)} "
                    f"({size})"] + text[1:]
        lines += text
    lines.append(f"  index time  {report['index_seconds']:.3f} s")
    if not report["advice"]:
        lines.append("  verdict     browse-efficient: no advice")
        return "\n".join(lines)
    lines.append(f"  verdict     {len(report['advice'])} piece(s) of advice:")
    for item in report["advice"]:
        mark = "!" if item["severity"] == "high" else "-"
        where = ""
        if dicom and len(report["codestreams"]) > 1:
            where = f" [frame {_frame_runs(item['frames'])}]"
        elif len(report["codestreams"]) > 1:
            where = f" [codestream {', '.join(map(str, item['codestreams']))}]"
        lines.append(f"    {mark} {item['advice']}{where}")
        lines.append(f"        {item['reason']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `jpip inspect FILE... [--json]`."""
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="JPEG 2000 or DICOM file(s) to inspect")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON array with one report per file")


def run_inspect(args: argparse.Namespace) -> int:
    """Inspect every file; exit status 0 when all can be served, 2 when one cannot (with a
    'path: reason' line on stderr; with --json it is also in the array, servable: false)."""
    reports, status = [], 0
    for name in args.files:
        try:
            reports.append(inspect_file(name))
        except (CodestreamError, DicomError, OSError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            print(f"{name}: {reason}", file=sys.stderr)
            reports.append({"path": name, "servable": False, "error": reason})
            status = 2
    good = [r for r in reports if r["servable"]]
    if args.json:
        print(json.dumps(reports, indent=2))
    elif good:
        print("\n\n".join(format_report(r) for r in good))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m filetools.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inspect_arguments(parser)
    return run_inspect(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
