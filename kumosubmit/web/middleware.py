"""Second factor before anything else, for the self-service pages and the admin alike.

After ``django_otp.middleware.OTPMiddleware``. A signed-in user who has a
second factor but has not used it in this session may reach only the check
and sign-out; one whom ``SECOND_FACTOR`` requires to have one but who has none
may reach only the enrolment pages and sign-out. Everything else redirects
there, with the page asked for as ``next``.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import Resolver404, resolve, reverse

from kumosubmit.web import second_factor

#: URL names a user who has not passed the check may reach.
#: Signing out (Django's page, or the app's own) is always allowed.
SIGN_OUT = ("logout", "credentials:sign_out")
VERIFY_NAMES = (
    "credentials:second_factor_verify",
    "credentials:passkey_assert_begin",
    "credentials:passkey_assert_finish",
    *SIGN_OUT,
)
#: URL names a user who must enrol may reach.
ENROL_NAMES = (
    "credentials:security",
    "credentials:totp_enrol",
    "credentials:passkey_register_begin",
    "credentials:passkey_register_finish",
    *SIGN_OUT,
)


class SecondFactorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or self._static(request):
            return self.get_response(request)
        if second_factor.enrolled(user):
            if not user.is_verified() and not self._at(request, VERIFY_NAMES):
                return HttpResponseRedirect(second_factor.verify_url(request))
        elif second_factor.required(user) and not self._at(request, ENROL_NAMES):
            query = urlencode({"next": request.get_full_path()})
            return HttpResponseRedirect(f"{reverse('credentials:security')}?{query}")
        return self.get_response(request)

    @staticmethod
    def _at(request: HttpRequest, names: tuple[str, ...]) -> bool:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return False
        return match.view_name in names

    @staticmethod
    def _static(request: HttpRequest) -> bool:
        static = getattr(settings, "STATIC_URL", None) or ""
        return bool(static) and request.path.startswith("/" + static.lstrip("/"))
