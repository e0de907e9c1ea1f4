"""What the viewer's tests share: the built bundle (`make viewer`) and node."""
from __future__ import annotations

import shutil

import pytest

from tests.conftest import PROJECT_ROOT

VIEWER = PROJECT_ROOT / "viewer"


def require_viewer_build() -> None:
    """The viewer's npm packages must be installed (`make viewer` does it; `make test` too)."""
    if shutil.which("node") is None:
        pytest.fail("node is needed (scripts/system-deps.sh installs Debian's nodejs)")
    if not (VIEWER / "node_modules" / "@cornerstonejs" / "codec-openjpeg").is_dir():
        pytest.fail("the viewer's npm packages are missing: run `make viewer`")
