"""Server settings: defaults < TOML file < environment (JPIP_<NAME>) < command-line flags.

Every option is a field of `ServerConfig`; its metadata says how to parse it from a string (the
environment and the command line) and what values are allowed, so the three sources share one
parser and every error names the option and where the bad value came from.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cache.redis_sessions import redact_url

ENV_PREFIX = "JPIP_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
RESERVED_PATHS = ("/healthz", "/metrics")
MAX_INSTANCE_ID = 31  # with '.' and 32 hex digits, a channel id stays within 64 characters


class ConfigError(ValueError):
    """A bad option value or config file; the message names the option and its source."""


# ----- value checks (return a problem description, or None when the value is fine) -----

def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must not be negative"


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be between 0 and 65535"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _log_level(v: str) -> str | None:
    return None if v in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


def _jpip_path(v: str) -> str | None:
    if not v.startswith("/") or v == "/":
        return "must start with '/' and name a path, e.g. /jpip"
    if any(c in v for c in "?#%{} \t"):
        return "must be a plain path (no ?, #, %, braces or spaces)"
    if v.rstrip("/") in RESERVED_PATHS:
        return f"must not be one of {', '.join(RESERVED_PATHS)}"
    return None


def _networks(v: tuple[str, ...]) -> str | None:
    for item in v:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP address or CIDR network"
    return None


def _instance_id(v: str) -> str | None:
    if v and not re.fullmatch(rf"[A-Za-z0-9_-]{{1,{MAX_INSTANCE_ID}}}", v):
        return f"must be 1-{MAX_INSTANCE_ID} letters, digits, '-' or '_'"
    return None


def _session_store(v: str) -> str | None:
    if v == "memory":
        return None
    parts = urlsplit(v)
    if parts.scheme not in ("redis", "rediss"):
        return "must be 'memory' or a Redis URL: redis://HOST:PORT/DB (rediss:// for TLS)"
    try:
        parts.port  # noqa: B018 (parsing it checks it)
    except ValueError:
        return "has a port that is not a number"
    if not parts.hostname:
        return "names no host (redis://HOST:PORT/DB)"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"names database {db!r}: a database is a number (redis://HOST:PORT/0)"
    return None


def _shown_url(v: str) -> str:
    return repr(redact_url(v))


def _origins(v: tuple[str, ...]) -> str | None:
    for item in v:
        if item != "*" and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s]+", item):
            return f"{item!r} is not '*' or an origin like https://example.org"
    return None


def _opt(default: Any, kind: str, check: Callable[[Any], str | None] | None = None,
         help: str = "", shown: Callable[[Any], str] = repr) -> Any:
    """An option; `shown` is how an error message may show its value (secrets are not)."""
    return field(default=default, metadata={"kind": kind, "check": check, "help": help,
                                            "shown": shown})


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server can be told. Sizes are bytes, durations seconds."""

    root: Path = _opt(Path("."), "path", help="directory of the images served")
    host: str = _opt("127.0.0.1", "str", _non_empty, "address to listen on")
    port: int = _opt(8080, "int", _port, "TCP port to listen on (0: any free port)")
    jpip_path: str = _opt("/jpip", "str", _jpip_path, "path of the JPIP endpoint")
    cors_origins: tuple[str, ...] = _opt(
        ("*",), "list", _origins, "origins allowed by CORS, comma-separated ('' disables CORS)")
    lenient: bool = _opt(False, "bool", help="ignore unknown JPIP request fields")
    instance_id: str = _opt(
        "", "str", _instance_id,
        "name of this server among several behind a proxy; starts the channel ids it issues "
        "(cid=NAME.<random>) so the proxy can send a session's requests back to it")
    max_sessions: int = _opt(10000, "int", _positive, "most JPIP sessions held at once")
    session_idle_timeout: float = _opt(600.0, "float", _positive, "idle session lifetime")
    max_session_bytes: int = _opt(
        8 << 20, "size", _positive, "memory cap of one session's cache model")
    request_timeout: float = _opt(
        60.0, "float", _positive, "longest wait before an answer starts, and for each write after")
    keepalive_timeout: float = _opt(75.0, "float", _non_negative, "idle keep-alive lifetime")
    max_request_body: int = _opt(1 << 20, "size", _positive, "largest request body (POST)")
    max_field_size: int = _opt(
        64 << 10, "size", _positive, "largest request line or header field")
    trusted_proxies: tuple[str, ...] = _opt(
        (), "list", _networks, "proxies whose X-Forwarded-* headers are believed (IPs/CIDRs)")
    json_logs: bool = _opt(False, "bool", help="log JSON lines instead of plain text")
    log_level: str = _opt("INFO", "level", _log_level, "logging level")
    index_cache_dir: Path | None = _opt(
        None, "optpath", help="on-disk index cache ('' or unset: $XDG_CACHE_HOME/jpip-server)")
    index_cache_entries: int = _opt(64, "int", _positive, "indexes kept in memory")
    shutdown_grace: float = _opt(
        10.0, "float", _non_negative, "time in-flight requests get to finish on shutdown")
    max_response_bytes: int = _opt(1 << 30, "size", _positive, "hard cap of one response")
    response_cache_bytes: int = _opt(
        64 << 20, "size", _non_negative,
        "memory for responses kept for clients that hold nothing yet (0 disables)")
    workers: int = _opt(
        1, "int", _positive,
        "worker processes sharing the listening socket, restarted when they die (more than 1 "
        "needs a shared --session-store)")
    session_store: str = _opt(
        "memory", "str", _session_store,
        "where sessions live: 'memory' (this process) or redis://HOST:PORT/DB (rediss:// for "
        "TLS; any worker on any host then serves any session)", shown=_shown_url)
    session_lease: float = _opt(
        10.0, "float", _positive,
        "shared session store: seconds a channel stays busy once the process answering on it "
        "is no longer heard from (a worker that dies mid-response frees it then)")
    redis_password: str = _opt(
        "", "str", None, "password of the Redis session store when its URL has none (prefer "
        "the environment or the config file to the command line)", shown=lambda v: "'***'")
    auth_jwt_key: tuple[Path, ...] = _opt(
        (), "pathlist", help="access control: a key file verifying JSON Web Tokens (HS256 "
        "secret, PEM public key or JWKS); repeat the flag (or give a list) for two keys at "
        "once during a rotation; unset: no access control")
    auth_audience: str = _opt(
        "", "str", help="with --auth-jwt-key: the 'aud' claim tokens must carry ('': tokens "
        "must carry none)")
    auth_leeway: float = _opt(
        30.0, "float", _non_negative,
        "with --auth-jwt-key: clock skew allowed when checking exp, nbf and iat (seconds)")

    def __post_init__(self) -> None:
        # Direct construction (tests, embedding) gets the same checks as load_config.
        for f in fields(self):
            value = getattr(self, f.name)
            kind = f.metadata["kind"]
            if kind == "path" and isinstance(value, str):
                value = Path(value)
            elif kind == "optpath" and isinstance(value, str):
                value = Path(value) if value else None
            elif kind == "list" and isinstance(value, list | str):
                value = _split(value) if isinstance(value, str) else tuple(value)
            elif kind == "pathlist" and isinstance(value, list | tuple | str | Path):
                items = _split(value) if isinstance(value, str) else (
                    (value,) if isinstance(value, Path) else value)
                value = tuple(Path(v) for v in items)
            elif kind == "level" and isinstance(value, str):
                value = value.upper()
            object.__setattr__(self, f.name, value)
            check = f.metadata["check"]
            if check is not None and (problem := check(value)):
                raise ConfigError(f"option {f.name}: {problem} "
                                  f"(got {f.metadata['shown'](value)})")
        if self.workers > 1 and self.session_store == "memory":
            raise ConfigError(
                f"option workers: {self.workers} worker processes need a shared session store "
                "(--session-store redis://HOST:PORT/DB): sessions in memory live in one "
                "process, and a session's next request may reach another")

    def effective_index_cache_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """The index cache directory: the configured one, else the XDG cache location."""
        if self.index_cache_dir is not None:
            return self.index_cache_dir
        return default_index_cache_dir(os.environ if environ is None else environ)


