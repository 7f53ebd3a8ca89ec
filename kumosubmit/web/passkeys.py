"""WebAuthn ceremonies with py_webauthn: options out, a signed response back, checked here.

The challenge of each ceremony is kept in the session between its two
requests and used once. The relying party id is ``WEBAUTHN_RP_ID`` or the host
the page was served from, and the origin must be that page's own; behind a TLS
proxy Django must know the scheme (``SECURE_PROXY_SSL_HEADER``).
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import salted_hmac
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from kumosubmit.conf import app_settings
from kumosubmit.web.models import Passkey

CHALLENGE = "kumosubmit_webauthn_challenge"


class PasskeyError(Exception):
    """The browser's response did not prove what it should (shown to the user as is)."""


def rp_id(request: HttpRequest) -> str:
    if app_settings.WEBAUTHN_RP_ID:
        return str(app_settings.WEBAUTHN_RP_ID)
    host = request.get_host()
    return host.rsplit(":", 1)[0] if not host.endswith("]") else host


def origin(request: HttpRequest) -> str:
    return f"{request.scheme}://{request.get_host()}"


def user_handle(user: AbstractBaseUser) -> bytes:
    """A stable, opaque id of the user for authenticators (not the primary key)."""
    return salted_hmac("kumosubmit.web.passkeys.user_handle", str(user.pk)).digest()


def _descriptors(user: AbstractBaseUser) -> list[PublicKeyCredentialDescriptor]:
    descriptors = []
    for key in Passkey.objects.filter(user=user):
        transports = []
        for name in key.transports or []:
            try:
                transports.append(AuthenticatorTransport(name))
            except ValueError:
                continue
        descriptors.append(
            PublicKeyCredentialDescriptor(
                id=base64url_to_bytes(key.credential_id), transports=transports or None
            )
        )
    return descriptors


def registration_options(request: HttpRequest) -> str:
    """The options for ``navigator.credentials.create()``, as JSON; the challenge is kept."""
    user = request.user
    options = generate_registration_options(
        rp_id=rp_id(request),
        rp_name=str(app_settings.SECOND_FACTOR_ISSUER),
        user_id=user_handle(user),  # type: ignore[arg-type]
        user_name=user.get_username(),
        exclude_credentials=_descriptors(user),  # type: ignore[arg-type]
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
    )
    request.session[CHALLENGE] = bytes_to_base64url(options.challenge)
    return options_to_json(options)


def _challenge(request: HttpRequest) -> bytes:
    challenge = request.session.pop(CHALLENGE, None)
    if not challenge:
        raise PasskeyError("No passkey request is under way; start again.")
    return base64url_to_bytes(challenge)


def register(request: HttpRequest, response: dict[str, Any], name: str) -> Passkey:
    """Check the browser's new credential and keep it as the user's passkey."""
    try:
        verified = verify_registration_response(
            credential=response,
            expected_challenge=_challenge(request),
            expected_rp_id=rp_id(request),
            expected_origin=origin(request),
        )
    except (WebAuthnException, ValueError, TypeError, KeyError) as error:  # anything malformed
        raise PasskeyError(f"The passkey was not accepted: {error}") from error
    transports = response.get("response", {}).get("transports") or []
    return Passkey.objects.create(
        user=request.user,
        name=(name or "Passkey")[:64],
        confirmed=True,
        credential_id=bytes_to_base64url(verified.credential_id),
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        transports=[str(t) for t in transports][:8],
    )


def authentication_options(request: HttpRequest) -> str:
    """The options for ``navigator.credentials.get()`` with the user's passkeys, as JSON."""
    options = generate_authentication_options(
        rp_id=rp_id(request),
        allow_credentials=_descriptors(request.user),  # type: ignore[arg-type]
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    request.session[CHALLENGE] = bytes_to_base64url(options.challenge)
    return options_to_json(options)


def authenticate(request: HttpRequest, response: dict[str, Any]) -> Passkey:
    """Check a signed assertion by one of the user's passkeys; its counter moves on."""
    challenge = _challenge(request)
    key = Passkey.objects.filter(
        user=request.user, credential_id=str(response.get("id", ""))
    ).first()
    if key is None:
        raise PasskeyError("This passkey is not one of yours.")
    try:
        verified = verify_authentication_response(
            credential=response,
            expected_challenge=challenge,
            expected_rp_id=rp_id(request),
            expected_origin=origin(request),
            credential_public_key=bytes(key.public_key),
            credential_current_sign_count=key.sign_count,
        )
    except (WebAuthnException, ValueError, TypeError, KeyError) as error:
        raise PasskeyError(f"The passkey was not accepted: {error}") from error
    key.sign_count = verified.new_sign_count
    key.last_used_at = timezone.now()
    key.save(update_fields=["sign_count", "last_used_at"])
    return key


def parse(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as error:
        raise PasskeyError("The browser sent no passkey.") from error
    if not isinstance(data, dict):
        raise PasskeyError("The browser sent no passkey.")
    return data
