"""Which envelope and header senders an authenticated client may use.

After AUTH, ``MAIL FROM`` must be an address the session may send as, as
Postfix's ``reject_sender_login_mismatch`` does: the login name and the
authorization identity when they are addresses, plus the login's allowed
senders (``AllowedSender``: whole addresses or ``@domain`` entries). The
null sender ``<>`` (bounces, receipts) is always allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from kumosubmit.credentials.models import AllowedSender, normalize_username


@dataclass(frozen=True)
class SenderPolicy:
    addresses: frozenset[str]
    domains: frozenset[str]

    def permits(self, address: str) -> bool:
        """Whether ``address`` (empty for the null sender) may be used as the sender."""
        if not address:
            return True
        address = address.lower()
        if address in self.addresses:
            return True
        domain = address.rpartition("@")[2]
        return bool(domain) and domain in self.domains


def _is_address(identity: str) -> bool:
    local, at, domain = identity.rpartition("@")
    return bool(at and local and domain)


def allowed_senders(username: str) -> QuerySet[AllowedSender]:
    """An active login's allowed senders (one query)."""
    return AllowedSender.objects.filter(
        login__username=normalize_username(username), login__is_active=True
    ).order_by()


def load_policy(authz: str, authc: str) -> SenderPolicy:
    """The policy of a session authenticated as ``authc`` acting as ``authz`` (one query)."""
    addresses = {
        i for i in (normalize_username(authz), normalize_username(authc)) if _is_address(i)
    }
    domains = set()
    for pattern in allowed_senders(authc).values_list("pattern", flat=True):
        if pattern.startswith("@"):
            domains.add(pattern[1:])
        else:
            addresses.add(pattern)
    return SenderPolicy(frozenset(addresses), frozenset(domains))
