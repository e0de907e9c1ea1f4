"""A real server on loopback (the app of server/app.py) serving the test corpus."""
from __future__ import annotations

import pytest

from server.app import create_app
from server.config import ServerConfig
from tests.conftest import CORPUS


@pytest.fixture
async def corpus_server(aiohttp_server, tmp_path):
    config = ServerConfig(root=CORPUS, index_cache_dir=tmp_path / "index-cache", port=0)
    app = create_app(config)
    server = await aiohttp_server(app)
    yield server
