"""The second-factor pages: enrol TOTP or a passkey, recovery codes, and the check itself.

Enrolling, removing and new recovery codes ask for the existing second factor
again when it is stale (:func:`~kumosubmit.web.second_factor.step_up`), so a
stolen session cannot swap in the thief's own authenticator. The passkey
ceremonies are JSON endpoints for the page's script (static
``kumosubmit/passkeys.js``); everything else is a plain form.
"""

from __future__ import annotations

import re
from base64 import b32encode
from urllib.parse import quote, urlencode

import qrcode
import qrcode.image.svg
from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods, require_POST
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from kumosubmit import notices
from kumosubmit.conf import app_settings
from kumosubmit.web import passkeys, second_factor
from kumosubmit.web.account import sign_in_required
from kumosubmit.web.models import Passkey


class CodeForm(forms.Form):
    code = forms.CharField(
        label=_("Code"),
        max_length=16,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autofocus": True}),
        help_text=_("The 6 digits your authenticator app shows, or one of your recovery codes."),
    )

    def cleaned_code(self) -> str:
        return re.sub(r"[\s-]", "", self.cleaned_data["code"]).lower()


def _next(request: HttpRequest, default: str = "credentials:index") -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse(default)


def totp_uri(device: TOTPDevice, username: str) -> str:
    """The otpauth:// URI authenticator apps read from the QR code (Key Uri Format)."""
    issuer = str(app_settings.SECOND_FACTOR_ISSUER)
    secret = b32encode(device.bin_key).decode().rstrip("=")
    query = urlencode(
        {"secret": secret, "issuer": issuer, "digits": device.digits, "period": device.step}
    )
    return f"otpauth://totp/{quote(f'{issuer}:{username}')}?{query}"


def qr_svg(text: str) -> str:
    """The QR code of ``text`` as inline SVG (one path; no image file, no script)."""
    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    svg = image.to_string(encoding="unicode")
    return svg[svg.index("<svg") :]


@never_cache
@sign_in_required
def security(request: HttpRequest) -> HttpResponse:
    """The user's second factors, with ways to add and remove them."""
    user = request.user
    recovery = StaticDevice.objects.filter(user=user).first()
    return render(
        request,
        "kumosubmit/account/security.html",
        {
            "totp_devices": TOTPDevice.objects.filter(user=user, confirmed=True),
            "passkeys": Passkey.objects.filter(user=user).order_by("created_at"),
            "recovery_left": recovery.token_set.count() if recovery else 0,
            "enrolled": second_factor.enrolled(user),
            "required": second_factor.required(user),
            "next": _next(request),
        },
    )


@never_cache
@sensitive_variables()
@sign_in_required
@second_factor.step_up
@require_http_methods(["GET", "POST"])
def totp_enrol(request: HttpRequest) -> HttpResponse:
    """Show a new TOTP secret (QR code and text); a code from the app confirms it."""
    user = request.user
    if TOTPDevice.objects.filter(user=user, confirmed=True).exists():
        messages.info(request, gettext("An authenticator app is set up already."))
        return HttpResponseRedirect(reverse("credentials:security"))
    device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
    if device is None:
        device = TOTPDevice.objects.create(
            user=user, name=gettext("Authenticator app"), confirmed=False
        )
    form = CodeForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        if device.verify_token(form.cleaned_code()):
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            second_factor.mark_verified(request, device)
            codes = second_factor.new_recovery_codes(user)
            return render(
                request,
                "kumosubmit/account/recovery_codes.html",
                {"codes": codes, "next": _next(request), "first": True},
            )
        form.add_error("code", gettext("That code is not right; try the one shown now."))
    uri = totp_uri(device, user.get_username())
    secret = b32encode(device.bin_key).decode().rstrip("=")
    return render(
        request,
        "kumosubmit/account/totp_enrol.html",
        {
            "form": form,
            "qr": mark_safe(qr_svg(uri)),  # noqa: S308 (made here from our own data)
            "secret": " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
            "next": _next(request),
        },
    )


