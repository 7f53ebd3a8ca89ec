"""SMTP logins (hash masked, password set through a form), app passwords, failed-AUTH blocks.

Operator tools for many logins: bulk activate/deactivate, force a password
change, lift brute-force blocks; each login's page links to its app passwords,
its counters and blocks, and its rows in the audit log.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import argon2
from django.contrib import admin, messages
from django.contrib.admin.helpers import AdminForm
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import mask_hash
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet, Value
from django.db.models.functions import StrIndex, Substr
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters

from kumosubmit.admin.common import CredentialStatusFilter
from kumosubmit.admin.policy import policy_check_view
from kumosubmit.conf import app_settings
from kumosubmit.credentials import hashing, throttle
from kumosubmit.credentials.models import (
    AllowedSender,
    AppPassword,
    AuthFailureCounter,
    AuthorizedIdentity,
    SmtpLogin,
)
from kumosubmit.forms import SmtpLoginChangeForm, SmtpLoginCreationForm, SmtpLoginPasswordForm
from kumosubmit.sendlimits.suspicion import lift
from kumosubmit.sendlimits.usage import app_password_uses, fullest, login_uses

sensitive_post_parameters_m = method_decorator(sensitive_post_parameters("password1", "password2"))


def hash_summary(encoded: str) -> str:
    """Describe a PHC argon2 hash without revealing it (as Django's ``safe_summary``).

    An imported hash (``importsmtpusers``) is named by its scheme, with a note that
    the next good login replaces it with argon2id.
    """
    scheme = hashing.imported_scheme(encoded)
    if scheme is not None and scheme != "ARGON2I":
        # "$2y$05$..." and "$6$rounds=N$...": the cost, never the salt or the digest.
        parts = encoded.partition("}")[2].split("$")
        if scheme == "BLF-CRYPT":
            cost = f"cost={parts[2]}"
        else:
            cost = parts[2] if parts[2].startswith("rounds=") else "rounds=5000"
        return gettext(
            "%(scheme)s %(cost)s (imported; replaced by argon2id at the next good login)"
        ) % {"scheme": scheme, "cost": cost}
    try:
        params = argon2.extract_parameters(encoded)
        algorithm, *_version_and_params, salt, digest = encoded.split("$")[1:]
    except (argon2.exceptions.InvalidHashError, ValueError):
        return gettext("No usable password (unknown hash format).")
    summary = (
        f"{algorithm} m={params.memory_cost} t={params.time_cost} "
        f"p={params.parallelism} salt: {mask_hash(salt, 4)} hash: {mask_hash(digest, 4)}"
    )
    if scheme == "ARGON2I":
        summary += " " + gettext("(imported; replaced by argon2id at the next good login)")
    return summary


def lift_counters(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    """Reset failed-AUTH counters (and their blocks), with a history entry for each."""
    counters = list(queryset)
    throttle.lift(AuthFailureCounter.objects.filter(pk__in=[c.pk for c in counters]))
    LogEntry.objects.log_actions(
        request.user.pk,
        counters,
        CHANGE,
        [{"changed": {"fields": ["failures", "blocked until"]}}],
    )
    count = len(counters)
    model_admin.message_user(
        request,
        ngettext("%d counter was reset.", "%d counters were reset.", count) % count,
        messages.SUCCESS,
    )


class AuthorizedIdentityInline(admin.TabularInline):
    model = AuthorizedIdentity
    extra = 1


class AllowedSenderInline(admin.TabularInline):
    model = AllowedSender
    extra = 1


#: The most app passwords a login's admin page lists (the app password list has them all).
APP_PASSWORDS_SHOWN = 50


def _when(moment: Any) -> str:
    return formats.localize(timezone.localtime(moment)) if moment else "—"


def login_counters(queryset: QuerySet[SmtpLogin]) -> QuerySet[AuthFailureCounter]:
    """The failed-AUTH counters of these logins: their own and their per-address pairs.

    One query however many logins are selected (a subquery, no list of names).
    """
    # Stored usernames are normalized and at most 255 characters: they are the keys.
    names = queryset.values("username")
    return AuthFailureCounter.objects.annotate(
        # A pair's value is "address login"; the address has no space.
        pair_login=Substr("value", StrIndex("value", Value(" ")) + 1)
    ).filter(Q(kind=throttle.LOGIN, value__in=names) | Q(kind=throttle.PAIR, pair_login__in=names))


class SuspendedFilter(admin.SimpleListFilter):
    """Logins suspended for their sending rate (SUSPEND_FACTOR)."""

    title = _("suspended")
    parameter_name = "suspended"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(suspended_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(suspended_at__isnull=True)
        return queryset


@admin.register(SmtpLogin)
class SmtpLoginAdmin(admin.ModelAdmin):
    """Logins, modelled on Django's UserAdmin: the hash is shown masked, never edited."""

    form = SmtpLoginChangeForm
    add_form = SmtpLoginCreationForm
    fieldsets = (
        (None, {"fields": ("username", "password", "is_active", "owner")}),
        (
            _("Policy"),
            {"fields": ("require_app_passwords", "must_change_password", "is_decoy")},
        ),
        (
            _("Sending limits"),
            {"fields": ("message_limits", "recipient_limits", "send_limit_use", "suspension")},
        ),
        (_("App passwords"), {"fields": ("app_passwords",)}),
        (
            _("History"),
            {
                "fields": (
                    "created_at",
                    "password_changed_at",
                    "last_used_at",
                    "last_used_from",
                    "related",
                )
            },
        ),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": (
                    "username",
                    "password1",
                    "password2",
                    "is_active",
                    "owner",
                    "require_app_passwords",
                    "is_decoy",
                    "message_limits",
                    "recipient_limits",
                ),
            },
        ),
    )
    readonly_fields = (
        "password",
        "created_at",
        "password_changed_at",
        "last_used_at",
        "last_used_from",
        "related",
        "app_passwords",
        "send_limit_use",
        "suspension",
    )
    inlines = [AuthorizedIdentityInline, AllowedSenderInline]
    list_display = (
        "username",
        "is_active",
        "owner",
        "require_app_passwords",
        "must_change_password",
        "is_decoy",
        "sending",
        "last_used_at",
        "last_used_from",
        "created_at",
    )
    list_filter = (
        "is_active",
        SuspendedFilter,
        "must_change_password",
        "require_app_passwords",
        "is_decoy",
    )
    search_fields = ("username",)  # and the owner's name: get_search_fields()
    list_select_related = ("owner",)
    actions = [
        "activate",
        "deactivate",
        "force_password_change",
        "lift_blocks",
        "lift_suspension",
    ]

    @admin.display(description=_("sending"))
    def sending(self, login: SmtpLogin) -> str:
        """The rule closest to its limit ("messages today: 37 of 1000"), or the suspension."""
        if login.suspended_at is not None:
            return format_html('<strong class="errornote">{}</strong>', gettext("suspended"))
        try:
            use = fullest(login)
        except Exception:  # a Redis that cannot be reached must not break the list
            return "?"
        if use is None:
            return gettext("no limit")
        if use.share >= app_settings.SEND_LIMITS_NEAR:
            return format_html("<strong>{}</strong>", str(use))
        return str(use)

    @admin.display(description=_("use now"))
    def send_limit_use(self, login: SmtpLogin) -> str:
        """Each rule of the login and of its live app passwords, with its use."""
        try:
            rows = [
                (gettext("the login"), str(use), f"{use.share:.0%}") for use in login_uses(login)
            ]
            for app_password in login.app_passwords.live():
                rows += [
                    (app_password.label, str(use), f"{use.share:.0%}")
                    for use in app_password_uses(app_password)
                ]
        except Exception:  # a Redis that cannot be reached must not break the page
            return gettext("The use cannot be read right now.")
        if not rows:
            return gettext("No limit applies.")
        return format_html(
            "<table><tbody>{}</tbody></table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description=_("suspension"))
    def suspension(self, login: SmtpLogin) -> str:
        if login.suspended_at is None:
            return gettext("Not suspended.")
        return format_html(
            "<strong>{}</strong> {}: {}. {}",
            gettext("Suspended"),
            _when(login.suspended_at),
            login.suspended_reason,
            gettext("The action “Lift the suspension” on the list ends it."),
        )

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        # The owner's name is whatever field the user model signs in with: a custom
        # model keyed by email has no "username" to search.
        return (*self.search_fields, f"owner__{get_user_model().USERNAME_FIELD}")

    @admin.display(description=_("password"))
    def password(self, login: SmtpLogin) -> str:
        url = reverse(
            f"{self.admin_site.name}:kumosubmit_smtplogin_password_change", args=[login.pk]
        )
        return format_html(
            '{}<br>{} <a href="{}">{}</a>.',
            hash_summary(login.password_hash),
            gettext("Passwords are not stored, only their hash, but you can"),
            url,
            gettext("change the password using this form"),
        )

    @admin.display(description=_("app passwords"))
    def app_passwords(self, login: SmtpLogin) -> str:
        """The login's app passwords, newest first, read-only (never their hashes).

        Their owner makes them; they are revoked from the app password list.
        """
        rows = [
            (
                reverse(
                    f"{self.admin_site.name}:kumosubmit_apppassword_change", args=[app_password.pk]
                ),
                app_password.label,
                app_password.hint,
                app_password.get_status_display(),
                _when(app_password.created_at),
                _when(app_password.expires_at),
                _when(app_password.last_used_at),
                app_password.last_used_from or "",
            )
            for app_password in login.app_passwords.all()[:APP_PASSWORDS_SHOWN]
        ]
        if not rows:
            return gettext("None yet: the login's owner makes them on the self-service pages.")
        columns = (
            gettext("label"),
            gettext("starts with"),
            gettext("status"),
            gettext("created"),
            gettext("expires"),
            gettext("last used"),
            gettext("from"),
        )
        head = format_html_join("", "<th>{}</th>", [(column,) for column in columns])
        body = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td><code>{}</code></td><td>{}</td><td>{}</td>'
            "<td>{}</td><td>{}</td><td>{}</td></tr>",
            rows,
        )
        return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)

    @admin.display(description=_("see also"))
    def related(self, login: SmtpLogin) -> str:
        """Links to this login's app passwords, counters and blocks, and audit rows."""
        site = self.admin_site.name
        counters = login_counters(SmtpLogin.objects.filter(pk=login.pk))
        blocked = counters.filter(blocked_until__gt=timezone.now()).count()
        live = login.app_passwords.live().count()
        links = [
            (
                reverse(f"{site}:kumosubmit_apppassword_changelist")
                + "?"
                + urlencode({"login__id__exact": login.pk}),
                ngettext(
                    "App passwords (%(live)d live of %(all)d)",
                    "App passwords (%(live)d live of %(all)d)",
                    live,
                )
                % {"live": live, "all": login.app_passwords.count()},
            ),
            (
                reverse(f"{site}:kumosubmit_authfailurecounter_changelist")
                + "?"
                + urlencode({"q": login.username}),
                ngettext(
                    "Failed-AUTH counters and blocks (%d block in force)",
                    "Failed-AUTH counters and blocks (%d blocks in force)",
                    blocked,
                )
                % blocked,
            ),
            (
                reverse(f"{site}:kumosubmit_connectionrecord_changelist")
                + "?"
                + urlencode({"authc": login.username}),
                gettext("Audit log: connections that authenticated as this login"),
            ),
        ]
        return format_html(
            "<ul>{}</ul>", format_html_join("", '<li><a href="{}">{}</a></li>', links)
        )

    def get_fieldsets(self, request: HttpRequest, obj: SmtpLogin | None = None) -> Any:
        return self.add_fieldsets if obj is None else super().get_fieldsets(request, obj)

    def get_form(self, request: HttpRequest, obj: SmtpLogin | None = None, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, **kwargs)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # As UserAdmin: ?password_hash__startswith=... would let one guess a hash.
        return not lookup.startswith("password") and super().lookup_allowed(lookup, value, request)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/password/",
                self.admin_site.admin_view(self.password_change_view),
                name="kumosubmit_smtplogin_password_change",
            ),
            path(
                "policy-check/",
                self.admin_site.admin_view(partial(policy_check_view, model_admin=self)),
                name="kumosubmit_smtplogin_policy_check",
            ),
            *super().get_urls(),
        ]

    @sensitive_post_parameters_m
    def add_view(
        self,
        request: HttpRequest,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        return super().add_view(request, form_url, extra_context)

    @sensitive_post_parameters_m
    @method_decorator(csrf_protect)
    def password_change_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Set a new password (UserAdmin.user_change_password, without unusable passwords)."""
        login = self.get_object(request, unquote(object_id))
        if not self.has_change_permission(request, login):
            raise PermissionDenied
        if login is None:
            raise Http404(_("SMTP login %r does not exist.") % object_id)
        form = SmtpLoginPasswordForm(login, request.POST if request.method == "POST" else None)
        if form.is_valid():
            form.save()
            self.log_change(request, login, [{"changed": {"fields": ["password"]}}])
            messages.success(request, gettext("Password changed successfully."))
            return HttpResponseRedirect(
                reverse(f"{self.admin_site.name}:kumosubmit_smtplogin_change", args=[login.pk])
            )
        context = {
            **self.admin_site.each_context(request),
            "title": _("Change password: %s") % login.username,
            "adminForm": AdminForm(form, [(None, {"fields": list(form.base_fields)})], {}),
            "form": form,
            "opts": self.opts,
            "original": login,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/kumosubmit/smtplogin/change_password.html", context)

    def _set_active(self, request: HttpRequest, queryset: QuerySet, active: bool) -> int:
        """Update the logins whose state changes, with a history entry for each."""
        logins = list(queryset.exclude(is_active=active))
        SmtpLogin.objects.filter(pk__in=[login.pk for login in logins]).update(is_active=active)
        LogEntry.objects.log_actions(
            request.user.pk, logins, CHANGE, [{"changed": {"fields": ["active"]}}]
        )
        return len(logins)

    @admin.action(description=_("Activate selected logins"), permissions=["change"])
    def activate(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = self._set_active(request, queryset, active=True)
        self.message_user(
            request,
            ngettext("%d login was activated.", "%d logins were activated.", count) % count,
            messages.SUCCESS,
        )

    @admin.action(description=_("Deactivate selected logins"), permissions=["change"])
    def deactivate(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = self._set_active(request, queryset, active=False)
        self.message_user(
            request,
            ngettext("%d login was deactivated.", "%d logins were deactivated.", count) % count,
            messages.SUCCESS,
        )

    @admin.action(
        description=_("Force a password change for selected logins"), permissions=["change"]
    )
    def force_password_change(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Refuse the logins' own passwords until a new one is set (app passwords still work)."""
        logins = list(queryset.filter(must_change_password=False))
        SmtpLogin.objects.filter(pk__in=[login.pk for login in logins]).update(
            must_change_password=True
        )
        LogEntry.objects.log_actions(
            request.user.pk, logins, CHANGE, [{"changed": {"fields": ["must change password"]}}]
        )
        count = len(logins)
        self.message_user(
            request,
            ngettext(
                "%d login must get a new password: its own password is refused until its "
                "owner sets one on the self-service pages or you set one here.",
                "%d logins must get a new password: their own passwords are refused until "
                "their owners set new ones on the self-service pages or you set them here.",
                count,
            )
            % count,
            messages.SUCCESS,
        )

    def has_lift_permission(self, request: HttpRequest) -> bool:
        # As on the counters' own page: lifting a block needs their delete permission.
        return request.user.has_perm("kumosubmit.delete_authfailurecounter")

    @admin.action(description=_("Lift brute-force blocks of selected logins"), permissions=["lift"])
    def lift_blocks(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Reset the failed-AUTH counters of the logins (their own and per-address ones)."""
        lift_counters(self, request, login_counters(queryset))

    @admin.action(
        description=_("Lift the suspension of selected logins (sending rate)"),
        permissions=["change"],
    )
    def lift_suspension(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Let suspended logins send again, and forget the rates that suspended them."""
        logins = [login for login in queryset.filter(suspended_at__isnull=False) if lift(login)]
        LogEntry.objects.log_actions(
            request.user.pk, logins, CHANGE, [{"changed": {"fields": ["suspension lifted"]}}]
        )
        count = len(logins)
        self.message_user(
            request,
            ngettext(
                "The suspension of %d login was lifted.",
                "The suspensions of %d logins were lifted.",
                count,
            )
            % count,
            messages.SUCCESS,
        )


@admin.register(AppPassword)
class AppPasswordAdmin(admin.ModelAdmin):
    """App passwords of all logins: made by their owners, revoked here one by one or in bulk.

    The hash is never shown; the public id (``ksub_<id>_…``) is, so a user can tell
    an operator which one they mean without saying the secret.
    """

    show_full_result_count = False
    list_display = (
        "login",
        "label",
        "hint",
        "status",
        "created_at",
        "expires_at",
        "last_used_at",
        "last_used_from",
    )
    list_filter = (CredentialStatusFilter, "created_at")
    list_select_related = ("login",)
    search_fields = ("login__username", "label", "public_id")
    fields = (
        "login",
        "label",
        "hint",
        "status",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "last_used_from",
    )
    readonly_fields = (
        "login",
        "hint",
        "status",
        "created_at",
        "revoked_at",
        "last_used_at",
        "last_used_from",
    )
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Made by their owners (the server generates the secret and shows it once).
        return False

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return not lookup.startswith("password") and super().lookup_allowed(lookup, value, request)

    @admin.display(description=_("password"))
    def hint(self, app_password: AppPassword) -> str:
        return app_password.hint

    @admin.display(description=_("status"))
    def status(self, app_password: AppPassword) -> str:
        return app_password.get_status_display()

    @admin.action(description=_("Revoke selected app passwords"), permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        revoked = [app_password for app_password in queryset if app_password.revoke()]
        LogEntry.objects.log_actions(
            request.user.pk, revoked, CHANGE, [{"changed": {"fields": ["revoked"]}}]
        )
        count = len(revoked)
        self.message_user(
            request,
            ngettext("%d app password was revoked.", "%d app passwords were revoked.", count)
            % count,
            messages.SUCCESS,
        )


class BlockedNowFilter(admin.SimpleListFilter):
    """Whether a block is in force now (a stored flag would go stale as time passes)."""

    title = _("blocked now")
    parameter_name = "blocked"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        now = timezone.now()
        if self.value() == "yes":
            return queryset.filter(blocked_until__gt=now)
        if self.value() == "no":
            return queryset.filter(Q(blocked_until__isnull=True) | Q(blocked_until__lte=now))
        return queryset


@admin.register(AuthFailureCounter)
class AuthFailureCounterAdmin(admin.ModelAdmin):
    """Failed-AUTH counters and blocks: read-only, but a block can be lifted or deleted.

    Lifting resets the count and the block (a history entry for each row); deleting
    forgets the row. Both need the delete permission: an operator who may only view
    sees who is blocked but cannot let them back in.
    """

    show_full_result_count = False  # an attack can leave many rows
    list_display = (
        "kind",
        "value",
        "failures",
        "last_failure_at",
        "blocked_until",
        "blocked_now",
    )
    list_filter = (BlockedNowFilter, "kind")
    search_fields = ("value",)
    fields = readonly_fields = (
        "kind",
        "value",
        "failures",
        "first_failure_at",
        "last_failure_at",
        "blocked_until",
        "blocked_now",
    )
    actions = ["lift_blocks"]

    @admin.display(description=_("blocked now"), boolean=True)
    def blocked_now(self, counter: AuthFailureCounter) -> bool:
        return counter.is_blocked()

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description=_("Lift the selected blocks"), permissions=["delete"])
    def lift_blocks(self, request: HttpRequest, queryset: QuerySet) -> None:
        lift_counters(self, request, queryset)
