"""The app password settings are checked like every other (kumosubmit.E030)."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks


def ids(settings, **overrides) -> list[str]:
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, **overrides}
    return sorted(m.id for m in run_checks() if m.id and m.id.startswith("kumosubmit."))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"REQUIRE_APP_PASSWORDS": True, "MAX_APP_PASSWORDS": 1}, []),
        ({"REQUIRE_APP_PASSWORDS": "yes"}, ["kumosubmit.E030"]),
        ({"MAX_APP_PASSWORDS": 0}, ["kumosubmit.E030"]),
        ({"MAX_APP_PASSWORDS": 2.5}, ["kumosubmit.E030"]),
        ({"MAX_APP_PASSWORDS": True}, ["kumosubmit.E030"]),
    ],
)
def test_app_password_settings_are_checked(settings, overrides, expected):
    assert ids(settings, **overrides) == expected


def test_the_auth_urls_and_settings_fit_together(settings):
    from django.shortcuts import resolve_url

    assert resolve_url(settings.LOGIN_URL) == "/accounts/login/"
    assert resolve_url(settings.LOGIN_REDIRECT_URL) == "/credentials/"
    assert resolve_url(settings.LOGOUT_REDIRECT_URL) == "/accounts/login/"
