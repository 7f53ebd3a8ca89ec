"""What the admin pages share: JSON display and the read-only log admin."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

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
