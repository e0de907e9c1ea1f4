"""Build the demo image that `make run` serves: `python -m filetools.demo OUT.jp2`.

The picture is a real photograph, glymur's bundled sample nemo.jp2 (2592x1456 RGB), so the
demo needs nothing beyond the installed project. It is re-encoded at its own size with
`prepare`: lossy, 8 quality layers, RPCL, >= 5 levels, 256/128 precincts, PLT markers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .prepare import PrepareReport, prepare


def demo_source() -> Path:
    """Path of the bundled photograph (nemo.jp2, shipped inside the glymur package)."""
    import glymur.data

    return Path(glymur.data.nemo())


def build_demo(output: str | Path, *, lossless: bool = False) -> PrepareReport:
    """Encode the bundled photograph as a browse-efficient JPEG 2000 file at `output`."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    return prepare(demo_source(), out, lossless=lossless)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m filetools.demo",
                                     description="Build the demo JPEG 2000 image served by "
                                                 "`make run` from a real photograph.")
    parser.add_argument("output", nargs="?", default="demo-images/demo.jp2",
                        help="output .jp2 (default: demo-images/demo.jp2)")
    parser.add_argument("--lossless", action="store_true", help="lossless instead of lossy")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = build_demo(args.output, lossless=args.lossless)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(f"demo image from {demo_source().name} (a real photograph bundled with glymur)")
        print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
