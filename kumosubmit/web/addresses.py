"""The client address of a web request, believing forwarded headers only from trusted proxies.

``X-Forwarded-For`` is a list any client can start: a guesser would send a new
address with every try and never be counted. So the header is read only when the
peer (``REMOTE_ADDR``) is in ``KUMOSUBMIT["WEB_TRUSTED_PROXIES"]``, and then from
the right, hop by hop, for as long as each hop is itself a trusted proxy: the
first address that is not is the client. A malformed hop stops the walk at the
last proxy, which is then counted as the client (safe: it is a real address).
"""

from __future__ import annotations

import functools
import ipaddress

from django.http import HttpRequest

from kumosubmit.conf import app_settings, clears_on_setting_change

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDED_FOR = "HTTP_X_FORWARDED_FOR"


@clears_on_setting_change
@functools.cache
def trusted_proxies() -> tuple[Network, ...]:
    """The trusted proxies' networks (validated by the system check kumosubmit.E071)."""
    return tuple(
        ipaddress.ip_network(str(text), strict=False) for text in app_settings.WEB_TRUSTED_PROXIES
    )


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: tuple[Network, ...]
) -> bool:
    return any(ip.version == net.version and ip in net for net in proxies)


def client_address(request: HttpRequest) -> str | None:
    """The address the request came from, as far as trusted proxies vouch for it."""
    peer = _parse(request.META.get("REMOTE_ADDR") or "")
    if peer is None:
        return None
    proxies = trusted_proxies()
    if not proxies or not _trusted(peer, proxies):
        return str(peer)
    hops = [hop for hop in request.META.get(FORWARDED_FOR, "").split(",") if hop.strip()]
    client = peer
    while hops and _trusted(client, proxies):
        hop = _parse(hops.pop())
        if hop is None:
            break
        client = hop
    return str(client)
