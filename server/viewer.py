"""The browser viewer, served by the server itself, and what it needs around JPIP.

Routes (set up by `setup_viewer`, before the path-form catch-all of server/app.py):
- `GET /` without a query (or with an `access_token` only): the targets under the root (HTML,
  folder by folder, paged); `GET /` with JPIP fields stays a JPIP request (`root_or_jpip`).
- `GET /viewer/browse?dir=D&page=N`: the same listing for any folder and page.
- `GET /viewer?target=NAME[&fsiz=&roff=&rsiz=&stream=]`: the viewer page (the built bundle's
  index.html; the page reads its parameters itself).
- `GET /viewer/<file>`: the bundle's files (JavaScript, worker, WebAssembly, CSS). Any other
  name under /viewer/ is a path-form JPIP target in a folder named "viewer".
- `GET /api/targets?dir=D&page=N`: the listing as JSON.
- `GET /api/info?target=NAME`: what the viewer needs before its first JPIP request.

The bundle is built from viewer/ by `make viewer` into server/viewer_static/ (package data, so
a wheel or an image carries it; no node at run time). Every decision whether a request may see
a target is server/access.py's `may_see`.
"""
from __future__ import annotations

import asyncio
import hashlib
import html
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import quote, urlencode

from aiohttp import web

from codestream.parse import main_header_coding
from server import access
from server.errors import ServiceUnavailable
from server.jpip_handler import STATE_KEY
from server.listing import Lister, ListingError, Page
from server.targets import resolve_target

STATIC_DIR = Path(__file__).resolve().parent / "viewer_static"
CONTENT_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                 ".css": "text/css", ".html": "text/html", ".png": "image/png",
                 ".svg": "image/svg+xml", ".json": "application/json",
                 ".map": "application/json"}
LISTER_KEY = web.AppKey("viewer_lister", Lister)
POOL_KEY = web.AppKey("viewer_pool", ThreadPoolExecutor)
FS_TIMEOUT = 10.0  # seconds a listing or a target check may wait on the disk
FS_RETRY_AFTER = 5
PAGE_SECURITY = {
    # The page's own scripts, its worker and the WebAssembly compiled from the bundle only.
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
                               "worker-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'self'",
    # A viewer URL may carry an access token: never send it on as a referrer.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def setup_viewer(app: web.Application, config, path_form: web.Handler) -> None:
    """Adds the viewer's routes; `path_form` serves /viewer/<name> names that are not ours."""
    app[LISTER_KEY] = Lister(Path(config.root))
    app.cleanup_ctx.append(_pool)
    router = app.router
    router.add_get("/viewer", viewer_page)
    router.add_get("/viewer/browse", browse_page)
    router.add_get("/{target:viewer/[^/]+}", partial(viewer_asset, path_form=path_form))
    router.add_get("/api/targets", api_targets)
    router.add_get("/api/info", api_info)


def root_or_jpip(jpip: web.Handler) -> web.Handler:
    """`/`: the listing when asked without a query (GET, HEAD), else a JPIP request."""

    async def root(request: web.Request) -> web.StreamResponse:
        if request.method in ("GET", "HEAD") and _no_jpip_fields(
                request.rel_url.raw_query_string):
            return await _listing_page(request, "", 1)
        return await jpip(request)

    return root


def _no_jpip_fields(query: str) -> bool:
    """No query, or only an access token (a listing's URL with its token)."""
    return all(pair.partition("=")[0] == "access_token" for pair in query.split("&") if pair)


async def _pool(app: web.Application) -> AsyncIterator[None]:
    # Our own threads: a folder on a hung mount must not hold the default pool's threads,
    # which index builds use.
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="viewer-fs")
    app[POOL_KEY] = pool
    yield
    pool.shutdown(wait=False, cancel_futures=True)


