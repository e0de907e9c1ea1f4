"""--instance-id: the channel ids a server issues name it, so a proxy can route them back."""
from __future__ import annotations

import re

import pytest

from cache.sessions import new_channel_id
from server.config import ConfigError, load_config
from tests.server.conftest import SAMPLE, MakeClient


def test_channel_ids_carry_the_prefix() -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", new_channel_id())
    assert re.fullmatch(r"b-2\.[0-9a-f]{32}", new_channel_id("b-2"))


@pytest.mark.parametrize("value", ["a.b", "x" * 32, "a b", "é"])
def test_bad_instance_ids_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="option instance_id"):
        load_config(["--instance-id", value], {})


def test_instance_id_from_the_environment() -> None:
    assert load_config([], {"JPIP_INSTANCE_ID": "jpip-a"}).instance_id == "jpip-a"
    assert load_config([], {}).instance_id == ""


async def test_cnew_answers_a_prefixed_cid_that_works(make_client: MakeClient) -> None:
    client = await make_client(instance_id="a")
    r = await client.get(f"/jpip?target={SAMPLE}&fsiz=64,64&cnew=http&type=jpp-stream")
    assert r.status == 200
    await r.read()
    cnew = dict(kv.split("=", 1) for kv in r.headers["JPIP-cnew"].split(","))
    assert re.fullmatch(r"a\.[0-9a-f]{32}", cnew["cid"])
    r = await client.get(f"/jpip?cid={cnew['cid']}&fsiz=128,128&type=jpp-stream")
    assert r.status == 200
    await r.read()
    r = await client.get(f"/jpip?cclose={cnew['cid']}")
    assert r.status == 200
