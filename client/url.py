"""What a URL given to the client may carry: the server, the target, and a view-window.

`http://host:port/jpip?target=a.jp2` and `http://host:port/a.jp2` name a target. A URL copied
from a browser or a curl example may also hold view-window fields (`fsiz=...&roff=...`): they are
returned apart, for the caller to use as defaults. An `access_token=` (a viewer's URL) is taken
out too: the client sends it as `Authorization: Bearer`, which proxies do not log. Fields the
client sets itself (`cid`, `model`, ...) and fields it does not know are refused with a message
saying what to do.

The target fields are sent percent-encoded the JPIP way, whatever the URL held: a '%XX' is
decoded, a '+' is a plus (JPIP is not HTML-form decoding), and everything but RFC 3986's
unreserved characters and '/' then goes out as %XX (UTF-8) - a space as %20, a plus as %2B. A
space left as is, or sent as '+' (yarl, under aiohttp, would), names another file.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, quote, unquote, unquote_to_bytes, urlsplit, urlunsplit

TARGET_FIELDS = ("target", "subtarget")
WINDOW_FIELDS = ("fsiz", "roff", "rsiz", "layers", "comps", "stream", "len")
# Fields whose value the client decides (sessions, cache models, request order, the stream type).
CLIENT_FIELDS = ("cnew", "cid", "cclose", "tid", "qid", "model", "need", "tpmodel", "tpneed",
                 "wait", "metareq")
# The return types the client reads, as a URL may name them.
STREAM_TYPES = {"jpp-stream": "jpp-stream", "image/jpp-stream": "jpp-stream",
                "jpt-stream": "jpt-stream", "image/jpt-stream": "jpt-stream"}
TOKEN_FIELD = "access_token"


def encode_value(value: str | bytes) -> str:
    """A query value as the client sends it: unreserved characters and '/' kept, everything
    else %XX, so that JPIP's decoding ('+' literal) and HTML-form decoding agree on it."""
    return quote(value, safe="/")


def decode_value(raw: str) -> str:
    """A query value as JPIP reads it: '%XX' decoded, '+' kept (jpip/request.py)."""
    return unquote(raw)


class URLError(ValueError):
    """A URL the client cannot use; the message says what to change."""


@dataclass(frozen=True)
class JPIPURL:
    """A parsed client URL."""

    base: str                 # scheme://host:port/path, without the query
    origin: str               # scheme://host:port
    target_query: str         # the target fields, percent-encoded by `encode_value`
    window: dict[str, str] = field(default_factory=dict)  # window fields found in the URL
    token: str | None = field(default=None, repr=False)   # an access_token found in the URL
    stream_type: str | None = None  # type= in the URL: "jpp-stream" or "jpt-stream"

    def target_only(self) -> JPIPURL:
        """The same URL without its window fields."""
        return replace(self, window={})


def parse_url(url: str) -> JPIPURL:
    """Splits `url` into server, target and window fields; URLError says what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        if "://" not in url:
            raise URLError(f"{url!r} is not a URL: did you mean 'http://{url.strip()}'?")
        raise URLError(f"{url!r}: only http:// and https:// URLs are supported")
    target_items: list[str] = []
    window: dict[str, str] = {}
    token = None
    stream_type = None
    seen: set[str] = set()
    # keep_blank_values: `cid=` is still a cid field the user should hear about.
    raw_items = [item for item in parts.query.split("&") if item]
    for item in raw_items:
        name, value = parse_qsl(item, keep_blank_values=True)[0] if "=" in item else (item, "")
        if name in seen:
            raise URLError(f"the URL gives {name}= twice")
        seen.add(name)
        if name in TARGET_FIELDS:
            raw_value = item.partition("=")[2]
            target_items.append(f"{name}={encode_value(unquote_to_bytes(raw_value))}")
        elif name in WINDOW_FIELDS:
            window[name] = value
        elif name == TOKEN_FIELD:
            token = unquote(item.partition("=")[2]) or None  # '+' is base64's, not a space
        elif name == "type":
            stream_type = STREAM_TYPES.get(value)
            if stream_type is None:
                raise URLError(f"the URL asks for type={value}: the client reads jpp-stream "
                               "and jpt-stream (remove type= or name one of them)")
        elif name in CLIENT_FIELDS:
            raise URLError(f"the URL carries {name}=, which the client sets itself: remove it")
        else:
            raise URLError(f"the URL field {name}= is not used by the client: remove it (the "
                           f"URL may carry {', '.join(TARGET_FIELDS + WINDOW_FIELDS)})")
    if "target" not in seen and parts.path in ("", "/"):
        raise URLError(f"{url!r} names no image: use http://HOST:PORT/jpip?target=FILE or "
                       "http://HOST:PORT/FILE")
    return JPIPURL(
        base=urlunsplit((parts.scheme, parts.netloc,
                          encode_value(unquote_to_bytes(parts.path)), "", "")),
        origin=urlunsplit((parts.scheme, parts.netloc, "", "", "")),
        target_query="&".join(target_items),
        window=window,
        token=token,
        stream_type=stream_type,
    )
