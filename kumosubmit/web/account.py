"""Signing in to the self-service pages, in a project with or without pages of its own.

The pages send visitors to the project's ``LOGIN_URL`` when it is a page of the
site (``django.contrib.auth.urls``, or the project's own), and to the app's sign-in
page (``credentials:sign_in``) when it is not, so a project that includes only
``kumosubmit.web.urls`` still works. The checks ``kumosubmit.W050`` and ``W051``
tell such a project which settings to add (docs/integration.md).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import resolve_url
from django.urls import NoReverseMatch, Resolver404, resolve, reverse, reverse_lazy


def site_page(setting: str) -> str | None:
    """The URL a LOGIN_URL-like setting names, if it is a page of this site (or elsewhere).

    ``None`` when it names nothing that answers: Django's default ``/accounts/login/``
    or ``/accounts/profile/`` in a project that has no such page.
    """
    try:
        url = resolve_url(getattr(settings, setting))
    except NoReverseMatch:  # a URL name the project does not have
        return None
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return url  # another site's page (a single sign-on service): trust the project
    try:
        resolve(parts.path)
    except Resolver404:
        return None
    return url


def sign_in_url() -> str:
    """Where a visitor who is not signed in is sent."""
    return site_page("LOGIN_URL") or reverse("credentials:sign_in")


def after_sign_in_url() -> str:
    """Where the app's sign-in page leads when no ``next`` is given."""
    return site_page("LOGIN_REDIRECT_URL") or reverse("credentials:index")


def sign_in_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """``login_required``, but towards :func:`sign_in_url`, read at request time."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        return redirect_to_login(request.get_full_path(), sign_in_url())

    return wrapper


class SignInView(auth_views.LoginView):
    """Django's sign-in view with the app's template, for projects that have none."""

    template_name = "kumosubmit/registration/login.html"

    def get_default_redirect_url(self) -> str:
        return after_sign_in_url()


class SignOutView(auth_views.LogoutView):
    """Django's sign-out (a POST), back to the app's sign-in page."""

    next_page = reverse_lazy("credentials:sign_in")


class SitePasswordView(auth_views.PasswordChangeView):
    """The signed-in user's own site password (not an SMTP login's)."""

    template_name = "kumosubmit/registration/password_change_form.html"
    success_url = reverse_lazy("credentials:site_password_done")


class SitePasswordDoneView(auth_views.PasswordChangeDoneView):
    template_name = "kumosubmit/registration/password_change_done.html"
