"""The self-service views. Every one needs a signed-in user and sees only their own logins.

A login or app password of someone else is answered 404, exactly as one that
does not exist, so ids cannot be probed. Writes are POSTs behind Django's CSRF
protection; the pages are plain HTML forms that work without JavaScript.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods

from kumosubmit import notices
from kumosubmit.audit.models import AuthOutcome, ConnectionRecord
from kumosubmit.conf import app_settings
from kumosubmit.credentials import service
from kumosubmit.credentials.models import AppPassword, SmtpLogin, create_app_password
from kumosubmit.oauth import tokens as oauth_tokens
from kumosubmit.oauth.models import SmtpToken
from kumosubmit.sendlimits.usage import app_password_uses, login_uses
from kumosubmit.web.account import sign_in_required
from kumosubmit.web.forms import (
    AppPasswordForm,
    AppPasswordLimitsForm,
    LoginPasswordForm,
    SmtpTokenForm,
)
from kumosubmit.web.second_factor import step_up

log = logging.getLogger("kumosubmit.web")

#: How many audit rows, and how many revoked or expired app passwords, the login page shows.
RECENT_SIGN_INS = 20
RECENT_INACTIVE = 20

#: What an owner reads for each result the built-in AUTH handler notes.
RESULT_TEXT = {
    service.ACCEPTED: "",
    service.WRONG_PASSWORD: _("wrong password"),
    service.REVOKED: _("revoked"),
    service.EXPIRED: _("expired"),
    service.APP_PASSWORDS_ONLY: _("own password refused: app passwords only"),
    service.MUST_CHANGE_PASSWORD: _("own password refused: a new one must be chosen"),
    service.AUTHZ_NOT_ALLOWED: _("may not act as the identity asked for"),
    # Tokens (kumosubmit/oauth/); "revoked" and "expired" are as above.
    "unknown_token": _("unknown token"),
    "wrong_scope": _("token without the smtp scope"),
    "no_login": _("token not good for this login"),
    "invalid_token": _("invalid token"),
}


def _own_login(request: HttpRequest, login_id: int) -> SmtpLogin:
    # Decoys are never shown to anyone, their "owner" included (a honeytoken).
    return get_object_or_404(SmtpLogin, pk=login_id, owner=request.user, is_decoy=False)


@dataclass(frozen=True)
class SignIn:
    """One audit row as its owner sees it."""

    at: datetime
    address: str | None
    outcome: str
    outcome_display: str
    credential: str
    detail: str


def _credential(record: ConnectionRecord) -> tuple[str, str]:
    """(what the last attempt used, why it was refused), from conn_meta."""
    meta = record.meta if isinstance(record.meta, dict) else {}
    attempts = meta.get("auth_attempts") or []
    last = len(attempts) - 1
    notes = [
        note
        for note in meta.get("auth_credentials") or []
        if isinstance(note, dict) and note.get("attempt") == last
    ]
    if not notes:
        return "", ""
    note = notes[-1]
    detail = str(RESULT_TEXT.get(note.get("result", ""), ""))
    if note.get("kind") == "oauth_token":
        if note.get("label"):
            return gettext("token “%s”") % note["label"], detail
        if note.get("application"):
            return gettext("token of “%s”") % note["application"], detail
        return gettext("token"), detail
    if note.get("kind") == "app_password":
        return gettext("app password “%s”") % note.get("label", ""), detail
    return gettext("password"), detail


def recent_sign_ins(login: SmtpLogin, limit: int = RECENT_SIGN_INS) -> list[SignIn]:
    """The login's latest AUTH outcomes from the audit table (one query on its index).

    The audit table keeps the name as the client sent it, and the lookup is exact
    (the stored names are lowercase): an attempt typed in capitals is in the
    admin's audit log, whose search ignores case.
    """
    records = (
        ConnectionRecord.objects.filter(
            authc=login.username,
            auth_outcome__in=[AuthOutcome.SUCCESS, AuthOutcome.FAILURE, AuthOutcome.BLOCKED],
        )
        .only("started_at", "peer_address", "auth_outcome", "meta")
        .order_by("-started_at")[:limit]
    )
    sign_ins = []
    for record in records:
        credential, detail = _credential(record)
        sign_ins.append(
            SignIn(
                at=record.started_at,
                address=record.peer_address,
                outcome=record.auth_outcome,
                outcome_display=record.get_auth_outcome_display(),
                credential=credential,
                detail=detail,
            )
        )
    return sign_ins


@sign_in_required
def index(request: HttpRequest) -> HttpResponse:
    """The user's SMTP logins, with their last use and how many app passwords work."""
    now = timezone.now()
    live = Q(app_passwords__revoked_at__isnull=True) & (
        Q(app_passwords__expires_at__isnull=True) | Q(app_passwords__expires_at__gt=now)
    )
    logins = (
        SmtpLogin.objects.filter(owner=request.user, is_decoy=False)
        .annotate(live_app_passwords=Count("app_passwords", filter=live))
        .order_by("username")
    )
    return render(request, "kumosubmit/credentials/index.html", {"logins": logins})


