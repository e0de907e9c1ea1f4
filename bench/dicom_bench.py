"""DICOM multi-frame objects: opening, indexing frame 1 versus every frame, and memory.

    python -m bench dicom [--frames N] [--out DIR] [--codestream FILE]

Objects (built into --out, default a temporary folder) from one corpus codestream (default
CT1.j2k, 512x512 16-bit, 174 kB) repeated N times (default 200):
  whole   one fragment per frame, empty Basic Offset Table (the common case): frames are
          indexed in place, no byte of the file is copied;
  split   each frame cut into 16 KiB fragments, no offset table: frames are found by their SOC
          and each is indexed over a transient copy of that frame (then translated to file
          runs, split packets described by file pieces).

Per object, in this process: open (dataset + item table, no frame indexed), frame 1 alone
(what the first request waits for), all frames, and as the baseline one pass over every byte
of the file (crc32 through a memory map, page cache warm). Memory: the index arrays held for
all frames, the file size, and the peak of Python allocations (tracemalloc) while indexing all
frames, which shows that no frame data is kept (at most one frame is copied, transiently, for
split frames). Last, the complete object is saved to an index cache entry and reloaded (the
time to load it and read the last frame's index).
"""
from __future__ import annotations

import argparse
import mmap
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np

from cache.index_cache import load_index, save_index
from dicom.source import open_dicom
from tests.conftest import CORPUS
from tests.data.dicom import build_dicom, split_at

FRAGMENT = 16 * 1024


def _index_bytes(ix) -> int:
    total = len(ix.packed_headers)
    for group in (ix.tcr, ix.precincts, ix.packets):
        total += sum(a.nbytes for a in group.values())
    for a in (ix.main_header_ranges, ix.tile_header_ranges, ix.runs, ix.split_spans):
        total += 0 if a is None else a.nbytes
    return total


def _read_all(path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        zlib.crc32(mm)
    return time.perf_counter() - t0


def measure(path: Path) -> dict:
    _read_all(path)  # warm the page cache: every figure below is CPU, not disk
    read = min(_read_all(path) for _ in range(3))
    t0 = time.perf_counter()
    src = open_dicom(path)
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    src.codestreams[0]
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    src.index_codestreams(list(range(len(src.codestreams))))
    t_all = time.perf_counter() - t0 + t_first
    held = sum(_index_bytes(ix) for ix in src.codestreams)
    splits = sum(0 if ix.split_spans is None else len(np.unique(ix.split_spans[:, 0]))
                 for ix in src.codestreams)
    with tempfile.TemporaryDirectory() as cache_dir:
        entry = save_index(src, Path(cache_dir))
        t0 = time.perf_counter()
        loaded = load_index(path, Path(cache_dir))
        loaded.codestreams[len(loaded.codestreams) - 1]
        t_reload = time.perf_counter() - t0
        entry_size = entry.stat().st_size
        loaded.close()
    src.close()
    # Again under tracemalloc (which slows allocation down: not timed).
    with open_dicom(path) as again:
        tracemalloc.start()
        again.index_codestreams(list(range(len(again.codestreams))))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    out = {"file": path.stat().st_size, "frames": len(again.codestreams),
           "fragments": len(again.frames.runs), "read": read, "open": t_open, "first": t_first,
           "all": t_all, "held": held, "peak": peak, "split_packets": splits,
           "reload": t_reload, "entry": entry_size}
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench dicom", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--codestream", type=Path, default=CORPUS / "CT1.j2k")
    args = ap.parse_args(argv)
    data = args.codestream.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        whole, split = out / f"whole-{args.frames}.dcm", out / f"split-{args.frames}.dcm"
        build_dicom(whole, [[data]] * args.frames, table="none")
        cuts = list(range(FRAGMENT, len(data) - 1, FRAGMENT))
        build_dicom(split, [split_at(data, cuts)] * args.frames, table="none")
        print(f"{args.frames} frames of {args.codestream.name} ({len(data)} bytes each)")
        print(f"{'object':8} {'file MB':>8} {'frags':>6} {'read ms':>8} {'open ms':>8} "
              f"{'frame1 ms':>9} {'all ms':>8} {'all/read':>8} {'index MB':>9} "
              f"{'py peak MB':>10} {'split pk':>8} {'entry MB':>8} {'reload ms':>9}")
        for name, path in (("whole", whole), ("split", split)):
            m = measure(path)
            print(f"{name:8} {m['file'] / 1e6:8.1f} {m['fragments']:6d} {m['read'] * 1e3:8.1f} "
                  f"{m['open'] * 1e3:8.1f} {m['first'] * 1e3:9.1f} {m['all'] * 1e3:8.0f} "
                  f"{m['all'] / m['read']:8.1f} {m['held'] / 1e6:9.2f} {m['peak'] / 1e6:10.2f} "
                  f"{m['split_packets']:8d} {m['entry'] / 1e6:8.2f} {m['reload'] * 1e3:9.1f}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
