"""Fixtures for the server tests: an image root and apps with extra test-only routes."""
from __future__ import annotations

import shutil
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import ServerConfig
from tests.conftest import CORPUS

SAMPLE = "file1.jp2"

RouteSetup = Callable[[web.Application], None]
MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """A root holding one real JP2 file from the test corpus."""
    root = tmp_path / "images"
    root.mkdir()
    shutil.copy(CORPUS / SAMPLE, root / SAMPLE)
    return root


def build_app(root: Path, routes: RouteSetup | None = None, **options: Any) -> web.Application:
    # Test routes have fixed prefixes (/_test/...), so they win over the path-form catch-all.
    app = create_app(ServerConfig(root=root, **options))
    if routes is not None:
        routes(app)
    return app


@pytest.fixture
def make_client(aiohttp_client: Any, image_root: Path) -> MakeClient:
    async def make(routes: RouteSetup | None = None, **options: Any) -> TestClient[Any, Any]:
        root = options.pop("root", image_root)
        return await aiohttp_client(build_app(root, routes, **options))

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