def _limit_uses(login: SmtpLogin, app_passwords: list[AppPassword]) -> list[Any] | None:
    """Each live credential's use of its limits: (label, app password or None, uses)."""
    try:
        rows: list[Any] = [(gettext("This login"), None, login_uses(login))]
        rows += [(p.label, p, app_password_uses(p)) for p in app_passwords]
    except Exception:  # the limits' store cannot be reached: the page still works
        log.exception("could not read the sending limits' use of %s", login.username)
        return None
    return rows


def _detail_context(login: SmtpLogin) -> dict[str, Any]:
    now = timezone.now()
    live = list(login.app_passwords.live(now))
    # Revoked and expired ones are kept for the record; the page shows the latest.
    inactive = login.app_passwords.exclude(pk__in=[p.pk for p in live])[:RECENT_INACTIVE]
    return {
        "login": login,
        "app_passwords": live,
        "inactive_app_passwords": list(inactive),
        "form": AppPasswordForm(),
        "can_create": len(live) < app_settings.MAX_APP_PASSWORDS,
        "max_app_passwords": app_settings.MAX_APP_PASSWORDS,
        "sign_ins": recent_sign_ins(login),
        **_token_context(login, now),
        "limit_uses": _limit_uses(login, live),
    }


def tokens_enabled() -> bool:
    """Whether tokens are made here: this project's toolkit checks them."""
    return app_settings.oauth["VALIDATOR"] == "kumosubmit.oauth.toolkit.validate"


def _token_context(login: SmtpLogin, now: datetime) -> dict[str, Any]:
    if not tokens_enabled():
        return {"tokens_enabled": False}
    live = list(login.tokens.live(now))
    inactive = login.tokens.exclude(pk__in=[t.pk for t in live])[:RECENT_INACTIVE]
    return {
        "tokens_enabled": True,
        "tokens": live,
        "inactive_tokens": list(inactive),
        "token_form": SmtpTokenForm(),
        "can_create_token": login.owner_id is not None
        and len(live) < app_settings.MAX_APP_PASSWORDS,
    }


@sign_in_required
def login_detail(request: HttpRequest, login_id: int) -> HttpResponse:
    """One login: its app passwords, a form for a new one, and its recent sign-ins."""
    login = _own_login(request, login_id)
    return render(request, "kumosubmit/credentials/login_detail.html", _detail_context(login))


@never_cache  # the one copy of the password must not stay in a cache
@sensitive_variables()
@sensitive_post_parameters()
@sign_in_required
@step_up
@require_http_methods(["GET", "POST"])
def create(request: HttpRequest, login_id: int) -> HttpResponse:
    """Make an app password and show it, this once, in the answer to the POST.

    It is never stored in the clear, not even in the session for a redirect: a
    reload asks the browser to send the form again, which makes another one.
    """
    login = _own_login(request, login_id)
    form = AppPasswordForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        if login.app_passwords.live().count() >= app_settings.MAX_APP_PASSWORDS:
            form.add_error(
                None,
                gettext(
                    "This login has %(max)d app passwords already; revoke one you no "
                    "longer use first."
                )
                % {"max": app_settings.MAX_APP_PASSWORDS},
            )
        else:
            app_password, password = create_app_password(
                login, form.cleaned_data["label"], form.expires_at()
            )
            notices.app_password_created(request, app_password)
            return render(
                request,
                "kumosubmit/credentials/app_password_created.html",
                {"login": login, "app_password": app_password, "password": password},
            )
    return render(
        request, "kumosubmit/credentials/app_password_form.html", {"login": login, "form": form}
    )


