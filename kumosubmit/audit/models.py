"""The audit table: a row per connection, never a password."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils.translation import gettext_lazy as _


class LenientJSONEncoder(DjangoJSONEncoder):
    """Store what a hook put in conn_meta even if JSON cannot represent it."""

    def default(self, o: Any) -> Any:
        try:
            return super().default(o)
        except TypeError:
            return repr(o)


class AuthOutcome(models.TextChoices):
    NONE = "none", _("no AUTH")
    SUCCESS = "success", _("success")
    FAILURE = "failure", _("failure")
    ERROR = "error", _("error")
    ABORTED = "aborted", _("aborted")
    BLOCKED = "blocked", _("blocked")
    BUSY = "busy", _("busy (lane full)")


class ConnectionRecord(models.Model):
    """What happened on one SMTP connection: who, from where, over what, with what result."""

    conn_id = models.CharField(_("connection id"), max_length=32, unique=True)
    started_at = models.DateTimeField(_("started"), db_index=True)
    ended_at = models.DateTimeField(_("ended"))
    listener = models.CharField(_("listener"), max_length=16)
    peer_address = models.GenericIPAddressField(_("peer address"), null=True, db_index=True)
    peer_port = models.PositiveIntegerField(_("peer port"), null=True)
    local_address = models.GenericIPAddressField(_("local address"), null=True)
    local_port = models.PositiveIntegerField(_("local port"), null=True)
    tls_version = models.CharField(_("TLS version"), max_length=16, blank=True)
    tls_cipher = models.CharField(_("TLS cipher"), max_length=64, blank=True)
    ehlo_name = models.CharField(_("EHLO/HELO name"), max_length=255, blank=True)
    auth_mechanism = models.CharField(_("AUTH mechanism"), max_length=16, blank=True)
    authc = models.CharField(_("authentication id"), max_length=255, blank=True, db_index=True)
    authz = models.CharField(_("authorization id"), max_length=255, blank=True)
    auth_outcome = models.CharField(
        _("AUTH outcome"), max_length=8, choices=AuthOutcome.choices, db_index=True
    )
    # The argon2 lane of the last AUTH attempt (kumosubmit/policy/lanes.py): "priority" for
    # a known login and network, "bounded" for the rest; blank when no lane was taken.
    auth_lane = models.CharField(_("AUTH lane"), max_length=8, blank=True, default="")
    auth_attempts = models.PositiveIntegerField(_("AUTH attempts"), default=0)
    messages_accepted = models.PositiveIntegerField(_("messages accepted"), default=0)
    bytes_accepted = models.PositiveBigIntegerField(_("bytes accepted"), default=0)
    meta = models.JSONField(_("conn_meta"), encoder=LenientJSONEncoder, default=dict)

    class Meta:
        verbose_name = _("connection")
        verbose_name_plural = _("connection audit log")
        ordering = ["-started_at"]
        indexes = [
            # The operator's view (kumosubmit/admin/dashboard.py) reads only this index: the
            # hours of the last week by outcome with their messages, and the failed
            # connections of the last day by address and by login. One index, not one per
            # query, as each costs every audit write.
            models.Index(
                fields=["started_at", "auth_outcome", "messages_accepted", "peer_address", "authc"],
                name="kumosubmit_audit_dashboard",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.peer_address} {self.started_at:%Y-%m-%d %H:%M:%S} {self.auth_outcome}"

    @property
    def meta_json(self) -> str:
        return json.dumps(self.meta, indent=2, sort_keys=True, cls=LenientJSONEncoder)


class SeenAddress(models.Model):
    """A network a login has been used from: the first use from a new one is told its owner.

    Written by :func:`kumosubmit.notices.new_address_used`; the unique pair makes
    "new" a fact the database decides, so two processes cannot both send the notice.
    """

    login = models.ForeignKey(
        "kumosubmit.SmtpLogin", on_delete=models.CASCADE, related_name="seen_addresses"
    )
    # An IPv4 address, or an IPv6 network (as the failed-AUTH counters count them).
    network = models.CharField(_("address or network"), max_length=64)
    first_seen_at = models.DateTimeField(_("first seen"), auto_now_add=True)

    class Meta:
        verbose_name = _("address a login was used from")
        verbose_name_plural = _("addresses logins were used from")
        constraints = [
            models.UniqueConstraint(fields=["login", "network"], name="kumosubmit_seen_unique")
        ]

    def __str__(self) -> str:
        return f"{self.login_id} {self.network}"
