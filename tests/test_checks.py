"""System checks on KUMOSUBMIT (run by `manage.py check` and by runsmtpd before binding)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.checks import run_checks

import kumosubmit


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
        ({"SEND_LIMITS": {"MESSAGES": ["30/fortnight"]}}, ["kumosubmit.E050"]),
        ({"SEND_LIMITS": {"MESSAGES": "thirty"}}, ["kumosubmit.E050"]),
        ({"SEND_LIMITS": {"MESSAGES": ["0/minute"]}}, ["kumosubmit.E050"]),
        ({"SEND_LIMITS": {"MAILS": ["30/minute"]}}, ["kumosubmit.E050"]),
        ({"SEND_LIMITS": ["30/minute"]}, ["kumosubmit.E050"]),
        ({"SEND_LIMITS_BACKEND": "no.such.Backend"}, ["kumosubmit.E051"]),
        ({"SEND_LIMITS_BACKEND": "kumosubmit.spool.orm.DatabaseSpool"}, ["kumosubmit.E051"]),
        (
            {"SEND_LIMITS_BACKEND": "kumosubmit.sendlimits.backends.CacheBackend"},
            ["kumosubmit.E052"],  # the default cache is not a RedisCache
        ),
        ({"SEND_LIMITS_NOTICE": "pigeon"}, ["kumosubmit.E053"]),
        ({"SEND_LIMITS_NEAR": 80}, ["kumosubmit.E053"]),
        ({"SUSPEND_FACTOR": 0.5}, ["kumosubmit.E054"]),
        ({"SUSPEND_MIN_RATE": "often"}, ["kumosubmit.E054"]),
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
    ],
)
def test_limits_must_be_positive_numbers(settings, overrides):
    assert ids(settings, **overrides) == ["kumosubmit.E011"]


def test_bare_line_endings_choice(settings):
    assert ids(settings, BARE_LINE_ENDINGS="allow") == ["kumosubmit.E012"]


def test_data_memory_budget_must_hold_the_largest_message(settings):
    assert ids(settings, DATA_MEMORY_BUDGET=0) == ["kumosubmit.E011"]
    assert ids(settings, DATA_MEMORY_BUDGET=10_000_000, MAX_MESSAGE_SIZE=20_000_000) == [
        "kumosubmit.E015"
    ]
    assert ids(settings, DATA_MEMORY_BUDGET=20_000_000, MAX_MESSAGE_SIZE=20_000_000) == []
