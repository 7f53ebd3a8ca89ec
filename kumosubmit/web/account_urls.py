"""``path("accounts/", include("kumosubmit.web.account_urls"))``: Django's sign-in pages,
with the sign-in and the password change throttled (kumosubmit/web/throttle.py).

The rest (sign-out, password reset) are ``django.contrib.auth.urls`` unchanged.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import urls as auth_urls
from django.contrib.auth import views as auth_views
from django.urls import URLPattern, path

from kumosubmit.web import security_views as second_factor_views
from kumosubmit.web.forms import SignInForm, ThrottledPasswordChangeForm


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's, with the request handed to the form so its check is throttled."""

    form_class = ThrottledPasswordChangeForm

    def get_form_kwargs(self) -> dict[str, Any]:
        return {**super().get_form_kwargs(), "request": self.request}


_REPLACED = {"login", "password_change"}

urlpatterns: list[Any] = [
    path("login/", auth_views.LoginView.as_view(form_class=SignInForm), name="login"),
    path("password_change/", PasswordChangeView.as_view(), name="password_change"),
    # The second factor (kumosubmit/web/second_factor.py).
    path("verify/", second_factor_views.verify, name="second_factor_verify"),
    path(
        "verify/passkey/begin/",
        second_factor_views.passkey_assert_begin,
        name="passkey_assert_begin",
    ),
    path(
        "verify/passkey/finish/",
        second_factor_views.passkey_assert_finish,
        name="passkey_assert_finish",
    ),
    path("security/", second_factor_views.security, name="security"),
    path("security/totp/", second_factor_views.totp_enrol, name="totp_enrol"),
    path(
        "security/totp/<int:device_id>/remove/",
        second_factor_views.totp_remove,
        name="totp_remove",
    ),
    path("security/recovery-codes/", second_factor_views.recovery_codes, name="recovery_codes"),
    path(
        "security/passkeys/begin/",
        second_factor_views.passkey_register_begin,
        name="passkey_register_begin",
    ),
    path(
        "security/passkeys/finish/",
        second_factor_views.passkey_register_finish,
        name="passkey_register_finish",
    ),
    path(
        "security/passkeys/<int:passkey_id>/remove/",
        second_factor_views.passkey_remove,
        name="passkey_remove",
    ),
    *(
        pattern
        for pattern in auth_urls.urlpatterns
        if not (isinstance(pattern, URLPattern) and pattern.name in _REPLACED)
    ),
]
