"""Passkeys: WebAuthn credentials kept as django-otp devices.

Being a ``Device``, a passkey marks a session verified with ``django_otp.login``
like a TOTP code does, so ``request.user.is_verified()`` and the
second-factor middleware treat both alike. It is never verified by a token:
only by a signed assertion (kumosubmit/web/passkeys.py).
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _
from django_otp.models import Device


class Passkey(Device):
    """One WebAuthn credential of a site user: its id, public key and signature counter."""

    # base64url of the credential id (at most 1023 bytes, so 1364 characters).
    credential_id = models.CharField(_("credential id"), max_length=1400, unique=True)
    public_key = models.BinaryField(_("public key (COSE)"))
    sign_count = models.PositiveBigIntegerField(_("signature counter"), default=0)
    transports = models.JSONField(_("transports"), default=list, blank=True)
    created_at = models.DateTimeField(_("added"), auto_now_add=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)

    class Meta:
        verbose_name = _("passkey")
        verbose_name_plural = _("passkeys")

    def verify_token(self, token: object) -> bool:
        """Never: a passkey proves itself by signature, not by a typed code."""
        return False
