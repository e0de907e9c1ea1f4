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
  runs through packet data (SIGSEGV). So no as-served case is read correctly.
- `openjpip-th`: the same stream with each tile-header bin rewritten to openjpip's convention
  (nothing else touched). This isolates the transcoder's other limits and checks our main
  header, precinct bins, bin ids and message layout against an independent reconstruction.

JPT-streams (tile data-bins) are read as served: the second test runs every file, both
windows and both tile message classes (4, and 5 with Aux), and every case decodes exactly but
the JPT_LIMITS documented with it.

opj_dec_server (the Java viewer's local cache: the same openjpip reconstruction, fed over a
socket) is not tested: Debian's build (2.5.0) dies with SIGSEGV right after receiving any
JPIP-stream message, also a JPP- or JPT-stream recorded from OpenJPEG's own opj_server, so it
cannot tell anything about our streams. The transcoder runs the same reconstruction code.

The 128 JPP cases (32 files x 2 windows x 2 variants) run in one test, which asserts the exact set
of cases the transcoder reads correctly (READS_CORRECTLY: 14, each an exact pixel match), so a
case that starts or stops working fails it, and that every other case fails as its documented
reason says (TOOL_LIMITS, AS_SERVED: each with the signature of its failure). The failures were
observed with Debian's libopenjpip 2.5.0 and are explained from its source
(src/lib/openjpip/jp2k_encoder.c, j2kheader_manager.c).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from client.api import JPIPClient
from codestream.source import build_source
from jpip.window import frame_size, resolve_window
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

# --- what opj_jpip_transcode reads correctly, and why it fails on the rest ------------------
# A case is (file, window, variant). These are the cases whose out.j2k decodes exactly like
# the original; the test asserts this set, so a case that starts or stops working is seen.
READS_CORRECTLY = {
    (name, window, "openjpip-th")
    for name in ("2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2", "heliov.jpx",
                 "p0_04.j2k", "small_world_non_consecutive_tilepart_tlm.jp2", "rgb4096.jp2",
                 "med2048.jp2")
    for window in WINDOWS
} | {("nemo.jp2", "full", "openjpip-th"), ("p1_02.j2k", "full", "openjpip-th")}


@dataclass(frozen=True)
class Limit:
    """A documented reason the transcoder fails, and what its failure looks like (a substring
    of the outcome `transcode_outcome` reports), so that a failure of another kind is seen."""

    reason: str
    signature: str


NO_PRECINCTS = Limit(
    "SIGABRT, assertion `ret >= 0' in comp_numOfprcts: the COD has no precinct partition "
    "(Scod bit 0 clear) and the progression is not RPCL, so comp_seqID reads COD.XPsiz[r] "
    "past its one-entry array for r >= 1 (only RPCL, or <= 1 level, avoids that read)",
    "comp_numOfprcts: Assertion `ret >= 0' failed")


def cod_not_after_siz(first: str) -> Limit:
    return Limit(
        "'Error, COD marker not found in the reconstructed j2kstream': the transcoder reads COD "
        f"at the fixed position right after SIZ; here {first} comes first, so it writes only "
        "the main header and out.j2k is undecodable",
        "COD marker not found in the reconstructed j2kstream")


AS_SERVED = Limit(
    "SIGSEGV: our tile-header bin holds marker segments only (no SOT body, no SOD); the "
    "transcoder prepends FF90, skips 12 bytes and scans for SOD through packet data",
    "killed by SIGSEGV")
