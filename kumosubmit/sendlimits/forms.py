"""A form field for a list of rules: ``"30/minute, 1000/day"``, ``"none"``, or empty."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from kumosubmit.sendlimits.rules import RuleError, parse_rules

#: What a field says for "no limit of this kind" ([] in the model).
NO_LIMIT = "none"


class RulesField(forms.CharField):
    """Rules separated by commas. Empty: None (the default: the site's, for a login;
    only the login's, for an app password); ``none``: ``[]`` (no limit)."""

    def __init__(self, *, allow_none: bool = True, **kwargs: Any) -> None:
        self.allow_none = allow_none
        kwargs.setdefault("required", False)
        kwargs.setdefault("max_length", 200)
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return ", ".join(value) if value else NO_LIMIT
        return value

    def to_python(self, value: Any) -> list[str] | None:
        if isinstance(value, list):
            return value
        text = (super().to_python(value) or "").strip()
        if not text:
            return None
        if text.lower() == NO_LIMIT:
            if not self.allow_none:
                raise ValidationError(_("Leave it empty to keep only the login's limits."))
            return []
        try:
            rules = parse_rules(text)
        except RuleError:
            raise ValidationError(
                _("Enter rules like “30/minute, 1000/day” (N/second, minute, hour or day)."),
                code="invalid",
            ) from None
        return [str(rule) for rule in rules or ()]

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            return self.to_python(data) != initial
        except ValidationError:
            return True
