"""The viewer in a real headless Chromium (Debian's, driven by Playwright) against a real server
process on loopback, looked at as a user would: pages opened from links, mouse drags and wheel
turns, screenshots; and checked through its JavaScript API: the decoded samples of a view equal
OpenJPEG's decode of that window (exactly for 5/3 files, within one level for 9/7), one JPIP
channel per page, no byte received twice, a revisited view costs nothing.

`JPIP_VIEWER_SCREENSHOT=PATH` also writes the README's screenshot there (`make
viewer-screenshot`).
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from codestream.source import build_source
from jpip.window import resolve_window
from tests.conftest import CORPUS, INTEROP, PROJECT_ROOT
from tests.oracle import decode_codestream, window_crops
from tests.server_process import free_port, stop_process, wait_healthy
from tests.tokens import hs_secret, mint
from tests.viewer.conftest import require_viewer_build

CHROMIUM = Path("/usr/bin/chromium")
DATA = PROJECT_ROOT / "tests" / "data"  # the served root: corpus/ and interop/
VIEWPORT = {"width": 800, "height": 560}
TIMEOUT_MS = 30_000

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")


def _serve(tmp_path_factory, *extra: str):
    """`jpip-server` serving tests/data, strict (the JPIP grammar accepts `access_token`, which
    the viewer passes on); yields its URL and its log file."""
    require_viewer_build()
    if not (PROJECT_ROOT / "server" / "viewer_static" / "viewer.js").is_file():
        pytest.fail("the viewer bundle is not built: run `make viewer`")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "server.cli", "--root", str(DATA), "--host", "127.0.0.1",
           "--port", str(port), "--index-cache-dir", str(log.parent / "ix"), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, proc, log)
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    for base, _ in _serve(tmp_path_factory):
        yield base


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """The same with access control on: (URL, log file, HMAC secret)."""
    keys = tmp_path_factory.mktemp("keys")
    secret = hs_secret(keys / "hs.key")
    for base, log in _serve(tmp_path_factory, "--auth-jwt-key", str(keys / "hs.key")):
        yield base, log, secret


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail("Debian's chromium is needed: scripts/system-deps.sh --test installs it")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Page:
    """One viewer page, with the page's errors collected (any is a test failure)."""

    def __init__(self, browser, url: str, *, csp_bypass: bool = True) -> None:
        # The page's CSP forbids eval, which Playwright's evaluate() needs: the API tests
        # bypass it; test_page_works_under_its_own_csp does not.
        self.context = browser.new_context(viewport=VIEWPORT, bypass_csp=csp_bypass)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        # On the context: a page's last requests (the cclose beacon) outlive the page.
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url)

    def idle(self) -> None:
        self.page.wait_for_function("document.body.dataset.state === 'idle'", timeout=TIMEOUT_MS)

    def ready(self) -> None:
        self.page.wait_for_function("window.jpipViewer !== undefined", timeout=TIMEOUT_MS)
        self.page.evaluate("jpipViewer.ready")
        assert self.page.evaluate("jpipViewer.error") is None, self.page.evaluate(
            "jpipViewer.error")
        self.idle()

    def view(self, **fields) -> dict:
        return self.page.evaluate("(f) => jpipViewer.view(f)", fields)

    def stats(self) -> dict:
        return self.page.evaluate("jpipViewer.stats()")

    def current(self) -> dict:
        return self.page.evaluate("jpipViewer.current()")

    def decoded(self) -> dict:
        return self.page.evaluate(DECODED_JS)

    def close(self) -> None:
        self.context.close()
        assert not self.errors, self.errors


DECODED_JS = """() => {
  const d = jpipViewer.decoded();
  const b64 = (a) => {
    const u8 = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    let s = '';
    for (let i = 0; i < u8.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
    }
    return btoa(s);
  };
  return {width: d.width, height: d.height, components: d.components, bitDepth: d.bitDepth,
          signed: d.signed, data: d.data && b64(d.data), type: d.data && d.data.constructor.name,
          planes: d.planes.map((p) => ({width: p.width, height: p.height,
                                        type: p.data.constructor.name, data: b64(p.data)}))};
}"""
TYPES = {"Uint8Array": np.uint8, "Uint16Array": np.dtype("<u2"), "Int16Array": np.dtype("<i2")}