# (file, window or None for both, variant or None for both) -> why it fails. The transcoder's
# crashes on the main header come first, whatever the tile-header convention; its wrong
# rebuilds of packet data are seen only once the tile headers are in its convention (as-served,
# those cases crash on AS_SERVED first).
TOOL_LIMITS: dict[tuple[str, str | None, str | None], Limit] = {
    **{(name, None, None): NO_PRECINCTS for name in (
        "2013_06_24__17_31_30_84__SDO_AIA_AIA_193.jp2", "693_J2KR.j2k", "CT1.j2k",
        "CT1_psot0_noeoc.j2k", "MAROTECH_CT_JP2Lossy.jp2", "MR2_J2KI.j2k",
        "TOSHIBA_J2K_SIZ1_PixRep0.j2k", "US1_J2KR.j2k", "basn6a08.jp2", "file1.jp2", "file3.jp2",
        "liver_j2k.j2k", "p0_02.j2k", "p0_05.j2k", "p0_09.j2k", "p0_10.j2k", "p0_12.j2k",
        "p1_01.j2k", "rgb_trns_ycbc.jp2", "test-card-lossy-tiled.jp2")},
    ("p0_01.j2k", None, None): cod_not_after_siz("QCD"),
    ("HTJ2KLossless_08_RGB.j2k", None, None): cod_not_after_siz("CAP"),
    ("p0_13.j2k", None, None): Limit(
        "SIGABRT, '*** stack smashing detected ***': 257 components, but SIZmarker_param_t "
        "holds Ssiz/XRsiz/YRsiz in 3-entry arrays", "stack smashing detected"),
    ("p1_05.j2k", None, "openjpip-th"): Limit(
        "wrong codestream, OpenJPEG 'Expected EPH marker': PCRL over 225 offset tiles; the "
        "PCRL rebuild emits only the smallest per-resolution precinct count of each tile "
        "(dropping the other precincts), and its empty-packet padding carries no EPH",
        "Expected EPH marker"),
    ("p1_02.j2k", "quarter", "openjpip-th"): Limit(
        "wrong codestream, OpenJPEG 'segment too long': LRCP, 19 layers; for a reduced window "
        "the transcoder lowers the COD level count but still writes padding packets for the "
        "dropped resolutions inside every layer, so the LRCP packet sequence no longer fits",
        "segment too long"),
    ("nemo.jp2", "quarter", "openjpip-th"): Limit(
        "wrong codestream, OpenJPEG 'Error reading COC marker': for a reduced window the "
        "transcoder rewrites the tile-header COC as if it carried precinct sizes "
        "(Lcoc = 10 + levels) but this COC has none", "Error reading COC marker"),
}


def expected_limit(name: str, window: str, variant: str) -> Limit | None:
    """Why a case fails, or None for a case the transcoder reads correctly."""
    if (name, window, variant) in READS_CORRECTLY:
        return None
    for key in ((name, window, variant), (name, window, None), (name, None, variant),
                (name, None, None)):
        if key in TOOL_LIMITS:
            return TOOL_LIMITS[key]
    if variant == "as-served":
        return AS_SERVED
    raise AssertionError(f"{name} {window} {variant}: neither known to work nor explained")


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


def reference(path: Path, discard: int) -> list[np.ndarray]:
    with build_source(path) as src:
        ix = src.codestreams[0]
        original = bytes(src.view[ix.offset:ix.offset + ix.length])
    return decode_codestream(original, rlevel=discard)


def transcode_outcome(stream: bytes, workdir: Path, want: list[np.ndarray], discard: int,
                      levels: int) -> str | None:
    """None if opj_jpip_transcode turns the stream into a codestream that decodes exactly to
    `want`; otherwise what went wrong (exit or signal and stderr, decoder error, or pixels)."""
    jpp, out = workdir / "in.jpp", workdir / "out.j2k"
    out.unlink(missing_ok=True)
    jpp.write_bytes(stream)
    proc = run_transcode(jpp, out)
    if proc.returncode != 0 or not out.exists():
        return f"opj_jpip_transcode failed: {describe_exit(proc)}"
    data = out.read_bytes()
    stderr = proc.stderr.decode(errors="replace").strip()
    try:
        # The transcoder drops the resolutions it did not receive from SIZ/COD.
        rlevel = discard - (levels - main_cod_levels(data))
        got = decode_codestream(data, rlevel=rlevel)
    except Exception as e:  # OpenJPEG or our marker reader rejects the output
        return (f"out.j2k ({len(data)} bytes) does not decode: {type(e).__name__}: {e}; "
                f"transcoder stderr: {stderr!r}")
    try:
        assert_same_pixels(want, got)
    except AssertionError as e:
        return f"wrong pixels: {e}; transcoder stderr: {stderr!r}"
    return None


async def test_the_transcoder_reads_exactly_the_known_cases(aiohttp_server, tmp_path: Path
                                                          ) -> None:
    """Every case is run; the cases read correctly must be READS_CORRECTLY exactly, and every
    other case must fail the way its documented reason says."""
    require_binary(OPJ_TRANSCODE, "libopenjpip-dec-server")
    outcomes: dict[tuple[str, str, str], str | None] = {}
    for path in FILES:
        for window in WINDOWS:
            raw, discard, levels = await fetch_window(aiohttp_server, tmp_path / "ix", path,
                                                      window)
            want = reference(path, discard)
            for variant in VARIANTS:
                stream = raw if variant == "as-served" else to_openjpip_tile_headers(raw)
                outcomes[(path.name, window, variant)] = transcode_outcome(
                    stream, tmp_path, want, discard, levels)
    assert len(outcomes) == len(FILES) * len(WINDOWS) * len(VARIANTS) == 128
    read = {case for case, outcome in outcomes.items() if outcome is None}
    assert read == READS_CORRECTLY, (
        f"now read correctly: {sorted(read - READS_CORRECTLY)}; "
        f"no longer: {[(c, outcomes[c]) for c in sorted(READS_CORRECTLY - read)]}")
    wrong_kind = {}
    for case, outcome in outcomes.items():
        limit = expected_limit(*case)
        if limit is not None and limit.signature not in str(outcome):
            wrong_kind[case] = (outcome, limit.signature)
    assert not wrong_kind, f"failures of another kind than documented: {wrong_kind}"


