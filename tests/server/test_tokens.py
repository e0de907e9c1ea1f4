"""Keys and token verification (server/tokens.py) with real keys and tokens made here."""
from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest

from server.tokens import KeyFileError, TokenError, TokenVerifier, load_keys
from tests.tokens import (
    AUDIENCE,
    ec_private,
    hs_secret,
    jwk_of,
    mint,
    private_pem,
    public_pem,
    rsa_private,
    tamper,
    unsigned,
    write_public,
)


def verifier(*paths: Path, audience: str | None = AUDIENCE, **kw) -> TokenVerifier:
    return TokenVerifier(load_keys(paths), audience=audience, **kw)


def refused(v: TokenVerifier, token: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        v.verify(token)
    # Nothing of the token in what is said about it.
    for part in token.split("."):
        if len(part) >= 8:
            assert part[:8] not in info.value.reason
    assert "\n" not in info.value.reason
    return info.value


# ----- key files -----

def test_hs_secret_file_bytes_one_trailing_newline_ignored(tmp_path: Path) -> None:
    secret = hs_secret(tmp_path / "k")
    (key,) = load_keys([tmp_path / "k"])
    assert key.key == secret and key.algorithm == "HS256"
    (tmp_path / "k2").write_bytes(secret + b"\n\n")  # only one newline is not the secret's
    assert load_keys([tmp_path / "k2"])[0].key == secret + b"\n"
    assert verifier(tmp_path / "k").verify(mint(secret)).subject == "alice"


def test_binary_secrets_and_text_that_is_no_secret(tmp_path: Path) -> None:
    binary = b"{\xff\xfe" + bytes(range(40))  # random bytes may start like JSON
    (tmp_path / "bin").write_bytes(binary)
    assert load_keys([tmp_path / "bin"])[0].key == binary
    # A JWKS or PEM file with a typo is an error, never an HMAC secret (its content is public).
    (tmp_path / "typo.json").write_text('{"keys": [' + json.dumps(jwk_of(ec_private(0))) + "")
    with pytest.raises(KeyFileError, match="not valid JSON"):
        load_keys([tmp_path / "typo.json"])


def test_short_or_missing_key_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"x" * 31 + b"\n")
    for path, says in ((tmp_path / "short", "at least 32 bytes"),
                       (tmp_path / "none", "cannot read")):
        with pytest.raises(KeyFileError, match=says):
            load_keys([path])


def test_pem_public_keys(tmp_path: Path) -> None:
    rsa_key = load_keys([write_public(tmp_path / "rsa.pem", rsa_private(0))])[0]
    ec_key = load_keys([write_public(tmp_path / "ec.pem", ec_private(0))])[0]
    assert (rsa_key.algorithm, ec_key.algorithm) == ("RS256", "ES256")
    (tmp_path / "priv.pem").write_bytes(private_pem(rsa_private(0)))
    with pytest.raises(KeyFileError, match="private key"):
        load_keys([tmp_path / "priv.pem"])
    (tmp_path / "bad.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC "
                                       b"KEY-----\n")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_keys([tmp_path / "bad.pem"])


def test_jwks_files(tmp_path: Path) -> None:
    jwks = {"keys": [jwk_of(rsa_private(0), kid="r0"), jwk_of(ec_private(0), kid="e0")]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    keys = load_keys([tmp_path / "jwks.json"])
    assert [(k.kid, k.algorithm) for k in keys] == [("r0", "RS256"), ("e0", "ES256")]
    (tmp_path / "one.json").write_text(json.dumps(jwk_of(ec_private(0))))
    assert load_keys([tmp_path / "one.json"])[0].algorithm == "ES256"
    for doc, says in (({"keys": []}, "no keys"), ([1], "neither"),
                      ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]}, "not supported"),
                      ({"keys": [{**jwk_of(rsa_private(0)), "alg": "HS256"}]}, "does not go"),
                      ({"keys": [{**jwk_of(rsa_private(0)), "use": "enc"}]}, "not \"sig\""),
                      ({"keys": [{**jwk_of(rsa_private(0)), "d": "AA"}]}, "private key")):
        (tmp_path / "bad.json").write_text(json.dumps(doc))
        with pytest.raises(KeyFileError, match=says):
            load_keys([tmp_path / "bad.json"])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(KeyFileError, match="not valid JSON"):
        load_keys([tmp_path / "broken.json"])


# ----- tokens -----

@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    hs_secret(tmp_path / "hs.key", b"s" * 40)
    return {"hs": tmp_path / "hs.key", "rsa": write_public(tmp_path / "rsa.pem", rsa_private(0)),
            "ec": write_public(tmp_path / "ec.pem", ec_private(0))}


