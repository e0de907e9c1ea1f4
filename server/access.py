"""Who may see what: tokens checked, targets allowed, sessions kept to their owner.

Off unless `--auth-jwt-key` is given: then every request for a target or its data carries a
JSON Web Token (server/tokens.py), in `Authorization: Bearer <token>` or, for clients that can
only follow a URL, in an `access_token=` query field (RFC 6750 2.1, 2.3), and may see only the
targets its `jpip_targets` claim allows (server/scopes.py). Everything that shows a target or
its data asks here: the JPIP handler (`Guard`, held in its state), the listing, the viewer page
and its APIs, DICOM JSON (`authenticate`, `may_see`, `require_target`, `require_path`).

Refusals are `AccessDenied` (server/errors.py answers them): 400 `invalid_request` (the token
given twice, a malformed Authorization header), 401 (no token; a token malformed, expired,
tampered, for another audience: `invalid_token`), 403 `insufficient_scope` (a target the token
does not allow, a session another subject opened), each with a one-line reason and a
`WWW-Authenticate: Bearer` challenge, and counted by reason in `jpip_auth_denials_total`. No
answer and no log line ever holds the token.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from aiohttp import web

from server.tokens import KeyFileError, Principal, TokenError, TokenVerifier, load_keys

__all__ = ["DENIAL_REASONS", "GUARD_KEY", "PRINCIPAL_KEY", "REALM", "AccessDenied", "Guard",
           "authenticate", "create_guard", "may_see", "owner_denied", "require_path",
           "require_target"]

REALM = "jpip"
# Metrics labels: the token refusals of server/tokens.py, then ours.
DENIAL_REASONS = ("missing", "invalid_request", "malformed", "unknown_key", "bad_signature",
                  "expired", "not_yet_valid", "wrong_audience", "invalid_claims", "target",
                  "session_owner")
OWNER_REASON = "the channel belongs to a session another subject opened"
_DESCRIPTION_SAFE = {c for c in map(chr, range(0x20, 0x7f))} - {'"', "\\"}


class AccessDenied(Exception):
    """A request refused for its credentials: `status` 400, 401 or 403 with a one-line
    `reason` and the `WWW-Authenticate` challenge in `headers`."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str]) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers)


def _challenge(error: str | None = None, description: str | None = None) -> dict[str, str]:
    value = f'Bearer realm="{REALM}"'
    if error is not None:
        value += f', error="{error}"'
    if description is not None:
        safe = "".join(c for c in description if c in _DESCRIPTION_SAFE)
        value += f', error_description="{safe}"'
    return {"WWW-Authenticate": value}


class Guard:
    """The access rules of a server whose access control is on."""

    def __init__(self, verifier: TokenVerifier, root: Path,
                 on_denial: Callable[[str], None] | None = None) -> None:
        self.verifier = verifier
        self._root = os.path.realpath(root) + os.sep
        self._on_denial = on_denial or (lambda reason: None)

    # ----- 400 / 401 -----
    def principal(self, request: web.BaseRequest, query_token: str | None) -> Principal:
        """Who the request is from: the token of its Authorization header or of its
        `access_token` field (`query_token`), verified."""
        headers = request.headers.getall("Authorization", ())
        if len(headers) > 1:
            raise self.invalid_request("more than one Authorization header")
        token = None
        if headers:
            scheme, _, credentials = headers[0].strip().partition(" ")
            if scheme.lower() != "bearer":
                raise self._deny(401, "missing", "the Authorization header holds no Bearer "
                                 "token", _challenge())
            token = credentials.strip()
            if not token or " " in token:
                raise self.invalid_request("the Authorization header is not 'Bearer <token>'")
            if query_token is not None:
                raise self.invalid_request("a token in both the Authorization header and "
                                            "access_token")
        else:
            token = query_token
        if not token:
            raise self._deny(401, "missing", "an access token is required: send "
                             "Authorization: Bearer <token>, or access_token=<token>",
                             _challenge())
        try:
            return self.verifier.verify(token)
        except TokenError as e:
            raise self._deny(401, e.code, e.reason,
                             _challenge("invalid_token", e.reason)) from None

    def invalid_request(self, reason: str) -> AccessDenied:
        return self._deny(400, "invalid_request", reason, _challenge("invalid_request", reason))

    # ----- 403 -----
    def check_target(self, principal: Principal, name: str) -> None:
        """The target as the request names it (before any file-system access: whether a
        name exists is not told to whom it is not allowed)."""
        if not principal.allows(name):
            raise self.target_denied()

    def check_path(self, principal: Principal, real_path: str | os.PathLike[str]) -> None:
        """The file a target resolved to (a link is allowed only if where it leads is)."""
        real = os.fspath(real_path)
        if not (real.startswith(self._root) and principal.allows(real[len(self._root):])):
            raise self.target_denied()

    def owner_denied(self) -> AccessDenied:
        return self._deny(403, "session_owner", OWNER_REASON,
                          _challenge("insufficient_scope", OWNER_REASON))

    def target_denied(self) -> AccessDenied:
        reason = "the token does not allow this target"
        return self._deny(403, "target", reason, _challenge("insufficient_scope", reason))

    def _deny(self, status: int, code: str, reason: str,
              headers: Mapping[str, str]) -> AccessDenied:
        self._on_denial(code)
        return AccessDenied(status, reason, headers)


