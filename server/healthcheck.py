"""`python -m server.healthcheck`: exit 0 when this machine's jpip-server is ready.

For container health checks: it reads the server's own configuration (JPIP_* environment,
JPIP_CONFIG file), so `-e JPIP_PORT=9000` moves the check with the server, and asks /healthz
(200 while the image root can be read, 503 when it cannot).
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from server.config import ConfigError, load_config

# A server listening on every address is asked on loopback.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
TIMEOUT = 4.0  # seconds; below the HEALTHCHECK --timeout of docker/Dockerfile


def health_url(host: str, port: int) -> str:
    host = _LOOPBACK.get(host, host)
    return f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"


def main() -> int:
    try:
        config = load_config([], os.environ)
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 2
    url = health_url(config.host, config.port)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"healthcheck: {url} answered {exc.code}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"healthcheck: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
