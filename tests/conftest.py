"""Shared fixtures: where the read-only corpus lives (JPIP_SHARED, default ../shared)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("JPIP_SHARED", PROJECT_ROOT.parent / "shared")).resolve()
CORPUS = SHARED / "corpus"
INTEROP = SHARED / "interop"


def corpus_files() -> list[Path]:
    """Every JPEG 2000 file of the shared corpus (all decode with OpenJPEG)."""
    exts = {".j2k", ".jp2", ".jpx", ".j2c", ".jpf"}
    return sorted(p for p in CORPUS.iterdir() if p.suffix.lower() in exts)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared directory not found at {SHARED}; set JPIP_SHARED")
    return SHARED
