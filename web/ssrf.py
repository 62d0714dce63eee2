"""Refuse outgoing requests to addresses inside our own network (SSRF), before and at sending.

A webhook's URL is chosen by a user but fetched by our workers, which sit inside the network
next to PostgreSQL, Redis and cloud metadata endpoints. Every address the host resolves to
must be public; the request then connects to that checked address, so a DNS answer that
changes between the check and the connection (rebinding) cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from web.errors import BadRequest

SCHEMES = {"http": 80, "https": 443}


class UnsafeURL(BadRequest):
    """A URL we will not send requests to; its message says why."""


@dataclass(frozen=True)
class Target:
    """Where a checked URL's request goes: the host for TLS and Host:, and the address."""

    scheme: str
    host: str
    port: int
    address: str
    path: str  # with the query, as the request line wants it


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        # Shared (100.64/10), documentation and other special ranges that are none of the above.
        or not ip.is_global
    )


def check_url(url: str, *, allow_private: bool) -> Target:
    """Parse and resolve an http(s) URL; UnsafeURL unless every address is public."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UnsafeURL(f"url is not valid: {error}") from None
    if parts.scheme not in SCHEMES:
        raise UnsafeURL("url must start with http:// or https://")
    if not parts.hostname:
        raise UnsafeURL("url has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("url must not carry credentials")
    port = port or SCHEMES[parts.scheme]
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeURL(f"url's host {parts.hostname} does not resolve") from None
    addresses = [str(info[4][0]) for info in infos]
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise UnsafeURL(
                    f"url's host {parts.hostname} resolves to {address}, a private, loopback"
                    " or otherwise non-public address"
                )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, addresses[0], path)
