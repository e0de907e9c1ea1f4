"""`jpip prepare IN.dcm OUT.dcm` on a large multi-frame object: peak memory against the raw
pixel data (a benchmark, not a test).

    python -m bench prepare_dicom [--frames 300] [--size 512] [--htj2k] [--out DIR] [--keep]
                                  [--no-baseline]

Writes an uncompressed CT-like multi-frame object (signed 12-bit in 16, FRAMES x SIZE x SIZE;
the header by pydicom, the pixel data streamed frame by frame, never whole in memory), then
re-encodes it losslessly twice, each in a child process:

  prepare   `jpip prepare big.dcm out.dcm --lossless [--htj2k]`: frames decoded one at a time
            from the file, encoded by up to 4 encoder processes at once, written as they come
  baseline  pydicom's own way: `dcmread` + `Dataset.compress(JPEG 2000 Lossless)` +
            `save_as` (pylibjpeg-openjpeg), which holds the whole pixel array and every
            encoded frame in memory (and codes LRCP, no precincts, no PLT)

It prints seconds, the peak RSS of the Python process (VmHWM, reported by prepare itself or
measured in the baseline's process), the largest peak of any process of the run (ru_maxrss of
the children: the encoders included), peak / raw size and the output size. The images go to
--out (default large-images/, which git ignores) and are removed unless --keep.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "prepare_dicom.json"


def make_object(path: Path, frames: int, size: int) -> None:
    """An uncompressed multi-frame CT-like object, its pixel data written frame by frame."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sys.path.insert(0, str(ROOT))
    from tests.data.dicom import MULTIFRAME_GREY, ct_volume

    ds = Dataset()
    ds.SOPClassUID = MULTIFRAME_GREY
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Bench^Prepare", "BENCH", "CT"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.NumberOfFrames = frames
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    frame_bytes = size * size * 2
    with open(path, "wb") as f:
        ds.save_as(f, enforce_file_format=True)
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (frames * frame_bytes).to_bytes(4, "little"))
        for k in range(frames):  # a few distinct slices, shifted: no two frames alike
            slab = ct_volume(1, rows=size, columns=size, seed=k)[0]
            f.write(np.roll(slab, k % size, axis=1).astype("<i2").tobytes())


BASELINE = """
import json, sys, time, pydicom
t0 = time.perf_counter()
ds = pydicom.dcmread(sys.argv[1])
ds.compress("1.2.840.10008.1.2.4.90")
ds.save_as(sys.argv[2], enforce_file_format=True)
peak = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        peak = int(line.split()[1]) / 1024
print(json.dumps({"seconds": time.perf_counter() - t0, "python_peak_mb": peak}))
"""


def _run(cmd: list[str]) -> dict:
    """Runs `cmd` in a fresh child Python; its last stdout line is JSON; adds the largest
    peak RSS of the run's processes."""
    code = ("import json, subprocess, sys, time, resource\n"
            "t0 = time.perf_counter()\n"
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "dt = time.perf_counter() - t0\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "print(json.dumps({'rc': r.returncode, 'wall': dt, 'max_process_mb': peak / 1024,"
            " 'out': r.stdout[-4000:], 'err': r.stderr[-1500:]}))\n")
    r = subprocess.run([sys.executable, "-c", code, *cmd], cwd=ROOT, capture_output=True,
                       text=True, check=True)
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    if rep["rc"]:
        raise SystemExit(f"{cmd[0]} failed ({rep['rc']}): {rep['err']}")
    rep["report"] = json.loads(rep["out"].strip().splitlines()[-1])
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--htj2k", action="store_true", help="encode HTJ2K (.202)")
    ap.add_argument("--out", type=Path, default=ROOT / "large-images")
    ap.add_argument("--keep", action="store_true", help="keep the files made")
    ap.add_argument("--no-baseline", action="store_true", help="skip pydicom's compress()")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    big = out / f"prepare-dicom-{args.frames}x{args.size}.dcm"
    raw_mb = args.frames * args.size * args.size * 2 / 1e6
    made = [big]
    try:
        print(f"writing {big.name} ({raw_mb:.0f} MB of pixels) frame by frame ...",
              file=sys.stderr)
        make_object(big, args.frames, args.size)
        rows = []
        ours = out / "prepare-dicom-out.dcm"
        made.append(ours)
        print("jpip prepare ...", file=sys.stderr)
        cmd = [str(Path(sys.executable).with_name("jpip")), "prepare", str(big), str(ours),
               "--lossless", "--json"] + (["--htj2k"] if args.htj2k else [])
        rep = _run(cmd)
        rows.append({"encoder": "jpip prepare" + (" --htj2k" if args.htj2k else ""),
                     "seconds": rep["report"]["seconds"],
                     "python_peak_mb": rep["report"]["peak_rss_mb"],
                     "max_process_mb": rep["max_process_mb"],
                     "output_mb": ours.stat().st_size / 1e6})
        if not args.no_baseline:
            base = out / "prepare-dicom-pydicom.dcm"
            made.append(base)
            print("pydicom compress() (baseline) ...", file=sys.stderr)
            rep = _run([sys.executable, "-c", BASELINE, str(big), str(base)])
            rows.append({"encoder": "pydicom compress", "seconds": rep["report"]["seconds"],
                         "python_peak_mb": rep["report"]["python_peak_mb"],
                         "max_process_mb": rep["max_process_mb"],
                         "output_mb": base.stat().st_size / 1e6})
        print(f"\n{args.frames} frames of {args.size}x{args.size} signed 12-bit, "
              f"raw {raw_mb:.0f} MB")
        print(f"{'encoder':<22}{'seconds':>9}{'python peak MB':>16}{'max process MB':>16}"
              f"{'peak/raw':>10}{'output MB':>11}")
        for row in rows:
            row["peak_over_raw"] = max(row["python_peak_mb"], row["max_process_mb"]) / raw_mb
            print(f"{row['encoder']:<22}{row['seconds']:>9.1f}{row['python_peak_mb']:>16.0f}"
                  f"{row['max_process_mb']:>16.0f}{row['peak_over_raw']:>10.2f}"
                  f"{row['output_mb']:>11.1f}")
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps({"frames": args.frames, "size": args.size,
                                            "raw_mb": raw_mb, "rows": rows,
                                            "when": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                           indent=2) + "\n")
    finally:
        if not args.keep:
            for p in made:
                p.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
