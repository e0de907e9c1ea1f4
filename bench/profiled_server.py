"""Our server under pyinstrument, writing its profile when it stops (SIGTERM / SIGINT).

    python -m bench.profiled_server --profile-out STEM [--on-signal] -- [jpip-server flags ...]

With --on-signal sampling starts at the first SIGUSR1 (the benchmark sends it once the server
is warm), so start-up, the index load and one-off lazy imports stay out of the profile.

Writes STEM.txt (the call tree), STEM.html (pyinstrument's interactive view) and STEM.top.txt
(functions by self time and by inclusive time). Only the event loop thread is sampled: index
builds in worker threads are not in it, which is what the warm workloads want.

Time that uvloop spends waiting in epoll (or doing socket I/O in C) shows as the self time of
the Python frame that entered the loop (run_forever / run_until_complete / run_app).
"""
from __future__ import annotations

import argparse
import signal
import sys
from collections import defaultdict
from pathlib import Path

IDLE_FUNCTIONS = {"run_forever", "run_until_complete", "run_app", "run", "_run_once", "select"}


def _walk(frame, stack: list, self_t: dict, incl_t: dict) -> None:
    key = (frame.function, frame.file_path_short, frame.line_no)
    if not frame.is_synthetic:
        self_t[key] += frame.total_self_time
        if key not in stack:  # recursion: count a function's inclusive time once
            incl_t[key] += frame.time
        stack.append(key)
    for child in frame.children:
        _walk(child, stack, self_t, incl_t)
    if not frame.is_synthetic:
        stack.pop()


def top_table(root, limit: int = 30) -> str:
    """Functions by self time and by inclusive time, with their share of the sampled time."""
    self_t: dict = defaultdict(float)
    incl_t: dict = defaultdict(float)
    _walk(root, [], self_t, incl_t)
    total = root.time or 1.0
    idle = sum(t for k, t in self_t.items() if k[0] in IDLE_FUNCTIONS)
    lines = [f"sampled {total:.2f} s; of it {idle:.2f} s ({100 * idle / total:.0f}%) is self "
             "time of the event loop entry (idle in epoll, or socket I/O in C)",
             f"busy (non-idle) time: {total - idle:.2f} s", "",
             "by self time (busy share excludes idle):"]
    busy = max(total - idle, 1e-9)
    for (fn, path, line), t in sorted(self_t.items(), key=lambda kv: -kv[1])[:limit]:
        share = "" if fn in IDLE_FUNCTIONS else f"{100 * t / busy:5.1f}%"
        lines.append(f"  {t:8.3f} s {share:>6}  {fn}  {path}:{line}")
    lines += ["", "by inclusive time:"]
    for (fn, path, line), t in sorted(incl_t.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"  {t:8.3f} s {100 * t / total:5.1f}%  {fn}  {path}:{line}")
    return "\n".join(lines) + "\n"


def write_profile(session, stem: Path) -> None:
    from pyinstrument.renderers import ConsoleRenderer, HTMLRenderer

    stem.parent.mkdir(parents=True, exist_ok=True)
    text = ConsoleRenderer(unicode=True, color=False, show_all=False, timeline=False,
                           short_mode=False).render(session)
    stem.with_suffix(".txt").write_text(text)
    stem.with_suffix(".html").write_text(HTMLRenderer().render(session))
    root = session.root_frame()
    if root is not None:
        stem.with_suffix(".top.txt").write_text(top_table(root))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile-out", type=Path, required=True, help="output file stem")
    ap.add_argument("--interval", type=float, default=0.001, help="sampling interval (s)")
    ap.add_argument("--on-signal", action="store_true", help="start sampling at SIGUSR1")
    ap.add_argument("server_args", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    server_args = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args

    from pyinstrument import Profiler

    from server.cli import main as server_main

    # async_mode disabled: sample the loop thread as it is, across every task, not one task.
    profiler = Profiler(interval=args.interval, async_mode="disabled")

    def start(*_: object) -> None:
        if not profiler.is_running:
            profiler.start()  # in the main thread (signal handlers run there): the loop's

    if args.on_signal:
        signal.signal(signal.SIGUSR1, start)
    else:
        start()
    try:
        status = server_main(server_args)
    finally:
        if profiler.is_running:
            write_profile(profiler.stop(), args.profile_out)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
