"""The full-size reliability runs (the tests run smaller ones): `python -m tests.reliability`

    soak [--seconds 600]          64 clients against a server process (make soak)
    requests [--requests 100000]  generated requests against a server process (make fuzz-requests)
    corrupt                       every damaged variant of every corpus file and of two DICOM
                                  objects served through the app (make corrupt-sweep)

Each prints its report and exits 1 if anything it checks failed.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def _verdict(text: str, check: Callable[[], None]) -> int:
    """Prints a run's report, then its checks' verdict: the exit status."""
    print(text)
    try:
        check()
    except AssertionError as e:
        print(f"FAILED: {e}")
        return 1
    return 0


def _soak(args: argparse.Namespace) -> int:
    from tests.reliability.soak import run

    report = run(args.seconds, seed=args.seed)
    return _verdict(report.text(), report.check)


def _requests(args: argparse.Namespace) -> int:
    from tests.reliability.request_fuzz import check, fuzz, fuzz_root, server_errors
    from tests.server_process import running_server

    async def go(tmp: Path):
        root = tmp / "root"
        root.mkdir()
        targets, dicom = fuzz_root(root)
        with running_server(root, "--max-sessions", "64", "--response-cache-bytes",
                            str(1 << 20), index_cache=tmp / "ix") as server:
            report = await fuzz(server.port, server.proc.pid, args.requests, seed=args.seed,
                                targets=targets, dicom_targets=dicom)
            if server.proc.poll() is not None:
                report.tally.fail("the server exited")
            report.server_errors = server_errors(server.log.read_text(errors="replace"))
        return report

    with tempfile.TemporaryDirectory(prefix="jpip-fuzz-") as tmp:
        report = asyncio.run(go(Path(tmp)))
    return _verdict(report.text(), lambda: check(report))


def _corrupt(args: argparse.Namespace) -> int:
    from tests.reliability.corrupt_served import dicom_cases, jpeg2000_cases, summary, sweep
    from tests.reliability.harness import running_app

    async def go(tmp: Path):
        root = tmp / "root"
        root.mkdir()
        cases = jpeg2000_cases() + dicom_cases(tmp)
        async with running_app(root, index_cache_dir=tmp / "ix") as app:
            return await sweep(app.url, root, cases), app.log.errors()

    with tempfile.TemporaryDirectory(prefix="jpip-corrupt-") as tmp:
        outcomes, errors = asyncio.run(go(Path(tmp)))
    print(summary(outcomes))
    failures = [str(o) for o in outcomes if not o.accepted] + errors
    for line in failures[:50]:
        print(f"FAILED: {line}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("soak", help="64 clients against a server process")
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=64)
    p.set_defaults(run=_soak)
    p = sub.add_parser("requests", help="generated requests against a server process")
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(run=_requests)
    p = sub.add_parser("corrupt", help="every damaged variant served through the app")
    p.set_defaults(run=_corrupt)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
