"""The one exception the request grammar raises, carrying the HTTP status to answer with.

Statuses follow 15444-9 Annex F as quoted in the protocol note (section 2.1): 400 for a badly
formed request or an unrecognised field, 404 for an unknown target or tid, 415 when no
requested `type` can be produced, 501 when the request needs something not implemented, 503
for an unknown or closed channel. `str()` is always one line, "field: reason", so a handler
can put it in a log line or a plain-text response body as is.
"""
from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "BAD_REQUEST",
    "NOT_FOUND",
    "NOT_IMPLEMENTED",
    "SERVICE_UNAVAILABLE",
    "UNSUPPORTED_MEDIA_TYPE",
    "RequestError",
    "shorten",
]

BAD_REQUEST = 400
NOT_FOUND = 404
UNSUPPORTED_MEDIA_TYPE = 415
NOT_IMPLEMENTED = 501
SERVICE_UNAVAILABLE = 503

_SHOW_LIMIT = 40


def shorten(text: str, limit: int = _SHOW_LIMIT) -> str:
    """`text` quoted for an error message: escaped (one line) and cut to about `limit` chars.

    Messages quote client input; without the cut a 64 KiB value would land in every log line.
    """
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


class RequestError(Exception):
    """A request the server must refuse: `status` is the HTTP status, `field` the field at fault.

    `headers` holds extra response headers the refusal must carry (e.g. `JPIP-pref` listing the
    required preference sets that cannot be honoured, protocol note section 2.2).
    """

    def __init__(self, field: str | None, reason: str, status: int = BAD_REQUEST, *,
                 headers: Mapping[str, str] | None = None) -> None:
        self.field = _one_line(field) if field is not None else None
        self.reason = _one_line(reason)
        self.status = status
        self.headers = dict(headers) if headers else {}
        super().__init__(self.field, self.reason, status)

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason

    def __repr__(self) -> str:
        return f"RequestError({self.field!r}, {self.reason!r}, status={self.status})"

    def __reduce__(self):  # keyword-only headers would otherwise be lost when pickled
        return (_rebuild, (self.field, self.reason, self.status, self.headers))

    # Small named constructors, so call sites read as the status they mean.
    @classmethod
    def bad_request(cls, field: str | None, reason: str) -> RequestError:
        return cls(field, reason, BAD_REQUEST)

    @classmethod
    def not_found(cls, field: str | None, reason: str) -> RequestError:
        return cls(field, reason, NOT_FOUND)

    @classmethod
    def unsupported_type(cls, field: str | None, reason: str) -> RequestError:
        return cls(field, reason, UNSUPPORTED_MEDIA_TYPE)

    @classmethod
    def not_implemented(cls, field: str | None, reason: str,
                        headers: Mapping[str, str] | None = None) -> RequestError:
        return cls(field, reason, NOT_IMPLEMENTED, headers=headers)

    @classmethod
    def unavailable(cls, field: str | None, reason: str) -> RequestError:
        return cls(field, reason, SERVICE_UNAVAILABLE)


def _rebuild(field: str | None, reason: str, status: int,
             headers: Mapping[str, str]) -> RequestError:
    return RequestError(field, reason, status, headers=headers)
