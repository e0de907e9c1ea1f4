"""Which packet-header decoder indexing uses.

The C extension `codestream._headers` (built from codestream/_headers.c at install, optionally:
an install without a compiler still works) decodes a tile's packet headers in one call, with
the same results and errors as the reference in packets.py: a 16384² RGB file without PLT
(2.1M packets) is indexed in about 1 s instead of 20 s. Without it, or with
JPIP_PURE_PYTHON=1 in the environment (the tests run both), the Python code is used.
"""
from __future__ import annotations

import os
from types import ModuleType

try:
    from . import _headers
    _MISSING = ""
except ImportError as e:  # not built (no compiler at install): the Python reference serves
    _headers = None
    _MISSING = str(e)

PURE_PYTHON_ENV = "JPIP_PURE_PYTHON"


def native_decoder() -> ModuleType | None:
    """The C decoder, or None when it is not built or the environment asks for Python."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    return _headers


def decoder_description() -> str:
    """What decodes packet headers, for the server's startup log."""
    if native_decoder() is not None:
        return "C extension codestream._headers"
    if _headers is not None:
        return f"pure Python ({PURE_PYTHON_ENV} is set)"
    return f"pure Python (codestream._headers is not built: {_MISSING})"
