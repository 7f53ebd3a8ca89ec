"""Passkeys in the admin: seen and deleted (a lost device), never added or edited here.

django-otp registers its own admins for TOTP devices and recovery codes.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from kumosubmit.web.models import Passkey


@admin.register(Passkey)
class PasskeyAdmin(admin.ModelAdmin):
    list_display = ("user", "name", "created_at", "last_used_at")
    search_fields = ("user__username", "name")
    fields = readonly_fields = ("user", "name", "created_at", "last_used_at", "sign_count")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