def _planes(decoded: dict) -> list[np.ndarray]:
    out = []
    for p in decoded["planes"]:
        raw = base64.b64decode(p["data"])
        out.append(np.frombuffer(raw, TYPES[p["type"]]).reshape(p["height"], p["width"]))
    if decoded["data"] is not None:  # the interleaved form holds the same samples
        inter = np.frombuffer(base64.b64decode(decoded["data"]), TYPES[decoded["type"]])
        stacked = np.stack(out, axis=-1).reshape(-1)
        assert np.array_equal(inter, stacked), "data and planes differ"
    return out


def _oracle(path: Path, fsiz, roff=None, rsiz=None, stream: int = 0):
    """OpenJPEG's decode of a window of the original file, and the resolved window."""
    with build_source(path) as src:
        ix = src.codestreams[stream]
        window = resolve_window(ix, stream, fsiz=(*fsiz, "round-down"), roff=roff, rsiz=rsiz)
        original = bytes(src.view[ix.offset:ix.offset + ix.length])
        reversible = bool(ix.tcr["reversible"].all())
        siz = ix.siz
    full = decode_codestream(original, rlevel=window.discard)
    return window, window_crops(full, siz, window.discard, window.region), reversible


def _assert_same(got: list[np.ndarray], want: list[np.ndarray], reversible: bool, what: str):
    assert len(got) == len(want), what
    for c, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape, f"{what}: component {c}: {g.shape} vs {w.shape}"
        worst = int(np.abs(g.astype(np.int64) - w.astype(np.int64)).max()) if g.size else 0
        assert worst <= (0 if reversible else 1), f"{what}: component {c} differs by {worst}"


def _canvas_png(page) -> bytes:
    return page.locator("canvas#view").screenshot()


def _not_blank(png: bytes) -> float:
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    return float(img.std())


# ----- samples -----------------------------------------------------------------------------

PIXEL_CASES = [  # (path, a full-resolution region: roff, rsiz)
    (CORPUS / "file1.jp2", (300, 200), (256, 192)),                  # 8-bit RGB, 5/3, RCT
    (INTEROP / "med2048.jp2", (900, 1100), (320, 240)),              # 16-bit grey, precincts
    (CORPUS / "test-card-lossy-tiled.jp2", (100, 60), (300, 200)),   # 20 tiles, 6 layers
    (CORPUS / "HTJ2KLossless_08_RGB.j2k", (200, 150), (256, 192)),   # HTJ2K (OpenJPH)
    (CORPUS / "MR2_J2KI.j2k", (400, 300), (256, 256)),               # 12-bit grey, 9/7
]


@pytest.mark.parametrize("path,roff,rsiz", [pytest.param(*c, id=c[0].name) for c in PIXEL_CASES])
def test_views_decode_as_openjpeg(server, browser, path, roff, rsiz) -> None:
    target = path.relative_to(DATA).as_posix()
    page = Page(browser, f"{server}/viewer?target={target}&fsiz=96,96")
    page.ready()
    with build_source(path) as src:
        width, height = src.codestreams[0].siz.width, src.codestreams[0].siz.height
    for what, fsiz, ro, rs in (("thumbnail", (96, 96), None, None),
                               ("full-resolution region", (width, height), roff, rsiz)):
        if what != "thumbnail":
            page.view(fsiz=list(fsiz), roff=list(ro), rsiz=list(rs))
        window, want, reversible = _oracle(path, fsiz, ro, rs)
        current = page.current()
        assert current["discard"] == window.discard
        assert tuple(current["fsiz"]) == window.frame and tuple(current["roff"]) == window.offset
        assert tuple(current["rsiz"]) == window.size
        _assert_same(_planes(page.decoded()), want, reversible, f"{target} {what}")
    stats = page.stats()
    assert stats["channelsOpened"] == 1 and stats["duplicateBytes"] == 0, stats
    assert _not_blank(_canvas_png(page.page)) > 2.0, "the canvas is blank"
    page.close()


# ----- as a user -----------------------------------------------------------------------------