async def _on_disk(request: web.Request, fn, *args):
    """Runs a blocking file-system call in the viewer's pool, with a deadline."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(
            loop.run_in_executor(request.app[POOL_KEY], fn, *args), FS_TIMEOUT)
    except TimeoutError:
        raise ServiceUnavailable(f"the image store did not answer in {FS_TIMEOUT:g} s",
                                 retry_after=FS_RETRY_AFTER) from None


def _target_field(request: web.Request) -> str:
    """The `target` a page or API request names, once the request may see it (401/403)."""
    access.authenticate(request)
    target = request.query.get("target")
    if not target:
        raise web.HTTPBadRequest(text="target: missing (give ?target=NAME)\n")
    access.require_target(request, target)
    return target


async def _resolve(request: web.Request, target: str) -> Path:
    """The file `target` names (404/415 for what is not served), if the request may see it
    (a link: where it leads)."""
    path = await _on_disk(request, resolve_target, request.app[STATE_KEY].root, target)
    access.require_path(request, path)
    return path


# ----- the page and its files ------------------------------------------------------------------

@dataclass(frozen=True)
class _Asset:
    body: bytes
    etag: str
    content_type: str
    mtime_ns: int


_ASSETS: dict[Path, _Asset] = {}


def _static(name: str) -> _Asset | None:
    """A file of the built bundle, by plain name only (no folders, no hidden files), kept in
    memory (the bundle is about 1 MB) and re-read when it changes (`make viewer`)."""
    if "/" in name or "\\" in name or name.startswith(".") or not name:
        return None
    path = STATIC_DIR / name
    if path.suffix not in CONTENT_TYPES:
        return None
    try:
        st = path.stat()  # the package's own folder: local, a cheap call
    except OSError:
        return None
    kept = _ASSETS.get(path)
    if kept is None or kept.mtime_ns != st.st_mtime_ns:
        body = path.read_bytes()
        kept = _Asset(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"',
                      CONTENT_TYPES[path.suffix], st.st_mtime_ns)
        _ASSETS[path] = kept
    return kept


def _serve_asset(request: web.Request, asset: _Asset, headers: dict[str, str]) -> web.Response:
    headers = {**headers, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def _not_built() -> web.Response:
    return web.Response(status=503, text="the viewer is not built: run `make viewer` (it needs "
                        "node and npm)\n", headers={"Retry-After": "60"})


async def viewer_page(request: web.Request) -> web.StreamResponse:
    target = request.query.get("target")
    if not target:
        raise web.HTTPFound("/")
    await _resolve(request, _target_field(request))
    page = _static("index.html")
    if page is None:
        return _not_built()
    resp = _serve_asset(request, page, PAGE_SECURITY)
    resp.content_type, resp.charset = "text/html", "utf-8"
    return resp


async def viewer_asset(request: web.Request, path_form: web.Handler) -> web.StreamResponse:
    name = request.match_info["target"].split("/", 1)[1]
    asset = _static(name)
    if asset is None:
        if not STATIC_DIR.is_dir() and name.endswith((".js", ".wasm", ".css")):
            return _not_built()
        return await path_form(request)  # e.g. a target "viewer/a.jp2" under the root
    return _serve_asset(request, asset, {"Cache-Control": "no-cache",
                                         "X-Content-Type-Options": "nosniff"})


# ----- target information ----------------------------------------------------------------------

def _is_dicom(source) -> bool:
    view = getattr(source, "view", None)
    return view is not None and len(view) >= 132 and bytes(view[128:132]) == b"DICM"


async def api_info(request: web.Request) -> web.Response:
    target = _target_field(request)
    state = request.app[STATE_KEY]
    path = await _resolve(request, target)
    source = await state.index_cache.aget(path)
    ix = source.codestreams[0]
    siz = ix.siz
    coding = main_header_coding(source.main_header_bin(0))
    dicom = _is_dicom(source)
    body = {
        "target": target,
        "target_id": source.identity.target_id,
        "file_bytes": source.identity.size,
        "jpip_path": state.jpip_path,
        "codestreams": len(source.codestreams),
        "first_codestream": int(getattr(source, "first_codestream", 0)),
        "dicom": dicom,
        "dicom_json": "/dicom-json?" + urlencode({"target": target}) if dicom else None,
        "width": siz.width,
        "height": siz.height,
        "offset": [siz.xosiz, siz.yosiz],
        "components": [{"precision": c.precision, "signed": c.signed, "dx": c.dx, "dy": c.dy}
                       for c in siz.components],
        "bit_depth": max(c.precision for c in siz.components),
        "signed": any(c.signed for c in siz.components),
        "levels": ix.max_discard,
        "min_levels": int(ix.tcr["levels"].min()) if len(ix.tcr["levels"]) else 0,
        "layers": ix.max_layers,
        "tiles": [siz.tiles_x, siz.tiles_y],
        "tile_size": [siz.xtsiz, siz.ytsiz],
        "htj2k": coding.ht,
        "reversible": bool(ix.tcr["reversible"].all()) if len(ix.tcr["reversible"]) else True,
        "mct": bool(ix.tile_mct.any()),
        "progression": ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL")[coding.progression],
    }
    return web.json_response(body, headers={"Cache-Control": "no-cache"})


# ----- the listing -----------------------------------------------------------------------------

def _page_number(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 10**9:
        raise web.HTTPBadRequest(text="page: a positive integer\n")
    return int(raw)


async def _page(request: web.Request, folder: str, number: int) -> Page:
    access.authenticate(request)  # here, not in the listing's thread
    lister = request.app[LISTER_KEY]
    try:
        return await _on_disk(request, lister.page, folder, number,
                              partial(access.may_see, request))
    except ListingError as e:
        cls = web.HTTPForbidden if e.status == 403 else web.HTTPNotFound
        raise cls(text=f"dir: {e.reason}\n") from None


async def api_targets(request: web.Request) -> web.Response:
    page = await _page(request, request.query.get("dir", ""), _page_number(request))
    body = {"dir": page.folder, "page": page.number, "pages": page.pages, "total": page.total,
            "truncated": page.truncated,
            "entries": [{"path": e.path, "name": e.name, "folder": e.is_dir, "size": e.size}
                        for e in page.entries]}
    return web.json_response(body, headers={"Cache-Control": "no-cache"})


async def browse_page(request: web.Request) -> web.StreamResponse:
    return await _listing_page(request, request.query.get("dir", ""), _page_number(request))


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


async def _listing_page(request: web.Request, folder: str, number: int) -> web.Response:
    page = await _page(request, folder, number)
    token = request.query.get("access_token")
    extra = {"access_token": token} if token else {}

    def browse(folder: str, number: int = 1) -> str:
        query = {"dir": folder, **({"page": str(number)} if number > 1 else {}), **extra}
        return "/viewer/browse?" + urlencode(query) if folder or number > 1 or extra else "/"

    esc = html.escape
    rows = []
    if page.folder:
        parent = page.folder.rsplit("/", 1)[0] if "/" in page.folder else ""
        rows.append(f'<tr><td><a href="{esc(browse(parent))}">..</a></td><td></td></tr>')
    for e in page.entries:
        if e.is_dir:
            link = browse(e.path)
            rows.append(f'<tr class="folder"><td><a href="{esc(link)}">{esc(e.name)}/</a></td>'
                        '<td></td></tr>')
        else:
            link = "/viewer?" + urlencode({"target": e.path, **extra}, safe="/", quote_via=quote)
            rows.append(f'<tr><td><a href="{esc(link)}">{esc(e.name)}</a></td>'
                        f'<td class="size">{_size(e.size)}</td></tr>')
    nav = []
    if page.number > 1:
        nav.append(f'<a rel="prev" href="{esc(browse(page.folder, page.number - 1))}">previous</a>')
    nav.append(f"page {page.number} of {page.pages} ({page.total} entries"
               f"{', folder listed in part' if page.truncated else ''})")
    if page.number < page.pages:
        nav.append(f'<a rel="next" href="{esc(browse(page.folder, page.number + 1))}">next</a>')
    title = f"/{page.folder}" if page.folder else "/"
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>JPEG 2000 images: {esc(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/viewer/viewer.css"></head>
<body class="listing"><main>
<h1>JPEG 2000 images in {esc(title)}</h1>
<table><thead><tr><th>name</th><th>size</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
<nav>{" &middot; ".join(nav)}</nav>
<p class="about">Served over JPIP (ISO/IEC 15444-9); click an image to view it.</p>
</main></body></html>
"""
    # A page whose links carry the token is kept by no cache.
    headers = {**PAGE_SECURITY, "Cache-Control": "no-store"} if extra else PAGE_SECURITY
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers=headers)
