"""The audit log: one line per JPIP session when it ends, on the `jpip.audit` logger.

Who (the token's subject, '-' when access control is off), which target (its name under the
image root), how many bytes were sent, how long the session lived and why it ended (closed by
the client, expired, evicted, or closed at shutdown). It names no token and no channel id (a
channel id is a session's only credential when access control is off).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from cache.sessions import SessionState

AUDIT_LOGGER = "jpip.audit"
log = logging.getLogger(AUDIT_LOGGER)


def _printable(text: str) -> str:
    return text if text.isprintable() else repr(text)  # one line whatever a name holds


class SessionAudit:
    """The `on_end` hook of a session store: logs each session that ends."""

    def __init__(self, root: Path) -> None:
        self._root = os.path.realpath(root) + os.sep

    def __call__(self, session: SessionState, why: str, seconds: float) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        target = session.target
        if target.startswith(self._root):
            target = target[len(self._root):]
        target = _printable(target)
        subject = _printable(session.owner) if session.owner is not None else "-"
        fields = {"subject": subject, "target": target, "bytes": session.bytes_sent,
                  "bytes_saved": session.bytes_saved, "duration_s": round(seconds, 3),
                  "ended": why}
        log.info("session ended (%s): subject=%s target=%s bytes=%d duration=%.1fs", why,
                 subject, target, session.bytes_sent, seconds, extra=fields)
