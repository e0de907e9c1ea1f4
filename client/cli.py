"""The `jpip` command: fetch windows and inspect targets over JPIP, and prepare files to serve.

Exit status: 0 done, 1 the request or the decoding failed (the server's answer, the network)
or an optional dependency is not installed, 2 a usage mistake found before anything was sent
(an option, the URL, an output path), 3 `jpip fetch` wrote what --max-requests or --once let
through of a window left incomplete (a warning says so), 130 interrupted, 141 the output pipe
was closed (e.g. `| head`).
Every failure is one line on stderr that says what to do.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3  # `jpip fetch`: a request limit left the window incomplete; written anyway
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
OUTPUT_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".dcm")
ROUNDINGS = ("round-down", "round-up", "closest")


class UsageError(Exception):
    """A mistake in the command line, found before anything is sent (exit status 2)."""


# --- option values --------------------------------------------------------------------------
def _pair_type(least: int, what: str):
    def parse(text: str) -> tuple[int, int]:
        try:
            a, b = (int(v) for v in text.split(","))
        except ValueError:
            a = b = least - 1
        if a < least or b < least:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return a, b
    return parse


def _int_type(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
        return value
    return parse


def _comps_type(text: str) -> str:
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", text):
        raise argparse.ArgumentTypeError(f"expected component numbers such as 0-2 or 0,3, "
                                         f"got {text!r}")
    return text


_size = _pair_type(1, "a size W,H of integers from 1")
_offset = _pair_type(0, "an offset X,Y of integers from 0")
PAIR_OPTIONS = ("--fsiz", "--roff", "--rsiz")


def _join_negative_pairs(argv: list[str]) -> list[str]:
    """`--fsiz -5,10` -> `--fsiz=-5,10`, so the value reaches its check instead of argparse
    taking it for an option ("expected one argument")."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in PAIR_OPTIONS:
            value = next(it, None)
            if value is not None and re.fullmatch(r"-\d[\d,-]*", value):
                out.append(f"{arg}={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


# --- the window the user asks for: options, then fields in the URL ----------------------------
def _window_from_url(args: argparse.Namespace, fields: dict[str, str]) -> None:
    """Fills options left unset from the URL's window fields (the command line wins)."""
    def parsed(name: str, parse, text: str):
        try:
            return parse(text)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"the URL's {name}={text}: {e}") from None

    if "fsiz" in fields and args.fsiz is None:
        parts = fields["fsiz"].split(",")  # W,H or W,H,ROUNDING
        rounding = parts[2] if len(parts) == 3 else None
        if rounding is not None and rounding not in ROUNDINGS:
            raise UsageError(f"the URL's fsiz={fields['fsiz']}: the rounding must be one of "
                             f"{', '.join(ROUNDINGS)}")
        args.fsiz = parsed("fsiz", _size, ",".join(parts[:2]) if rounding else fields["fsiz"])
        if rounding is not None and args.round is None:
            args.round = rounding
    for name, parse in (("roff", _offset), ("rsiz", _size), ("layers", _int_type(1)),
                        ("comps", _comps_type), ("stream", _int_type(0)), ("len", _int_type(0))):
        if name in fields and getattr(args, name) is None:
            setattr(args, name, parsed(name, parse, fields[name]))


def _check_output(option: str, path: str | None, suffixes: tuple[str, ...] = ()) -> None:
    """Refuses an output the command could not write, before the download."""
    from filetools.outputs import output_problem  # standard library only
    if path is None:
        return
    if suffixes and Path(path).suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: the extension chooses the format; use "
                         f"{', '.join(suffixes)}")
    if problem := output_problem(path):
        raise UsageError(f"{option} {path}: {problem}")