def test_pan_and_zoom_with_the_mouse(server, browser) -> None:
    """Open the viewer from the listing, zoom with the wheel, drag to pan, zoom back out: one
    channel, nothing received twice, the revisited view costs no request and no byte, and what
    is shown after the pan decodes as OpenJPEG does."""
    page = Page(browser, f"{server}/")
    p = page.page
    p.click("text=interop/")
    p.click("text=med2048.jp2")
    page.ready()
    first = page.current()
    assert first["discard"] >= 1, first  # 2048² fitted into 800 x ~530: a reduced level
    after_first = page.stats()
    box = p.locator("canvas#view").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    p.mouse.move(cx, cy)
    for _ in range(3):
        p.mouse.wheel(0, -300)  # zoom in, 2x a notch
    page.idle()
    zoomed = page.current()
    assert zoomed["discard"] < first["discard"], (first, zoomed)
    p.mouse.move(cx, cy)
    p.mouse.down()
    p.mouse.move(cx - 150, cy - 100, steps=8)
    p.mouse.up()
    page.idle()
    panned = page.current()
    assert panned["roff"] != zoomed["roff"], (zoomed, panned)
    window, want, reversible = _oracle(INTEROP / "med2048.jp2", panned["fsiz"], panned["roff"],
                                       panned["rsiz"])
    _assert_same(_planes(page.decoded()), want, reversible, "after the pan")
    stats = page.stats()
    assert stats["channelsOpened"] == 1, stats
    assert stats["duplicateBytes"] == 0, stats
    assert stats["requests"] >= after_first["requests"] + 2, stats
    # Back to the first view: every byte of it is held already.
    p.keyboard.press("0")
    page.idle()
    assert page.current() == first
    assert page.stats() == stats, "the revisited view cost a request or bytes"
    png = _canvas_png(p)
    assert _not_blank(png) > 2.0
    page.close()


def test_new_view_pre_empts_the_one_in_flight(server, browser) -> None:
    page = Page(browser, f"{server}/viewer?target=interop/med2048.jp2&fsiz=64,64")
    page.ready()
    outcome = page.page.evaluate("""async () => {
      const a = jpipViewer.view({fsiz: [2048, 2048], roff: [0, 0], rsiz: [1500, 1000]})
        .then(() => 'done', (e) => e.name);
      const b = jpipViewer.view({fsiz: [1024, 1024], roff: [600, 700], rsiz: [300, 200]});
      await b;
      return await a;
    }""")
    assert outcome in ("Superseded", "done")
    window, want, reversible = _oracle(INTEROP / "med2048.jp2", (1024, 1024), (600, 700),
                                       (300, 200))
    _assert_same(_planes(page.decoded()), want, reversible, "the newer view")
    stats = page.stats()
    assert stats["channelsOpened"] == 1 and stats["duplicateBytes"] == 0, stats
    page.close()


def test_progressive_display_while_data_arrives(server, browser) -> None:
    """On a slow link the picture is redrawn as quality layers arrive, before the view is
    complete: the canvas changes several times while the page is still loading."""
    page = Page(browser, f"{server}/viewer?target=corpus/test-card-lossy-tiled.jp2&fsiz=40,30")
    page.ready()
    p = page.page
    cdp = page.context.new_cdp_session(p)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 20, "downloadThroughput": 40_000, "uploadThroughput": -1})
    p.evaluate("() => { window.full = jpipViewer.view({fsiz: [640, 480]}); }")  # 6 layers, 73 KB
    shown = []
    while True:
        state = p.evaluate("document.body.dataset.state")
        picture = p.evaluate("""() => {
          const c = document.querySelector('canvas#view');
          const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let sum = 0;
          for (let i = 0; i < px.length; i += 4) sum += px[i] * (1 + (i % 7)) + px[i + 1];
          return sum;
        }""")
        if not shown or shown[-1] != picture:
            shown.append(picture)
        if state != "loading":
            break
        time.sleep(0.1)
    p.evaluate("window.full")
    assert state == "idle"
    assert len(shown) >= 3, f"{len(shown)} distinct pictures while loading"
    window, want, reversible = _oracle(CORPUS / "test-card-lossy-tiled.jp2",
                                       page.current()["fsiz"], None, None)
    _assert_same(_planes(page.decoded()), want, reversible, "once complete")
    page.close()


