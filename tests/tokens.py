"""Real keys and JSON Web Tokens made by the tests (PyJWT and cryptography), never fixtures
copied from elsewhere: HS256 secrets, RSA and EC key pairs, tokens signed with them, and
tokens tampered with after signing."""
from __future__ import annotations

import base64
import json
import secrets
import time
from functools import cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "jpip-tests"


def hs_secret(path: Path, secret: bytes | None = None) -> bytes:
    """Writes an HMAC secret file (with the trailing newline `echo` would leave)."""
    secret = secret if secret is not None else secrets.token_hex(32).encode()
    path.write_bytes(secret + b"\n")
    return secret


@cache
def rsa_private(n: int = 0) -> rsa.RSAPrivateKey:
    """RSA key pair number `n` (made once per test process: generation takes a while)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_private(n: int = 0) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(private: Any) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(private: Any) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def write_public(path: Path, private: Any) -> Path:
    path.write_bytes(public_pem(private))
    return path


def jwk_of(private: Any, kid: str | None = None, alg: str | None = None) -> dict[str, Any]:
    """The public JWK of a key pair (what a gateway publishes in its JWKS)."""
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) \
        else jwt.algorithms.ECAlgorithm
    jwk = json.loads(algorithm.to_jwk(private.public_key()))
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    return jwk


def mint(key: Any, alg: str = "HS256", *, sub: str | None = "alice",
         targets: Any = ("**",), exp_in: float | None = 300, aud: str | None = AUDIENCE,
         kid: str | None = None, **claims: Any) -> str:
    """A signed token; `key` is the HMAC secret or the private key. None leaves a claim out."""
    now = time.time()
    payload: dict[str, Any] = {"iat": int(now)}
    if sub is not None:
        payload["sub"] = sub
    if targets is not None:
        payload["jpip_targets"] = list(targets) if not isinstance(targets, str) else targets
    if exp_in is not None:
        payload["exp"] = int(now + exp_in)
    if aud is not None:
        payload["aud"] = aud
    payload.update(claims)
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def tamper(token: str, **changes: Any) -> str:
    """The token with its payload changed (e.g. a wider jpip_targets) and the old signature."""
    header, payload, signature = token.split(".")
    claims = json.loads(_unb64(payload))
    claims.update(changes)
    return ".".join((header, _b64(json.dumps(claims).encode()), signature))


def unsigned(**claims: Any) -> str:
    """An `alg: none` token (which no server may accept)."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."
