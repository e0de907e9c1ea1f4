"""Logging setup (plain text or JSON lines) and the access log.

`RequestInfo` is the per-request record the middlewares fill in (real client address, when the
response started, the session id) and the access logger reads. It is one mutable object stored in
the request's state, so it is shared by every clone of the request.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

if TYPE_CHECKING:
    from server.config import ServerConfig

ACCESS_LOGGER = "jpip.access"
_MAX_QUERY_LOGGED = 512
SECRET_FIELDS = frozenset(("access_token",))  # query fields whose values are never logged
REDACTED = "[redacted]"


@dataclass(slots=True)
class RequestInfo:
    start: float                      # perf_counter() when the first middleware saw the request
    remote: str | None = None         # client address, after trusted-proxy headers
    scheme: str | None = None         # from trusted-proxy headers (None: request.scheme)
    cid: str | None = None            # JPIP channel id, set by the handler (set_request_cid)
    response: web.StreamResponse | None = None  # the response once prepared (headers committed)
    first_byte: float | None = None   # perf_counter() when the headers were sent
    cut: bool = False                 # the response was cut short by an error or timeout


INFO_KEY: web.RequestKey[RequestInfo] = web.RequestKey("jpip_request_info", RequestInfo)


def request_info(request: web.BaseRequest) -> RequestInfo | None:
    return request.get(INFO_KEY)


def set_request_cid(request: web.BaseRequest, cid: str) -> None:
    """Lets the JPIP handler name the channel, so the access log line carries it."""
    info = request.get(INFO_KEY)
    if info is not None:
        info.cid = cid


# ----- formatters -----

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class PlainFormatter(logging.Formatter):
    """PLAIN_FORMAT, with the time's text kept for the second it names (strftime on every
    line costs as much as the rest of an access line), and a line without a traceback made
    in one step."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)
        self._second = -1
        self._text = ""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        # What logging.Formatter.format makes of PLAIN_FORMAT, without its generic steps
        # (an access line is written for every request).
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        return f"{record.asctime} {record.levelname} {record.name}: {record.message}"

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return self.default_msec_format % (self._text, record.msecs)
ACCESS_BUFFER_BYTES = 64 << 10  # access lines held at most before they are written
ACCESS_FLUSH_PERIOD = 0.25      # seconds: the app writes held access lines this often


class LogHandler(logging.StreamHandler):
    """stderr, with the access log's INFO lines written in batches.

    A line per request, each with its own write(2), costs more than the rest of a small
    request's logging: access lines are held (at most ACCESS_BUFFER_BYTES, and for at most
    ACCESS_FLUSH_PERIOD while the app runs: `flush_logs`) and written together. Every other
    record is written at once, after the held lines, so the order stays as logged."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self._held: list[str] = []
        self._held_bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != ACCESS_LOGGER or record.levelno > logging.INFO:
            if self._held:
                self.flush()  # the held lines first
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._held.append(line)
        self._held_bytes += len(line)
        if self._held_bytes >= ACCESS_BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._held:
                held, self._held, self._held_bytes = self._held, [], 0
                if self.stream is not None:
                    self.stream.write("".join(held))
            super().flush()
        finally:
            self.release()


def flush_logs() -> None:
    """Writes the access lines the root logger's handlers hold (see LogHandler)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LogHandler) and handler._held:
            handler.flush()


