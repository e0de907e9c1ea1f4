"""Config sources and their precedence: defaults < TOML < environment < command line."""
from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, ServerConfig, default_index_cache_dir, load_config


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jpip.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    c = load_config([], {})
    assert c == ServerConfig()
    assert (c.host, c.port, c.jpip_path, c.cors_origins) == ("127.0.0.1", 8080, "/jpip", ("*",))
    assert c.lenient is False and c.json_logs is False and c.log_level == "INFO"
    assert c.max_sessions == 10000 and c.session_idle_timeout == 600
    assert c.max_session_bytes == 8 << 20 and c.max_request_body == 1 << 20
    assert c.max_field_size == 64 << 10 and c.max_response_bytes == 1 << 30
    assert c.request_timeout == 60 and c.keepalive_timeout == 75 and c.shutdown_grace == 10
    assert c.trusted_proxies == () and c.index_cache_dir is None and c.index_cache_entries == 64


def test_precedence_defaults_toml_env_argv(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path, 'port = 1000\nhost = "0.0.0.0"\nlog_level = "debug"\n'
                               'max_sessions = 5\n')
    env = {"JPIP_PORT": "2000", "JPIP_HOST": "::1"}
    c = load_config(["--config", str(cfg), "--port", "3000"], env)
    assert c.port == 3000            # argv beats env and file
    assert c.host == "::1"           # env beats file
    assert c.log_level == "DEBUG"    # file beats defaults (normalised)
    assert c.max_sessions == 5
    assert c.request_timeout == 60   # default
    assert load_config(["--config", str(cfg)], env).port == 2000
    assert load_config(["--config", str(cfg)], {}).port == 1000


def test_config_file_from_environment_and_server_table(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path, '[server]\nport = 4321\njpip-path = "/j"\n')
    c = load_config([], {"JPIP_CONFIG": str(cfg)})
    assert (c.port, c.jpip_path) == (4321, "/j")


def test_every_option_has_a_flag_and_an_env_var(tmp_path: Path) -> None:
    argv = ["--root", str(tmp_path), "--host", "0.0.0.0", "--port", "0", "--jpip-path", "/x",
            "--cors-origins", "https://a.org, https://b.org", "--lenient",
            "--max-sessions", "3", "--session-idle-timeout", "1.5", "--max-session-bytes", "1MiB",
            "--request-timeout", "2", "--keepalive-timeout", "0", "--max-request-body", "2k",
            "--max-field-size", "100", "--trusted-proxies", "10.0.0.0/8,::1", "--json-logs",
            "--log-level", "warning", "--index-cache-dir", str(tmp_path / "c"),
            "--index-cache-entries", "7", "--shutdown-grace", "0.5",
            "--max-response-bytes", "1G"]
    c = load_config(argv, {})
    assert c.root == tmp_path and c.port == 0 and c.jpip_path == "/x"
    assert c.cors_origins == ("https://a.org", "https://b.org")
    assert c.lenient and c.json_logs and c.log_level == "WARNING"
    assert c.max_session_bytes == 1 << 20 and c.max_request_body == 2048
    assert c.trusted_proxies == ("10.0.0.0/8", "::1")
    assert c.index_cache_dir == tmp_path / "c" and c.max_response_bytes == 1 << 30
    assert c.session_idle_timeout == 1.5 and c.shutdown_grace == 0.5

    env = {
        "JPIP_ROOT": str(tmp_path), "JPIP_PORT": "0", "JPIP_JPIP_PATH": "/x",
        "JPIP_CORS_ORIGINS": "https://a.org,https://b.org", "JPIP_LENIENT": "yes",
        "JPIP_MAX_SESSIONS": "3", "JPIP_SESSION_IDLE_TIMEOUT": "1.5",
        "JPIP_MAX_SESSION_BYTES": "1MiB", "JPIP_REQUEST_TIMEOUT": "2",
        "JPIP_KEEPALIVE_TIMEOUT": "0", "JPIP_MAX_REQUEST_BODY": "2k",
        "JPIP_MAX_FIELD_SIZE": "100", "JPIP_TRUSTED_PROXIES": "10.0.0.0/8,::1",
        "JPIP_JSON_LOGS": "1", "JPIP_LOG_LEVEL": "warning",
        "JPIP_INDEX_CACHE_DIR": str(tmp_path / "c"), "JPIP_INDEX_CACHE_ENTRIES": "7",
        "JPIP_SHUTDOWN_GRACE": "0.5", "JPIP_MAX_RESPONSE_BYTES": "1G", "JPIP_HOST": "0.0.0.0",
    }
    assert load_config([], env) == c


