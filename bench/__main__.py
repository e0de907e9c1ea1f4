"""`python -m bench [NAME] [ARGS...]`: runs bench/NAME_bench.py.

Without a NAME (or with options only) it runs the serving benchmark (`server`), what
`make bench` does; `python -m bench all` runs every benchmark with its defaults.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

DEFAULT = "server"


def main(argv: list[str]) -> int:
    here = str(Path(__file__).parent)
    names = sorted(m.name[:-len("_bench")] for m in pkgutil.iter_modules([here])
                   if m.name.endswith("_bench"))
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__ + "\nbenchmarks: " + ", ".join(names) + ", all"
              + "\n`python -m bench NAME --help` for a benchmark's options")
        return 0
    if argv and not argv[0].startswith("-"):
        if argv[0] == "all":
            argv = argv[1:]
        elif argv[0] not in names:
            print(f"unknown benchmark {argv[0]!r}; choose from {', '.join(names)}, all",
                  file=sys.stderr)
            return 2
        else:
            names, argv = [argv[0]], argv[1:]
    else:
        names = [DEFAULT]
    status = 0
    for name in names:
        status |= importlib.import_module(f"bench.{name}_bench").main(argv) or 0
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
