"""The one place where exceptions become HTTP answers.

Each typed error becomes a status and a one-line text/plain body naming the problem, plus one log
line. Unknown exceptions become 500 "internal error": the traceback goes to the log, never to the
client. If the response had already started (a streamed JPP-stream), no new answer can be sent:
the connection is cut, so the client sees an incomplete response (no final chunk).

Errors from other packages are recognised by their attributes, so this module does not import
them: `status` + `reason` (jpip.errors.RequestError, server.targets.TargetError and friends),
`offset` + `reason` (codestream.errors.CodestreamError).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from server.logs import request_info

log = logging.getLogger("jpip.errors")

DEFAULT_RETRY_AFTER = 5
CLIENT_CLOSED = 499  # not sent to anyone: the client is gone; it names the case in metrics/logs
_MAX_REASON = 300


class ServiceUnavailable(Exception):
    """Over capacity (sessions, memory) or a request that took too long: 503 + Retry-After."""

    status = 503

    def __init__(self, reason: str, retry_after: int = DEFAULT_RETRY_AFTER) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    body: str
    headers: Mapping[str, str]
    level: int
    log_text: str
    traceback: bool = False


def _one_line(text: object) -> str:
    line = " ".join(str(text).split())  # no CR/LF: the body and the log stay one line
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


def classify(exc: BaseException) -> ErrorAnswer:
    """Maps an exception to the answer and log line it deserves."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if isinstance(status, int) and 400 <= status <= 599 and isinstance(reason, str):
        field = getattr(exc, "field", None)
        body = _one_line(f"{field}: {reason}" if field else reason)
        headers = dict(getattr(exc, "headers", None) or {})
        retry_after = getattr(exc, "retry_after", None)
        if status == 503 and retry_after is not None:
            headers["Retry-After"] = str(max(0, int(retry_after)))
        level = logging.INFO if status < 500 else logging.WARNING
        return ErrorAnswer(status, body, headers, level, f"{type(exc).__name__}: {body}")
    if isinstance(getattr(exc, "offset", None), int) and isinstance(reason, str):
        # A file we cannot index is the file's fault, not ours, and worth a warning for whoever
        # keeps the files: 415 when it is not JPEG 2000 at all, 422 when it is a damaged or
        # malformed one (as for DICOM files), 501 for a valid file using a feature not served.
        where = f" at byte {exc.offset}" if exc.offset >= 0 else ""  # type: ignore[attr-defined]
        if getattr(exc, "unsupported", False):
            status, body = 501, f"cannot serve target: {reason}"
        elif getattr(exc, "not_jpeg2000", False):
            status, body = 415, f"not a JPEG 2000 file ({reason})"
        else:
            status, body = 422, f"damaged JPEG 2000 file: {reason}{where}"
        return ErrorAnswer(status, _one_line(body), {}, logging.WARNING,
                           f"{type(exc).__name__}{where}: {_one_line(reason)}")
    return ErrorAnswer(500, "internal error", {}, logging.ERROR,
                       f"unhandled {type(exc).__name__}: {_one_line(exc)}", traceback=True)


def error_response(answer: ErrorAnswer) -> web.Response:
    resp = web.Response(status=answer.status, text=answer.body + "\n",
                        content_type="text/plain", charset="utf-8", headers=answer.headers)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def response_started(request: web.Request) -> bool:
    """True once the response headers went out: from then on an error can only cut it."""
    info = request_info(request)
    return info is not None and info.response is not None and info.response.prepared


def _cut(request: web.Request) -> web.StreamResponse:
    """Ends a response that already started: close the connection without the final chunk."""
    info = request_info(request)
    assert info is not None and info.response is not None
    info.cut = True
    resp = info.response
    resp.force_close()
    if request.transport is not None:
        request.transport.close()  # later writes (aiohttp's write_eof) now fail and are dropped
    return resp


def _client_gone(request: web.Request, exc: Exception) -> bool:
    # Only a broken client connection; e.g. ConnectionRefusedError from a backend is a fault.
    transport = request.transport
    return isinstance(exc, ConnectionError) and (transport is None or transport.is_closing())


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to a request whose handler raised `exc` (not an HTTPException, which
    aiohttp answers itself), logged once: the error's answer, or, when the response had
    already started, that response cut (server.middleware calls this)."""
    if _client_gone(request, exc):
        # Nothing can be answered and nobody needs alarming; 499 as nginx counts it.
        answer = ErrorAnswer(CLIENT_CLOSED, "client connection lost", {}, logging.INFO,
                             f"client connection lost ({type(exc).__name__})")
    else:
        answer = classify(exc)
    if response_started(request):
        _log(request, answer, exc, suffix=" (response cut)")
        return _cut(request)
    _log(request, answer, exc)
    return error_response(answer)


def _log(request: web.Request, answer: ErrorAnswer, exc: BaseException,
         suffix: str = "") -> None:
    path = request.rel_url.raw_path
    log.log(answer.level, "%s %s from %s -> %d %s%s", request.method, path, request.remote,
            answer.status, answer.log_text, suffix,
            exc_info=exc if answer.traceback else None,
            extra={"method": request.method, "path": path, "remote": request.remote,
                   "status": answer.status})
