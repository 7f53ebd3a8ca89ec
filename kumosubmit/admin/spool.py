"""Stored messages and the relay queue: read-only rows, with queue actions and counts."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import BinaryField, QuerySet
from django.db.models.functions import Length, Substr
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from kumosubmit.admin.common import ReadOnlyAdmin, pretty_json
from kumosubmit.relay import queue
from kumosubmit.spool.models import Message, MessageState

#: How much of a message the detail page shows; the rest stays in the database.
CONTENT_PREVIEW_BYTES = 64 * 1024


def state_counts(request: HttpRequest) -> dict[str, int]:
    """Messages per state, counted once per request (one GROUP BY)."""
    if not hasattr(request, "_kumosubmit_state_counts"):
        request._kumosubmit_state_counts = queue.counts_by_state()  # type: ignore[attr-defined]
    return request._kumosubmit_state_counts  # type: ignore[attr-defined]


class StateFilter(admin.SimpleListFilter):
    """Filter by queue state; each choice says how many messages are in it."""

    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        counts = state_counts(request)
        return [(value, f"{label} ({counts[value]})") for value, label in MessageState.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(state=value) if value in MessageState.values else queryset


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    """The rows stay as received; only the queue actions and deletion change anything."""

    list_display = (
        "received_at",
        "queue_id",
        "mail_from",
        "recipients",
        "authz_id",
        "state",
        "attempts",
        "next_attempt_at",
        "short_error",
        "size",
    )
    list_filter = (StateFilter, "received_at")
    date_hierarchy = "received_at"
    search_fields = ("queue_id", "mail_from", "authz_id")
    actions = ["retry_now", "hold", "release"]
    fields = readonly_fields = (
        "queue_id",
        "received_at",
        "mail_from",
        "recipients",
        "size",
        "authz_id",
        "authn_id",
        "conn_id",
        "state",
        "attempts",
        "last_attempt_at",
        "next_attempt_at",
        "last_error",
        "outcomes",
        "lease_owner",
        "delivered_at",
        "content_removed_at",
        "message_meta",
        "message_content",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Messages can be megabytes; the list never needs them.
        return super().get_queryset(request).defer("content")

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        counts = state_counts(request)
        summary = " · ".join(f"{label} {counts[value]}" for value, label in MessageState.choices)
        return super().changelist_view(request, {**(extra_context or {}), "subtitle": summary})

    # -- permissions: deleting and the queue actions, never editing -----------------------

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    def has_relay_permission(self, request: HttpRequest) -> bool:
        """The queue actions need the change permission; the page itself stays read-only."""
        return request.user.has_perm(f"{self.opts.app_label}.change_message")

    def _report(self, request: HttpRequest, changed: int, selected: int, done: str) -> None:
        self.message_user(
            request,
            ngettext("%(count)d message %(done)s.", "%(count)d messages %(done)s.", changed)
            % {"count": changed, "done": done},
            messages.SUCCESS,
        )
        if changed < selected:
            self.message_user(
                request,
                ngettext(
                    "%(count)d message was left as it was (its state does not allow it).",
                    "%(count)d messages were left as they were (their state does not allow it).",
                    selected - changed,
                )
                % {"count": selected - changed},
                messages.WARNING,
            )

    @admin.action(description=_("Retry selected messages now"), permissions=["relay"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Queued, deferred, held or failed: due now (failed recipients are tried again)."""
        self._report(request, queue.retry_now(queryset), queryset.count(), gettext("retried now"))

    @admin.action(description=_("Hold selected messages"), permissions=["relay"])
    def hold(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._report(request, queue.hold(queryset), queryset.count(), gettext("held"))

    @admin.action(description=_("Release selected held messages"), permissions=["relay"])
    def release(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._report(request, queue.release_held(queryset), queryset.count(), gettext("released"))

    # -- columns -------------------------------------------------------------------------

    @admin.display(description=_("envelope recipients"))
    def recipients(self, message: Message) -> str:
        return ", ".join(message.rcpt_tos)

    @admin.display(description=_("last error"))
    def short_error(self, message: Message) -> str:
        return Truncator(message.last_error).chars(80)

    @admin.display(description=_("recipient outcomes"))
    def outcomes(self, message: Message) -> str:
        rows = []
        for index, address in enumerate(message.rcpt_tos):
            outcomes = message.recipient_outcomes or []
            outcome = (outcomes[index] if index < len(outcomes) else None) or {}
            rows.append((address, outcome.get("state", "pending"), outcome.get("reply", "")))
        return format_html(
            "<table><tr><th>{}</th><th>{}</th><th>{}</th></tr>{}</table>",
            gettext("recipient"),
            gettext("state"),
            gettext("last reply"),
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description=_("meta"))
    def message_meta(self, message: Message) -> str:
        return pretty_json(message.meta)

    @admin.display(description=_("content"))
    def message_content(self, message: Message) -> str:
        """The start of the raw message as text, cut in the database so a big one is not loaded."""
        if message.content_removed_at:
            return gettext("Removed after the retention period, on %(when)s.") % {
                "when": message.content_removed_at.isoformat(timespec="seconds")
            }
        head, length = (
            Message.objects.filter(pk=message.pk)
            .values_list(
                Substr("content", 1, CONTENT_PREVIEW_BYTES, output_field=BinaryField()),
                Length("content"),
            )
            .get()
        )
        text = bytes(head).decode("utf-8", errors="replace")
        if length <= CONTENT_PREVIEW_BYTES:
            return format_html("<pre>{}</pre>", text)
        note = gettext("Showing the first %(shown)d of %(total)d bytes.") % {
            "shown": CONTENT_PREVIEW_BYTES,
            "total": length,
        }
        return format_html("<p>{}</p><pre>{}</pre>", note, text)
