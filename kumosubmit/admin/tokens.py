"""The SMTP tokens of all logins (kumosubmit/oauth/): listed, and revoked one by one or in bulk.

The token itself is never shown (kumosubmit never has it after showing it once);
django-oauth-toolkit's own admin pages list its access tokens and applications.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from kumosubmit.admin.common import CredentialStatusFilter
from kumosubmit.oauth.models import SmtpToken
from kumosubmit.oauth.tokens import revoke_smtp_token


@admin.register(SmtpToken)
class SmtpTokenAdmin(admin.ModelAdmin):
    show_full_result_count = False
    list_display = (
        "login",
        "label",
        "status",
        "created_at",
        "expires_at",
        "last_used_at",
        "last_used_from",
    )
    list_filter = (CredentialStatusFilter, "created_at")
    list_select_related = ("login",)
    search_fields = ("login__username", "label")
    fields = readonly_fields = (
        "login",
        "label",
        "status",
        "access_token_id",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "last_used_from",
    )
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Made by their owners or createsmtptoken (the token is shown once, there).
        return False

    @admin.display(description=_("status"))
    def status(self, row: SmtpToken) -> str:
        return row.get_status_display()

    @admin.action(description=_("Revoke selected tokens"), permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        revoked = [row for row in queryset if revoke_smtp_token(row)]
        LogEntry.objects.log_actions(
            request.user.pk, revoked, CHANGE, [{"changed": {"fields": ["revoked"]}}]
        )
        count = len(revoked)
        self.message_user(
            request,
            ngettext("%d token was revoked.", "%d tokens were revoked.", count) % count,
            messages.SUCCESS,
        )