def default_index_cache_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jpip-server"


OPTION_NAMES = tuple(f.name for f in fields(ServerConfig))
_KINDS = {f.name: f.metadata["kind"] for f in fields(ServerConfig)}

# ----- parsing -----

_SIZE_UNITS = {"": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _split(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _parse_string(kind: str, text: str, base: Path | None) -> Any:
    """Turns an environment / command-line string into a typed value (ValueError if bad)."""
    text = text.strip()
    if kind == "str":
        return text
    if kind == "level":
        return text.upper()
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if kind == "size":
        m = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", text)
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"expected a byte count such as 1048576 or 1MiB, got {text!r}")
        return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if kind == "list":
        return _split(text)
    if kind == "pathlist":
        return tuple(_make_path(item, base) for item in _split(text))
    if kind in ("path", "optpath"):
        if not text:
            if kind == "optpath":
                return None
            raise ValueError("expected a path, got an empty string")
        return _make_path(text, base)
    raise AssertionError(kind)


def _make_path(text: str, base: Path | None) -> Path:
    path = Path(text).expanduser()
    # Relative paths in a config file are relative to that file, not to wherever we started.
    return base / path if base is not None and not path.is_absolute() else path


def _parse_toml_value(kind: str, value: Any, base: Path) -> Any:
    """TOML values are typed already; check the type instead of parsing text."""
    if isinstance(value, str) and kind not in ("str", "level"):
        return _parse_string(kind, value, base)  # "1MiB", "a,b", paths
    if kind == "int" or kind == "size":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"expected an integer, got {value!r}")
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"expected a number of seconds, got {value!r}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if kind == "list":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(v.strip() for v in value)
        raise ValueError(f"expected a list of strings, got {value!r}")
    if kind == "pathlist":
        if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
            return tuple(_make_path(v.strip(), base) for v in value)
        raise ValueError(f"expected a path or a list of paths, got {value!r}")
    if kind in ("str", "level"):
        if isinstance(value, str):
            return value.upper() if kind == "level" else value
        raise ValueError(f"expected a string, got {value!r}")
    raise ValueError(f"expected a string, got {value!r}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    # Allow either top-level keys or a [server] table; dashes or underscores.
    table = data.get("server", data) if isinstance(data.get("server"), dict) else data
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in _KINDS:
            raise ConfigError(f"config file {str(path)!r}: unknown option {key!r}")
        out[name] = value
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"command line: {message}")


