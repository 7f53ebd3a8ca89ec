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
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from kumosubmit.oauth.models import SmtpToken
from kumosubmit.oauth.tokens import revoke_smtp_token


class SmtpTokenStatusFilter(admin.SimpleListFilter):
    title = _("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        return list(SmtpToken.Status.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        now = timezone.now()
        if self.value() == SmtpToken.Status.ACTIVE:
            return queryset.live(now)
        if self.value() == SmtpToken.Status.EXPIRED:
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == SmtpToken.Status.REVOKED:
            return queryset.filter(revoked_at__isnull=False)
        return queryset


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
    list_filter = (SmtpTokenStatusFilter, "created_at")
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
