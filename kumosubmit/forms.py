"""Admin forms for SMTP logins: the password is typed twice and only its hash is kept.

Modelled on ``django.contrib.auth.forms`` (``UserCreationForm``,
``AdminPasswordChangeForm``), but for :class:`SmtpLogin`, whose hash is argon2id
from :mod:`kumosubmit.credentials.hashing` rather than a Django hasher.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.utils.decorators import method_decorator
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables

from kumosubmit.credentials.models import SmtpLogin, normalize_username
from kumosubmit.sendlimits.forms import RulesField


def password_fields() -> tuple[forms.CharField, forms.CharField]:
    """The two password fields, declared on each form (Django only collects fields of forms)."""
    widget = forms.PasswordInput(attrs={"autocomplete": "new-password"})
    # strip=False: leading or trailing spaces are part of a password.
    return (
        forms.CharField(
            label=_("Password"),
            strip=False,
            widget=widget,
            help_text=password_validation.password_validators_help_text_html(),
        ),
        forms.CharField(
            label=_("Password confirmation"),
            strip=False,
            widget=widget,
            help_text=_("Enter the same password as before, for verification."),
        ),
    )


@sensitive_variables("password1", "password2")
def check_passwords(form: forms.BaseForm, login: SmtpLogin) -> None:
    """Add an error to password2 unless both match and pass AUTH_PASSWORD_VALIDATORS.

    ``login`` lets UserAttributeSimilarityValidator compare with the username.
    """
    password1 = form.cleaned_data.get("password1")
    password2 = form.cleaned_data.get("password2")
    if password1 and password2 and password1 != password2:
        # Django's own wording, so its translations apply.
        message = _("The two password fields didn’t match.")  # noqa: RUF001
        error = ValidationError(message, "password_mismatch")
        form.add_error("password2", error)
    elif password2:
        try:
            password_validation.validate_password(password2, login)
        except ValidationError as error:
            form.add_error("password2", error)


class SmtpLoginChangeForm(forms.ModelForm):
    """Edit a login. The hash is no field here, so a POSTed one is ignored."""

    message_limits = RulesField(
        label=_("Message limits"),
        help_text=_(
            "E.g. “30/minute, 1000/day”. Empty: the site's defaults (SEND_LIMITS); "
            "“none”: no limit."
        ),
    )
    recipient_limits = RulesField(
        label=_("Recipient limits"),
        help_text=_("E.g. “5000/day”. Empty: the site's defaults; “none”: no limit."),
    )

    class Meta:
        model = SmtpLogin
        fields = [
            "username",
            "is_active",
            "owner",
            "require_app_passwords",
            "must_change_password",
            "is_decoy",
            "message_limits",
            "recipient_limits",
        ]

    def clean_username(self) -> str:
        # SmtpLogin.save() lower-cases the name anyway, but the uniqueness check
        # must see that spelling too, or "Alice@x" passes it beside "alice@x" and
        # then fails in the database with an IntegrityError.
        return normalize_username(self.cleaned_data["username"])


class SmtpLoginCreationForm(SmtpLoginChangeForm):
    """Create a login; its password is hashed by ``SmtpLogin.set_password`` (argon2id)."""

    password1, password2 = password_fields()

    def _post_clean(self) -> None:
        # As in UserCreationForm: validate once the instance carries the username.
        super()._post_clean()
        check_passwords(self, self.instance)

    @method_decorator(sensitive_variables())
    def save(self, commit: bool = True) -> SmtpLogin:
        login: SmtpLogin = super().save(commit=False)
        login.set_password(self.cleaned_data["password1"])
        if commit:
            login.save()
            self._save_m2m()
        return login


class SmtpLoginPasswordForm(forms.Form):
    """Set a new password for an existing login (this also ends a forced password change)."""

    password1, password2 = password_fields()

    def __init__(self, login: SmtpLogin, *args: Any, **kwargs: Any) -> None:
        self.login = login
        super().__init__(*args, **kwargs)

    def clean(self) -> dict[str, Any]:
        cleaned_data = super().clean()
        check_passwords(self, self.login)
        return cleaned_data

    @method_decorator(sensitive_variables())
    def save(self) -> SmtpLogin:
        """Save only the hash columns, so a concurrent edit of the login is not undone."""
        self.login.set_password(self.cleaned_data["password1"])
        self.login.save(update_fields=SmtpLogin.PASSWORD_FIELDS)
        return self.login