@sign_in_required
@require_http_methods(["GET", "POST"])
def revoke(request: HttpRequest, login_id: int, app_password_id: int) -> HttpResponse:
    """Ask (GET), then revoke (POST): the password stops working at once."""
    login = _own_login(request, login_id)
    app_password = get_object_or_404(AppPassword, pk=app_password_id, login=login)
    if request.method == "POST":
        if app_password.revoke():
            messages.success(
                request,
                gettext("The app password “%s” was revoked; it no longer works.")
                % app_password.label,
            )
        return HttpResponseRedirect(reverse("credentials:login", args=[login.pk]))
    return render(
        request,
        "kumosubmit/credentials/app_password_revoke.html",
        {"login": login, "app_password": app_password},
    )


@sensitive_variables()
@sensitive_post_parameters("password1", "password2")
@sign_in_required
@step_up
@require_http_methods(["GET", "POST"])
def set_password(request: HttpRequest, login_id: int) -> HttpResponse:
    """Choose the login's own password (this ends a password change an operator forced)."""
    login = _own_login(request, login_id)
    form = LoginPasswordForm(login, request.POST if request.method == "POST" else None)
    if form.is_valid():
        form.save()
        messages.success(request, gettext("The password of %s was changed.") % login.username)
        return HttpResponseRedirect(reverse("credentials:login", args=[login.pk]))
    return render(
        request, "kumosubmit/credentials/set_password.html", {"login": login, "form": form}
    )


# -- tokens (AUTH OAUTHBEARER and XOAUTH2; kumosubmit/oauth/, docs/oauth.md) --------------


@never_cache  # the one copy of the token must not stay in a cache
@sensitive_variables()
@sign_in_required
@step_up  # as for app passwords
@require_http_methods(["GET", "POST"])
def create_token(request: HttpRequest, login_id: int) -> HttpResponse:
    """Issue a token with the smtp scope and show it, this once, in the answer to the POST."""
    login = _own_login(request, login_id)
    if not tokens_enabled():
        raise Http404("tokens are not checked by this project")
    form = SmtpTokenForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        if login.tokens.live().count() >= app_settings.MAX_APP_PASSWORDS:
            form.add_error(
                None,
                gettext(
                    "This login has %(max)d tokens already; revoke one you no longer use first."
                )
                % {"max": app_settings.MAX_APP_PASSWORDS},
            )
        else:
            row, token = oauth_tokens.create_smtp_token(
                login, form.cleaned_data["label"], form.expires_at()
            )
            return render(
                request,
                "kumosubmit/credentials/token_created.html",
                {"login": login, "smtp_token": row, "token": token},
            )
    return render(request, "kumosubmit/credentials/token_form.html", {"login": login, "form": form})


@sign_in_required
@step_up  # as for app passwords
@require_http_methods(["GET", "POST"])
def revoke_token(request: HttpRequest, login_id: int, token_id: int) -> HttpResponse:
    """Ask (GET), then revoke (POST): the token is refused from the next AUTH on."""
    login = _own_login(request, login_id)
    row = get_object_or_404(SmtpToken, pk=token_id, login=login)
    if request.method == "POST":
        if oauth_tokens.revoke_smtp_token(row):
            messages.success(
                request, gettext("The token “%s” was revoked; it no longer works.") % row.label
            )
        return HttpResponseRedirect(reverse("credentials:login", args=[login.pk]))
    return render(
        request, "kumosubmit/credentials/token_revoke.html", {"login": login, "smtp_token": row}
    )


@sign_in_required
@require_http_methods(["GET", "POST"])
def app_password_limits(request: HttpRequest, login_id: int, app_password_id: int) -> HttpResponse:
    """Limits of an app password's own, within its login's (empty: the login's only)."""
    login = _own_login(request, login_id)
    app_password = get_object_or_404(AppPassword.objects.live(), pk=app_password_id, login=login)
    form = AppPasswordLimitsForm(
        login, request.POST if request.method == "POST" else None, instance=app_password
    )
    if form.is_valid():
        form.save()
        messages.success(
            request,
            gettext("The limits of the app password “%s” were saved.") % app_password.label,
        )
        return HttpResponseRedirect(reverse("credentials:login", args=[login.pk]) + "#limits")
    return render(
        request,
        "kumosubmit/credentials/app_password_limits.html",
        {"login": login, "app_password": app_password, "form": form},
    )
