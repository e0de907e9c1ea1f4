"""docker/compose.yaml and docker/nginx.conf agree: every jpip-server instance has its own
instance id, an upstream of its own and a route for its channel ids, and nginx waits for all
of them. (tests/interop/test_nginx_backends.py runs that nginx.conf with real servers.)"""
from __future__ import annotations

import re

import yaml

from tests.conftest import PROJECT_ROOT
from tests.interop.nginx_harness import RESOLVE_SINCE, instances

COMPOSE = PROJECT_ROOT / "docker" / "compose.yaml"
NGINX_CONF = PROJECT_ROOT / "docker" / "nginx.conf"


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def backends(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items()
            if svc.get("build", {}).get("dockerfile") == "docker/Dockerfile"}


def test_every_instance_is_routed() -> None:
    compose = load()
    services = backends(compose)
    assert len(services) >= 2
    ids = {name: svc["environment"]["JPIP_INSTANCE_ID"] for name, svc in services.items()}
    assert len(set(ids.values())) == len(ids), f"instance ids repeat: {ids}"
    conf = NGINX_CONF.read_text()
    # Each instance id routes to an upstream holding exactly its own service.
    assert instances(conf) == {instance: name for name, instance in ids.items()}
    any_servers = re.search(r"upstream\s+jpip_any\s*\{([^}]*)\}", conf)
    assert any_servers, "no jpip_any upstream"
    assert set(re.findall(r"server\s+([\w.-]+):8080", any_servers.group(1))) == set(services)
    nginx = compose["services"]["nginx"]
    assert {name: dep["condition"] for name, dep in nginx["depends_on"].items()} == \
        dict.fromkeys(services, "service_healthy")


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
