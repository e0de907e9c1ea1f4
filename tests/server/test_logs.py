"""The log handler: access lines are held and written together, every other record at once
and after them (the order stays as logged); the plain formatter's time text; the access
lines' records."""
from __future__ import annotations

import io
import logging
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from server import logs
from server.logs import (
    ACCESS_LOGGER,
    INFO_KEY,
    AccessLogger,
    LogHandler,
    PlainFormatter,
    RequestInfo,
    flush_logs,
)


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


def test_access_records_are_whole_and_separate() -> None:
    """Each access line's record has what a record the logger made would have (its time its
    own), and only its own request's fields."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger(ACCESS_LOGGER)
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        access = AccessLogger(logger, "")
        first = make_mocked_request("GET", "/jpip?cid=abc&fsiz=64,64")
        first[INFO_KEY] = RequestInfo(start=time.perf_counter(), remote="192.0.2.1", cid="abc")
        second = make_mocked_request("GET", "/jpip?target=a.jp2&access_token=s3cret")
        before = time.time()
        access.log(first, web.Response(body=b"x"), 0.001)
        time.sleep(0.01)
        access.log(second, web.Response(status=404), 0.001)
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    a, b = seen
    made = logger.makeRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, "", (), None)
    assert set(vars(made)) <= set(vars(a)) and set(vars(made)) <= set(vars(b))
    assert a.levelname == "INFO" and a.name == ACCESS_LOGGER and a.exc_info is None
    assert before <= a.created < b.created <= time.time()
    assert 0 <= b.msecs < 1000 and b.msecs == (b.created - int(b.created)) * 1000 // 1
    assert b.relativeCreated - a.relativeCreated == pytest.approx(
        (b.created - a.created) * 1000, abs=0.01)
    assert a.getMessage().startswith('192.0.2.1 "GET /jpip?cid=abc&fsiz=64,64" 200 ')
    assert a.getMessage().endswith(" cid=abc") and a.cid == "abc"
    assert not hasattr(b, "cid") and b.status == 404
    assert "s3cret" not in b.getMessage() and "access_token=[redacted]" in b.query
