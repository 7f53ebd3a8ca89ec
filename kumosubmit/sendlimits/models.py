"""The sending limits' state in the database (the default backend)."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from kumosubmit.credentials.models import AppPassword, SmtpLogin


class SendLimitState(models.Model):
    """GCRA state of one rule of one credential: when its allowance is next full.

    One row per (credential, kind, period), so every login (and each of its app
    passwords) updates rows of its own: no row is shared by all senders. ``tat`` is
    GCRA's theoretical arrival time in microseconds since the Unix epoch; a
    reservation moves it on by ``period / count`` and is refused when it would go
    more than ``period`` past now (kumosubmit/sendlimits/backends.py).
    """

    key = models.CharField(_("key"), max_length=64)  # "login:<pk>" or "app:<pk>"
    rule = models.CharField(_("rule"), max_length=32)  # "<kind>/<period>"
    login = models.ForeignKey(
        SmtpLogin,
        on_delete=models.CASCADE,
        related_name="send_limit_states",
        verbose_name=_("login"),
    )
    app_password = models.ForeignKey(
        AppPassword,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="send_limit_states",
        verbose_name=_("app password"),
    )
    kind = models.CharField(_("kind"), max_length=10)  # MESSAGES or RECIPIENTS
    count = models.PositiveIntegerField(_("limit"))
    period = models.PositiveIntegerField(_("period (seconds)"))
    tat = models.BigIntegerField(_("full again at (µs)"))
    noticed_until = models.BigIntegerField(_("notice sent for the window until (µs)"), null=True)

    class Meta:
        verbose_name = _("sending limit use")
        verbose_name_plural = _("sending limit use")
        ordering = ["-tat"]
        constraints = [
            models.UniqueConstraint(fields=["key", "rule"], name="kumosubmit_sendlimit_key_rule")
        ]

    def __str__(self) -> str:
        return f"{self.key} {self.rule}"


class SendRate(models.Model):
    """A login's recent and usual sending rates, for the optional suspicion.

    Two exponentially decaying counts of its stored messages, kept only while
    ``SUSPEND_FACTOR`` is set: ``recent`` over about an hour, ``usual`` over
    about a week (kumosubmit/sendlimits/suspicion.py).
    """

    login = models.OneToOneField(
        SmtpLogin, on_delete=models.CASCADE, related_name="send_rate", verbose_name=_("login")
    )
    recent = models.FloatField(_("recent count"), default=0.0)
    usual = models.FloatField(_("usual count"), default=0.0)
    updated = models.BigIntegerField(_("updated (µs)"))

    class Meta:
        verbose_name = _("sending rate")
        verbose_name_plural = _("sending rates")

    def __str__(self) -> str:
        return str(self.login)
