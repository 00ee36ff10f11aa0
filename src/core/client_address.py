"""The client's address, decided once by one rule for the rate limiter, the logs and the
login audit trail.

Only the proxies the operator declares (``NUM_PROXIES``) are believed: each appends
the address it saw to ``X-Forwarded-For``, so the client is the ``NUM_PROXIES``-th
entry from the right. Anything further left, and ``X-Real-IP``, is whatever the
client chose to send and is never used. With ``NUM_PROXIES=0`` the peer address is
the client.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest

UNKNOWN = "unknown"


def normalise(text: str) -> str | None:
    """``text`` as a canonical address (``::ffff:1.2.3.4`` → ``1.2.3.4``, IPv6
    compressed, brackets, zone and port dropped), or ``None`` when it is no address."""
    candidate = text.strip()
    if candidate.startswith("["):  # "[2001:db8::1]:443"
        candidate = candidate[1:].split("]", 1)[0]
    elif candidate.count(":") == 1:  # "203.0.113.7:51234"
        candidate = candidate.split(":", 1)[0]
    candidate = candidate.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def client_address(request: HttpRequest) -> str:
    """The address of the client under the trusted-proxy rule, normalised.

    A forwarded entry that is no address (a misconfigured proxy) falls back to the
    peer address rather than to text a client could vary at will.
    """
    num_proxies = int(settings.NINJA_NUM_PROXIES)
    peer = normalise(request.META.get("REMOTE_ADDR") or "") or UNKNOWN
    if num_proxies <= 0:
        return peer
    forwarded = [
        entry for entry in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if entry.strip()
    ]
    if not forwarded:
        return peer
    return normalise(forwarded[-min(num_proxies, len(forwarded))]) or peer


def client_ip(request: HttpRequest) -> str | None:
    """``client_address`` for records that store an IP address column (the admin login
    records): ``None`` for a request that came from no socket (one built in code)."""
    address = client_address(request)
    return None if address == UNKNOWN else address


def rate_limit_key(address: str) -> str:
    """What one client is counted as: an IPv4 address, or the IPv6 network of
    ``RATE_LIMIT_IPV6_PREFIX`` bits around it (one subscriber usually holds a whole
    /64, so per-address counting would let it rotate through 2**64 addresses)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        prefix = min(int(settings.RATE_LIMIT_IPV6_PREFIX), 128)
        return str(ipaddress.IPv6Network((parsed, prefix), strict=False))
    return str(parsed)


__all__ = ["UNKNOWN", "client_address", "client_ip", "normalise", "rate_limit_key"]