class _Progress:
    """A one-line progress display on a terminal (silent otherwise)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()

    def __call__(self, nbytes: int) -> None:
        if self.enabled:
            sys.stderr.write(f"\r  received {nbytes / 1e6:8.2f} MB")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def save_array(path: Path, arrays: list[np.ndarray]) -> None:
    from .decode import to_image
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, to_image(arrays))
        return
    image = to_image(arrays)
    if suffix in (".tif", ".tiff"):
        import tifffile
        tifffile.imwrite(path, image)
        return
    from PIL import Image
    if image.dtype.kind == "i":
        raise UsageError(f"-o {path}: {PNG_SIGNED}")
    if image.dtype == np.uint8:
        Image.fromarray(image).save(path, format="PNG")
    elif image.ndim == 2 and image.dtype == np.uint16:
        Image.fromarray(image).save(path, format="PNG")
    else:
        raise UsageError(f"-o {path}: PNG cannot hold {image.dtype} samples with "
                         f"{1 if image.ndim == 2 else image.shape[-1]} channel(s) (it holds "
                         "8 bits, or 16-bit grey): use .tif or .npy")


PNG_SIGNED = "the image has signed samples, which PNG cannot hold: use .tif or .npy"


def _cached_header(client, stream: int | None):
    """What the main header says, if the client holds it already (None otherwise)."""
    from .decode import header_info
    s = client.cache.streams.get(client.codestream_id(stream))
    if s is None or not s.main_header.complete:
        return None
    return header_info(bytes(s.main_header.data))


def _refuse_signed_png(output: str | None, info) -> None:
    """PNG holds unsigned samples only: refused as soon as the main header says the image is
    signed (before the window's data when the header came first), never written inverted."""
    if info is not None and output and Path(output).suffix.lower() == ".png" and \
            any(c.signed for c in info.siz.components):
        raise UsageError(f"-o {output}: {PNG_SIGNED}")


# --- commands ---------------------------------------------------------------------------------
def _start(given: str):
    """The URL to fetch from, and the dataset of the JPIP-referenced DICOM file it came from
    (None when a URL was given)."""
    from .url import parse_url

    if "://" not in given and Path(given).is_file():
        from .dicom import DicomClientError, is_dicom_file, reference_dataset
        if not is_dicom_file(given):
            raise DicomClientError(f"{given} is a file, not a URL: give a URL or a "
                                   "JPIP-referenced DICOM file (jpip dicom-ref writes them)")
        reference = reference_dataset(given)
        return parse_url(str(reference.PixelDataProviderURL).strip()), reference
    return parse_url(given), None


async def _fetch(args) -> int:
    from .api import JPIPClient, WindowError
    from .bincache import BinCache, StreamError

    url, reference = _start(args.url)
    _window_from_url(args, url.window)
    args.round = args.round or "round-down"
    _check_output("-o", args.output, OUTPUT_SUFFIXES)
    _check_output("--save-stream", args.save_stream)
    _check_output("--cache", args.cache)
    cache = None
    if args.cache and Path(args.cache).exists():
        cache = BinCache.load(Path(args.cache))
    progress = _Progress(not args.quiet)
    raw = bytearray()
    async with JPIPClient(url.target_only(), stateless=args.stateless, cache=cache,
                          token=_token(args), stream_type=args.type) as client:
        if args.save_stream:
            client.raw_sink = raw
        fsiz = args.fsiz
        if fsiz is None:  # full resolution: the main header says how large that is
            info = await client.header_info(args.stream)
            fsiz = (info.width, info.height)
        _refuse_signed_png(args.output, _cached_header(client, args.stream))
        window = dict(fsiz=fsiz, round=args.round, roff=args.roff, rsiz=args.rsiz,
                      comps=args.comps, stream=args.stream)
        if client.cache.streams.get(client.codestream_id(args.stream)) is not None and \
                client.cache.stream(client.codestream_id(args.stream)).main_header.complete:
            client.check_window(**window)  # before asking for bytes we could not use
        stats = []
        for _ in range(args.max_requests):
            st = await client.fetch(length=args.len, layers=args.layers, progress=progress,
                                    **window)
            stats.append(st)
            if st.eor in (1, 2) or args.len is not None and args.once:
                break
        progress.done()
        _refuse_signed_png(args.output, _cached_header(client, args.stream))
        complete = stats[-1].eor in (1, 2)  # image done, or window done
        try:
            arrays = client.decode(layers=args.layers, **window)
        except WindowError:
            raise
        except Exception as e:
            if complete:
                raise
            # What was received does not decode: the cause is the limit, not the data.
            raise StreamError(f"{_incomplete(args, stats)}: too little to decode; "
                              f"{_more(args)}") from e
        if args.output and Path(args.output).suffix.lower() == ".dcm":
            await _save_dicom(Path(args.output), client, url, reference, arrays, args, window)
        elif args.output:
            save_array(Path(args.output), arrays)
        if args.cache:
            client.cache.save(Path(args.cache))
        if args.save_stream:
            Path(args.save_stream).write_bytes(bytes(raw))
        if args.stats:
            total = sum(s.bytes for s in stats)
            print(json.dumps({
                "requests": len(stats), "bytes": total,
                "messages": sum(s.messages for s in stats),
                "bins": sum(len(s.precincts) + len(s.tiles)
                            for s in client.cache.streams.values()),
                "eor": int(stats[-1].eor) if stats[-1].eor is not None else None,
                "ttfb_ms": round(stats[0].ttfb * 1000, 2),
                "seconds": round(sum(s.seconds for s in stats), 4),
                "duplicate_bytes": client.cache.duplicate_bytes,
                "shape": [list(a.shape) for a in arrays],
            }, indent=2))
    if not (args.output or args.save_stream or args.cache or args.stats):
        rows, cols = arrays[0].shape[:2]
        print(f"jpip fetch: fetched and decoded {cols}x{rows} samples, saved nothing: give "
              "-o FILE to save them", file=sys.stderr)
    if not complete:
        what = "the image written holds" if args.output else "the window decoded holds"
        print(f"jpip fetch: warning: {_incomplete(args, stats)}: {what} only that; "
              f"{_more(args)}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


def _incomplete(args, stats) -> str:
    """What a byte or request limit left of the window, e.g. after `--len 100 --once`."""
    n = len(stats)
    limit = "--once" if args.once and args.len is not None and n == 1 else \
        f"--max-requests {args.max_requests}"
    got = sum(s.bytes for s in stats)
    return (f"the window is not complete after {n} request{'s' if n > 1 else ''} ({limit}"
            + (f", --len {args.len}" if args.len is not None else "")
            + f"): {got} bytes received")


def _more(args) -> str:
    if args.once and args.len is not None:
        return "leave out --once, or raise --len"
    return "raise --max-requests" + (" or --len" if args.len is not None else "")


async def _save_dicom(path: Path, client, url, reference, arrays, args, window) -> None:
    """The window as a DICOM file: the attributes of the referenced object, or of the
    target's DICOM JSON when the target is a DICOM file, or a Secondary Capture."""
    from .dicom import WindowGeometry, fetch_dataset, save_window, window_dataset

    source = reference if reference is not None else await fetch_dataset(
        url.target_only(), token=_token(args))
    info = await client.header_info(args.stream)
    reg = client.region(window["fsiz"], args.round, args.roff, args.rsiz, args.stream)
    siz = info.siz
    step = 1 << reg.discard
    x0, y0 = reg.region[:2]
    column = (-(-x0 // step) - -(-siz.xosiz // step)) * step
    row = (-(-y0 // step) - -(-siz.yosiz // step)) * step
    frame = client.codestream_id(args.stream) if source is not None and \
        int(source.get("NumberOfFrames", 1) or 1) > 1 else 1
    layers = args.layers if args.layers and args.layers < info.layers else None
    rows, cols = arrays[0].shape[:2]
    what = (f"JPIP window of frame {frame}: {cols}x{rows} samples at resolution 1/{step}, "
            f"from pixel ({column},{row}) of the {siz.width}x{siz.height} frame"
            + (f", {layers} of {info.layers} quality layers" if layers else "")
            + " (jpip fetch)")
    comp = siz.components[0]
    ds = window_dataset(source, arrays, precision=comp.precision, signed=comp.signed,
                        geometry=WindowGeometry(reg.discard, column, row, frame),
                        lossy=layers is not None, description=what)
    save_window(path, ds)


async def _info(args) -> int:
    from .api import JPIPClient

    url, _ = _start(args.url)  # window fields in the URL do not matter here
    async with JPIPClient(url.target_only(), token=_token(args)) as client:
        hi = await client.header_info(None, metareq="[*]")
        siz = hi.siz
        out = {
            "width": siz.width, "height": siz.height, "components": siz.num_components,
            "bit_depths": [c.precision for c in siz.components],
            "signed": [c.signed for c in siz.components],
            "subsampling": [[c.dx, c.dy] for c in siz.components],
            "tiles": siz.num_tiles, "levels": hi.levels, "layers": hi.layers,
            "progression": ["LRCP", "RLCP", "RPCL", "PCRL", "CPRL"][hi.progression],
            "metadata_bytes": sum(len(b.data) for b in client.cache.metadata.values()),
            "target_id": client.tid,
        }
        print(json.dumps(out, indent=2))
    return 0


TOKEN_ENV = "JPIP_TOKEN"
# How the server's 401 says to send a token (server/access.py).
SERVER_TOKEN_ADVICE = "send Authorization: Bearer <token>, or access_token=<token>"


def _token(args) -> str | None:
    """--token, else $JPIP_TOKEN (kept out of process listings), else none (an access_token
    in the URL is then used)."""
    return args.token or os.environ.get(TOKEN_ENV) or None


def _add_token_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", metavar="TOKEN",
                        help="access token for a server with access control, sent as "
                             f"Authorization: Bearer (default: ${TOKEN_ENV}, which other users "
                             "cannot see in the process list)")


def _box_type(text: str) -> bytes:
    """A box type as typed: 'xml', 'xml ' and 'xml_' all name the XML box."""
    raw = text.replace("_", " ")
    if not 1 <= len(raw) <= 4 or not raw.isascii() or not raw.isprintable():
        raise UsageError(f"--box {text!r}: a box type is up to 4 printable ASCII characters "
                         "(e.g. xml, uuid, 'res ')")
    return raw.ljust(4).encode("ascii")


def _tree_lines(boxes, depth: int = 0) -> list[str]:
    out = []
    for box in boxes:
        where = []
        if box.codestream is not None:
            where.append(f"codestream {box.codestream}")
        elif box.contents_bin is not None:
            held = "" if box.complete or box.children is not None else ", not fetched"
            where.append(f"contents in metadata-bin {box.contents_bin}{held}")
        length = "to the end" if box.length == 0 else f"{box.length} bytes"
        line = f"{'  ' * depth}{box.type_name!r:8} {length}"
        out.append(line + (f"  ({'; '.join(where)})" if where else ""))
        out.extend(_tree_lines(box.children or [], depth + 1))
    return out


async def _meta(args) -> int:
    from .api import JPIPClient
    from .bincache import StreamError
    from .metadata import box_bytes, find_boxes

    url, _ = _start(args.url)
    _check_output("-o", args.output)
    async with JPIPClient(url.target_only(), token=_token(args)) as client:
        if args.box is None:
            tree = await client.boxes()
            if not tree:
                print("(no boxes: the target is a raw codestream)")
            for line in _tree_lines(tree):
                print(line)
            return 0
        box_type = _box_type(args.box)
        code = box_type.decode("ascii").replace(" ", "_")
        tree = await client.boxes(f"[{code}/a]")
        found = find_boxes(tree, box_type)
        if args.index >= len(found):
            have = f"{len(found)} such box{'es' if len(found) != 1 else ''}"
            raise UsageError(f"--box {args.box!r} --index {args.index}: the target has {have}")
        box = found[args.index]
        if box.codestream is not None:
            raise UsageError(f"--box {args.box!r}: that box is codestream {box.codestream}; "
                             "fetch its pixels with jpip fetch --stream")
        whole = box_bytes(box)
        if whole is None:
            raise StreamError(f"the server did not send all of the {box.type_name!r} box")
        contents = whole[len(box.header):]
        if args.output:
            Path(args.output).write_bytes(contents)
        else:
            sys.stdout.buffer.write(contents)
            sys.stdout.flush()
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("jpip-server")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: run from a source tree)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jpip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"jpip {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    f = sub.add_parser(
        "fetch", help="fetch a view-window and save its pixels",
        description="Fetch a view-window of a JPEG 2000 image from a JPIP server and save its "
                    "pixels. Window fields may also be written in the URL "
                    "(...&fsiz=640,480&roff=...): the options below win over them.")
    f.add_argument("url", help="http://HOST:PORT/jpip?target=FILE or http://HOST:PORT/FILE, "
                               "or a JPIP-referenced DICOM file (its Pixel Data Provider URL)")
    f.add_argument("--fsiz", type=_size, metavar="W,H",
                   help="frame size: the whole image scaled to about W×H; the resolution level "
                        "is chosen by --round (default: full resolution)")
    f.add_argument("--round", choices=ROUNDINGS, default=None,
                   help="which resolution level --fsiz picks: the largest not above W×H "
                        "(round-down, the default), the smallest not below (round-up), or the "
                        "nearest in area (closest)")
    f.add_argument("--roff", type=_offset, metavar="X,Y",
                   help="region offset within the frame (default: 0,0)")
    f.add_argument("--rsiz", type=_size, metavar="W,H",
                   help="region size within the frame (default: to the frame's bottom-right)")
    f.add_argument("--layers", type=_int_type(1), metavar="N",
                   help="quality layers to fetch and decode (default: all)")
    f.add_argument("--comps", type=_comps_type, metavar="LIST",
                   help="components, e.g. 0-2 or 0,3 (default: all)")
    f.add_argument("--stream", type=_int_type(0), metavar="N",
                   help="codestream number (JPX files, from 0) or frame number (DICOM files, "
                        "from 1) (default: the first: codestream 0, frame 1)")
    f.add_argument("--len", type=_int_type(0), metavar="BYTES",
                   help="byte limit per request (the window then takes several requests)")
    f.add_argument("--once", action="store_true",
                   help="with --len: one request only (the window may stay incomplete: "
                        "see --max-requests)")
    f.add_argument("--max-requests", type=_int_type(1), default=100, metavar="N",
                   help="stop after N requests (default: 100). A window left incomplete is "
                        "written as far as received, with a warning and exit status 3; an "
                        "error (exit status 1) when too little came to decode")
    f.add_argument("--type", choices=("jpp-stream", "jpt-stream"), default=None,
                   help="the image data asked for: precinct data-bins (jpp-stream, the "
                        "default) or tile data-bins (jpt-stream)")
    f.add_argument("--stateless", action="store_true",
                   help="no session: every request describes the cache with model=")
    f.add_argument("--cache", metavar="FILE",
                   help="load the client cache from FILE (when it exists) and save it back: "
                        "what it holds is not sent again")
    f.add_argument("-o", "--output", metavar="FILE",
                   help="save the pixels as PNG, TIFF, NPY or DICOM, chosen by the extension "
                        "(.png, .tif/.tiff, .npy, .dcm; PNG holds unsigned 8-bit, or 16-bit "
                        "grey: signed data is refused, use TIFF, NPY or DICOM). A .dcm holds "
                        "the window with the attributes of the DICOM source (the referenced "
                        "object, or the target's /dicom-json). Without -o (nor --save-stream, "
                        "--cache or --stats) the window is fetched and decoded only, and a "
                        "line on stderr says so")
    f.add_argument("--save-stream", metavar="FILE",
                   help="also save the raw JPP-stream (or JPT-stream) received")
    f.add_argument("--stats", action="store_true",
                   help="print requests, bytes, messages, EOR and timings as JSON")
    f.add_argument("-q", "--quiet", action="store_true",
                   help="no progress display on the terminal")
    _add_token_option(f)

    i = sub.add_parser("info", help="what the server says of a target (JSON)",
                       description="Print what the main header of a target says (size, "
                                   "components, tiles, levels, layers) as JSON.")
    i.add_argument("url", help="http://HOST:PORT/jpip?target=FILE or http://HOST:PORT/FILE "
                               "(window fields in it are ignored), or a JPIP-referenced DICOM "
                               "file")
    _add_token_option(i)

    m = sub.add_parser(
        "meta", help="the boxes of a target, or one box's contents",
        description="Print the box tree the server exposes for a target (JP2/JPX boxes, as "
                    "its metadata-bins and placeholders deliver them), or with --box write "
                    "the contents of a box (the first of that type, or --index N).")
    m.add_argument("url", help="http://HOST:PORT/jpip?target=FILE or http://HOST:PORT/FILE")
    m.add_argument("--box", metavar="TYPE",
                   help="write the contents of a box of this type, e.g. xml, uuid, colr")
    m.add_argument("--index", type=_int_type(0), default=0, metavar="N",
                   help="with --box: the N-th box of that type in file order (default: 0)")
    m.add_argument("-o", "--output", metavar="FILE",
                   help="with --box: write to FILE (default: standard output)")
    _add_token_option(m)

    try:
        from filetools.prepare import add_prepare_arguments
        add_prepare_arguments(sub.add_parser("prepare", help="encode a browse-efficient JP2"))
    except ImportError:
        pass
    try:
        from filetools.inspect import add_inspect_arguments
        add_inspect_arguments(sub.add_parser("inspect", help="report how well a file streams"))
    except ImportError:
        pass
    try:
        from filetools.dicomref import add_dicomref_arguments
        add_dicomref_arguments(sub.add_parser(
            "dicom-ref", help="write the JPIP-referenced DICOM object of a served file",
            description="Write the JPIP-referenced DICOM object (transfer syntax .94, or .204 "
                        "for HTJ2K) of a served DICOM or JPEG 2000 file: its dataset without "
                        "pixels, and a Pixel Data Provider URL pointing at this server."))
    except ImportError:
        pass
    try:
        from filetools.addplt import add_addplt_arguments
        add_addplt_arguments(sub.add_parser("add-plt", help="add PLT markers without re-encoding"))
    except ImportError:
        pass
    return p


# Modules of the optional extras (pyproject.toml), and the extra each command needs.
OPTIONAL_MODULES = {"glymur", "PIL", "tifffile", "packaging", "pylibjpeg", "openjpeg", "rle",
                    "gdcm"}
CLIENT_COMMANDS = ("fetch", "info", "meta")  # the `client` extra; the file tools: `tools`


def _missing_extra(exc: BaseException, command: str) -> str | None:
    """The one line for a missing optional dependency (a server-only install), or None."""
    if not isinstance(exc, ModuleNotFoundError) or exc.name is None or \
            exc.name.split(".")[0] not in OPTIONAL_MODULES:
        return None
    extra = "client" if command in CLIENT_COMMANDS else "tools"
    return (f"needs the {extra} extra (no module named {exc.name.split('.')[0]!r}): "
            f"pip install 'jpip-server[{extra}]'")


def _explain(exc: BaseException, command: str = "") -> tuple[str, int]:
    """One line for an error, and the exit status; no class names, a remedy where one exists."""
    if (missing := _missing_extra(exc, command)) is not None:
        return missing, EXIT_FAILED
    import aiohttp

    from codestream.errors import CodestreamError

    from .bincache import StreamError
    from .dicom import DicomClientError
    from .url import URLError
    try:
        from .api import WindowError  # imports glymur (the client extra)
    except ImportError:
        class WindowError(Exception):  # noqa: N818 - never raised without client.api
            pass

    if isinstance(exc, UsageError | URLError | DicomClientError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot find the host {exc.host!r}: check the URL", EXIT_FAILED
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (f"the TLS certificate of {exc.host}:{exc.port} is not trusted: "
                f"{exc.certificate_error}", EXIT_FAILED)
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return (f"the TLS handshake with {exc.host}:{exc.port} failed: if the server speaks "
                "plain HTTP, use http:// instead of https://", EXIT_FAILED)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return (f"cannot connect to {exc.host}:{exc.port}: is the server running?",
                EXIT_FAILED)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "the server closed the connection before the answer was complete", EXIT_FAILED
    if isinstance(exc, TimeoutError):
        return "no answer from the server in time", EXIT_FAILED
    if isinstance(exc, aiohttp.ClientError):
        return f"HTTP error: {exc}", EXIT_FAILED
    if isinstance(exc, WindowError | StreamError):
        # The server's advice is for any HTTP client; the command line has its own way.
        return str(exc).replace(SERVER_TOKEN_ADVICE, f"give --token TOKEN or set ${TOKEN_ENV}"), \
            EXIT_FAILED
    if isinstance(exc, CodestreamError):
        return f"the data received do not form a valid codestream: {exc}", EXIT_FAILED
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}", EXIT_FAILED
    return str(exc) or "unexpected error (a defect: please report it)", EXIT_FAILED


def _quiet_broken_pipe() -> int:
    # The reader went away (`jpip info ... | head -1`): stop quietly. Point stdout at
    # /dev/null so the interpreter's final flush does not complain again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    argv = _join_negative_pairs(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fetch":
            return asyncio.run(_fetch(args))
        if args.command == "info":
            return asyncio.run(_info(args))
        if args.command == "meta":
            return asyncio.run(_meta(args))
        if args.command == "prepare":
            from filetools.prepare import run_prepare
            return run_prepare(args)
        if args.command == "inspect":
            from filetools.inspect import run_inspect
            return run_inspect(args)
        if args.command == "dicom-ref":
            from filetools.dicomref import run_dicomref
            return run_dicomref(args)
        if args.command == "add-plt":
            from filetools.addplt import run_addplt
            return run_addplt(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except Exception as e:  # a CLI: one clear line, not a traceback
        message, status = _explain(e, args.command)
        print(f"jpip {args.command}: {message}", file=sys.stderr)
        return status
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