def _version() -> str:
    try:
        return importlib.metadata.version("jpip-server")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: run from a source tree)"


def build_arg_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jpip-server", description="JPIP (ISO/IEC 15444-9) image server.",
                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="FILE", help="TOML file of options "
                        "(also $JPIP_CONFIG)")
    parser.add_argument("--version", action="version", version=f"jpip-server {_version()}")
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} [env {ENV_PREFIX}{f.name.upper()}]"
        if f.metadata["kind"] == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                help=help_text)
        elif f.metadata["kind"] == "pathlist":  # repeatable
            parser.add_argument(flag, dest=f.name, action="append", metavar="FILE",
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, metavar=f.name.split("_")[-1].upper(),
                                help=help_text)
    return parser


def load_config(argv: list[str] | None, environ: Mapping[str, str]) -> ServerConfig:
    """Builds the config from the TOML file, the environment and `argv` (None: sys.argv[1:])."""
    args = vars(build_arg_parser().parse_args(argv))
    values: dict[str, Any] = {}

    config_file = args.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        path = Path(config_file).expanduser()
        for name, raw in _read_toml(path).items():
            source = f"config file {str(path)!r}"
            values[name] = _convert(name, source, lambda k, r=raw: _parse_toml_value(
                k, r, path.parent))

    for name in OPTION_NAMES:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ:
            raw = environ[env_name]
            values[name] = _convert(name, f"environment {env_name}",
                                    lambda k, r=raw: _parse_string(k, r, None))

    for name, raw in args.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(raw, bool):
            values[name] = raw
        elif isinstance(raw, list):  # a repeated flag: each value as if given alone
            values[name] = tuple(path for item in raw for path in _convert(
                name, flag, lambda k, r=item: _parse_string(k, r, None)))
        else:
            values[name] = _convert(name, flag, lambda k, r=raw: _parse_string(k, r, None))

    return ServerConfig(**values)


def _convert(name: str, source: str, parse: Callable[[str], Any]) -> Any:
    """Parses and checks one value; errors name the option and where the value came from."""
    kind = _KINDS[name]
    try:
        value = parse(kind)
    except ValueError as exc:
        raise ConfigError(f"option {name} ({source}): {exc}") from None
    meta = next(f.metadata for f in fields(ServerConfig) if f.name == name)
    check = meta["check"]
    if check is not None and (problem := check(value)):
        raise ConfigError(f"option {name} ({source}): {problem} (got {meta['shown'](value)})")
    return value
