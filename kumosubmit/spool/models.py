"""Accepted messages, as the database spool keeps them, with their relay queue state."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from kumosubmit.audit.models import LenientJSONEncoder


class MessageState(models.TextChoices):
    """Where a message is on its way to the upstream MTA (kumosubmit/relay/queue.py)."""

    QUEUED = "queued", _("queued")
    DELIVERING = "delivering", _("in delivery")
    DEFERRED = "deferred", _("deferred")
    DELIVERED = "delivered", _("delivered")
    FAILED = "failed", _("failed")
    HELD = "held", _("held")


class Message(models.Model):
    """A message accepted over SMTP: envelope, raw content (with our Received header), meta.

    The relay fields say where it is on its way upstream. ``next_attempt_at`` is
    the one column the relay workers claim by: when a queued or deferred message
    is due, or when the lease of a message in delivery runs out (its worker died);
    it is NULL once nothing is left to do (delivered, failed, held), which keeps
    those rows out of the claim index.
    """

    queue_id = models.CharField(_("queue id"), max_length=32, unique=True)
    received_at = models.DateTimeField(_("received"), auto_now_add=True, db_index=True)
    mail_from = models.CharField(_("envelope sender"), max_length=512, blank=True)
    rcpt_tos = models.JSONField(_("envelope recipients"), default=list)
    size = models.PositiveBigIntegerField(_("size"))
    content = models.BinaryField(_("content"))
    authz_id = models.CharField(_("authorization id"), max_length=255, db_index=True)
    authn_id = models.CharField(_("authentication id"), max_length=255)
    conn_id = models.CharField(_("connection id"), max_length=32, db_index=True)
    meta = models.JSONField(_("meta"), encoder=LenientJSONEncoder, default=dict)

    # -- the relay queue ---------------------------------------------------------------
    state = models.CharField(
        _("state"),
        max_length=10,
        choices=MessageState.choices,
        default=MessageState.QUEUED,
        db_index=True,
    )
    next_attempt_at = models.DateTimeField(
        _("next attempt"),
        null=True,
        blank=True,
        default=timezone.now,
        help_text=_("When a worker may take it next (in delivery: when its lease runs out)."),
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_attempt_at = models.DateTimeField(_("last attempt"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    #: One entry per envelope recipient, in order: {"state", "reply", "at"} (queue.py).
    recipient_outcomes = models.JSONField(_("recipient outcomes"), default=list, blank=True)
    lease_owner = models.CharField(_("worker"), max_length=128, blank=True)
    delivered_at = models.DateTimeField(_("delivered"), null=True, blank=True)
    content_removed_at = models.DateTimeField(
        _("content removed"),
        null=True,
        blank=True,
        help_text=_("Set when the retention period removed the delivered content."),
    )

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        ordering = ["-received_at"]
        indexes = [
            # The workers' claim: WHERE next_attempt_at <= now ORDER BY next_attempt_at, id.
            models.Index(
                fields=["next_attempt_at", "id"],
                condition=Q(next_attempt_at__isnull=False),
                name="kumosubmit_message_due",
            ),
            # Retention: delivered rows by age. Only delivered rows: a new message is not
            # in it, one index entry fewer in the commit before its 250.
            models.Index(
                fields=["delivered_at"],
                condition=Q(delivered_at__isnull=False, content_removed_at__isnull=True),
                name="kumosubmit_message_retained",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.queue_id} from <{self.mail_from}>"
