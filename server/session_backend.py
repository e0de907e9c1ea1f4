"""The session store a server's config names: in this process's memory (the default), or in
Redis (`--session-store redis://...`), shared by every worker and host that names it."""
from __future__ import annotations

from cache.redis_sessions import RedisSessionStore
from cache.sessions import MemorySessionStore, SessionStore
from server.audit import SessionAudit
from server.config import ServerConfig


def make_session_store(config: ServerConfig, metrics=None) -> SessionStore:
    """The store for `config`, reporting to `metrics` (server.metrics.Metrics) if given."""

    def session_event(kind: str) -> None:
        if metrics is not None:
            metrics.session_event(kind)

    if config.session_store == "memory":
        return MemorySessionStore(max_sessions=config.max_sessions,
                                  idle_timeout=config.session_idle_timeout,
                                  max_model_bytes=config.max_session_bytes,
                                  on_event=session_event,
                                  on_end=SessionAudit(config.root))
    return RedisSessionStore(
        config.session_store,
        # A password in the URL wins over the option (JPIP_REDIS_PASSWORD in the environment).
        password=config.redis_password or None,
        max_sessions=config.max_sessions, idle_timeout=config.session_idle_timeout,
        max_model_bytes=config.max_session_bytes, lease=config.session_lease,
        on_event=session_event, on_end=SessionAudit(config.root),
        on_round_trip=metrics.store_round_trip if metrics is not None else None,
        on_count=metrics.session_count if metrics is not None else None)