class MalformedRequests(logging.Filter):
    """aiohttp logs a request its parser refuses (a bad request line, a header too long, bytes
    that are not HTTP) at ERROR with a traceback, and answers it 400. That is the client's
    fault, not a defect of ours: one INFO line saying why, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = " ".join(str(exc.message).split())[:200]
            text = record.getMessage()
            record.msg, record.args = "%s (answered %s): %s", (text, exc.code, reason)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def setup_logging(config: ServerConfig) -> None:
    """Configures the root logger once for the process (replacing earlier handlers)."""
    handler = LogHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.json_logs else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.log_level)
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # What no format of ours shows, not collected for every record (the logging HOWTO's
    # "Optimization": the caller's file and line, thread and process names).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server_log.filters):
        server_log.addFilter(MalformedRequests())


# ----- access log -----

_NAMES_A_SECRET = re.compile("|".join(map(re.escape, SECRET_FIELDS)), re.IGNORECASE).search


def redact_query(query: str) -> str:
    """The raw query string with the value of every credential field replaced: a field is one
    when its name, %-decoded and in any case, is in SECRET_FIELDS (as the JPIP parser would
    read `acc%65ss_token`)."""
    if "%" not in query and not _NAMES_A_SECRET(query):
        return query  # the usual case: nothing to look at
    pairs = query.split("&")
    for i, pair in enumerate(pairs):
        name, eq, _ = pair.partition("=")
        if eq and unquote(name, errors="replace").lower() in SECRET_FIELDS:
            pairs[i] = f"{name}={REDACTED}"
    return "&".join(pairs)


def _cid_of(request: web.BaseRequest, response: web.StreamResponse,
            info: RequestInfo | None) -> str | None:
    if info is not None and info.cid:
        return info.cid
    cnew = response.headers.get("JPIP-cnew")
    if cnew:
        for part in cnew.split(","):
            key, _, value = part.strip().partition("=")
            if key == "cid" and value:
                return value
    raw = request.rel_url.raw_query_string
    if "cid" not in raw and "%" not in raw:
        return None  # no cid field, even %-encoded: the query need not be parsed
    try:
        return request.query.get("cid") or None
    except Exception:  # an unparsable query must not break logging
        return None


ACCESS_FORMAT = '%s "%s %s%s%s" %s %s %.2fms%s%s'


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path, status, bytes, duration_ms, remote, cid.

    The line's record is made here and handed to the logger's handlers (Logger.handle), the
    message formatted only when a handler writes it (%-style arguments). Every record of an
    AccessLogger (aiohttp makes one per connection) comes from the same place, thread and
    process, so what LogRecord works out for each of those is worked out once, in a record
    made by the logger itself, whose attributes every line's record starts from; a line costs
    its own fields only."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._base: dict[str, Any] | None = None

    def _record(self) -> logging.LogRecord:
        base = self._base
        if base is None:
            first = self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0,
                                           ACCESS_FORMAT, (), None, "log")
            base = self._base = vars(first)
        record = logging.LogRecord.__new__(logging.LogRecord)
        attrs = record.__dict__
        attrs.update(base)
        now = time.time()
        attrs["created"] = now
        attrs["msecs"] = (now - int(now)) * 1000 // 1 + 0.0
        attrs["relativeCreated"] = base["relativeCreated"] + (now - base["created"]) * 1000
        return record

    def log(self, request: web.BaseRequest, response: web.StreamResponse,
            time_taken: float) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        info = request.get(INFO_KEY)
        if info is not None:  # finer than aiohttp's loop clock (1 ms with uvloop)
            time_taken = time.perf_counter() - info.start
        url = request.rel_url
        query = redact_query(url.raw_query_string)
        record = self._record()
        fields = record.__dict__  # the extra fields (JSON lines show them) are attributes
        fields["method"] = method = request.method
        fields["path"] = path = url.raw_path
        fields["query"] = query = query[:_MAX_QUERY_LOGGED]
        fields["status"] = status = response.status
        fields["bytes"] = nbytes = response.body_length
        fields["duration_ms"] = duration = round(time_taken * 1000, 3)
        fields["remote"] = remote = (info.remote if info is not None and info.remote
                                     else request.remote) or "-"
        cid = _cid_of(request, response, info)
        if cid:
            fields["cid"] = cid
        cut = info is not None and info.cut
        if cut:
            fields["cut"] = True
        record.args = (remote, method, path, "?" if query else "", query, status, nbytes,
                       duration, f" cid={cid}" if cid else "", " cut" if cut else "")
        logger.handle(record)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
