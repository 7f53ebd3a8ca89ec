"""The connection audit log, read-only, with a CSV export of a date range."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import date, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from kumosubmit.admin.common import ReadOnlyAdmin
from kumosubmit.audit.models import ConnectionRecord, LenientJSONEncoder

#: The CSV's columns: the audit table's fields, then what AUTH used, then all of conn_meta.
EXPORT_FIELDS = (
    "started_at",
    "ended_at",
    "conn_id",
    "listener",
    "peer_address",
    "peer_port",
    "local_address",
    "local_port",
    "tls_version",
    "tls_cipher",
    "ehlo_name",
    "auth_mechanism",
    "authc",
    "authz",
    "auth_outcome",
    "auth_lane",
    "auth_attempts",
    "messages_accepted",
    "bytes_accepted",
)
EXPORT_HEADER = (*EXPORT_FIELDS, "auth_credential", "meta")
#: Rows fetched per round trip while streaming (a server-side cursor on PostgreSQL).
EXPORT_CHUNK = 2000
#: A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class ExportForm(forms.Form):
    """Which days to export: both ends included, in the site's time zone."""

    start = forms.DateField(
        label=_("From"), widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")
    )
    end = forms.DateField(
        label=_("To (included)"),
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )
    authc = forms.CharField(
        label=_("Login"),
        required=False,
        max_length=255,
        help_text=_("Only connections that named this login (optional)."),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("start") and data.get("end") and data["end"] < data["start"]:
            self.add_error("end", gettext("The end is before the start."))
        return data

    def time_range(self) -> tuple[datetime, datetime]:
        """[start of the first day, start of the day after the last)."""
        zone = timezone.get_current_timezone()
        start: date = self.cleaned_data["start"]
        end: date = self.cleaned_data["end"]
        return (
            datetime.combine(start, time.min, tzinfo=zone),
            datetime.combine(end + timedelta(days=1), time.min, tzinfo=zone),
        )


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell a spreadsheet shows as text (OWASP: CSV injection)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def credential_of(meta: dict[str, Any]) -> str:
    """What the last AUTH attempt used, from conn_meta (the built-in handler notes it)."""
    attempts = meta.get("auth_attempts") or []
    notes = [
        note
        for note in meta.get("auth_credentials") or []
        if isinstance(note, dict) and note.get("attempt") == len(attempts) - 1
    ]
    if not notes:
        return ""
    note = notes[-1]
    if note.get("kind") == "app_password":
        return f"app password {note.get('app_password_id')} ({note.get('label', '')}): " + str(
            note.get("result", "")
        )
    return f"password: {note.get('result', '')}"


class _Echo:
    """The csv module writes to this; each row comes back as the string it wrote."""

    def write(self, value: str) -> str:
        return value


def csv_lines(rows: Iterable[tuple[Any, ...]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_HEADER)
    for *values, meta in rows:
        meta = meta if isinstance(meta, dict) else {}
        yield writer.writerow(
            [csv_cell(value) for value in values]
            + [
                csv_cell(credential_of(meta)),
                csv_cell(json.dumps(meta, sort_keys=True, cls=LenientJSONEncoder)),
            ]
        )


@admin.register(ConnectionRecord)
class ConnectionRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "started_at",
        "peer_address",
        "listener",
        "tls_version",
        "ehlo_name",
        "authc",
        "auth_outcome",
        "auth_lane",
        "auth_attempts",
        "messages_accepted",
        "bytes_accepted",
    )
    list_filter = ("auth_outcome", "auth_lane", "listener", "started_at")
    date_hierarchy = "started_at"
    # Django casts an inet column with HOST() for icontains on PostgreSQL, so
    # partial addresses match there as they do on SQLite's text column.
    search_fields = ("authc", "peer_address")
    fields = readonly_fields = (*EXPORT_FIELDS, "conn_meta")

    @admin.display(description=_("conn_meta"))
    def conn_meta(self, record: ConnectionRecord) -> str:
        return format_html("<pre>{}</pre>", record.meta_json)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "export/",
                self.admin_site.admin_view(self.export_view),
                name="kumosubmit_connectionrecord_export",
            ),
            path(
                "dashboard/",
                self.admin_site.admin_view(self.dashboard_view),
                name="kumosubmit_dashboard",
            ),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """The operator's view: charts of the last day and week, top failures, blocks."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        from kumosubmit.admin import dashboard

        context = {
            **self.admin_site.each_context(request),
            **dashboard.context(request),
            "title": gettext("Operator's view"),
            "opts": self.opts,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/kumosubmit/dashboard.html", context)

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """A date range form (GET); with a valid range, the rows as CSV, streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = ExportForm(request.GET if "start" in request.GET else None)
        if form.is_valid():
            start, end = form.time_range()
            rows = ConnectionRecord.objects.filter(started_at__gte=start, started_at__lt=end)
            if form.cleaned_data["authc"]:
                rows = rows.filter(authc=form.cleaned_data["authc"])
            values = rows.order_by("started_at", "pk").values_list(*EXPORT_FIELDS, "meta")
            filename = (
                f"kumosubmit-audit-{form.cleaned_data['start']}-to-{form.cleaned_data['end']}.csv"
            )
            return StreamingHttpResponse(
                csv_lines(values.iterator(chunk_size=EXPORT_CHUNK)),
                content_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            )
        if not form.is_bound:
            today = timezone.localdate()
            form = ExportForm(initial={"start": today - timedelta(days=30), "end": today})
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Export the audit log as CSV"),
            "form": form,
            "opts": self.opts,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/kumosubmit/connectionrecord/export.html", context)