def test_boolean_flags_override_environment() -> None:
    assert load_config(["--no-lenient"], {"JPIP_LENIENT": "true"}).lenient is False
    assert load_config([], {"JPIP_LENIENT": "off"}).lenient is False


def test_empty_list_disables_cors() -> None:
    assert load_config(["--cors-origins", ""], {}).cors_origins == ()
    assert load_config([], {"JPIP_CORS_ORIGINS": ""}).cors_origins == ()


def test_toml_types_and_relative_paths(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path, 'root = "images"\ncors_origins = ["https://a.org"]\n'
                               'trusted_proxies = "127.0.0.1, 10.1.0.0/16"\nlenient = true\n'
                               'request_timeout = 5\nmax_request_body = "4KiB"\n')
    c = load_config(["--config", str(cfg)], {})
    assert c.root == tmp_path / "images"   # relative to the config file
    assert c.cors_origins == ("https://a.org",)
    assert c.trusted_proxies == ("127.0.0.1", "10.1.0.0/16")
    assert c.lenient is True and c.request_timeout == 5.0 and c.max_request_body == 4096


@pytest.mark.parametrize("argv, env, toml, words", [
    (["--port", "http"], {}, None, ["port", "--port", "integer"]),
    (["--port", "70000"], {}, None, ["port", "65535"]),
    ([], {"JPIP_PORT": "-1"}, None, ["port", "JPIP_PORT"]),
    ([], {"JPIP_MAX_SESSIONS": "0"}, None, ["max_sessions", "greater than 0"]),
    ([], {"JPIP_REQUEST_TIMEOUT": "soon"}, None, ["request_timeout", "seconds"]),
    ([], {"JPIP_LENIENT": "maybe"}, None, ["lenient", "true or false"]),
    ([], {"JPIP_MAX_REQUEST_BODY": "1 lot"}, None, ["max_request_body", "byte count"]),
    (["--log-level", "chatty"], {}, None, ["log_level", "DEBUG"]),
    (["--jpip-path", "jpip"], {}, None, ["jpip_path", "start with '/'"]),
    (["--jpip-path", "/metrics"], {}, None, ["jpip_path", "/metrics"]),
    (["--trusted-proxies", "10.0.0.0/8,proxy.local"], {}, None,
     ["trusted_proxies", "proxy.local"]),
    (["--cors-origins", "a.org"], {}, None, ["cors_origins", "origin"]),
    (["--no-such-flag"], {}, None, ["command line", "--no-such-flag"]),
    ([], {}, "port = 'x'\n", ["port", "config file", "integer"]),
    ([], {}, "port = true\n", ["port", "integer"]),
    ([], {}, "lenient = 1\n", ["lenient", "true or false"]),
    ([], {}, "colour = 'blue'\n", ["unknown option", "colour"]),
    ([], {}, "port = \n", ["not valid TOML"]),
    (["--session-store", "http://db:6379/0"], {}, None, ["session_store", "redis://"]),
    (["--session-store", "redis://db:6379/x"], {}, None, ["session_store", "a number"]),
    (["--session-store", "redis:///0"], {}, None, ["session_store", "no host"]),
    (["--workers", "0"], {}, None, ["workers", "greater than 0"]),
    (["--workers", "2"], {}, None, ["workers", "shared session store", "redis://"]),
])
def test_bad_values_name_the_option(tmp_path: Path, argv: list[str], env: dict[str, str],
                                    toml: str | None, words: list[str]) -> None:
    if toml is not None:
        argv = [*argv, "--config", str(write_toml(tmp_path, toml))]
    with pytest.raises(ConfigError) as info:
        load_config(argv, env)
    for word in words:
        assert word in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(["--config", str(tmp_path / "nope.toml")], {})


