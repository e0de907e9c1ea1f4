"""`jpip prepare` on a big image: peak memory against the raw size (a benchmark, not a test).

    python -m bench prepare [--size 20000] [--out DIR] [--keep] [--no-baseline]

Makes a SIZE x SIZE 8-bit grey TIFF on the fly (strip by strip, never whole in memory: cells of
the real photograph nemo.jp2, flipped and shifted, plus a little noise), then encodes it twice,
each in a child process whose peak RSS (ru_maxrss from wait4) is its own:

  prepare   `jpip prepare in.tif out.jp2` (tile by tile above the size threshold)
  baseline  `opj_compress` on the same TIFF with the same coding parameters (RPCL, the same
            precincts, levels, code-blocks, PLT), which holds the whole image in memory

and prints seconds, peak RSS, peak RSS / raw image size, and output size for both. The images
go to --out (default large-images/, which git ignores) and are removed unless --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("JPIP_SHARED", ROOT.parent / "shared")).resolve()
RESULTS = HERE / "results" / "prepare.json"
STRIP_ROWS = 256


def make_tiff(path: Path, size: int, seed: int = 5) -> Path:
    """A size x size uint8 TIFF, written one strip at a time from cells of nemo.jp2."""
    import glymur
    import tifffile

    photo = glymur.Jp2k(str(SHARED / "corpus" / "nemo.jp2"))[:]
    grey = (photo[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    ch, cw = grey.shape[0] // 2, grey.shape[1] // 2
    rng = np.random.default_rng(seed)
    cells_y, cells_x = -(-size // ch), -(-size // cw)
    # Each cell: a crop origin in the photo and a flip, so neighbouring cells differ.
    origin_y = rng.integers(0, grey.shape[0] - ch, (cells_y, cells_x))
    origin_x = rng.integers(0, grey.shape[1] - cw, (cells_y, cells_x))
    flip = rng.integers(0, 2, (cells_y, cells_x)).astype(bool)

    def strips():
        for y0 in range(0, size, STRIP_ROWS):
            rows = min(STRIP_ROWS, size - y0)
            strip = np.empty((rows, size), np.uint8)
            for r in range(rows):
                y = y0 + r
                cy, oy = divmod(y, ch)
                for cx in range(cells_x):
                    x0, x1 = cx * cw, min((cx + 1) * cw, size)
                    line = grey[origin_y[cy, cx] + oy, origin_x[cy, cx]:origin_x[cy, cx] + cw]
                    if flip[cy, cx]:
                        line = line[::-1]
                    strip[r, x0:x1] = line[:x1 - x0]
            noise = rng.integers(-2, 3, strip.shape, dtype=np.int16)
            yield np.clip(strip.astype(np.int16) + noise, 0, 255).astype(np.uint8)

    tifffile.imwrite(path, strips(), shape=(size, size), dtype=np.uint8,
                     rowsperstrip=STRIP_ROWS, photometric="minisblack")
    return path


def _peak_of_child(cmd: list[str]) -> dict:
    """Measured in a fresh child Python so RUSAGE_CHILDREN holds only this command."""
    code = ("import json, subprocess, sys, time, resource\n"
            "t0 = time.perf_counter()\n"
            "r = subprocess.run(sys.argv[1:], capture_output=True)\n"
            "dt = time.perf_counter() - t0\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "print(json.dumps({'rc': r.returncode, 'seconds': dt, 'peak_rss_mb': peak / 1024,"
            " 'err': r.stderr.decode(errors='replace')[-1500:]}))\n")
    r = subprocess.run([sys.executable, "-c", code, *cmd], cwd=ROOT, capture_output=True,
                       text=True, check=True)
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    if rep["rc"]:
        raise SystemExit(f"{cmd[0]} failed ({rep['rc']}): {rep['err']}")
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=ROOT / "large-images")
    ap.add_argument("--keep", action="store_true", help="keep the images made")
    ap.add_argument("--no-baseline", action="store_true", help="skip opj_compress")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from filetools.prepare import choose_levels, precinct_sizes

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    n = args.size
    tif = out / f"prepare-{n}.tif"
    raw_mb = n * n / 1e6
    made = []
    try:
        if not tif.exists():
            print(f"writing {tif.name} ({raw_mb:.0f} MB raw) strip by strip ...", file=sys.stderr)
            t0 = time.perf_counter()
            make_tiff(tif, n)
            made.append(tif)
            print(f"  {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows = []
        ours = out / f"prepare-{n}.jp2"
        made.append(ours)
        print("jpip prepare ...", file=sys.stderr)
        rep = _peak_of_child([str(Path(sys.executable).with_name("jpip")), "prepare", str(tif),
                              str(ours), "--json"])
        rows.append({"encoder": "jpip prepare", "seconds": rep["seconds"],
                     "peak_rss_mb": rep["peak_rss_mb"], "output_mb": ours.stat().st_size / 1e6})
        if not args.no_baseline and shutil.which("opj_compress"):
            levels = choose_levels(n, n)
            psz = precinct_sizes(levels)
            base = out / f"prepare-{n}-opj.jp2"
            made.append(base)
            cmd = ["opj_compress", "-i", str(tif), "-o", str(base), "-n", str(levels + 1),
                   "-p", "RPCL", "-b", "64,64", "-PLT", "-I",
                   "-c", ",".join(f"[{w},{h}]" for w, h in psz),
                   "-r", "2560,1280,640,320,160,80,40,8"]
            print("opj_compress (baseline) ...", file=sys.stderr)
            rep = _peak_of_child(cmd)
            rows.append({"encoder": "opj_compress", "seconds": rep["seconds"],
                         "peak_rss_mb": rep["peak_rss_mb"],
                         "output_mb": base.stat().st_size / 1e6})
        print(f"\n{n}x{n} 8-bit grey, raw {raw_mb:.0f} MB")
        print(f"{'encoder':<14}{'seconds':>9}{'peak RSS MB':>13}{'RSS/raw':>9}{'output MB':>11}")
        for row in rows:
            row["rss_over_raw"] = row["peak_rss_mb"] / raw_mb
            print(f"{row['encoder']:<14}{row['seconds']:>9.1f}{row['peak_rss_mb']:>13.0f}"
                  f"{row['rss_over_raw']:>9.2f}{row['output_mb']:>11.1f}")
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps({"size": n, "raw_mb": raw_mb, "rows": rows,
                                            "when": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                           indent=2) + "\n")
    finally:
        if not args.keep:
            for p in made:
                p.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
