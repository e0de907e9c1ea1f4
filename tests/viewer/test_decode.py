"""The viewer's decoding, outside the browser: for every corpus file and a few windows, what the
server sends, parsed, cached, rebuilt and decoded by the viewer's JavaScript (node, with the same
WebAssembly OpenJPEG/OpenJPH builds) equals OpenJPEG's decode of the original file for that
window: exactly for reversible (5/3) files, within one level for 9/7 ones."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from cache.model import CacheModel
from codestream.source import build_source
from jpip.plan import plan_window
from jpip.respond import ResponseBuilder
from jpip.window import resolve_window
from tests.conftest import INTEROP, PROJECT_ROOT, corpus_files
from tests.oracle import decode_codestream, window_crops
from tests.viewer.conftest import require_viewer_build

SCRIPT = PROJECT_ROOT / "viewer" / "scripts" / "decode-window.mjs"
TYPES = {"Uint8Array": np.uint8, "Uint16Array": "<u2", "Int16Array": "<i2"}


def _windows(ix):
    """(fsiz, roff, rsiz): a thumbnail, a full-resolution region (the whole image when small)
    and a region of a middle resolution."""
    w, h = ix.siz.width, ix.siz.height
    full = ((w, h), None, None) if w * h <= 512 * 512 else ((w, h), (w // 3, h // 4), (256, 192))
    return [((64, 64), None, None), full,
            ((max(w // 2, 1), max(h // 2, 1)), (w // 8, h // 6), (max(w // 4, 1), max(h // 5, 1)))]


FILES = corpus_files() + [INTEROP / "med2048.jp2"]


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    """Every file's windows decoded by one node process (the WebAssembly loads once):
    {file name: [(what, result, samples file, expected arrays, tolerance)]}."""
    require_viewer_build()
    tmp = tmp_path_factory.mktemp("viewer-decode")
    jobs, checks = [], []
    for path in FILES:
        with build_source(path) as src:
            ix = src.codestreams[0]
            original = bytes(src.view[ix.offset:ix.offset + ix.length])
            tolerance = 0 if bool(ix.tcr["reversible"].all()) else 1
            min_levels = int(ix.tcr["levels"].min())
            for fsiz, roff, rsiz in _windows(ix):
                window = resolve_window(ix, 0, fsiz=(*fsiz, "round-down"), roff=roff, rsiz=rsiz)
                if window.empty or window.discard > min_levels:
                    continue  # OpenJPEG itself refuses to discard more levels than it has
                n = len(jobs)
                data = b"".join(c.data for c in ResponseBuilder(
                    src, [plan_window(ix, window)], CacheModel()).chunks())
                (tmp / f"{n}.jpp").write_bytes(data)
                jobs.append({"response": str(tmp / f"{n}.jpp"), "codestream": 0,
                             "discard": window.discard, "region": list(window.region),
                             "out": str(tmp / f"{n}.bin")})
                full = decode_codestream(original, rlevel=window.discard)
                want = window_crops(full, ix.siz, window.discard, window.region)
                what = f"{path.name} discard {window.discard} region {window.region}"
                checks.append((path.name, what, want, tolerance))
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    run = subprocess.run([shutil.which("node"), str(SCRIPT), str(tmp / "jobs.json")],
                         capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT / "viewer")
    assert run.returncode == 0, run.stderr
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(results) == len(jobs), run.stderr
    out: dict[str, list] = {}
    for job, result, (name, what, want, tolerance) in zip(jobs, results, checks, strict=True):
        out.setdefault(name, []).append((what, result, job["out"], want, tolerance))
    return out


@pytest.mark.parametrize("name", [p.name for p in FILES])
def test_viewer_decodes_windows_as_openjpeg(name, decoded) -> None:
    assert decoded.get(name), f"{name}: no window to check"
    for what, result, out, want, tolerance in decoded[name]:
        assert "error" not in result, f"{what}: {result.get('error')}"
        raw = open(out, "rb").read()
        pos = 0
        for c, (plane, ref) in enumerate(zip(result["planes"], want, strict=True)):
            dtype = np.dtype(TYPES[plane["type"]])
            n = plane["width"] * plane["height"] * dtype.itemsize
            got = np.frombuffer(raw[pos:pos + n], dtype).reshape(plane["height"], plane["width"])
            pos += n
            assert got.shape == ref.shape, f"{what}: component {c} shape"
            diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
            worst = int(diff.max()) if diff.size else 0
            assert worst <= tolerance, f"{what}: component {c} differs by {worst}"