@never_cache
@sign_in_required
@second_factor.step_up
@require_POST
def recovery_codes(request: HttpRequest) -> HttpResponse:
    """New recovery codes (the old ones stop working), shown once."""
    if not second_factor.enrolled(request.user):
        return HttpResponseRedirect(reverse("credentials:security"))
    codes = second_factor.new_recovery_codes(request.user)
    return render(
        request,
        "kumosubmit/account/recovery_codes.html",
        {"codes": codes, "next": reverse("credentials:security"), "first": False},
    )


def _removed(request: HttpRequest, what: str) -> HttpResponse:
    second_factor.drop_recovery_codes_if_alone(request.user)
    notices.second_factor_removed(request, request.user, what)
    messages.success(request, gettext("%s was removed.") % what)
    return HttpResponseRedirect(reverse("credentials:security"))


@sign_in_required
@second_factor.step_up
@require_POST
def totp_remove(request: HttpRequest, device_id: int) -> HttpResponse:
    get_object_or_404(TOTPDevice, pk=device_id, user=request.user).delete()
    return _removed(request, gettext("The authenticator app"))


@sign_in_required
@second_factor.step_up
@require_POST
def passkey_remove(request: HttpRequest, passkey_id: int) -> HttpResponse:
    key = get_object_or_404(Passkey, pk=passkey_id, user=request.user)
    key.delete()
    return _removed(request, gettext("The passkey “%s”") % key.name)


@sign_in_required
@second_factor.step_up
@require_POST
def passkey_register_begin(request: HttpRequest) -> HttpResponse:
    return HttpResponse(passkeys.registration_options(request), content_type="application/json")


@sign_in_required
@require_POST
def passkey_register_finish(request: HttpRequest) -> HttpResponse:
    try:
        data = passkeys.parse(request.body)
        key = passkeys.register(request, data.get("credential") or {}, str(data.get("name", "")))
    except passkeys.PasskeyError as error:
        return JsonResponse({"error": str(error)}, status=400)
    second_factor.mark_verified(request, key)
    messages.success(request, gettext("The passkey “%s” was added.") % key.name)
    return JsonResponse({"redirect": _next(request, "security")})


@never_cache
@sensitive_post_parameters("code")
@sign_in_required
@require_http_methods(["GET", "POST"])
def verify(request: HttpRequest) -> HttpResponse:
    """The check: a TOTP code, a recovery code, or a passkey."""
    user = request.user
    if not second_factor.enrolled(user):
        return HttpResponseRedirect(_next(request))
    form = CodeForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        device = second_factor.match_code(user, form.cleaned_code())
        if device is not None:
            second_factor.mark_verified(request, device)
            if isinstance(device, StaticDevice):
                left = device.token_set.count()
                messages.warning(
                    request,
                    gettext("You used a recovery code; %d are left.") % left,
                )
            return HttpResponseRedirect(_next(request))
        form.add_error("code", gettext("That code is not right."))
    return render(
        request,
        "kumosubmit/account/verify.html",
        {
            "form": form,
            "next": _next(request),
            "again": bool(request.GET.get("again")) or user.is_verified(),
            "has_totp": TOTPDevice.objects.filter(user=user, confirmed=True).exists(),
            "has_passkeys": Passkey.objects.filter(user=user).exists(),
        },
    )


@sign_in_required
@require_POST
def passkey_assert_begin(request: HttpRequest) -> HttpResponse:
    return HttpResponse(passkeys.authentication_options(request), content_type="application/json")


@sign_in_required
@require_POST
def passkey_assert_finish(request: HttpRequest) -> HttpResponse:
    try:
        data = passkeys.parse(request.body)
        key = passkeys.authenticate(request, data.get("credential") or {})
    except passkeys.PasskeyError as error:
        return JsonResponse({"error": str(error)}, status=400)
    second_factor.mark_verified(request, key)
    return JsonResponse({"redirect": _next(request)})