def owner_denied(guard: Guard | None) -> AccessDenied:
    """The refusal of a request on a session whose owner is another subject (or none): a
    session's requests, and its `cclose`, come from the subject that opened it."""
    if guard is None:  # a session opened with a token, met by a server with access control off
        return AccessDenied(403, OWNER_REASON, {})
    return guard.owner_denied()


def create_guard(config, on_denial: Callable[[str], None] | None = None) -> Guard | None:
    """The guard `config` asks for, or None when access control is off. Reads the key files
    (KeyFileError when one cannot be used)."""
    if not config.auth_jwt_key:
        return None
    keys = load_keys(config.auth_jwt_key)
    if not keys:
        raise KeyFileError("no verification key in the key files")
    verifier = TokenVerifier(keys, audience=config.auth_audience or None,
                             leeway=config.auth_leeway)
    return Guard(verifier, Path(config.root), on_denial)


# ----- the hooks of the viewer, the listing and DICOM JSON --------------------------------------

GUARD_KEY = web.AppKey("jpip_guard", Guard)
PRINCIPAL_KEY = web.RequestKey("jpip_principal", Principal)


def authenticate(request: web.Request) -> Principal | None:
    """The request's principal (None when access control is off); AccessDenied when its
    token is missing or refused. Kept on the request for `may_see`."""
    guard = request.app.get(GUARD_KEY)
    if guard is None:
        return None
    principal = request.get(PRINCIPAL_KEY)
    if principal is None:
        tokens = request.query.getall("access_token", ())
        if len(tokens) > 1:
            raise guard.invalid_request("access_token given more than once")
        principal = guard.principal(request, tokens[0] if tokens else None)
        request[PRINCIPAL_KEY] = principal
    return principal


def may_see(request: web.Request, target: str) -> bool:
    """True if `request` may see `target` (a path under the image root, as a client names it).

    A folder is passed with a trailing '/': true if the request may see something under it
    (the listing shows the folder then). Name-based, with no I/O: the listing calls it for every
    entry of a folder. Call `authenticate` first (on the event loop).
    """
    if request.app.get(GUARD_KEY) is None:
        return True
    principal = authenticate(request)
    assert principal is not None
    if target.endswith("/"):
        return principal.scope.may_contain(target)
    return principal.allows(target)


def require_target(request: web.Request, target: str) -> None:
    """403 unless `may_see(request, target)` (401 first when the token is missing)."""
    authenticate(request)
    if not may_see(request, target):
        guard = request.app.get(GUARD_KEY)
        if guard is None:  # a hook replaced by a test, or an open server's own decision
            raise AccessDenied(403, "not allowed", {})
        raise guard.target_denied()


def require_path(request: web.Request, real_path: str | os.PathLike[str]) -> None:
    """403 unless the file a target resolved to is allowed too (links)."""
    guard = request.app.get(GUARD_KEY)
    if guard is not None:
        principal = authenticate(request)
        assert principal is not None
        guard.check_path(principal, real_path)
