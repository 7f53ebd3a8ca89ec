"""System checks on KUMOSUBMIT (run by `manage.py check` and by runsmtpd before binding)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.checks import run_checks

import kumosubmit
from kumosubmit.checks import checking_runsmtpd


def ids(settings, **overrides) -> list[str]:
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, **overrides}
    return sorted(m.id for m in run_checks() if m.id and m.id.startswith("kumosubmit."))


def test_project_settings_pass(settings):
    assert ids(settings) == []


def test_valid_send_limits_pass(settings):
    assert ids(settings, SEND_LIMITS=None, SUSPEND_FACTOR=10) == []
    assert ids(settings, SEND_LIMITS={"MESSAGES": ["5/s", "100/hours"], "RECIPIENTS": None}) == []
    settings.CACHES = {
        **settings.CACHES,
        "limits": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379",
        },
    }
    backend = "kumosubmit.sendlimits.backends.CacheBackend"
    assert ids(settings, SEND_LIMITS_BACKEND=backend, SEND_LIMITS_CACHE="limits") == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"NO_SUCH_KEY": 1}, ["kumosubmit.E002"]),
        ({"LISTEN": "127.0.0.1:2587"}, ["kumosubmit.E003"]),
        ({"LISTEN": ["127.0.0.1"]}, ["kumosubmit.E003"]),
        ({"IMPLICIT_TLS": ["[::1]:99999"]}, ["kumosubmit.E003"]),
        ({"TLS_CERT": "/etc/ssl/cert.pem"}, ["kumosubmit.E004"]),
        (
            {"TLS_CERT": "/nonexistent/c.pem", "TLS_KEY": "/nonexistent/k.pem"},
            ["kumosubmit.E005", "kumosubmit.E005"],
        ),
        ({"ARGON2": {"time_cost": 0}}, ["kumosubmit.E006"]),
        ({"ARGON2": {"rounds": 3}}, ["kumosubmit.E006"]),
        ({"HOOKS": {"smtp_server_auth_cram": "x.y"}}, ["kumosubmit.E007"]),
        ({"HOOKS": {"smtp_server_auth_plain": "no.such.module.check"}}, ["kumosubmit.E008"]),
        ({"SPOOL_BACKEND": "no.such.Spool"}, ["kumosubmit.E009"]),
        ({"METRICS_LISTEN": "9587"}, ["kumosubmit.E040"]),
        ({"SEND_LIMITS": {"MESSAGES": ["30/fortnight"]}}, ["kumosubmit.E060"]),
        ({"SEND_LIMITS": {"MESSAGES": "thirty"}}, ["kumosubmit.E060"]),
        ({"SEND_LIMITS": {"MESSAGES": ["0/minute"]}}, ["kumosubmit.E060"]),
        ({"SEND_LIMITS": {"MAILS": ["30/minute"]}}, ["kumosubmit.E060"]),
        ({"SEND_LIMITS": ["30/minute"]}, ["kumosubmit.E060"]),
        ({"SEND_LIMITS_BACKEND": "no.such.Backend"}, ["kumosubmit.E061"]),
        ({"SEND_LIMITS_BACKEND": "kumosubmit.spool.orm.DatabaseSpool"}, ["kumosubmit.E061"]),
        (
            {"SEND_LIMITS_BACKEND": "kumosubmit.sendlimits.backends.CacheBackend"},
            ["kumosubmit.E062"],  # the default cache is not a RedisCache
        ),
        ({"SEND_LIMITS_NOTICE": "pigeon"}, ["kumosubmit.E063"]),
        ({"SEND_LIMITS_NEAR": 80}, ["kumosubmit.E063"]),
        ({"SUSPEND_FACTOR": 0.5}, ["kumosubmit.E064"]),
        ({"SUSPEND_MIN_RATE": "often"}, ["kumosubmit.E064"]),
        ({"METRICS_LISTEN": ["127.0.0.1:9587"]}, ["kumosubmit.E040"]),
    ],
)
def test_bad_settings_are_errors(settings, overrides, expected):
    assert ids(settings, **overrides) == expected


def test_valid_listeners_and_files(settings, pki):
    assert (
        ids(
            settings,
            LISTEN=["0.0.0.0:587", "[::]:587"],
            IMPLICIT_TLS=["127.0.0.1:465"],
            METRICS_LISTEN="[::1]:9587",
            TLS_CERT=str(pki.server_cert),
            TLS_KEY=str(pki.server_key),
        )
        == []
    )


def test_weak_argon2_is_a_deploy_warning(settings):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "ARGON2": {"time_cost": 1, "memory_cost": 64, "parallelism": 1},
    }
    assert "kumosubmit.W001" not in [m.id for m in run_checks()]
    assert "kumosubmit.W001" in [m.id for m in run_checks(include_deployment_checks=True)]
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "ARGON2": {"time_cost": 3, "memory_cost": 65536, "parallelism": 4},
    }
    assert "kumosubmit.W001" not in [m.id for m in run_checks(include_deployment_checks=True)]


def test_changelog_names_this_version():
    changelog = (Path(__file__).resolve().parent.parent / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[?(\d+\.\d+\.\d+)", changelog, re.MULTILINE)
    assert versions and versions[0] == kumosubmit.__version__


@pytest.mark.parametrize(
    "overrides",
    [
        {"HOOK_TIMEOUT": 0},
        {"MAX_ERRORS": -1},
        {"IDLE_TIMEOUT": "300"},
        {"MAX_RECIPIENTS": True},
        {"ARGON2_KEEP_MEMORY": "yes"},
        {"ARGON2_SCHED_IDLE": 1},
        {"MAX_MESSAGES_PER_CONNECTION": 0},
        {"MAX_MESSAGES_PER_CONNECTION": 2.5},
    ],
)
def test_limits_must_be_positive_numbers(settings, overrides):
    assert ids(settings, **overrides) == ["kumosubmit.E011"]


def test_messages_per_connection_may_be_uncapped(settings):
    assert ids(settings, MAX_MESSAGES_PER_CONNECTION=None) == []
    assert ids(settings, MAX_MESSAGES_PER_CONNECTION=500) == []


def test_bare_line_endings_choice(settings):
    assert ids(settings, BARE_LINE_ENDINGS="allow") == ["kumosubmit.E012"]


def test_data_memory_budget_must_hold_the_largest_message(settings):
    assert ids(settings, DATA_MEMORY_BUDGET=0) == ["kumosubmit.E011"]
    assert ids(settings, DATA_MEMORY_BUDGET=10_000_000, MAX_MESSAGE_SIZE=20_000_000) == [
        "kumosubmit.E015"
    ]
    assert ids(settings, DATA_MEMORY_BUDGET=20_000_000, MAX_MESSAGE_SIZE=20_000_000) == []


# -- what a host project must set -------------------------------------------------------


def test_pages_not_included_is_a_warning_that_names_what_to_add(settings):
    settings.ROOT_URLCONF = "tests.urls_admin_only"
    [warning] = [m for m in run_checks() if m.id == "kumosubmit.W052"]
    assert 'include("kumosubmit.web.urls")' in warning.hint
    # Without the pages, where sign-in leads is not kumosubmit's business.
    assert ids(settings) == ["kumosubmit.W052"]


def test_sign_in_settings_that_lead_nowhere_are_warnings(settings):
    settings.ROOT_URLCONF = "tests.urls_app_only"
    settings.LOGIN_URL = "/accounts/login/"  # Django's defaults, which this site lacks
    settings.LOGIN_REDIRECT_URL = "/accounts/profile/"
    messages = {m.id: m for m in run_checks() if m.id and m.id.startswith("kumosubmit.")}
    assert sorted(messages) == ["kumosubmit.W050", "kumosubmit.W051"]
    assert 'LOGIN_URL = "credentials:sign_in"' in messages["kumosubmit.W050"].hint
    assert 'LOGIN_REDIRECT_URL = "credentials:index"' in messages["kumosubmit.W051"].hint
    settings.LOGIN_URL = "credentials:sign_in"
    settings.LOGIN_REDIRECT_URL = "credentials:index"
    assert ids(settings) == []
    settings.LOGIN_URL = "login"  # a URL name the project does not have
    assert ids(settings) == ["kumosubmit.W050"]
    settings.LOGIN_URL = "https://sso.example.com/login"  # another site's: trusted
    assert ids(settings) == []


def sqlite_options(settings, monkeypatch, options):
    # In place: overriding DATABASES as a whole is not supported by Django's tests.
    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3":
        pytest.skip("a check of SQLite settings")
    monkeypatch.setitem(database, "OPTIONS", options)


def test_sqlite_without_wal_and_several_workers_is_a_warning(settings, monkeypatch):
    sqlite_options(settings, monkeypatch, {"transaction_mode": "IMMEDIATE"})
    assert ids(settings, WORKERS=4) == ["kumosubmit.W053"]
    [warning] = [m for m in run_checks() if m.id == "kumosubmit.W053"]
    assert "PRAGMA journal_mode=WAL" in warning.hint
    assert 'KUMOSUBMIT["WORKERS"] = 1' in warning.hint
    assert ids(settings, WORKERS=1) == []
    # runsmtpd counts the workers it is about to start (--workers).
    with checking_runsmtpd(1):
        assert ids(settings, WORKERS=4) == []
    with checking_runsmtpd(3):
        assert ids(settings, WORKERS=1) == ["kumosubmit.W053"]
    sqlite_options(
        settings, monkeypatch, {"init_command": "PRAGMA journal_mode = 'wal'; PRAGMA foo=1"}
    )
    assert ids(settings, WORKERS=4) == []


TOOLKIT = "kumosubmit.oauth.toolkit.validate"
JWT = "kumosubmit.oauth.jwt.validate"
INTROSPECTION = "kumosubmit.oauth.introspection.validate"


@pytest.mark.parametrize(
    ("oauth", "expected"),
    [
        ({"VALIDATOR": TOOLKIT}, []),
        ({"VALIDATOR": None}, []),
        ("toolkit", ["kumosubmit.E090"]),
        ({"VALIDATOR": TOOLKIT, "TYPO": 1}, ["kumosubmit.E090"]),
        ({"VALIDATOR": "no.such.validate"}, ["kumosubmit.E091"]),
        ({"VALIDATOR": JWT}, ["kumosubmit.E093", "kumosubmit.E093"]),
        (
            {"VALIDATOR": JWT, "JWKS_URL": "https://id.example.com/jwks", "ISSUER": "x"},
            [],
        ),
        (
            {"VALIDATOR": JWT, "JWKS_URL": "http://id.example.com/jwks", "ISSUER": "x"},
            ["kumosubmit.W090"],
        ),
        (
            {"VALIDATOR": JWT, "JWKS_URL": "ftp://id.example.com/jwks", "ISSUER": "x"},
            ["kumosubmit.E093"],
        ),
        (
            {"VALIDATOR": INTROSPECTION, "INTROSPECTION_URL": "http://127.0.0.1:8000/o/x/"},
            ["kumosubmit.W092"],
        ),
        ({"CACHE_TTL": -1}, ["kumosubmit.E094"]),
        ({"HTTP_TIMEOUT": 0}, ["kumosubmit.E094"]),
        ({"TOKEN_DAYS": "90"}, ["kumosubmit.E094"]),
        ({"SCOPE": "smtp mail"}, ["kumosubmit.E095"]),
        ({"ALGORITHMS": ["HS256"]}, ["kumosubmit.E095"]),
        ({"ALGORITHMS": ["none"]}, ["kumosubmit.E095"]),
    ],
)
def test_oauth_settings(settings, oauth, expected):
    assert ids(settings, OAUTH=oauth) == expected


def test_toolkit_storing_tokens_in_the_clear_is_a_warning(settings):
    from oauth2_provider.settings import oauth2_settings

    settings.OAUTH2_PROVIDER = {
        **settings.OAUTH2_PROVIDER,
        "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": False,
    }
    try:
        assert ids(settings) == ["kumosubmit.W091"]
    finally:
        oauth2_settings.reload()
