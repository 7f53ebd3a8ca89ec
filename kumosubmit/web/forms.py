"""The self-service forms: sign-in and password change (throttled), a new app password or
token, and a new password for a login."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import authenticate
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables

from kumosubmit.credentials.models import AppPassword, SmtpLogin
from kumosubmit.forms import SmtpLoginPasswordForm
from kumosubmit.sendlimits.forms import RulesField
from kumosubmit.sendlimits.rules import MESSAGES, RECIPIENTS, format_rules, parse_rules, wider_than
from kumosubmit.sendlimits.sessions import login_rules
from kumosubmit.web.backends import BLOCKED_ATTRIBUTE

BLOCKED_MESSAGE = _(
    "Too many failed sign-ins from this address. Wait a while and try again, or ask an "
    "administrator to lift the block."
)


def _raise_if_blocked(request: HttpRequest | None) -> None:
    """Say that a block, not the password, refused the sign-in (the SMTP side says 421)."""
    if request is not None and getattr(request, BLOCKED_ATTRIBUTE, None) is not None:
        raise ValidationError(BLOCKED_MESSAGE, code="blocked")


class SignInForm(AuthenticationForm):
    """Django's sign-in form, telling a blocked client so (the throttle is the backend's)."""

    def clean(self) -> dict[str, Any]:
        try:
            return super().clean()
        except ValidationError:
            _raise_if_blocked(self.request)
            raise


class AdminSignInForm(AdminAuthenticationForm):
    """The admin's sign-in form, likewise."""

    def clean(self) -> dict[str, Any]:
        try:
            return super().clean()
        except ValidationError:
            _raise_if_blocked(self.request)
            raise


class ThrottledPasswordChangeForm(PasswordChangeForm):
    """Password change whose old password is checked through ``authenticate()``.

    Django's form calls ``user.check_password()``, which no backend sees: a stolen
    session could guess the password without limit. This one counts as a sign-in.
    """

    def __init__(
        self, user: Any, *args: Any, request: HttpRequest | None = None, **kwargs: Any
    ) -> None:
        self.request = request
        super().__init__(user, *args, **kwargs)

    @sensitive_variables("old_password")
    def clean_old_password(self) -> str:
        old_password = self.cleaned_data["old_password"]
        checked = authenticate(
            self.request, username=self.user.get_username(), password=old_password
        )
        if checked is None or checked.pk != self.user.pk:
            _raise_if_blocked(self.request)
            raise ValidationError(
                self.error_messages["password_incorrect"], code="password_incorrect"
            )
        return old_password


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


#: How long a token lasts, in days: tokens always expire (the default: OAUTH["TOKEN_DAYS"]).
TOKEN_EXPIRY_CHOICES = [
    ("7", _("In 7 days")),
    ("30", _("In 30 days")),
    ("90", _("In 90 days")),
    ("365", _("In a year")),
]


class SmtpTokenForm(forms.Form):
    """A label for the new token, and when it stops working."""

    label = forms.CharField(
        label=_("Label"),
        max_length=100,
        help_text=_("Where you will use it, e.g. “backup script” or “Thunderbird”."),
    )
    expires = forms.TypedChoiceField(
        label=_("Expires"),
        choices=TOKEN_EXPIRY_CHOICES,
        coerce=int,
        initial="90",
        help_text=_("After this it is refused, as if revoked."),
    )

    def expires_at(self) -> datetime:
        return timezone.now() + timedelta(days=self.cleaned_data["expires"])


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
