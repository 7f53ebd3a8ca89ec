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

    def __str__(self) -> str:
        return f"{self.peer_address} {self.started_at:%Y-%m-%d %H:%M:%S} {self.auth_outcome}"

    @property
    def meta_json(self) -> str:
        return json.dumps(self.meta, indent=2, sort_keys=True, cls=LenientJSONEncoder)
