"""The real client address behind trusted reverse proxies (X-Forwarded-For / -Proto).

The headers are believed only when the direct peer is a trusted proxy; otherwise anyone could
claim any address. X-Forwarded-For is read from the right: each proxy appends the address it saw,
so the right-most address that is not a trusted proxy is the client.
"""
from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from aiohttp import web

from server.logs import RequestInfo

log = logging.getLogger("jpip.proxy")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_ip(text: str) -> IPAddress | None:
    """Parses '1.2.3.4', '1.2.3.4:80', '::1', '[::1]:80'; None when it is not an address."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class TrustedProxies:
    """A set of networks whose forwarding headers we believe."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str | None) -> bool:
        ip = _parse_ip(address) if address else None
        return ip is not None and any(ip in net for net in self.networks)

    def client(self, peer: str | None, forwarded_for: Iterable[str],
               forwarded_proto: Iterable[str]) -> tuple[str | None, str | None]:
        """(client address, scheme) from the peer and the header values (scheme None: keep)."""
        if not self.trusts(peer):
            return peer, None
        hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
        client = peer
        for hop in reversed(hops):
            ip = _parse_ip(hop)
            if ip is None:
                break  # garbage from here on: the last trusted hop is all we know
            client = str(ip)
            if not any(ip in net for net in self.networks):
                break
        protos = [p.strip().lower() for value in forwarded_proto for p in value.split(",")]
        scheme = protos[-1] if protos and protos[-1] in ("http", "https") else None
        return client, scheme


def forwarded_request(request: web.Request, info: RequestInfo,
                      trusted: TrustedProxies) -> web.Request:
    """The request as handlers see it behind trusted proxies: the real client in
    request.remote and request.scheme (a clone when they differ from the peer's), also noted
    in `info` for the access log (server.middleware calls this, only with trusted proxies)."""
    remote, scheme = trusted.client(
        request.remote,
        request.headers.getall("X-Forwarded-For", ()),
        request.headers.getall("X-Forwarded-Proto", ()))
    info.remote, info.scheme = remote, scheme or request.scheme
    if remote != request.remote or (scheme and scheme != request.scheme):
        kwargs: dict[str, str] = {}
        if remote is not None:
            kwargs["remote"] = remote
        if scheme:
            kwargs["scheme"] = scheme
        request = request.clone(**kwargs)
    return request
