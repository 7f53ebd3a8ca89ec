"""The SMTP tokens a login's owner made: label, dates and last use, never the token.

The token itself is django-oauth-toolkit's ``AccessToken`` (``access_token_id``).
No foreign key joins them, so projects that validate tokens of an external
provider need not install the toolkit; the row is found by the token's SHA-256,
the same checksum the toolkit looks tokens up by.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from kumosubmit.credentials.models import Revocable, RevocableQuerySet, SmtpLogin


class SmtpToken(Revocable, models.Model):
    """An OAuth access token with the ``smtp`` scope, made for one login."""

    login = models.ForeignKey(
        SmtpLogin, on_delete=models.CASCADE, related_name="tokens", verbose_name=_("login")
    )
    label = models.CharField(
        _("label"), max_length=100, help_text=_("Where it is used, e.g. “backup script”.")
    )
    token_checksum = models.CharField(
        _("token checksum"), max_length=64, unique=True, editable=False
    )
    access_token_id = models.BigIntegerField(
        _("access token id"), null=True, blank=True, editable=False
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    last_used_from = models.GenericIPAddressField(
        _("last used from"), null=True, blank=True, editable=False
    )

    objects = RevocableQuerySet.as_manager()

    class Meta:
        verbose_name = _("SMTP token")
        verbose_name_plural = _("SMTP tokens")
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.label} (token {self.pk})"
