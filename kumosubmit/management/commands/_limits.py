"""The sending-limit options of createsmtpuser and changesmtppassword."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from kumosubmit.credentials.models import SmtpLogin
from kumosubmit.sendlimits.rules import RuleError, parse_rules

DEFAULT = "default"
NONE = "none"


def add_limit_arguments(parser: CommandParser) -> None:
    for option, kind in (("--message-limits", "messages"), ("--recipient-limits", "recipients")):
        parser.add_argument(
            option,
            metavar="RULES",
            help=f"The {kind} this login may send: rules like '30/minute,1000/day' "
            f"(N/second, minute, hour or day); '{NONE}' for no limit; '{DEFAULT}' for "
            "the site's SEND_LIMITS.",
        )


def _rules(value: str, option: str) -> list[str] | None:
    text = value.strip().lower()
    if text == DEFAULT:
        return None
    if text == NONE:
        return []
    try:
        return [str(rule) for rule in parse_rules(text) or ()]
    except RuleError as problem:
        raise CommandError(f"{option}: {problem}.") from None


def apply_limits(login: SmtpLogin, options: dict[str, Any]) -> list[str]:
    """Set the limits the options give; the names of the fields changed."""
    changed = []
    for field, option in (
        ("message_limits", "--message-limits"),
        ("recipient_limits", "--recipient-limits"),
    ):
        value = options.get(field)
        if value is not None:
            setattr(login, field, _rules(value, option))
            changed.append(field)
    return changed


def describe(login: SmtpLogin) -> str:
    def one(value: list[str] | None) -> str:
        if value is None:
            return "the site's defaults"
        return ", ".join(value) or "no limit"

    return f"messages: {one(login.message_limits)}; recipients: {one(login.recipient_limits)}"
