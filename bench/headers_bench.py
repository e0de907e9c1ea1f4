"""Packet-header decoding cost per header byte (a benchmark, not a test):

    python -m bench headers [--compare CHECKOUT] [--layers N] [--python-layers N] [--large FILE]

1. The hostile shape of tests/data/crafted.py: one precinct one code-block across and 8192
   down, every packet the byte 0x80 (one tag-tree bit excludes every code-block). Indexed with
   the C decoder (N layers, default 65535) and with the Python reference (JPIP_PURE_PYTHON=1,
   default 2000 layers): microseconds per header byte.
2. One precinct of 8192 x 8192 code-blocks, too large for the C arrays (decoded in Python
   whatever the decoder), python-layers / 5 packets 0x80.
3. Many precincts of large code-block grids (up to 1024 x 1024), one packet 0x80 each: what
   making a precinct's state costs for one header byte, C decoder.
4. Two corpus files with the Python reference, whole (nothing much to skip there).
5. With --large (e.g. large-images/rgb16k_16384x16384_p64-noplt.jp2, which bench/index_bench.py
   builds): the whole file indexed from its packet headers (use_plt=False) with the C decoder,
   best of --rounds.

Each figure is measured in a child process of this interpreter importing `codestream` from this
checkout and, with --compare, from CHECKOUT (e.g. /tmp/base2, a clone of main with its built
extension) in the same run, interleaved, so that both sides see the same machine load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import CORPUS
from tests.data.crafted import (
    MAX_BLOCKS,
    many_precincts_codestream,
    one_precinct_codestream,
    tall_precinct_codestream,
)

from .server_bench import RESULTS_DIR

ROOT = Path(__file__).resolve().parent.parent

# Run in the child: index the file `rounds` times, print the best time in seconds.
CHILD = """
import sys, time
from pathlib import Path
root, path, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root)
import codestream
assert Path(codestream.__file__).resolve().is_relative_to(Path(root).resolve())
from codestream import native
from codestream.index import index_codestream
from codestream.boxes import read_layout
data = Path(path).read_bytes()
(off, ln), = read_layout(data).codestreams
best = None
for _ in range(rounds):
    t = time.perf_counter()
    ix = index_codestream(data, off, ln, use_plt=False)
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
print(best, len(ix.packets["offset"]), native.decoder_description())
"""


def measure(root: Path, path: Path, rounds: int, pure: bool) -> tuple[float, int, str]:
    env = dict(os.environ)
    env.pop("JPIP_PURE_PYTHON", None)
    if pure:
        env["JPIP_PURE_PYTHON"] = "1"
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(path), str(rounds)],
                         env=env, cwd=root, capture_output=True, text=True, check=True)
    seconds, packets, decoder = out.stdout.split(maxsplit=2)
    return float(seconds), int(packets), decoder.strip()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench headers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", type=Path, help="another checkout, measured in the same run")
    ap.add_argument("--layers", type=int, default=65535, help="crafted file, C decoder")
    ap.add_argument("--python-layers", type=int, default=2000, help="crafted file, Python")
    ap.add_argument("--large", type=Path, help="a large file without PLT to index whole")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    roots = [("this", ROOT)] + ([("compare", a.compare.resolve())] if a.compare else [])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        for layers, pure in ((a.layers, False), (a.python_layers, True)):
            path = Path(tmp) / f"tall-{layers}.j2k"
            path.write_bytes(tall_precinct_codestream(layers))
            cases.append((f"tall precinct 1x8192, {layers} one-byte packets", path, layers, pure))
        # 8192 x 8192 code-blocks: beyond the C arrays' limit, so decoded in Python even with
        # the C decoder built (sparse tag trees); every packet 0x80 again.
        path = Path(tmp) / "huge.j2k"
        layers = a.python_layers // 5
        path.write_bytes(one_precinct_codestream(MAX_BLOCKS, MAX_BLOCKS, layers,
                                                 b"\x80" * layers))
        cases.append((f"precinct 8192x8192 (Python), {layers} one-byte packets", path, layers,
                      False))
        # A precinct's state is made on its first non-empty packet: here one byte each.
        for exp, side in ((8, 16384), (10, 65536), (12, 65536)):
            data = many_precincts_codestream(exp, side)
            path = Path(tmp) / f"many-{exp}.j2k"
            path.write_bytes(data)
            n = (side >> exp) ** 2
            blocks = 1 << (exp - 2)
            cases.append((f"{n} precincts of {blocks}^2 code-blocks, 1 byte each", path, n,
                          False))
        # Ordinary files, Python reference: the scan must not cost more where nothing is
        # skipped (p1_05: 26,000 packets of small code-block grids).
        for name in ("p1_05.j2k", "p0_09.j2k"):
            cases.append((f"{name} (Python), whole", CORPUS / name, None, True))
        if a.large:
            cases.append((f"{a.large.name}, whole", a.large, None, False))
        for what, path, header_bytes, pure in cases:
            # Python before the fix takes ~5 ms a byte on the crafted files: one round there.
            rounds = 1 if pure and header_bytes else a.rounds
            for name, root in roots:
                seconds, packets, decoder = measure(root, path, rounds, pure)
                row = {"case": what, "checkout": name, "root": str(root), "decoder": decoder,
                       "seconds": seconds, "packets": packets,
                       "us_per_header_byte": seconds / header_bytes * 1e6 if header_bytes
                       else None}
                rows.append(row)
                per_byte = f"{row['us_per_header_byte']:10.3f} us/byte" if header_bytes else ""
                print(f"{what:55s} {name:8s} {decoder[:30]:30s} {seconds * 1e3:10.1f} ms "
                      f"{per_byte}", flush=True)
            if a.compare:
                this, other = rows[-2]["seconds"], rows[-1]["seconds"]
                print(f"{'':55s} compare/this = {other / this:.2f}x", flush=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"headers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"results: {out}")
    return 0
