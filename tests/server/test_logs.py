"""The log handler: access lines are held and written together, every other record at once
and after them (the order stays as logged); the plain formatter's time text."""
from __future__ import annotations

import io
import logging
import time

from server import logs
from server.logs import ACCESS_LOGGER, LogHandler, PlainFormatter, flush_logs


def _record(name: str, level: int, msg: str, created: float | None = None) -> logging.LogRecord:
    r = logging.LogRecord(name, level, __file__, 1, msg, (), None)
    if created is not None:
        r.created, r.msecs = created, (created % 1) * 1000
    return r


def test_access_lines_are_batched_and_order_is_kept(monkeypatch) -> None:
    out = io.StringIO()
    h = LogHandler(out)
    h.setFormatter(logging.Formatter("%(name)s %(message)s"))
    h.handle(_record(ACCESS_LOGGER, logging.INFO, "a1"))
    h.handle(_record(ACCESS_LOGGER, logging.INFO, "a2"))
    assert out.getvalue() == ""  # held
    h.handle(_record("jpip.request", logging.INFO, "other"))
    assert out.getvalue().splitlines() == ["jpip.access a1", "jpip.access a2",
                                           "jpip.request other"]
    h.handle(_record(ACCESS_LOGGER, logging.WARNING, "refused"))  # not an INFO line: at once
    assert out.getvalue().splitlines()[-1] == "jpip.access refused"
    h.handle(_record(ACCESS_LOGGER, logging.INFO, "a3"))
    h.flush()
    assert out.getvalue().splitlines()[-1] == "jpip.access a3"
    # Past ACCESS_BUFFER_BYTES the held lines go out without waiting for a flush.
    monkeypatch.setattr(logs, "ACCESS_BUFFER_BYTES", 30)
    h.handle(_record(ACCESS_LOGGER, logging.INFO, "x" * 40))
    assert out.getvalue().splitlines()[-1] == "jpip.access " + "x" * 40


def test_flush_logs_writes_what_the_root_handler_holds() -> None:
    out = io.StringIO()
    h = LogHandler(out)
    h.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(h)
    try:
        h.handle(_record(ACCESS_LOGGER, logging.INFO, "held"))
        assert out.getvalue() == ""
        flush_logs()
        assert out.getvalue() == "held\n"
    finally:
        root.removeHandler(h)


def test_plain_formatter_time() -> None:
    f = PlainFormatter()
    t = 1_700_000_000.25
    want = logging.Formatter(logs.PLAIN_FORMAT)
    for created in (t, t + 0.5, t + 1.75):  # the same second twice, then the next one
        r = _record("x", logging.INFO, "m", created)
        assert f.format(r) == want.format(r)
    assert time.strftime("%Y", time.localtime(t)) in f.format(_record("x", 20, "m", t))
