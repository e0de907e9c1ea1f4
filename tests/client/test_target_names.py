"""Target names with spaces, '+', '%', '&', '#' and non-ASCII letters, fetched by `jpip fetch`
from a real `jpip-server`: the client sends them percent-encoded (a space as %20, a plus as %2B),
never as HTML-form '+', which JPIP reads as a plus. A 404 for a name holding '+' says so."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from client.url import parse_url
from tests.client.test_cli import jpip
from tests.conftest import CORPUS
from tests.oracle import decode_codestream
from tests.server_process import running_server

IMAGE = CORPUS / "p0_01.j2k"  # 128x128, one component
SPACES = "My Scans/grau 16 bit.j2k"
ODD = "odd/a+b 50% & #1 é.j2k"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    for name in (SPACES, ODD):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(IMAGE, root / name)
    with running_server(root, index_cache=tmp_path_factory.mktemp("index-cache")) as proc:
        yield proc.url


@pytest.mark.parametrize("target", [
    SPACES,                               # as a newcomer types it, spaces and all
    "My%20Scans/grau%2016%20bit.j2k",     # already encoded
    "odd/a+b 50%25 %26 %231 é.j2k",       # '+' literal; '%', '&', '#' must be %XX in a URL
    "odd/a%2Bb%2050%25%20%26%20%231%20%C3%A9.j2k",
])
async def test_fetch_a_name_with_spaces_and_delimiters(base, tmp_path, target: str) -> None:
    out = tmp_path / "x.npy"
    for url in (f"{base}/jpip?target={target}", f"{base}/{target}"):  # both target forms
        code, _, err = await jpip("fetch", url, "-o", str(out), "-q")
        assert code == 0, err
        want = decode_codestream(IMAGE.read_bytes())[0]
        assert np.array_equal(np.load(out), want)


def test_the_target_is_sent_percent_encoded() -> None:
    url = parse_url("http://h/jpip?target=My Scans/a+b%25 é.jp2")
    assert url.target_query == "target=My%20Scans/a%2Bb%25%20%C3%A9.jp2"
    url = parse_url("http://h/My Scans/a+b%25.jp2")
    assert url.base == "http://h/My%20Scans/a%2Bb%25.jp2"


async def test_a_404_for_a_name_with_plus_says_plus_is_literal(base) -> None:
    code, _, err = await jpip("fetch", f"{base}/jpip?target=My+Scans/grau+16+bit.j2k",
                              "--fsiz", "8,8")
    assert code == 1 and "404" in err
    assert "'+' is a literal plus in JPIP requests; encode a space as %20" in err
    code, _, err = await jpip("fetch", f"{base}/jpip?target=nothere.j2k", "--fsiz", "8,8")
    assert code == 1 and "404" in err and "literal plus" not in err
