"""The `jpip` command: fetch windows and inspect targets over JPIP, and prepare files to serve."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = text.split(",")
        return int(a), int(b)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected W,H, got {text!r}") from e


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
    if image.dtype == np.uint8:
        Image.fromarray(image).save(path)
    elif image.ndim == 2 and image.dtype in (np.uint16, np.int16):
        Image.fromarray(image.astype(np.uint16)).save(path)
    elif image.ndim == 2:
        Image.fromarray(image.astype(np.int32)).save(path)
    else:
        raise SystemExit(f"cannot write {image.dtype} with {image.shape[-1]} channels to "
                         f"{suffix}: use .tiff or .npy")


async def _fetch(args) -> int:
    from .api import JPIPClient
    from .bincache import BinCache
    cache = None
    if args.cache and Path(args.cache).exists():
        cache = BinCache.load(Path(args.cache))
    progress = _Progress(not args.quiet)
    raw = bytearray()
    async with JPIPClient(args.url, stateless=args.stateless, cache=cache) as client:
        if args.save_stream:
            client.raw_sink = raw
        fsiz = args.fsiz
        if fsiz is None:
            await client.fetch(length=0)
            info = client.cache.stream(client.codestream_id(args.stream)).main_header
            from .decode import header_info
            hi = header_info(bytes(info.data))
            fsiz = (hi.width, hi.height)
        window = dict(fsiz=fsiz, round=args.round, roff=args.roff, rsiz=args.rsiz,
                      layers=args.layers, comps=args.comps, stream=args.stream)
        stats = []
        for _ in range(args.max_requests):
            st = await client.fetch(length=args.len, progress=progress, **window)
            stats.append(st)
            if st.eor in (1, 2) or args.len is not None and args.once:
                break
        progress.done()
        arrays = client.decode(fsiz=fsiz, round=args.round, roff=args.roff, rsiz=args.rsiz,
                               layers=args.layers, stream=args.stream, comps=args.comps)
        if args.output:
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
                "bins": sum(len(s.precincts) for s in client.cache.streams.values()),
                "eor": int(stats[-1].eor) if stats[-1].eor is not None else None,
                "ttfb_ms": round(stats[0].ttfb * 1000, 2),
                "seconds": round(sum(s.seconds for s in stats), 4),
                "duplicate_bytes": client.cache.duplicate_bytes,
                "shape": [list(a.shape) for a in arrays],
            }, indent=2))
    return 0


async def _info(args) -> int:
    from .api import JPIPClient
    from .decode import header_info
    async with JPIPClient(args.url) as client:
        # The smallest window there is (one sample of the lowest resolution, one layer) brings
        # the main header and metadata-bin 0 at the cost of a few precinct bytes.
        await client.fetch(fsiz=(1, 1), rsiz=(1, 1), layers=1, metareq="[*]")
        hi = header_info(bytes(client.cache.stream(client.codestream_id(0)).main_header.data))
        siz = hi.siz
        meta = client.cache.metadata.get(0)
        out = {
            "width": siz.width, "height": siz.height, "components": siz.num_components,
            "bit_depths": [c.precision for c in siz.components],
            "signed": [c.signed for c in siz.components],
            "subsampling": [[c.dx, c.dy] for c in siz.components],
            "tiles": siz.num_tiles, "levels": hi.levels, "layers": hi.layers,
            "progression": ["LRCP", "RLCP", "RPCL", "PCRL", "CPRL"][hi.progression],
            "metadata_bytes": len(meta.data) if meta else 0,
            "target_id": client.tid,
        }
        print(json.dumps(out, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jpip", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fetch", help="fetch a view-window and save its pixels")
    f.add_argument("url", help="http://host:port/jpip?target=FILE or http://host:port/FILE")
    f.add_argument("--fsiz", type=_pair, help="frame size W,H (default: full resolution)")
    f.add_argument("--round", default="round-down", choices=["round-down", "round-up", "closest"])
    f.add_argument("--roff", type=_pair)
    f.add_argument("--rsiz", type=_pair)
    f.add_argument("--layers", type=int)
    f.add_argument("--comps", help="components, e.g. 0-2 or 0,3")
    f.add_argument("--stream", type=int, default=0, help="codestream (JPX frames)")
    f.add_argument("--len", type=int, help="byte limit per request")
    f.add_argument("--once", action="store_true", help="one request only (with --len)")
    f.add_argument("--max-requests", type=int, default=100)
    f.add_argument("--stateless", action="store_true", help="no session: send model= instead")
    f.add_argument("--cache", help="load/save the client cache from/to this file")
    f.add_argument("-o", "--output", help="PNG, TIFF or NPY (by extension)")
    f.add_argument("--save-stream", help="also keep the raw JPP-stream (see --stats)")
    f.add_argument("--stats", action="store_true", help="print messages, bytes, EOR, timings")
    f.add_argument("-q", "--quiet", action="store_true")

    i = sub.add_parser("info", help="what the server says of a target")
    i.add_argument("url")

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
        from filetools.addplt import add_addplt_arguments
        add_addplt_arguments(sub.add_parser("add-plt", help="add PLT markers without re-encoding"))
    except ImportError:
        pass
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fetch":
            return asyncio.run(_fetch(args))
        if args.command == "info":
            return asyncio.run(_info(args))
        if args.command == "prepare":
            from filetools.prepare import run_prepare
            return run_prepare(args)
        if args.command == "inspect":
            from filetools.inspect import run_inspect
            return run_inspect(args)
        if args.command == "add-plt":
            from filetools.addplt import run_addplt
            return run_addplt(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a CLI: one clear line, not a traceback
        print(f"jpip {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