def test_direct_construction_is_checked() -> None:
    with pytest.raises(ConfigError, match="port"):
        ServerConfig(port=-5)
    c = ServerConfig(root="x", cors_origins=["*"], log_level="debug")  # type: ignore[arg-type]
    assert c.root == Path("x") and c.cors_origins == ("*",) and c.log_level == "DEBUG"


def test_index_cache_dir_default(tmp_path: Path) -> None:
    assert default_index_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "jpip-server"
    assert default_index_cache_dir({}) == Path.home() / ".cache" / "jpip-server"
    c = ServerConfig()
    assert c.effective_index_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/jpip-server")
    assert ServerConfig(index_cache_dir=tmp_path).effective_index_cache_dir({}) == tmp_path


def test_access_control_options(tmp_path: Path) -> None:
    c = load_config([], {})
    assert c.auth_jwt_key == () and c.auth_audience == "" and c.auth_leeway == 30
    c = load_config(["--auth-jwt-key", "old.key", "--auth-jwt-key", "new.pem",
                     "--auth-audience", "pacs", "--auth-leeway", "5"], {})
    assert c.auth_jwt_key == (Path("old.key"), Path("new.pem"))
    assert (c.auth_audience, c.auth_leeway) == ("pacs", 5)
    env = {"JPIP_AUTH_JWT_KEY": "/k/old.key, /k/new.pem", "JPIP_AUTH_AUDIENCE": "pacs"}
    assert load_config([], env).auth_jwt_key == (Path("/k/old.key"), Path("/k/new.pem"))
    # In a file: one path or a list, relative to the file.
    cfg = write_toml(tmp_path, 'auth_jwt_key = ["keys/a.key", "/etc/b.pem"]\n'
                               'auth_audience = "pacs"\n')
    c = load_config(["--config", str(cfg)], {})
    assert c.auth_jwt_key == (tmp_path / "keys/a.key", Path("/etc/b.pem"))
    cfg = write_toml(tmp_path, 'auth-jwt-key = "a.key"\n')
    assert load_config(["--config", str(cfg)], {}).auth_jwt_key == (tmp_path / "a.key",)
    # The command line wins over the environment, as for every option.
    assert load_config(["--auth-jwt-key", "x"], env).auth_jwt_key == (Path("x"),)
    assert ServerConfig(auth_jwt_key=["a", "b"]).auth_jwt_key == (Path("a"), Path("b"))
    with pytest.raises(ConfigError, match="auth_leeway.*must not be negative"):
        load_config(["--auth-leeway", "-1"], {})
    cfg = write_toml(tmp_path, "auth_jwt_key = [1]\n")
    with pytest.raises(ConfigError, match="auth_jwt_key.*list of paths"):
        load_config(["--config", str(cfg)], {})


def test_a_shared_session_store_and_workers() -> None:
    c = load_config(["--workers", "4", "--session-store", "rediss://cache.internal:6380/2"],
                    {"JPIP_REDIS_PASSWORD": "s3cret", "JPIP_SESSION_LEASE": "3"})
    assert (c.workers, c.session_store, c.redis_password, c.session_lease) == (
        4, "rediss://cache.internal:6380/2", "s3cret", 3.0)
    assert load_config([], {}).session_store == "memory"  # the embedded default


def test_passwords_never_appear_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(["--session-store", "redis://:hunter2@db:6379/x"], {})
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
    with pytest.raises(ConfigError) as info:
        ServerConfig(session_store="redis://user:hunter2@db:6379/x")
    assert "hunter2" not in str(info.value)
