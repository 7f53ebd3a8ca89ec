"""What the admin pages share: JSON display and the read-only log admin."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from kumosubmit.audit.models import LenientJSONEncoder


def pretty_json(value: Any) -> str:
    """Indented JSON in a <pre>; LenientJSONEncoder copes with whatever a hook stored."""
    return format_html(
        "<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, cls=LenientJSONEncoder)
    )


class ReadOnlyAdmin(admin.ModelAdmin):
    """A log: viewable, never added to, changed or deleted through the admin."""

    # Big tables: skip the unfiltered COUNT(*) on every filtered page.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class CredentialStatusFilter(admin.SimpleListFilter):
    """Active, expired or revoked, as of now (expiry is a time, not a stored flag), for
    the revocable credentials (credentials.models.Revocable)."""

    title = _("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        return list(model_admin.model.Status.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        now = timezone.now()
        status = queryset.model.Status
        if self.value() == status.ACTIVE:
            return queryset.live(now)  # type: ignore[attr-defined]
        if self.value() == status.EXPIRED:
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == status.REVOKED:
            return queryset.filter(revoked_at__isnull=False)
        return queryset
