"""jpip/ is the protocol without I/O: it imports no event loop, HTTP, socket or clock, and the
session state it works on (cache/sessions.py, cache/model.py) takes no locks (the in-memory
store's clock, for idle expiry, is the store's own)."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import PROJECT_ROOT

FORBIDDEN = {"asyncio", "aiohttp", "socket", "selectors", "threading", "uvloop", "time"}
NO_LOCKS = {"asyncio", "aiohttp", "threading"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_protocol_package_does_no_io() -> None:
    files = sorted((PROJECT_ROOT / "jpip").glob("*.py"))
    assert len(files) > 5
    for path in files:
        bad = _imports(path) & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}"
    for name in ("sessions.py", "model.py"):
        bad = _imports(PROJECT_ROOT / "cache" / name) & NO_LOCKS
        assert not bad, f"cache/{name} imports {sorted(bad)}"