def test_window_level_with_the_right_button_and_from_dicom_attributes(server, browser) -> None:
    """A 16-bit image whose info names DICOM JSON (served by a stub route here: the endpoint
    comes with DICOM support): the display maps samples through its Window Center/Width and
    Rescale Slope/Intercept; a right-drag changes the window."""
    page = Page(browser, "about:blank")
    p = page.page
    attributes = {"00281050": {"vr": "DS", "Value": ["-600"]},
                  "00281051": {"vr": "DS", "Value": [1500]},
                  "00281052": {"vr": "DS", "Value": ["-1024"]},
                  "00281053": {"vr": "DS", "Value": ["1"]},
                  "00280004": {"vr": "CS", "Value": ["MONOCHROME2"]}}

    def info(route):
        body = route.fetch().json()
        body.update(dicom=True, dicom_json="/dicom-json?target=corpus/CT1.j2k")
        route.fulfill(json=body)

    p.route(re.compile(r".*/api/info\?.*"), info)
    p.route(re.compile(r".*/dicom-json\?.*"),
            lambda route: route.fulfill(json=attributes, content_type="application/dicom+json"))
    p.goto(f"{server}/viewer?target=corpus/CT1.j2k")
    page.ready()
    assert "W 1500 L -600" in p.inner_text("#overlay")
    shown = p.evaluate("""() => {
      const c = document.querySelector('canvas#view');
      const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      return {w: c.width, h: c.height, px: Array.from(px.filter((_, i) => i % 4 === 0))};
    }""")
    grey = np.array(shown["px"], np.uint8).reshape(shown["h"], shown["w"])
    samples = _planes(page.decoded())[0].astype(np.float64)  # the whole 512x512 CT, fitted
    expected = np.clip(((samples - 1024) - (-600 - 0.5)) / (1500 - 1) + 0.5, 0, 1) * 255
    # The image is centred on the canvas, magnified a little: its middle 200x200 samples cover
    # the middle of the canvas. Compare what is shown there with the DICOM mapping of them.
    scale = min(shown["w"], shown["h"]) / 512
    h, w = grey.shape
    r = int(90 * scale)
    middle = grey[h // 2 - r:h // 2 + r, w // 2 - r:w // 2 + r]
    want = expected[256 - 90:256 + 90, 256 - 90:256 + 90]
    assert abs(float(np.median(middle)) - float(np.median(want))) <= 2
    assert abs(float(middle.mean()) - float(want.mean())) <= 3
    before = _canvas_png(p)
    box = p.locator("canvas#view").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    p.mouse.move(x, y)
    p.mouse.down(button="right")
    p.mouse.move(x + 120, y + 60, steps=6)
    p.mouse.up(button="right")
    overlay = p.inner_text("#overlay")
    assert "W 1500 L -600" not in overlay and " W " in overlay
    assert _canvas_png(p) != before
    page.close()


def _token_goes_with_every_request(server: str, browser, token: str,
                                    target: str = "corpus/p0_04.j2k") -> None:
    page = Page(browser, f"{server}/viewer?target={target}&fsiz=64,48&access_token={token}")
    page.ready()
    page.view(fsiz=[640, 480], roff=[100, 100], rsiz=[200, 150])  # a second JPIP request
    ours = [u for u in page.requests if "/viewer/" not in u and not u.startswith("data:")]
    asked = [u for u in ours if "/jpip" in u or "/api/" in u]
    assert len([u for u in asked if "/jpip" in u]) >= 2 and any("/api/info" in u for u in asked)
    assert all(f"access_token={token}" in u for u in ours), ours
    sessions = _gauge(server, "jpip_sessions")
    # The cclose beacon leaves as the page goes away, out of Playwright's sight: the page notes
    # what it sends in its storage, read back from the next page of the same origin.
    page.page.evaluate("""() => {
      const send = navigator.sendBeacon.bind(navigator);
      navigator.sendBeacon = (url, data) => {
        const sent = JSON.parse(localStorage.getItem('beacons') || '[]');
        localStorage.setItem('beacons', JSON.stringify([...sent, url]));
        return send(url, data);
      };
    }""")
    page.page.goto(f"{server}/?access_token={token}")  # pagehide: cclose by beacon
    beacons = page.page.evaluate("JSON.parse(localStorage.getItem('beacons') || '[]')")
    deadline = time.monotonic() + 5
    while _gauge(server, "jpip_sessions") >= sessions and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gauge(server, "jpip_sessions") == sessions - 1  # the owner's cclose was accepted
    closes = [u for u in beacons if "cclose=" in u]
    assert closes and all(f"access_token={token}" in u for u in closes), beacons
    page.close()


def test_access_token_goes_with_every_request_and_the_session_closes(server, browser) -> None:
    # A server without access control takes the field and ignores it (strict grammar).
    _token_goes_with_every_request(server, browser, "t0k3n")


def test_the_viewer_with_a_real_token_against_access_control(guarded, browser) -> None:
    server, log, secret = guarded
    target = "corpus/p0_04.j2k"
    token = mint(secret, aud=None, targets=["corpus/p0_0*.j2k"])
    _token_goes_with_every_request(server, browser, token, target)
    # Without a token, or with one for other targets, the page itself is refused.
    context = browser.new_context()
    try:
        tab = context.new_page()
        assert tab.goto(f"{server}/viewer?target={target}").status == 401
        other = mint(secret, aud=None, targets=["interop/*"])
        assert tab.goto(f"{server}/viewer?target={target}&access_token={other}").status == 403
        # The listing shows what the token allows, and nothing else.
        tab.goto(f"{server}/viewer/browse?dir=corpus&access_token={token}")
        names = tab.locator("tbody a").all_inner_texts()
        assert "p0_04.j2k" in names and "file1.jp2" not in names and len(names) >= 3
    finally:
        context.close()
    time.sleep(0.2)  # the last access-log lines
    text = log.read_text()
    assert "access_token=[redacted]" in text and "subject=alice" in text
    assert token not in text and other not in text


def _gauge(server: str, name: str) -> float:
    text = urllib.request.urlopen(f"{server}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_page_works_under_its_own_csp(server, browser, tmp_path) -> None:
    """No evaluate() here (the page's CSP forbids eval): the page must come up, decode in its
    worker and draw, under the policy it is served with."""
    solar = "corpus/2022_04_01__00_00_45__SOLO-EUI-FSI_EUI_FSI_174.jp2"  # 3040 x 3072
    page = Page(browser, f"{server}/viewer?target={solar}", csp_bypass=False)
    p = page.page
    p.wait_for_selector("body[data-state=idle]", timeout=TIMEOUT_MS)
    box = p.locator("canvas#view").bounding_box()
    x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.53  # the sun's limb
    p.mouse.move(x, y)
    for _ in range(2):
        p.mouse.wheel(0, -300)
    p.wait_for_selector("body[data-state=idle]", timeout=TIMEOUT_MS)
    assert "resolution" in p.inner_text("#overlay")
    png = p.screenshot()
    assert _not_blank(png) > 10.0
    target = os.environ.get("JPIP_VIEWER_SCREENSHOT")
    if target:
        _save_screenshot(png, Path(target))
    page.close()


def _save_screenshot(png: bytes, path: Path) -> None:
    """The README's screenshot: the page at 640 pixels wide, in grey (as the image is) to stay
    small."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((640, round(img.height * 640 / img.width)), Image.Resampling.LANCZOS)
    img.convert("L").save(path, optimize=True)


# ----- the listing ---------------------------------------------------------------------------

def test_listing_pages_and_api(server) -> None:
    with urllib.request.urlopen(f"{server}/api/targets?dir=corpus", timeout=5) as r:
        body = json.load(r)
    names = [e["name"] for e in body["entries"]]
    assert "file1.jp2" in names and "MANIFEST.md" not in names and body["pages"] == 1
    entry = next(e for e in body["entries"] if e["name"] == "file1.jp2")
    assert entry["size"] == (CORPUS / "file1.jp2").stat().st_size
    assert entry["path"] == "corpus/file1.jp2" and entry["folder"] is False
    with urllib.request.urlopen(f"{server}/", timeout=5) as r:
        html = r.read().decode()
    assert 'href="/viewer/browse?dir=corpus"' in html
