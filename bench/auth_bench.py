"""What access control costs per request: `python -m bench auth [--requests N] [--rounds R]`.

One event loop runs the server app twice in the same run, without and with `--auth-jwt-key`
(HS256, and an RS256 key beside it), and a client sending the same requests on a keep-alive
connection (the token in `Authorization`, a new token per round so its first request pays the
signature check). Workloads, on the 4096^2 RGB interoperability image:

- `repeat`: a session asking again for a window it holds (the answer is the EOR alone: the
  cheapest JPIP request, where the check weighs most);
- `stateless`: a thumbnail (`fsiz=64,64`) without a session (answered from the response cache).

Then the parts alone, in microseconds per call: verifying a token the first time (HS256, RS256,
ES256), a token already verified (a look-up), a request's whole check once its token is known
(header, look-up, the name and the resolved file), and deciding a target name against 1 and 100
patterns (first time; then kept per token).

Figures are medians over rounds of the process's CPU time per request (what the server costs,
whatever else the machine runs).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer, make_mocked_request

from server.access import Guard
from server.app import create_app
from server.config import ServerConfig
from server.scopes import TargetScope
from server.tokens import TokenVerifier, load_keys

from .request_bench import IMAGE, add_image_root, image_missing

AUDIENCE = "bench"


def _keys(folder: Path):
    """An HS256 secret file and an RSA/EC public key file; the signing keys."""
    import secrets

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    secret = secrets.token_hex(32).encode()  # as `openssl rand -hex 32` writes it
    (folder / "hs.key").write_bytes(secret + b"\n")
    signers = {"HS256": secret, "RS256": rsa.generate_private_key(65537, 2048),
               "ES256": ec.generate_private_key(ec.SECP256R1())}
    files = [folder / "hs.key"]
    for alg in ("RS256", "ES256"):
        path = folder / f"{alg}.pem"
        path.write_bytes(signers[alg].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        files.append(path)
    return files, signers


def _token(signer, alg: str, sub: str, targets: list[str]) -> str:
    import jwt
    return jwt.encode({"sub": sub, "aud": AUDIENCE, "exp": int(time.time()) + 3600,
                       "jpip_targets": targets}, signer, algorithm=alg)


async def _cpu_per_request(http: aiohttp.ClientSession, urls: list[str],
                           headers: dict[str, str]) -> float:
    gc.collect()
    c0 = time.process_time()
    for url in urls:
        async with http.get(url, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: {r.status}")
    return (time.process_time() - c0) / len(urls)


async def _server_pair(root: Path, tmp: Path, key_files: list[Path]) -> dict[str, TestServer]:
    servers = {}
    for name, keys in (("off", ()), ("on", tuple(key_files))):
        config = ServerConfig(root=root, index_cache_dir=tmp / "ix", port=0, max_sessions=100000,
                              auth_jwt_key=keys, auth_audience=AUDIENCE)
        servers[name] = TestServer(create_app(config))
        await servers[name].start_server()
    return servers


async def requests_bench(root: Path, requests: int, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        key_files, signers = _keys(Path(tmp))
        servers = await _server_pair(root, Path(tmp), key_files)
        try:
            async with aiohttp.ClientSession() as http:
                samples: dict[tuple[str, str], list[float]] = {}
                for round_no in range(rounds):
                    token = _token(signers["HS256"], "HS256", f"user{round_no}", ["**"])
                    for mode, server in servers.items():
                        base = str(server.make_url("")).rstrip("/")
                        headers = {"Authorization": f"Bearer {token}"} if mode == "on" else {}
                        async with http.get(f"{base}/jpip?target={IMAGE}&cnew=http&fsiz=64,64"
                                            "&type=jpp-stream", headers=headers) as r:
                            await r.read()
                            cnew = r.headers["JPIP-cnew"]
                        cid = dict(kv.split("=", 1) for kv in cnew.split(","))["cid"]
                        work = {
                            "repeat": [f"{base}/jpip?cid={cid}&fsiz=64,64&type=jpp-stream"]
                            * requests,
                            "stateless": [f"{base}/jpip?target={IMAGE}&fsiz=64,64"
                                          "&type=jpp-stream"] * requests,
                        }
                        for name, urls in work.items():
                            per = await _cpu_per_request(http, urls, headers)
                            samples.setdefault((name, mode), []).append(per)
                for name in ("repeat", "stateless"):
                    off = statistics.median(samples[(name, "off")]) * 1e6
                    on = statistics.median(samples[(name, "on")]) * 1e6
                    results[name] = {"off_cpu_us": off, "on_cpu_us": on, "added_us": on - off}
        finally:
            for server in servers.values():
                await server.close()
    return results


def parts_bench(repeat: int = 2000) -> dict[str, float]:
    """Microseconds per call of the parts of the check."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        key_files, signers = _keys(Path(tmp))
        keys = load_keys(key_files)
        for alg in ("HS256", "RS256", "ES256"):
            tokens = [_token(signers[alg], alg, f"u{n}", ["**"]) for n in range(200)]
            verifier = TokenVerifier(keys, audience=AUDIENCE)
            t0 = time.perf_counter()
            for t in tokens:
                verifier.verify(t)
            out[f"verify {alg} (first time)"] = (time.perf_counter() - t0) / len(tokens) * 1e6
        t0 = time.perf_counter()
        for _ in range(repeat):
            verifier.verify(tokens[0])
        out["verify (already verified)"] = (time.perf_counter() - t0) / repeat * 1e6
        # What the JPIP handler does per request once the token is known: read the header,
        # look the token up, check the name and the file it resolved to.
        root = Path(tmp)
        guard = Guard(verifier, root)
        request = make_mocked_request("GET", "/jpip", headers={
            "Authorization": f"Bearer {tokens[0]}"})
        real = str(root.resolve() / "studies" / "1" / "ct.dcm")
        t0 = time.perf_counter()
        for _ in range(repeat):
            principal = guard.principal(request, None)
            guard.check_target(principal, "studies/1/ct.dcm")
            guard.check_path(principal, real)
        out["a request's whole check"] = (time.perf_counter() - t0) / repeat * 1e6
    for count in (1, 100):
        scope = TargetScope([f"studies/{n}/**/*.dcm" for n in range(count)])
        names = [f"studies/{n % 150}/series/{n}/ct.dcm" for n in range(repeat)]
        t0 = time.perf_counter()
        for name in names:
            scope.allows(name)
        out[f"target against {count} pattern(s)"] = (time.perf_counter() - t0) / repeat * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench auth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_root(ap)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if image_missing(args.root):
        return 2
    results = asyncio.run(requests_bench(args.root, args.requests, args.rounds))
    print("CPU microseconds per request, access control off / on (same run)")
    for name, r in results.items():
        print(f"{name:10} {r['off_cpu_us']:7.0f} {r['on_cpu_us']:7.0f}  "
              f"(+{r['added_us']:.0f} us)")
    print("the parts, microseconds per call")
    for name, us in parts_bench().items():
        print(f"  {name:30} {us:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