@pytest.mark.parametrize("kind, alg", [("hs", "HS256"), ("rsa", "RS256"), ("ec", "ES256")])
def test_a_good_token(keys, kind: str, alg: str) -> None:
    signer = {"hs": b"s" * 40, "rsa": rsa_private(0), "ec": ec_private(0)}[kind]
    token = mint(signer, alg, targets=["studies/123/*"])
    principal = verifier(keys[kind]).verify(token)
    assert principal.subject == "alice" and principal.expires > time.time()
    assert principal.allows("studies/123/a.dcm") and not principal.allows("studies/9/a.dcm")


def test_refusals(keys) -> None:
    v = verifier(keys["hs"], keys["rsa"])
    hs, rs = b"s" * 40, rsa_private(0)
    cases = [
        (mint(hs, exp_in=-120), "expired"),
        (mint(hs, nbf=int(time.time()) + 600), "not_yet_valid"),
        (tamper(mint(hs, targets=["a/*"]), jpip_targets=["**"]), "bad_signature"),
        (tamper(mint(rs, "RS256"), sub="mallory"), "bad_signature"),
        (mint(b"t" * 40), "bad_signature"),  # another secret
        (mint(hs, aud="another-service"), "wrong_audience"),
        (mint(hs, aud=None), "invalid_claims"),  # the audience is required when configured
        (mint(hs, exp_in=None), "invalid_claims"),
        (mint(hs, sub=None), "invalid_claims"),
        (mint(hs, targets="**"), "invalid_claims"),  # a string is not a list of patterns
        (mint(hs, targets=["../x"]), "invalid_claims"),
        (unsigned(sub="alice", exp=int(time.time()) + 60, aud=AUDIENCE,
                  jpip_targets=["**"]), "unknown_key"),
        (mint(hs + b"s" * 8, "HS384"), "unknown_key"),  # not the algorithm the key is pinned to
        ("not.a.token", "malformed"),
        ("x" * 20000, "malformed"),
    ]
    for token, code in cases:
        assert refused(v, token).code == code, token[:40]


def test_hs_rs_confusion_is_refused(keys) -> None:
    # The classic attack: HS256 "signed" with the server's RSA public key as the secret.
    pem = public_pem(rsa_private(0))
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {"sub": "mallory", "exp": int(time.time()) + 60, "aud": AUDIENCE,
               "jpip_targets": ["**"]}
    signing = jwt.api_jws.base64url_encode(json.dumps(header).encode()) + b"." + \
        jwt.api_jws.base64url_encode(json.dumps(payload).encode())
    import hashlib
    import hmac
    sig = jwt.api_jws.base64url_encode(hmac.new(pem, signing, hashlib.sha256).digest())
    forged = (signing + b"." + sig).decode()
    assert refused(verifier(keys["rsa"]), forged).code == "unknown_key"
    # And an RS256 token against a server that only has an HMAC secret.
    assert refused(verifier(keys["hs"]), mint(rsa_private(0), "RS256")).code == "unknown_key"


def test_no_audience_configured(keys) -> None:
    v = verifier(keys["hs"], audience=None)
    assert v.verify(mint(b"s" * 40, aud=None)).subject == "alice"
    assert refused(v, mint(b"s" * 40)).code == "wrong_audience"  # an aud we were not told of


def test_rotation_two_keys(tmp_path: Path, keys) -> None:
    old = b"o" * 40
    hs_secret(tmp_path / "old.key", old)
    v = verifier(tmp_path / "old.key", keys["hs"])
    assert v.verify(mint(old, sub="before")).subject == "before"
    assert v.verify(mint(b"s" * 40, sub="after")).subject == "after"
    # A JWKS in rotation: the kid picks the key; without a kid each key is tried.
    jwks = {"keys": [jwk_of(rsa_private(0), kid="2024"), jwk_of(rsa_private(1), kid="2025")]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    v = verifier(tmp_path / "jwks.json")
    assert v.verify(mint(rsa_private(1), "RS256", kid="2025", sub="k")).subject == "k"
    assert v.verify(mint(rsa_private(1), "RS256", sub="nokid")).subject == "nokid"
    assert refused(v, mint(rsa_private(1), "RS256", kid="2024")).code == "bad_signature"
    assert refused(v, mint(rsa_private(1), "RS256", kid="1999")).code == "unknown_key"


def test_leeway_and_the_kept_tokens(keys) -> None:
    now = [time.time()]
    v = verifier(keys["hs"], leeway=30, clock=lambda: now[0])
    token = mint(b"s" * 40, exp_in=-10)  # expired 10 s ago: within the leeway
    first = v.verify(token)
    assert v.verify(token) is first  # kept: verified once
    now[0] += 60  # the kept token expires too
    assert refused(v, token).code == "expired"
    small = verifier(keys["hs"], kept=2)
    for n in range(5):
        small.verify(mint(b"s" * 40, sub=f"u{n}"))
    assert len(small._verified) == 2
