"""The admin's "Would this pass?": the policy dry run (kumosubmit/hooks/dryrun.py) as a form.

Staff with the view permission on SMTP logins fill in what a client would
send; the same handler chains a live session runs answer, and the page shows
each event's verdict and reply. Nothing is written.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables

from kumosubmit.hooks.dryrun import dry_run


class PolicyCheckForm(forms.Form):
    peer = forms.GenericIPAddressField(label=_("Client address"), initial="192.0.2.1")
    authc = forms.CharField(label=_("Login (authc)"), max_length=255)
    authz = forms.CharField(
        label=_("Acting as (authz)"),
        max_length=255,
        required=False,
        help_text=_("Blank: the login."),
    )
    password = forms.CharField(
        label=_("Password"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
        help_text=_("Blank: AUTH is taken as passed and the rest is checked."),
    )
    mail_from = forms.CharField(
        label=_("MAIL FROM"), max_length=256, required=False, help_text=_("Blank: <>.")
    )
    rcpts = forms.CharField(
        label=_("RCPT TO"), widget=forms.Textarea(attrs={"rows": 3}), help_text=_("One a line.")
    )
    message = forms.CharField(
        label=_("Message"),
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80}),
        help_text=_("Headers, an empty line, the body. Blank: a small one from the envelope."),
    )

    def clean_rcpts(self) -> list[str]:
        rcpts = [line.strip() for line in self.cleaned_data["rcpts"].splitlines() if line.strip()]
        if not rcpts:
            raise forms.ValidationError(_("Give at least one recipient."))
        return rcpts


@sensitive_variables("password")
def _run(form: PolicyCheckForm) -> Any:
    data = form.cleaned_data
    password = data["password"] or None
    return async_to_sync(dry_run)(
        peer=data["peer"],
        authc=data["authc"],
        authz=data["authz"],
        password=password,
        mail_from=data["mail_from"],
        rcpts=data["rcpts"],
        message=data["message"].encode() if data["message"] else None,
    )


@sensitive_post_parameters("password")
def policy_check_view(request: HttpRequest, model_admin: Any) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    form = PolicyCheckForm(request.POST if request.method == "POST" else None)
    result = _run(form) if form.is_valid() else None
    context = {
        **model_admin.admin_site.each_context(request),
        "title": gettext("Would this pass?"),
        "form": form,
        "result": result,
        "opts": model_admin.opts,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/kumosubmit/smtplogin/policy_check.html", context)
