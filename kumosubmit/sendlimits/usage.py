"""How much of its limits a login or an app password uses now (the pages and the admin)."""

from __future__ import annotations

from dataclasses import dataclass

from kumosubmit.credentials.models import AppPassword, SmtpLogin
from kumosubmit.sendlimits.backends import Bucket, get_backend
from kumosubmit.sendlimits.rules import MESSAGES, UNIT_NAMES
from kumosubmit.sendlimits.sessions import app_password_buckets, login_buckets

#: How a rule's window is named on the pages.
WINDOWS = {1: "per second", 60: "per minute", 3600: "per hour", 86400: "per day"}


@dataclass(frozen=True)
class Use:
    """One rule and how much of it is taken."""

    bucket: Bucket
    used: int

    @property
    def limit(self) -> int:
        return self.bucket.rule.count

    @property
    def share(self) -> float:
        return self.used / self.limit

    @property
    def kind(self) -> str:
        return "messages" if self.bucket.kind == MESSAGES else "recipients"

    @property
    def window(self) -> str:
        period = self.bucket.rule.period
        return WINDOWS.get(period, f"per {UNIT_NAMES.get(period, f'{period} s')}")

    def __str__(self) -> str:
        """``"messages per day: 37 of 1000"``: what is in use of the rule now. GCRA gives
        the allowance back at the rule's rate (1000/day: one every 86.4 s), not all at
        midnight, so this is the use over the last window, less what has come back."""
        return f"{self.kind} {self.window}: {self.used} of {self.limit}"


def uses(buckets: list[Bucket]) -> list[Use]:
    """Each bucket's use, fullest first (an unreachable store reads as nothing used)."""
    if not buckets:
        return []
    found = get_backend().usage(buckets)
    return sorted((Use(b, found[b]) for b in buckets), key=lambda u: (-u.share, u.bucket))


def login_uses(login: SmtpLogin) -> list[Use]:
    return uses(login_buckets(login))


def app_password_uses(app_password: AppPassword) -> list[Use]:
    return uses(app_password_buckets(app_password))


def fullest(login: SmtpLogin) -> Use | None:
    """The rule of the login closest to its limit, if any rule applies."""
    found = login_uses(login)
    return found[0] if found else None
