"""docker/compose.yaml and docker/nginx.conf agree: nginx's one upstream name is the replicated
jpip-server service, every replica names the compose file's Redis as its session store (and
may run several workers), and each waits for what it needs. (tests/interop/
test_nginx_backends.py runs that nginx.conf with real servers and a real Redis.)"""
from __future__ import annotations

import re

import yaml

from server.config import load_config
from tests.conftest import PROJECT_ROOT
from tests.interop.nginx_harness import RESOLVE_SINCE, backend_names

COMPOSE = PROJECT_ROOT / "docker" / "compose.yaml"
NGINX_CONF = PROJECT_ROOT / "docker" / "nginx.conf"


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def backends(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items()
            if svc.get("build", {}).get("dockerfile") == "docker/Dockerfile"}


def _env(value: str) -> str:
    """A compose value with its ${VAR:-default} substitutions at their defaults."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_nginx_routes_to_the_replicated_service() -> None:
    compose = load()
    services = backends(compose)
    assert list(services) == ["jpip"]
    assert backend_names(NGINX_CONF.read_text()) == set(services)
    replicas = int(_env(str(services["jpip"]["deploy"]["replicas"])))
    assert replicas >= 2
    nginx = compose["services"]["nginx"]
    assert {name: dep["condition"] for name, dep in nginx["depends_on"].items()} == \
        dict.fromkeys(services, "service_healthy")


def test_replicas_share_the_compose_files_redis() -> None:
    compose = load()
    svc = backends(compose)["jpip"]
    env = {k: _env(str(v)) for k, v in svc["environment"].items()}
    config = load_config([], {**env, "JPIP_ROOT": "/"})  # the replicas' own settings parse
    m = re.fullmatch(r"redis://([\w-]+):6379/\d+", config.session_store)
    assert m and m.group(1) in compose["services"], config.session_store
    assert config.workers >= 1
    assert svc["depends_on"] == {m.group(1): {"condition": "service_healthy"}}
    assert "healthcheck" in compose["services"][m.group(1)]
    # Draining workers get the grace period plus the supervisor's margin before Docker kills.
    grace = int(svc["stop_grace_period"].rstrip("s"))
    assert grace > config.shutdown_grace + 5


def test_nginx_image_supports_resolve() -> None:
    image = load()["services"]["nginx"]["image"]
    m = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?", image)
    assert m, image
    version = tuple(int(g or 99) for g in m.groups())  # 1.28 means the newest 1.28.x
    assert version >= RESOLVE_SINCE, f"{image} lacks `resolve` on upstream servers"


def test_images_folder_is_required_and_read_only() -> None:
    for name, svc in backends(load()).items():
        (volume,) = svc["volumes"]
        assert re.fullmatch(r"\$\{JPIP_IMAGES:\?[^}]+\}:/images:ro", volume), (name, volume)
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
