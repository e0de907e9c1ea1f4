"""What the benchmarks take from the project's shared folder (`../shared` beside the
repository, or $JPIP_SHARED), which a clone of the repository does not include.

Its `corpus/make_large.py` builds the large benchmark images; a benchmark that needs it and
does not find it stops with one line saying so (not a traceback) and what to do instead.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("JPIP_SHARED", ROOT.parent / "shared")).resolve()
MAKE_LARGE = SHARED / "corpus" / "make_large.py"
SHARED_INTEROP = SHARED / "interop"
REPO_INTEROP = ROOT / "tests" / "data" / "interop"  # `python -m tests.data.generate`


def require_make_large(bench: str, instead: str = "") -> Path:
    """make_large.py, or SystemExit with one line naming what is missing (exit status 1)."""
    if not MAKE_LARGE.is_file():
        raise SystemExit(
            f"python -m bench {bench}: its images are built by {MAKE_LARGE}, which is not "
            "there (the project's shared folder beside the repository, not part of a clone): "
            "set JPIP_SHARED to a copy of that folder" + (f", or {instead}" if instead else ""))
    return MAKE_LARGE


def interop_image(name: str) -> Path:
    """An interoperability image: the shared folder's, else the repository's generated one."""
    shared = SHARED_INTEROP / name
    return shared if shared.exists() else REPO_INTEROP / name
