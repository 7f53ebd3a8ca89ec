"""Limit rules in KumoMTA's throttle notation, and the limits that apply to a session.

A rule is ``"N/unit"``: at most ``N`` in any ``unit`` (``second``, ``minute``,
``hour`` or ``day``; ``"N/s"``, ``"N/m"``, ``"N/h"``, ``"N/d"`` and plurals are
read too), as in KumoMTA's ``kumo.make_throttle``. A login's limits are a mapping
of a kind (``MESSAGES``, ``RECIPIENTS``) to a list of rules, or ``None``: no limit
of that kind.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kumosubmit.conf import app_settings, clears_on_setting_change

MESSAGES = "MESSAGES"
RECIPIENTS = "RECIPIENTS"
KINDS = (MESSAGES, RECIPIENTS)

#: Seconds per unit, by every name a rule may give it.
UNITS: dict[str, int] = {}
for _seconds, _names in (
    (1, ("s", "sec", "second")),
    (60, ("m", "min", "minute")),
    (3600, ("h", "hr", "hour")),
    (86400, ("d", "day")),
):
    for _name in _names:
        UNITS[_name] = UNITS[f"{_name}s"] = _seconds
UNIT_NAMES = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}

_RULE = re.compile(r"^\s*(\d{1,12})\s*/\s*([a-z]+)\s*$", re.IGNORECASE)


class RuleError(ValueError):
    """A rule string that is not ``N/second|minute|hour|day``."""


@dataclass(frozen=True, order=True)
class Rule:
    """At most ``count`` in any ``period`` seconds (GCRA: a burst of ``count``, no more)."""

    count: int
    period: int

    @classmethod
    def parse(cls, text: Any) -> Rule:
        """``"30/minute"`` -> Rule(30, 60); :class:`RuleError` for anything else."""
        match = _RULE.match(text) if isinstance(text, str) else None
        if match is None or match.group(2).lower() not in UNITS:
            raise RuleError(
                f"{text!r} is not a rule like '30/minute' (N/second, minute, hour or day)"
            )
        count = int(match.group(1))
        if count < 1:
            raise RuleError(f"{text!r}: the count must be 1 or more (no rule at all is None)")
        return cls(count, UNITS[match.group(2).lower()])

    def __str__(self) -> str:
        return f"{self.count}/{UNIT_NAMES.get(self.period, f'{self.period}s')}"

    @property
    def interval_us(self) -> int:
        """GCRA's emission interval in microseconds: one more is allowed every this long."""
        return self.period * 1_000_000 // self.count

    @property
    def period_us(self) -> int:
        return self.period * 1_000_000

    def rate(self) -> float:
        """Per second."""
        return self.count / self.period

    def describe(self, kind: str) -> str:
        """``"30 messages per minute"``."""
        noun = "messages" if kind == MESSAGES else "recipients"
        if self.count == 1:
            noun = noun[:-1]
        return f"{self.count} {noun} per {UNIT_NAMES.get(self.period, f'{self.period} s')}"


def parse_rules(value: Any) -> tuple[Rule, ...] | None:
    """A list of rule strings (or one string, comma separated) -> rules; None -> None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise RuleError(f"{value!r} is not a list of rules like ['30/minute', '1000/day'] or None")
    return tuple(sorted({Rule.parse(item) for item in value}, key=lambda r: (r.period, r.count)))


def format_rules(rules: Iterable[Rule] | None) -> str:
    """``"30/minute, 1000/day"``; ``""`` for no rules."""
    return ", ".join(str(rule) for rule in rules or ())


def parse_limits(value: Any, *, where: str = "SEND_LIMITS") -> dict[str, tuple[Rule, ...] | None]:
    """``{"MESSAGES": [...], "RECIPIENTS": [...]}`` -> rules per kind (a kind left out: None)."""
    if value is None:
        return dict.fromkeys(KINDS)
    if not isinstance(value, Mapping):
        raise RuleError(f"{where} must be a dict with the keys {', '.join(KINDS)}, or None")
    unknown = set(value) - set(KINDS)
    if unknown:
        raise RuleError(f"{where} has unknown keys {sorted(unknown)}; known: {', '.join(KINDS)}")
    return {kind: parse_rules(value.get(kind)) for kind in KINDS}


@clears_on_setting_change
@functools.cache
def default_limits() -> dict[str, tuple[Rule, ...] | None]:
    """The site's defaults (``KUMOSUBMIT["SEND_LIMITS"]``), parsed once."""
    return parse_limits(app_settings.SEND_LIMITS)


def limits_of(
    own: Mapping[str, Any | None], *, defaults: Mapping[str, tuple[Rule, ...] | None] | None
) -> dict[str, tuple[Rule, ...] | None]:
    """A credential's rules per kind: its own field where set (``[]`` is "no limit"),
    else ``defaults`` (None for an app password, which has no defaults of its own)."""
    result: dict[str, tuple[Rule, ...] | None] = {}
    for kind in KINDS:
        value = own.get(kind)
        if value is None:
            result[kind] = defaults.get(kind) if defaults is not None else None
        else:
            result[kind] = parse_rules(value) or None
    return result


def wider_than(own: Iterable[Rule], ceiling: Iterable[Rule] | None) -> list[Rule]:
    """The rules of ``own`` that let more through than a rule of ``ceiling`` with the same
    period or a longer one does (an app password's limits must be within its login's)."""
    tops = list(ceiling or ())
    return [
        rule
        for rule in own
        if any(rule.period <= top.period and rule.count > top.count for top in tops)
    ]
