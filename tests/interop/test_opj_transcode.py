"""OpenJPEG's JPIP client-side transcoder (opj_jpip_transcode) reading OUR server's streams.

For every corpus file and the two interop images, a fresh stateless client fetches a whole
image window (full size, and about a quarter size) in one request; the raw JPP-stream goes
through `opj_jpip_transcode in.jpp out.j2k` and out.j2k must decode exactly like the original
at that reduction. For a reduced window the transcoder shrinks SIZ/COD to the resolutions it
received, so out.j2k is decoded with correspondingly fewer levels discarded.

Two variants of each stream:
- `as-served`: the bytes our server sent. opj_jpip_transcode cannot read any of them: it
  assumes openjpip's private tile-header convention (bin = SOT body ... SOD, see
  opj_server_harness), prepends only the FF90 code, then scans marker segments from 12 bytes
  further on until it meets FF93. With our bins (marker segments only, usually empty) that scan
  runs through packet data (SIGSEGV). So every as-served case is an expected failure.
- `openjpip-th`: the same stream with each tile-header bin rewritten to openjpip's convention
  (nothing else touched). This isolates the transcoder's other limits and checks our main
  header, precinct bins, bin ids and message layout against an independent reconstruction.

Every other failure below was observed with Debian's libopenjpip 2.5.0 and is explained from its
source (src/lib/openjpip/jp2k_encoder.c, j2kheader_manager.c).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.api import JPIPClient
from codestream.source import build_source
from jpip.window import frame_size
from server.app import create_app
from server.config import ServerConfig
from tests.conftest import INTEROP, corpus_files
from tests.interop.opj_server_harness import (
    OPJ_TRANSCODE,
    describe_exit,
    main_cod_levels,
    require_binary,
    run_transcode,
    to_openjpip_tile_headers,
)
from tests.oracle import assert_same_pixels, decode_codestream

FILES = [*corpus_files(), INTEROP / "rgb4096.jp2", INTEROP / "med2048.jp2"]
WINDOWS = ("full", "quarter")
VARIANTS = ("as-served", "openjpip-th")

# --- why opj_jpip_transcode fails, whatever the tile-header convention ---------------------
NO_PRECINCTS = (
    "SIGABRT, assertion `ret >= 0' in comp_numOfprcts: the COD has no precinct partition "
    "(Scod bit 0 clear) and the progression is not RPCL, so comp_seqID reads COD.XPsiz[r] "
    "past its one-entry array for r >= 1 (only RPCL, or <= 1 level, avoids that read)")
COD_NOT_AFTER_SIZ = (
    "'Error, COD marker not found in the reconstructed j2kstream': the transcoder reads COD "
    "at the fixed position right after SIZ; here {first} comes first, so it writes only the "
    "main header and out.j2k is undecodable")
TOOL_LIMITS: dict[tuple[str, str | None], str] = {  # (file, window or None for both) -> reason
    **{(name, None): NO_PRECINCTS for name in (
        "2013_06_24__17_31_30_84__SDO_AIA_AIA_193.jp2", "693_J2KR.j2k", "CT1.j2k",
        "CT1_psot0_noeoc.j2k", "MAROTECH_CT_JP2Lossy.jp2", "MR2_J2KI.j2k",
        "TOSHIBA_J2K_SIZ1_PixRep0.j2k", "US1_J2KR.j2k", "basn6a08.jp2", "file1.jp2", "file3.jp2",
        "liver_j2k.j2k", "p0_02.j2k", "p0_05.j2k", "p0_09.j2k", "p0_10.j2k", "p0_12.j2k",
        "p1_01.j2k", "rgb_trns_ycbc.jp2", "test-card-lossy-tiled.jp2")},
    ("p0_01.j2k", None): COD_NOT_AFTER_SIZ.format(first="QCD"),
    ("HTJ2KLossless_08_RGB.j2k", None): COD_NOT_AFTER_SIZ.format(first="CAP"),
    ("p0_13.j2k", None): (
        "SIGABRT, '*** stack smashing detected ***': 257 components, but SIZmarker_param_t "
        "holds Ssiz/XRsiz/YRsiz in 3-entry arrays"),
    ("p1_05.j2k", None): (
        "wrong codestream, OpenJPEG 'Expected EPH marker': PCRL over 225 offset tiles; the "
        "PCRL rebuild emits only the smallest per-resolution precinct count of each tile "
        "(dropping the other precincts), and its empty-packet padding carries no EPH"),
    ("p1_02.j2k", "quarter"): (
        "wrong codestream, OpenJPEG 'segment too long': LRCP, 19 layers; for a reduced window "
        "the transcoder lowers the COD level count but still writes padding packets for the "
        "dropped resolutions inside every layer, so the LRCP packet sequence no longer fits"),
    ("nemo.jp2", "quarter"): (
        "wrong codestream, OpenJPEG 'Error reading COC marker': for a reduced window the "
        "transcoder rewrites the tile-header COC as if it carried precinct sizes "
        "(Lcoc = 10 + levels) but this COC has none"),
}
AS_SERVED = (
    "SIGSEGV: our tile-header bin holds marker segments only (no SOT body, no SOD); the "
    "transcoder prepends FF90, skips 12 bytes and scans for SOD through packet data")


class TranscodeFailure(AssertionError):
    """The transcoder crashed or produced a wrong codestream (what the xfails expect; a
    failure to fetch the stream from our server is a different error and fails the test)."""


def xfail_reason(name: str, window: str, variant: str) -> str | None:
    reason = TOOL_LIMITS.get((name, window)) or TOOL_LIMITS.get((name, None))
    if reason is not None:
        return reason
    return AS_SERVED if variant == "as-served" else None


def cases() -> list:
    out = []
    for path in FILES:
        for window in WINDOWS:
            for variant in VARIANTS:
                reason = xfail_reason(path.name, window, variant)
                marks = [pytest.mark.xfail(raises=TranscodeFailure, strict=False, reason=reason)
                         ] if reason else []
                out.append(pytest.param(path, window, variant, marks=marks,
                                        id=f"{path.name}-{window}-{variant}"))
    return out


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("index-cache")


@pytest.fixture(scope="module")
def memo() -> dict:
    """Fetched streams and reference decodes, shared by the two variants of a case."""
    return {}


async def fetch_window(aiohttp_server, index_dir: Path, path: Path, window: str
                       ) -> tuple[bytes, int, int]:
    """One request, fresh stateless client: (raw JPP-stream, discard level, codestream levels)."""
    config = ServerConfig(root=path.parent, index_cache_dir=index_dir / path.parent.name, port=0)
    server = await aiohttp_server(create_app(config))
    with build_source(path) as src:
        siz = src.codestreams[0].siz
    fw, fh = frame_size(siz, 0)
    fsiz = (fw, fh) if window == "full" else (max(1, fw // 4), max(1, fh // 4))
    raw = bytearray()
    async with JPIPClient(str(server.make_url("/jpip")) + f"?target={path.name}",
                          stateless=True, timeout=60) as client:
        client.raw_sink = raw
        stats = await client.fetch(fsiz=fsiz)
        assert stats.eor in (1, 2), f"window not complete in one response: EOR {stats.eor}"
        discard = client.region(fsiz).discard
        levels = main_cod_levels(bytes(client.cache.stream(0).main_header.data))
    return bytes(raw), discard, levels


def reference(memo: dict, path: Path, discard: int) -> list[np.ndarray]:
    key = ("ref", path, discard)
    if key not in memo:
        with build_source(path) as src:
            ix = src.codestreams[0]
            original = bytes(src.view[ix.offset:ix.offset + ix.length])
        memo[key] = decode_codestream(original, rlevel=discard)
    return memo[key]


@pytest.mark.parametrize(("path", "window", "variant"), cases())
async def test_transcoded_stream_decodes_like_the_original(
        aiohttp_server, index_dir: Path, memo: dict, tmp_path: Path,
        path: Path, window: str, variant: str) -> None:
    require_binary(OPJ_TRANSCODE, "libopenjpip-dec-server")
    key = ("stream", path, window)
    if key not in memo:
        memo[key] = await fetch_window(aiohttp_server, index_dir, path, window)
    raw, discard, levels = memo[key]
    stream = raw if variant == "as-served" else to_openjpip_tile_headers(raw)
    jpp, out = tmp_path / "in.jpp", tmp_path / "out.j2k"
    jpp.write_bytes(stream)
    proc = run_transcode(jpp, out)
    if proc.returncode != 0 or not out.exists():
        raise TranscodeFailure(f"opj_jpip_transcode failed: {describe_exit(proc)}")
    data = out.read_bytes()
    try:
        # The transcoder drops the resolutions it did not receive from SIZ/COD.
        rlevel = discard - (levels - main_cod_levels(data))
        got = decode_codestream(data, rlevel=rlevel)
    except Exception as e:  # OpenJPEG or our marker reader rejects the output
        raise TranscodeFailure(
            f"out.j2k ({len(data)} bytes) does not decode: {type(e).__name__}: {e}; "
            f"transcoder stderr: {proc.stderr.decode(errors='replace').strip()!r}") from e
    try:
        assert_same_pixels(reference(memo, path, discard), got,
                           f"{path.name} {window} (discard {discard}) {variant}")
    except AssertionError as e:
        raise TranscodeFailure(f"wrong pixels: {e}") from e
