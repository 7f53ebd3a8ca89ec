"""Who needs a second factor, whether a session has one, and how fresh it is.

A second factor is a confirmed TOTP device or a passkey; recovery codes only
stand in for one. ``KUMOSUBMIT["SECOND_FACTOR"]`` says who must have one
("staff", "all", "none"); the middleware (kumosubmit/web/middleware.py) leads
them to enrol, and anyone who has one to use it after signing in. The moment of
the last check is kept in the session, so that a page that hands out a secret
(a new app password, a login's own password) can ask again when it is older
than ``SECOND_FACTOR_MAX_AGE`` (:func:`step_up`).
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.base_user import AbstractBaseUser
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.crypto import salted_hmac
from django_otp import login as otp_login
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from kumosubmit.conf import app_settings
from kumosubmit.web.models import Passkey

#: Session key of the time (seconds since the epoch) of the session's last second-factor check.
VERIFIED_AT = "kumosubmit_second_factor_at"
POLICIES = ("staff", "all", "none")
#: The name of the recovery codes' device.
RECOVERY = "recovery codes"


def required(user: AbstractBaseUser) -> bool:
    """Whether this user must have a second factor (the SECOND_FACTOR policy)."""
    policy = app_settings.SECOND_FACTOR
    if policy == "all":
        return True
    if policy == "staff":
        return bool(getattr(user, "is_staff", False) or getattr(user, "is_superuser", False))
    return False


def enrolled(user: AbstractBaseUser) -> bool:
    """Whether the user has a confirmed TOTP device or a passkey (two small queries)."""
    return (
        TOTPDevice.objects.filter(user=user, confirmed=True).exists()
        or Passkey.objects.filter(user=user, confirmed=True).exists()
    )


def mark_verified(request: HttpRequest, device: Device) -> None:
    """Record a passed check: django-otp's session marker, and the time for step-up."""
    otp_login(request, device)
    request.session[VERIFIED_AT] = time.time()


def is_fresh(request: HttpRequest) -> bool:
    """Whether the session's last check is younger than SECOND_FACTOR_MAX_AGE."""
    at = request.session.get(VERIFIED_AT)
    return isinstance(at, int | float) and time.time() - at < app_settings.SECOND_FACTOR_MAX_AGE


def verify_url(request: HttpRequest, *, again: bool = False) -> str:
    query = {"next": request.get_full_path()}
    if again:
        query["again"] = "1"
    return f"{reverse('credentials:second_factor_verify')}?{urlencode(query)}"


def step_up(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Ask for the second factor again before the view if the last check is stale.

    Only for users who have one: there is nothing to ask the others (whom the
    SECOND_FACTOR policy does not require to have one). A POST that is sent
    back here loses its form; the page is shown again after the check.
    """

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if enrolled(request.user) and not is_fresh(request):  # type: ignore[arg-type]
            return HttpResponseRedirect(verify_url(request, again=True))
        return view(request, *args, **kwargs)

    return wrapper


def recovery_device(user: AbstractBaseUser) -> StaticDevice:
    device, _ = StaticDevice.objects.get_or_create(user=user, name=RECOVERY)
    return device


#: Recovery codes: 10 characters of lowercase base32 (50 bits), shown as two groups of 5.
RECOVERY_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def recovery_token(code: str) -> str:
    """What is stored of a recovery code: a keyed hash (SECRET_KEY), never the code.

    django-otp's static tokens are kept as typed; a copy of the database alone must
    not sign anyone in. 64 bits of HMAC-SHA256 (the codes have 50).
    """
    normalized = re.sub(r"[\s-]", "", code).lower()
    return salted_hmac("kumosubmit.web.second_factor.recovery", normalized).hexdigest()[:16]


def new_recovery_codes(user: AbstractBaseUser) -> list[str]:
    """Replace the user's recovery codes with RECOVERY_CODES new ones; shown once."""
    device = recovery_device(user)
    device.token_set.all().delete()
    codes = []
    for _ in range(app_settings.RECOVERY_CODES):
        code = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(10))
        codes.append(f"{code[:5]}-{code[5:]}")
    StaticToken.objects.bulk_create(
        StaticToken(device=device, token=recovery_token(code)) for code in codes
    )
    return codes


def match_code(user: AbstractBaseUser, code: str) -> Device | None:
    """The TOTP device or recovery codes the typed code belongs to (it is used up), if any.

    Each device counts its own failures and makes the next try wait
    (django-otp's throttling), so codes cannot be guessed quickly.
    """
    code = re.sub(r"[\s-]", "", code).lower()
    for device in TOTPDevice.objects.filter(user=user, confirmed=True):
        if code.isdigit() and device.verify_token(code):
            return device
    for static in StaticDevice.objects.filter(user=user, confirmed=True):
        if static.verify_token(recovery_token(code)):
            return static
    return None


def drop_recovery_codes_if_alone(user: AbstractBaseUser) -> None:
    """Recovery codes stand in for a second factor: without one left, they go too."""
    if not enrolled(user):
        StaticDevice.objects.filter(user=user).delete()
