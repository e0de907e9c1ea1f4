"""End to end: our server's JPP-streams and JPT-streams, rebuilt by our client (from precinct
data-bins, or from tile data-bins), decode exactly like OpenJPEG decodes the original file, for
every corpus file and a matrix of windows.

Every window is compared: OpenJPEG decodes every corpus file at every level used here, so a
reference decode that fails is a failure, not a skipped case. Each file counts the windows in
which at least one sample was compared (a 1x1 window can hold no sample of a subsampled
component) and must reach MIN_COMPARED, a guard against a matrix that shrinks silently;
tests/test_corpus.py guards the list of files.
"""
from __future__ import annotations

import pytest

from client.api import JPIPClient
from codestream.source import build_source
from jpip.window import frame_size, resolve_window
from tests.conftest import corpus_files
from tests.oracle import assert_same_pixels, decode_codestream, window_crops

FILES = corpus_files()
# The smallest file's matrix: one level (small_world has no decomposition levels), three
# windows, two layer settings, plus a component request.
MIN_COMPARED = 7


def expected(src, cs, fsiz, roff, rsiz, layers=None, comps=None):
    ix = src.codestreams[cs]
    w = resolve_window(ix, cs, fsiz=(fsiz[0], fsiz[1], "round-down"), roff=roff, rsiz=rsiz,
                       layers=layers, comps=comps)
    original = bytes(src.view[ix.offset:ix.offset + ix.length])
    nl = w.layers if w.layers < ix.max_layers else 0
    ref = decode_codestream(original, rlevel=w.discard, layers=nl)
    return window_crops(ref, ix.siz, w.discard, w.region, w.comps if comps else None)


@pytest.mark.parametrize("stream_type", ["jpp-stream", "jpt-stream"])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
async def test_windows_through_the_server_are_pixel_exact(corpus_server, path,
                                                          stream_type) -> None:
    url = str(corpus_server.make_url("/jpip")) + f"?target={path.name}"
    compared = 0
    with build_source(path) as src:
        for cs, ix in enumerate(src.codestreams):
            async with JPIPClient(url, stream_type=stream_type) as client:
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
                            got = client.decode(fsiz=fsiz, roff=roff, rsiz=rsiz, layers=layers,
                                                stream=cs)
                            samples = assert_same_pixels(
                                want, got, f"{path.name} cs{cs} {fsiz} {roff} {rsiz} "
                                           f"layers={layers}")
                            compared += samples > 0
                assert client.cache.duplicate_bytes == 0
                held = client.cache.streams[client.codestream_id(cs)]
                if stream_type == "jpt-stream":
                    assert held.tiles and not held.precincts and not held.tile_headers
                else:
                    assert not held.tiles
                if ix.num_components > 1:
                    fw, fh = frame_size(ix.siz, 0)
                    last = ix.num_components - 1
                    await client.fetch_all(fsiz=(fw, fh), comps=str(last), stream=cs)
                    got = client.decode(fsiz=(fw, fh), comps=str(last), stream=cs)
                    want = expected(src, cs, (fw, fh), None, None, comps=((last, last),))
                    compared += assert_same_pixels([want[-1]], [got[-1]],
                                                   f"{path.name} comps={last}") > 0
    print(f"{path.name}: {compared} windows compared")
    assert compared >= MIN_COMPARED, f"only {compared} windows compared"
