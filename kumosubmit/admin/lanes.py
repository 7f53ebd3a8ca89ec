"""The admin of AUTH lanes: password sprays seen, and the known login and network pairs."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from kumosubmit.credentials import lanes
from kumosubmit.credentials.models import KnownPair, SprayEvent


class OngoingFilter(admin.SimpleListFilter):
    """Whether the spray still tightens the bounded lane (seen within SPRAY_HOLD)."""

    title = _("going on")
    parameter_name = "ongoing"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        since = timezone.now() - lanes.policy().spray_hold
        if self.value() == "yes":
            return queryset.filter(last_seen_at__gt=since)
        if self.value() == "no":
            return queryset.filter(last_seen_at__lte=since)
        return queryset


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SprayEvent)
class SprayEventAdmin(ReadOnly):
    """Password sprays: while one goes on, the bounded AUTH lane is tightened site-wide."""

    list_display = ("scope", "login", "started_at", "last_seen_at", "addresses", "ongoing")
    list_filter = (OngoingFilter, "scope")
    search_fields = ("login",)
    fields = readonly_fields = (
        "scope",
        "login",
        "started_at",
        "last_seen_at",
        "addresses",
        "ongoing",
    )

    @admin.display(description=_("going on"), boolean=True)
    def ongoing(self, event: SprayEvent) -> bool:
        return event.last_seen_at > timezone.now() - lanes.policy().spray_hold


@admin.register(KnownPair)
class KnownPairAdmin(ReadOnly):
    """Where each login signed in lately: its AUTHs from there take the priority lane.
    Deleting a row takes the priority away until the next good AUTH from there."""

    show_full_result_count = False
    list_display = ("login", "network", "last_success_at", "failures")
    list_select_related = ("login",)
    search_fields = ("login__username", "network")
    fields = readonly_fields = ("login", "network", "last_success_at", "failures")
