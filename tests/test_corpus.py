"""The test data the oracle tests iterate over is all there.

The pixel oracles (e2e/test_corpus_windows.py, jpip/test_plan_oracle.py, ...) are parametrized
over `corpus_files()`: a file gone missing would silently shrink them, and an empty list would
leave them with no case at all, which pytest reports as a skip. Here the list must be exactly
the corpus manifest plus the files tests/data/generate.py builds.
"""
from __future__ import annotations

import json

from tests.conftest import CORPUS, INTEROP, corpus_files
from tests.data.generate import BUILDERS

MANIFEST = {m["file"] for m in json.loads((CORPUS / "manifest.json").read_text())}
BUILT_CORPUS = {p.name for p in BUILDERS if p.parent == CORPUS}


def test_corpus_is_the_manifest_and_the_built_files() -> None:
    assert len(MANIFEST) == 29 and BUILT_CORPUS == {"nemo.jp2", "heliov.jpx",
                                                    "CT1_psot0_noeoc.j2k"}
    assert {p.name for p in corpus_files()} == MANIFEST | BUILT_CORPUS


def test_interop_images_are_built() -> None:
    names = {p.name for p in BUILDERS if p.parent == INTEROP}
    assert names == {"rgb4096.jp2", "med2048.jp2", "rgb4096_idx.jp2", "med2048_idx.jp2"}
    for name in names:
        assert (INTEROP / name).stat().st_size > 1_000_000, name
