"""The self-service forms: a new app password or token, and a new password for a login."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from kumosubmit.credentials.models import AppPassword
from kumosubmit.forms import SmtpLoginPasswordForm

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
