"""Index build and cached-index reload on large images (a benchmark, not a test).

    python -m bench.index_bench [--out DIR] [--size N] [--threads T] [--only NAME ...]

Images (built once, then reused from --out; default large-images/, which git ignores):
  rgb-N        make_large.py rgb16k at N x N: 3 x 8-bit, RPCL, 256/128 precincts, 8 layers, PLT
  gray-N       make_large.py gray8k at N x N: 1 x 16-bit lossless, same structure, PLT
  rgb-N-p64    the rgb mosaic re-encoded with 64x64 precincts at every resolution, PLT
  *-noplt      a copy of each with its PLT (and TLM) segments removed and Psot fixed, so the
               index is built by decoding packet headers

Each index is built in a child process (so its peak RSS, VmHWM, is its own), saved with
cache.index_cache.save_index, then reloaded in a fresh child (first load and the median of 5).
Baseline, in the same child: one pass over every byte of the file (crc32 through a memory map,
page cache warm), so "x read" says how many such passes the index build costs. "peak anon" is
the peak of anonymous memory (sampled): VmHWM also counts the mapped image's pages the build
read, which are page cache, not memory the index holds. The table goes to stdout and the
figures to bench/results/index.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import mmap
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from codestream.boxes import read_layout
from codestream.markers import PLM, PLT, TLM
from codestream.parse import parse_codestream

from .shared_files import require_make_large

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "index.json"


# --------------------------------------------------------------------------- images
def _make_large_module():
    spec = importlib.util.spec_from_file_location("make_large", require_make_large("index"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ensure_base(recipe: str, out: Path, size: int, threads: int) -> Path:
    """rgb16k / gray8k at `size` through make_large.py (same names as it writes)."""
    path = out / f"{recipe}_{size}x{size}.jp2"
    if not path.exists():
        make_large = require_make_large("index")
        print(f"building {path.name} with make_large.py ...", flush=True)
        subprocess.run([sys.executable, str(make_large), recipe, "--out", str(out),
                        "--size", str(size), "--threads", str(threads)], check=True,
                       cwd=make_large.parent)
    return path


def ensure_p64(out: Path, size: int, threads: int) -> Path:
    """The rgb mosaic (same seed and recipe as make_large) with 64x64 precincts everywhere."""
    path = out / f"rgb16k_{size}x{size}_p64.jp2"
    if path.exists():
        return path
    print(f"building {path.name} (64x64 precincts) ...", flush=True)
    import glymur

    ml = _make_large_module()
    rc = ml.RECIPES["rgb16k"]
    src = ml.load_source(rc["source"])
    img = ml.synthesize(src, size, rc["comps"], rc["dtype"], 2000, 2048, rc["noise"])
    glymur.set_option("lib.num_threads", threads)
    # glymur wants precincts at least twice the code-block size (bands halve a precinct anyway)
    tmp = path.with_suffix(".part")
    # glymur needs a .jp2 name to write a JP2; write beside, then rename into place
    tmp_jp2 = tmp.with_name(tmp.name + ".jp2")
    glymur.Jp2k(tmp_jp2, data=img, numres=7, prog="RPCL", psizes=[(64, 64)] * 7,
                cratios=rc["cratios"], irreversible=True, plt=True, cbsize=(32, 32))
    os.replace(tmp_jp2, path)
    return path


def strip_plt(src: Path, dst: Path) -> Path:
    """A copy of `src` without PLT, TLM and PLM segments (Psot and the jp2c box length fixed).

    Only top-level jp2c boxes (or a raw codestream) are handled: what the bench images are.
    """
    if dst.exists():
        return dst
    drop = {PLT, TLM, PLM}
    tmp = dst.with_name(dst.name + ".part")
    with open(src, "rb") as f, open(tmp, "wb") as out:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)
        layout = read_layout(mm)
        starts = {off: ln for off, ln in layout.codestreams}

        def codestream(off: int, ln: int) -> bytearray:
            cs = parse_codestream(mm, off, ln)
            body = bytearray(view[off:cs.main_bin_ranges[0][0] + cs.main_bin_ranges[0][1]])
            for seg in cs.main.segments:
                if seg.code not in drop:
                    body += view[seg.offset:seg.end]
            for part in cs.tile_parts:
                psot = struct.unpack_from(">I", mm, part.sot_offset + 6)[0]
                hdr = bytearray()
                for seg in part.header_segments:
                    if seg.code not in drop:
                        hdr += view[seg.offset:seg.end]
                data = view[part.header_end:part.data_end]
                new_psot = 0 if psot == 0 else 12 + len(hdr) + 2 + len(data)
                sot = bytearray(view[part.sot_offset:part.sot_offset + 12])
                struct.pack_into(">I", sot, 6, new_psot)
                body += sot + hdr + b"\xff\x93" + data
            if cs.has_eoc:
                body += b"\xff\xd9"
            return body

        if not layout.is_jp2:
            out.write(codestream(0, len(mm)))
        else:
            for box in layout.top_boxes:
                if box.box_type == b"jp2c" and box.content_offset in starts:
                    body = codestream(box.content_offset, starts[box.content_offset])
                    if box.header_length == 16:
                        out.write(struct.pack(">I4sQ", 1, b"jp2c", 16 + len(body)))
                    else:
                        out.write(struct.pack(">I4s", 8 + len(body), b"jp2c"))
                    out.write(body)
                else:
                    out.write(view[box.offset:box.end])
        view.release()
        mm.close()
    os.replace(tmp, dst)
    return dst


# --------------------------------------------------------------------------- measuring (child)
def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class _AnonPeak:
    """Samples RssAnon every few ms in a thread: VmHWM also counts the pages of the memory-
    mapped image that were read, which are page cache, not memory the index holds."""

    def __init__(self) -> None:
        import threading
        self.peak = _status_mb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _status_mb("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _status_mb("RssAnon"))


def child_build(path: str, cache_dir: str) -> dict:
    from cache.index_cache import save_index
    from codestream.source import build_source

    base = _status_mb("VmRSS")
    anon_base = _status_mb("RssAnon")
    sampler = _AnonPeak()
    t0 = time.perf_counter()
    src = build_source(Path(path))
    build_s = time.perf_counter() - t0
    anon_peak = sampler.stop()
    hwm = _status_mb("VmHWM")
    packets = sum(len(ix.packets["offset"]) for ix in src.codestreams)
    precincts = sum(len(ix.precincts["id"]) for ix in src.codestreams)
    arrays = sum(a.nbytes for ix in src.codestreams
                 for d in (ix.packets, ix.precincts, ix.tcr) for a in d.values())
    t0 = time.perf_counter()
    entry = save_index(src, Path(cache_dir))
    save_s = time.perf_counter() - t0
    kinds = sorted({ix.source for ix in src.codestreams})
    src.close()
    # Baseline: one pass over every byte of the file (crc32 through a memory map).
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        t0 = time.perf_counter()
        zlib.crc32(mm)
        read_s = time.perf_counter() - t0
    return {"build_s": build_s, "packets": packets, "precincts": precincts,
            "index_source": "+".join(kinds), "rss_before_mb": base, "peak_rss_mb": hwm,
            "anon_before_mb": anon_base, "peak_anon_mb": anon_peak,
            "index_array_mb": arrays / 1e6, "save_s": save_s, "index_file": str(entry),
            "index_file_mb": entry.stat().st_size / 1e6, "read_s": read_s,
            "build_over_read": build_s / read_s}


def child_reload(path: str, cache_dir: str, repeat: int = 5) -> dict:
    from cache.index_cache import load_index

    times = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        src = load_index(Path(path), Path(cache_dir))
        times.append(time.perf_counter() - t0)
        if src is None:
            raise SystemExit("the index cache entry did not load")
        src.close()
    return {"reload_first_ms": times[0] * 1e3,
            "reload_median_ms": statistics.median(times[1:]) * 1e3}


def _run_child(mode: str, path: Path, cache_dir: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "bench.index_bench", f"--child-{mode}", str(path),
                        "--cache-dir", str(cache_dir)], cwd=ROOT, check=True,
                       capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main
COLUMNS = [("image", "{:<24}"), ("file_mb", "{:>8.1f}"), ("index_source", "{:>8}"),
           ("precincts", "{:>9}"), ("packets", "{:>9}"), ("build_s", "{:>8.3f}"),
           ("read_s", "{:>7.3f}"), ("build_over_read", "{:>7.2f}"),
           ("packets_per_s", "{:>11.0f}"), ("mb_per_s", "{:>8.0f}"), ("peak_rss_mb", "{:>8.0f}"),
           ("peak_anon_mb", "{:>9.0f}"),
           ("index_file_mb", "{:>8.2f}"), ("reload_first_ms", "{:>8.1f}"),
           ("reload_median_ms", "{:>8.1f}")]
HEAD = ["image", "file MB", "via", "precincts", "packets", "build s", "read s", "x read",
        "packets/s", "MB/s",
        "peak RSS", "peak anon", "index MB", "reload1", "reload ms"]


def _table(rows: list[dict]) -> str:
    widths = [len(fmt.format(rows[0][k])) if rows else 8 for k, fmt in COLUMNS]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in
                       enumerate(zip(HEAD, widths, strict=True)))]
    for row in rows:
        lines.append("  ".join(fmt.format(row[k]) for k, fmt in COLUMNS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "large-images")
    ap.add_argument("--size", type=int, default=8192, help="side length (8192 quick, 16384 full)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", nargs="*", help="image names to run (default: all)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--child-build", help=argparse.SUPPRESS)
    ap.add_argument("--child-reload", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_build:
        print(json.dumps(child_build(args.child_build, args.cache_dir)))
        return 0
    if args.child_reload:
        print(json.dumps(child_reload(args.child_reload, args.cache_dir)))
        return 0

    out, n = args.out.resolve(), args.size
    out.mkdir(parents=True, exist_ok=True)
    rgb = ensure_base("rgb16k", out, n, args.threads)
    gray = ensure_base("gray8k", out, n, args.threads)
    p64 = ensure_p64(out, n, args.threads)
    images = {f"rgb-{n}": rgb, f"gray-{n}": gray, f"rgb-{n}-p64": p64}
    for name, path in list(images.items()):
        images[name + "-noplt"] = strip_plt(path, path.with_name(path.stem + "_noplt.jp2"))
    if args.only:
        images = {k: v for k, v in images.items() if k in args.only}

    rows = []
    with tempfile.TemporaryDirectory(prefix="index-bench-") as cache_dir:
        for name, path in images.items():
            print(f"indexing {name} ...", file=sys.stderr, flush=True)
            row = {"image": name, "path": str(path), "file_mb": path.stat().st_size / 1e6}
            row.update(_run_child("build", path, Path(cache_dir)))
            row.update(_run_child("reload", path, Path(cache_dir)))
            row["packets_per_s"] = row["packets"] / row["build_s"]
            row["mb_per_s"] = row["file_mb"] / row["build_s"]
            rows.append(row)
    print(_table(rows))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    existing = {}
    if args.results.exists():
        try:
            existing = json.loads(args.results.read_text())
        except ValueError:
            existing = {}
    existing[str(n)] = {"size": n, "python": sys.version.split()[0], "cpus": os.cpu_count(),
                        "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "images": rows}
    args.results.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"figures written to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
