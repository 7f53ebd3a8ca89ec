"""``path("accounts/", include("kumosubmit.web.account_urls"))``: Django's sign-in pages,
with the sign-in and the password change throttled (kumosubmit/web/throttle.py).

The rest (sign-out, password reset) are ``django.contrib.auth.urls`` unchanged.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import urls as auth_urls
from django.contrib.auth import views as auth_views
from django.urls import URLPattern, path

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
    *(
        pattern
        for pattern in auth_urls.urlpatterns
        if not (isinstance(pattern, URLPattern) and pattern.name in _REPLACED)
    ),
]
