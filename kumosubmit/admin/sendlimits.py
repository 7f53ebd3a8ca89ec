"""Who is at or near a sending limit: the database backend's state, read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import FloatField, QuerySet
from django.db.models.functions import Cast
from django.http import HttpRequest
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from kumosubmit.conf import app_settings
from kumosubmit.sendlimits.backends import now_us, used
from kumosubmit.sendlimits.models import SendLimitState
from kumosubmit.sendlimits.rules import Rule
from kumosubmit.sendlimits.usage import WINDOWS


def _rule(state: SendLimitState) -> Rule:
    return Rule(state.count, state.period)


class NearFilter(admin.SimpleListFilter):
    """At a limit now, or at SEND_LIMITS_NEAR of it or more; else everything in use."""

    title = _("use")
    parameter_name = "use"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        near = app_settings.SEND_LIMITS_NEAR
        return [
            ("full", _("at the limit")),
            ("near", gettext("at or near the limit (%d %% or more)") % round(near * 100)),
            ("any", _("in use")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        now = now_us()
        # In use from tat - now: a share s of the rule is taken when tat >= now + s * period.
        share = {"full": 1.0, "near": app_settings.SEND_LIMITS_NEAR, "any": 0.0}.get(
            self.value() or ""
        )
        if share is None:
            return queryset
        if share == 0:
            return queryset.filter(tat__gt=now)
        # A bucket used up to ``share`` of its count has tat at least within one interval
        # of now + share * period. In floats: period * 1e6 overflows a 32-bit integer.
        period_us = Cast("period", FloatField()) * 1e6
        threshold = period_us * share - period_us / Cast("count", FloatField())
        return queryset.filter(tat__gte=now + threshold)


@admin.register(SendLimitState)
class SendLimitStateAdmin(admin.ModelAdmin):
    """One row per rule of each login and app password that has sent lately."""

    list_display = ("login", "app_password", "rule_text", "use", "share", "free_again")
    list_filter = (NearFilter, "kind")
    list_select_related = ("login", "app_password")
    search_fields = ("login__username", "app_password__label")
    ordering = ("-tat",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("rule"))
    def rule_text(self, state: SendLimitState) -> str:
        return _rule(state).describe(state.kind)

    @admin.display(description=_("in use"))
    def use(self, state: SendLimitState) -> str:
        n = used(_rule(state), state.tat, now_us())
        window = WINDOWS.get(state.period, "")
        return f"{window}: {n} of {state.count}" if window else f"{n} of {state.count}"

    @admin.display(description=_("share"))
    def share(self, state: SendLimitState) -> str:
        return f"{used(_rule(state), state.tat, now_us()) / state.count:.0%}"

    @admin.display(description=_("all free again in"))
    def free_again(self, state: SendLimitState) -> str:
        from kumosubmit.policy.sendlimits import in_words

        wait = (state.tat - now_us()) / 1e6
        return in_words(wait) if wait > 0 else "-"
