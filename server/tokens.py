"""JSON Web Tokens: the verification keys, and what a verified token says (a `Principal`).

Keys come from files (`--auth-jwt-key`, repeatable: during a rotation the old and the new key
are both given). A file is one of:

- a PEM public key (`-----BEGIN PUBLIC KEY-----`) or certificate: RSA (RS256, at least 2048
  bits) or EC (P-256: ES256, P-384: ES384, P-521: ES512);
- a JWKS (`{"keys": [...]}`) or a single JWK (`{"kty": ...}`): RSA, EC or `oct` keys, each
  with its `kid` and `alg` when given;
- anything else is an HMAC secret for HS256: the file's bytes, one trailing newline ignored,
  at least 32 bytes (RFC 7518 3.2). Text that starts like PEM or JSON is never a secret (a
  broken JWKS is an error, not a secret anyone holding the public keys could sign with).

Each key verifies one algorithm only, fixed by its type (the token's header does not choose):
no `none`, no HMAC with a public key. A token is tried against the keys of its header's `alg`
(and `kid`, when both name one). `exp` and `sub` are required, `exp`/`nbf`/`iat` checked with
a small leeway for clock skew, `aud` must be the configured audience (and absent when none is
configured). The claim `jpip_targets` is the list of target patterns (server/scopes.py).

Errors are `TokenError`s with a fixed reason code and a one-line message of our own: neither
PyJWT's messages nor anything of the token are passed on.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.scopes import PatternError, TargetScope

__all__ = ["KeyFileError", "Principal", "TokenError", "TokenVerifier", "VerificationKey",
           "load_keys", "TARGETS_CLAIM"]

TARGETS_CLAIM = "jpip_targets"
MIN_HMAC_BYTES = 32
MIN_RSA_BITS = 2048
MAX_TOKEN_LENGTH = 16384
MAX_KEY_FILE = 1 << 20
VERIFIED_KEPT = 4096       # verified tokens kept (a token is verified once, then looked up)
ALLOWED_NAMES_KEPT = 256   # per token: target names already decided
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_JWK_ALGORITHMS = {"RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
                   "EC": ("ES256", "ES384", "ES512"), "oct": ("HS256", "HS384", "HS512")}
_JWK_DEFAULT = {"RSA": "RS256", "oct": "HS256"}


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and what is wrong."""


