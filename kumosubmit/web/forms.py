"""The self-service forms: a new app password, and a new password for a login."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from kumosubmit.credentials.models import AppPassword, SmtpLogin
from kumosubmit.forms import SmtpLoginPasswordForm
from kumosubmit.sendlimits.forms import RulesField
from kumosubmit.sendlimits.rules import MESSAGES, RECIPIENTS, format_rules, parse_rules, wider_than
from kumosubmit.sendlimits.sessions import login_rules

#: The expiry choices, in days ("" never expires), as large mail services offer them.
EXPIRY_CHOICES = [
    ("", _("Never")),
    ("7", _("In 7 days")),
    ("30", _("In 30 days")),
    ("90", _("In 90 days")),
    ("365", _("In a year")),
]


class AppPasswordForm(forms.Form):
    """A label for the new app password, and when it stops working (optional)."""

    label = forms.CharField(
        label=_("Label"),
        max_length=AppPassword._meta.get_field("label").max_length,
        help_text=_("Where you will use it, e.g. “Phone” or “Laptop mail client”."),
    )
    expires = forms.TypedChoiceField(
        label=_("Expires"),
        choices=EXPIRY_CHOICES,
        coerce=int,
        empty_value=None,
        required=False,
        help_text=_("After this it is refused, as if revoked."),
    )

    def expires_at(self) -> datetime | None:
        days = self.cleaned_data.get("expires")
        return timezone.now() + timedelta(days=days) if days else None


class LoginPasswordForm(SmtpLoginPasswordForm):
    """The login's own password, typed twice; it must pass AUTH_PASSWORD_VALIDATORS."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["password1"].label = _("New password")
        self.fields["password2"].label = _("New password again")


class AppPasswordLimitsForm(forms.ModelForm):
    """Tighter limits for one app password; each rule within the login's own."""

    message_limits = RulesField(
        allow_none=False,
        label=_("Messages"),
        help_text=_("E.g. “10/hour, 100/day”. Empty: only the login's limits apply."),
    )
    recipient_limits = RulesField(
        allow_none=False,
        label=_("Recipients"),
        help_text=_("E.g. “500/day”. Empty: only the login's limits apply."),
    )

    class Meta:
        model = AppPassword
        fields = ["message_limits", "recipient_limits"]

    def __init__(self, login: SmtpLogin, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.login_rules = login_rules(login)

    def _within(self, field: str, kind: str) -> list[str] | None:
        value = self.cleaned_data.get(field)
        ceiling = self.login_rules[kind]
        wider = wider_than(parse_rules(value) or (), ceiling)
        if wider:
            raise forms.ValidationError(
                _("%(rules)s would allow more than the login's own limits (%(login)s).")
                % {"rules": format_rules(wider), "login": format_rules(ceiling)},
                code="wider",
            )
        return value

    def clean_message_limits(self) -> list[str] | None:
        return self._within("message_limits", MESSAGES)

    def clean_recipient_limits(self) -> list[str] | None:
        return self._within("recipient_limits", RECIPIENTS)