# --- JPT-streams ---------------------------------------------------------------------------------
# opj_jpip_transcode rebuilds a codestream from a JPT-stream by appending each tile's data-bin
# messages in offset order after the main header (jp2k_encoder.c, recons_codestream_from_
# JPTstream), which is what a tile data-bin is: our tile-parts go through as they are. Limits:
JPT_TYPES = ("jpt-stream", "jpt-stream;ttype=ext")
JPT_LIMITS: dict[tuple[str, str | None, str | None], Limit] = {
    ("p0_13.j2k", None, None): Limit(
        "SIGABRT, '*** stack smashing detected ***': 257 components, but SIZmarker_param_t "
        "holds Ssiz/XRsiz/YRsiz in 3-entry arrays", "stack smashing detected"),
    **{(name, None, "jpt-stream;ttype=ext"): Limit(
        "wrong codestream, OpenJPEG 'Failed to decode tile': the transcoder keeps an "
        "extended tile message only when Aux > the levels it discards (0 here), reading Aux "
        "as openjpip's own count of the tile-parts left; our Aux is the quality layers the "
        "tile's bin completes (0 until the tile-part holding the last packet of layer 0), so "
        "it drops the first tile-parts of these files (several per tile)",
        "Failed to decode tile") for name in (
            "small_world_non_consecutive_tilepart_tlm.jp2", "test-card-lossy-tiled.jp2")},
}


def jpt_limit(name: str, window: str, stream_type: str) -> Limit | None:
    for key in ((name, window, stream_type), (name, window, None), (name, None, stream_type),
                (name, None, None)):
        if key in JPT_LIMITS:
            return JPT_LIMITS[key]
    return None


async def fetch_jpt(aiohttp_server, index_dir: Path, path: Path, window: str,
                    stream_type: str) -> tuple[bytes, int]:
    """One stateless JPT request: (raw JPT-stream, discard level of the window)."""
    config = ServerConfig(root=path.parent, index_cache_dir=index_dir / path.parent.name, port=0)
    server = await aiohttp_server(create_app(config))
    with build_source(path) as src:
        ix = src.codestreams[0]
        fw, fh = frame_size(ix.siz, 0)
        fsiz = (fw, fh) if window == "full" else (max(1, fw // 4), max(1, fh // 4))
        discard = resolve_window(ix, 0, fsiz=(*fsiz, "round-down")).discard
    url = (f"{server.make_url('/jpip')}?target={path.name}&fsiz={fsiz[0]},{fsiz[1]}"
           f"&type={stream_type}")
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/jpt-stream"
        raw = await r.read()
    assert raw[-3:-1] in (b"\x00\x01", b"\x00\x02"), "window not complete in one response"
    return raw, discard


async def test_the_transcoder_reads_our_jpt_streams(aiohttp_server, tmp_path: Path) -> None:
    """Every file, both windows, both tile message classes: out.j2k decodes exactly like the
    original at that reduction, except the documented JPT_LIMITS (which must fail as said)."""
    require_binary(OPJ_TRANSCODE, "libopenjpip-dec-server")
    outcomes: dict[tuple[str, str, str], str | None] = {}
    for path in FILES:
        for window in WINDOWS:
            for stream_type in JPT_TYPES:
                raw, discard = await fetch_jpt(aiohttp_server, tmp_path / "ix", path, window,
                                               stream_type)
                want = reference(path, discard)
                jpt, out = tmp_path / "in.jpt", tmp_path / "out.j2k"
                out.unlink(missing_ok=True)
                jpt.write_bytes(raw)
                proc = run_transcode(jpt, out)
                if proc.returncode != 0 or not out.exists():
                    outcomes[(path.name, window, stream_type)] = \
                        f"opj_jpip_transcode failed: {describe_exit(proc)}"
                    continue
                try:
                    got = decode_codestream(out.read_bytes(), rlevel=discard)
                    assert_same_pixels(want, got)
                    outcomes[(path.name, window, stream_type)] = None
                except Exception as e:  # a wrong codestream or wrong pixels
                    outcomes[(path.name, window, stream_type)] = f"{type(e).__name__}: {e}"
    assert len(outcomes) == len(FILES) * len(WINDOWS) * len(JPT_TYPES) == 128
    wrong = {}
    for case, outcome in outcomes.items():
        limit = jpt_limit(*case)
        if limit is None and outcome is not None:
            wrong[case] = outcome
        elif limit is not None and limit.signature not in str(outcome):
            wrong[case] = (outcome, limit.signature)
    assert not wrong, wrong