class TokenError(Exception):
    """A token that is refused (HTTP 401). `code` is a fixed reason (a metrics label),
    `reason` one line for the client and the log."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerificationKey:
    key: Any                 # what PyJWT verifies with: bytes, or a public key object
    algorithm: str           # the one algorithm this key verifies
    kid: str | None = None
    source: str = ""         # the file it came from (for messages)


@dataclass(slots=True, eq=False)
class Principal:
    """What a verified token says: who (`subject`), which targets, until when."""

    subject: str
    scope: TargetScope
    expires: float           # exp, in seconds since the epoch
    _decided: dict[str, bool] = field(default_factory=dict, repr=False)

    def allows(self, name: str) -> bool:
        """True if the token allows the target `name` (kept: asked again per request)."""
        decided = self._decided.get(name)
        if decided is None:
            decided = self.scope.allows(name)
            if len(self._decided) >= ALLOWED_NAMES_KEPT:
                self._decided.clear()
            self._decided[name] = decided
        return decided


# ----- keys -----------------------------------------------------------------------------------

def load_keys(paths: Iterable[Path]) -> tuple[VerificationKey, ...]:
    """Every key of every file; KeyFileError names the file at fault."""
    keys: list[VerificationKey] = []
    for path in paths:
        keys.extend(_keys_of_file(Path(path)))
    return tuple(keys)


def _keys_of_file(path: Path) -> list[VerificationKey]:
    where = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_KEY_FILE:
            raise KeyFileError(f"{where}: larger than {MAX_KEY_FILE} bytes: not a key file")
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read {where}: {e.strerror}") from None
    # Text that reads as a PEM block or JSON is never taken for a secret: a public key or a
    # JWKS (published data) used as an HMAC secret would let anyone sign tokens.
    text = data.lstrip()
    if text.startswith(b"-----BEGIN"):
        return [_pem_key(data, where)]
    if text.startswith((b"{", b"[")) and _is_utf8(data):
        return _jwk_keys(data, where)
    secret = data[:-1] if data.endswith(b"\n") else data
    if secret.endswith(b"\r"):
        secret = secret[:-1]
    if len(secret) < MIN_HMAC_BYTES:
        raise KeyFileError(f"{where}: an HMAC secret must be at least {MIN_HMAC_BYTES} bytes "
                           f"(it has {len(secret)}); e.g. `openssl rand -hex 32 > {where}`")
    return [VerificationKey(secret, "HS256", None, where)]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False  # binary: random secret bytes may well start with '{'
    return True


def _public_algorithm(key: Any, where: str) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(f"{where}: RSA keys of fewer than {MIN_RSA_BITS} bits are "
                               f"refused (this one has {key.key_size})")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise KeyFileError(f"{where}: EC curve {key.curve.name} is not supported "
                               "(P-256, P-384, P-521)")
        return alg
    raise KeyFileError(f"{where}: {type(key).__name__} keys are not supported (RSA or EC)")


def _pem_key(data: bytes, where: str) -> VerificationKey:
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(f"{where}: a private key; give the server the public key only "
                           "(openssl pkey -in KEY -pubout)")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{where}: not a PEM public key or certificate") from None
    return VerificationKey(key, _public_algorithm(key, where), None, where)


def _jwk_keys(data: bytes, where: str) -> list[VerificationKey]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(f"{where}: starts like JSON but is not valid JSON") from None
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        jwks = doc["keys"]
    elif isinstance(doc, dict) and "kty" in doc:
        jwks = [doc]
    else:
        raise KeyFileError(f"{where}: JSON, but neither a JWKS ({{\"keys\": [...]}}) nor a JWK")
    if not jwks:
        raise KeyFileError(f"{where}: the JWKS holds no keys")
    keys = []
    for n, jwk in enumerate(jwks):
        label = f"{where}: key {n}" + (f" (kid {jwk.get('kid')!r})"
                                       if isinstance(jwk, dict) and "kid" in jwk else "")
        keys.append(_jwk_key(jwk, label))
    return keys


def _jwk_key(jwk: object, label: str) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise KeyFileError(f"{label}: not a JSON object")
    if jwk.get("use", "sig") != "sig":
        raise KeyFileError(f"{label}: \"use\" is {jwk.get('use')!r}, not \"sig\"")
    if "d" in jwk:
        raise KeyFileError(f"{label}: a private key; give the server the public part only")
    kty = jwk.get("kty")
    if kty not in _JWK_ALGORITHMS:
        raise KeyFileError(f"{label}: key type {kty!r} is not supported (RSA, EC, oct)")
    alg = jwk.get("alg")
    if alg is not None and alg not in _JWK_ALGORITHMS[kty]:
        raise KeyFileError(f"{label}: \"alg\" {alg!r} does not go with a {kty} key")
    try:
        parsed = jwt.PyJWK(jwk, algorithm=alg)
    except jwt.PyJWTError:
        raise KeyFileError(f"{label}: not a usable {kty} key") from None
    key = parsed.key
    if kty == "oct":
        if len(key) < MIN_HMAC_BYTES:
            raise KeyFileError(f"{label}: an HMAC key must be at least {MIN_HMAC_BYTES} bytes")
        alg = alg or _JWK_DEFAULT[kty]
    else:
        default = _public_algorithm(key, label)
        alg = alg or default
        if kty == "EC" and alg != default:
            raise KeyFileError(f"{label}: \"alg\" {alg} does not go with curve "
                               f"{key.curve.name}")
    kid = jwk.get("kid")
    return VerificationKey(key, alg, kid if isinstance(kid, str) else None, label)


# ----- verification ---------------------------------------------------------------------------

class TokenVerifier:
    """Verifies tokens against the configured keys; a verified token is kept (bounded) until
    it expires, so a client's next requests cost a dictionary look-up."""

    def __init__(self, keys: Iterable[VerificationKey], *, audience: str | None = None,
                 leeway: float = 30.0, clock: Callable[[], float] = time.time,
                 kept: int = VERIFIED_KEPT) -> None:
        self.keys = tuple(keys)
        if not self.keys:
            raise KeyFileError("no verification key")
        self.audience = audience or None
        self.leeway = leeway
        self._clock = clock
        self._kept = kept
        self._verified: OrderedDict[str, Principal] = OrderedDict()
        self._required = ["exp", "sub"] + (["aud"] if self.audience else [])

    def verify(self, token: str) -> Principal:
        """The token's principal; TokenError (with a reason code) when it is refused."""
        principal = self._verified.get(token)
        now = self._clock()
        if principal is not None:
            if now <= principal.expires + self.leeway:
                return principal
            del self._verified[token]
            raise TokenError("expired", "the token has expired")
        principal = self._verify(token, now)
        self._verified[token] = principal
        if len(self._verified) > self._kept:
            self._verified.popitem(last=False)  # the oldest verified
        return principal

    def _verify(self, token: str, now: float) -> Principal:
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("malformed", f"the token is longer than {MAX_TOKEN_LENGTH} "
                             "characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed", "the token is not a JSON Web Token") from None
        alg, kid = header.get("alg"), header.get("kid")
        candidates = [k for k in self.keys if k.algorithm == alg
                      and (kid is None or k.kid is None or k.kid == kid)]
        if not candidates:
            raise TokenError("unknown_key", "the token is signed with an algorithm or key "
                             "this server does not accept")
        for key in candidates:
            try:
                claims = jwt.decode(
                    token, key.key, algorithms=[key.algorithm], audience=self.audience,
                    leeway=self.leeway, options={"require": self._required})
            except jwt.InvalidSignatureError:
                continue  # another key (a rotation) may have signed it
            except jwt.PyJWTError as e:
                raise _refusal(e) from None
            return _principal(claims)
        raise TokenError("bad_signature", "the token's signature does not verify")


def _refusal(e: jwt.PyJWTError) -> TokenError:
    """Our own message for PyJWT's error (its messages may quote claims)."""
    if isinstance(e, jwt.ExpiredSignatureError):
        return TokenError("expired", "the token has expired")
    if isinstance(e, jwt.ImmatureSignatureError):
        return TokenError("not_yet_valid", "the token is not valid yet (nbf or iat)")
    if isinstance(e, jwt.InvalidAudienceError):
        return TokenError("wrong_audience", "the token is not meant for this server (aud)")
    if isinstance(e, jwt.MissingRequiredClaimError):
        return TokenError("invalid_claims", f"the token has no {e.claim} claim")
    if isinstance(e, jwt.DecodeError):  # the header was read: the payload or a claim
        return TokenError("malformed", "the token's payload or claims are malformed")
    return TokenError("invalid_claims", "the token's claims are malformed")


def _principal(claims: dict[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenError("invalid_claims", "the token's sub claim is not a non-empty string")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise TokenError("invalid_claims", "the token's exp claim is not a number")
    try:
        scope = TargetScope(claims.get(TARGETS_CLAIM, ()))
    except PatternError as e:
        raise TokenError("invalid_claims", str(e)) from None
    return Principal(subject, scope, float(exp))
