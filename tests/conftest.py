"""Shared fixtures: the test images live in the repository (tests/data), nothing is read from
outside it. Committed files are in tests/data/corpus (see its MANIFEST.md and LICENSES); the
rest is built once by tests/data/generate.py when the run starts."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.generate import CORPUS, INTEROP, ensure_generated

PROJECT_ROOT = Path(__file__).resolve().parent.parent
__all__ = ["CORPUS", "INTEROP", "PROJECT_ROOT", "corpus_files"]

CORPUS_SUFFIXES = {".j2k", ".jp2", ".jpx", ".j2c", ".jpf"}


def pytest_configure(config) -> None:
    ensure_generated()


def corpus_files() -> list[Path]:
    """Every JPEG 2000 file of the test corpus (all decode with OpenJPEG)."""
    return sorted(p for p in CORPUS.iterdir() if p.suffix.lower() in CORPUS_SUFFIXES)


@pytest.fixture(scope="session")
def dicom_root(tmp_path_factory):
    """DICOM objects built once per run from corpus codestreams (tests/dicom/cases.py):
    (folder, {name: case})."""
    from tests.dicom.cases import build_all

    folder = tmp_path_factory.mktemp("dicom")
    return folder, build_all(folder)
