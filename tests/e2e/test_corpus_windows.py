"""End to end: our server's JPP-streams, rebuilt by our client, decode exactly like OpenJPEG
decodes the original file, for every corpus file and a matrix of windows."""
from __future__ import annotations

import pytest

from client.api import JPIPClient
from codestream.source import build_source
from jpip.window import frame_size, resolve_window
from tests.conftest import corpus_files
from tests.oracle import assert_same_pixels, decode_codestream, window_crops

FILES = corpus_files()


def expected(src, cs, fsiz, roff, rsiz, layers=None, comps=None):
    ix = src.codestreams[cs]
    w = resolve_window(ix, cs, fsiz=(fsiz[0], fsiz[1], "round-down"), roff=roff, rsiz=rsiz,
                       layers=layers, comps=comps)
    original = bytes(src.view[ix.offset:ix.offset + ix.length])
    nl = w.layers if w.layers < ix.max_layers else 0
    try:
        ref = decode_codestream(original, rlevel=w.discard, layers=nl)
    except Exception:
        return None  # OpenJPEG itself cannot decode the original at this level
    return window_crops(ref, ix.siz, w.discard, w.region, w.comps if comps else None)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
async def test_windows_through_the_server_are_pixel_exact(corpus_server, path) -> None:
    url = str(corpus_server.make_url("/jpip")) + f"?target={path.name}"
    with build_source(path) as src:
        for cs, ix in enumerate(src.codestreams):
            async with JPIPClient(url) as client:
                max_d = min(int(ix.tcr["levels"].min()), 3)
                for d in range(max_d + 1):
                    fw, fh = frame_size(ix.siz, d)
                    windows = [((fw, fh), None, None),
                               ((fw, fh), (fw // 3, fh // 3), (max(1, fw // 3), max(1, fh // 4))),
                               ((fw, fh), (fw - 1, fh - 1), (1, 1))]
                    for fsiz, roff, rsiz in windows:
                        for layers in (None, 1):
                            want = expected(src, cs, fsiz, roff, rsiz, layers)
                            await client.fetch_all(fsiz=fsiz, roff=roff, rsiz=rsiz,
                                                   layers=layers, stream=cs)
                            if want is None:
                                continue
                            got = client.decode(fsiz=fsiz, roff=roff, rsiz=rsiz, layers=layers,
                                                stream=cs)
                            assert_same_pixels(want, got, f"{path.name} cs{cs} {fsiz} {roff} "
                                                          f"{rsiz} layers={layers}")
                assert client.cache.duplicate_bytes == 0
                if ix.num_components > 1:
                    fw, fh = frame_size(ix.siz, 0)
                    last = ix.num_components - 1
                    await client.fetch_all(fsiz=(fw, fh), comps=str(last), stream=cs)
                    got = client.decode(fsiz=(fw, fh), comps=str(last), stream=cs)
                    want = expected(src, cs, (fw, fh), None, None, comps=((last, last),))
                    if want is not None:
                        assert_same_pixels([want[-1]], [got[-1]], f"{path.name} comps={last}")
