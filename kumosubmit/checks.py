"""System checks for kumosubmit's settings (run by ``check`` and ``runsmtpd``)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string

from kumosubmit.conf import DEFAULTS, app_settings


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    from django.conf import settings

    errors: list[Error | Warning] = []
    user = getattr(settings, "KUMOSUBMIT", {}) or {}
    if not isinstance(user, dict):
        return [Error("KUMOSUBMIT must be a dict.", id="kumosubmit.E001")]
    for key in sorted(set(user) - set(DEFAULTS)):
        errors.append(
            Error(
                f"KUMOSUBMIT has an unknown key {key!r}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                id="kumosubmit.E002",
            )
        )
    errors += _check_listeners() + _check_tls() + _check_argon2() + _check_paths()
    errors += _check_numbers()
    errors += _check_brute_force()
    errors += _check_brute_force("WEB_BRUTE_FORCE", "kumosubmit.E070") + _check_web()
    errors += _check_second_factor() + _check_notices()
    errors += _check_auth_lanes()
    errors += _check_metrics()
    return errors


SECOND_FACTOR_MIDDLEWARE = (
    "django_otp.middleware.OTPMiddleware",
    "kumosubmit.web.middleware.SecondFactorMiddleware",
)


def _check_second_factor() -> list[Error | Warning]:
    """SECOND_FACTOR and its companions (read by kumosubmit/web/second_factor.py)."""
    from django.conf import settings

    errors: list[Error | Warning] = []
    policy = app_settings.SECOND_FACTOR
    if policy not in ("staff", "all", "none"):
        errors.append(
            Error(
                f"KUMOSUBMIT['SECOND_FACTOR'] is {policy!r}.",
                hint="'staff' (the default), 'all' or 'none'.",
                id="kumosubmit.E072",
            )
        )
    age = app_settings.SECOND_FACTOR_MAX_AGE
    if not _is_number(age) or age <= 0:
        errors.append(
            Error(
                "KUMOSUBMIT['SECOND_FACTOR_MAX_AGE'] must be a number of seconds above 0.",
                id="kumosubmit.E073",
            )
        )
    if not _is_whole(app_settings.RECOVERY_CODES, 1, 100):
        errors.append(
            Error(
                "KUMOSUBMIT['RECOVERY_CODES'] must be a whole number from 1 to 100.",
                id="kumosubmit.E073",
            )
        )
    middleware = list(getattr(settings, "MIDDLEWARE", []))
    auth = "django.contrib.auth.middleware.AuthenticationMiddleware"
    placed = all(m in middleware for m in (auth, *SECOND_FACTOR_MIDDLEWARE)) and (
        middleware.index(auth)
        < middleware.index(SECOND_FACTOR_MIDDLEWARE[0])
        < middleware.index(SECOND_FACTOR_MIDDLEWARE[1])
    )
    if policy != "none" and not placed:
        errors.append(
            Error(
                "The second factor is required but its middleware is missing or out of order.",
                hint="MIDDLEWARE needs AuthenticationMiddleware, then "
                + ", then ".join(SECOND_FACTOR_MIDDLEWARE)
                + " (or SECOND_FACTOR = 'none').",
                id="kumosubmit.E074",
            )
        )
    return errors


def _check_notices() -> list[Error | Warning]:
    """KUMOSUBMIT["NOTICES"] (read by kumosubmit/notices.py)."""
    user = app_settings.NOTICES

    def error(message: str) -> Error:
        return Error(
            f"KUMOSUBMIT['NOTICES'] {message}",
            hint="See the defaults in kumosubmit/conf.py.",
            id="kumosubmit.E075",
        )

    if not isinstance(user, dict):
        return [error("must be a dict.")]
    defaults = DEFAULTS["NOTICES"]
    errors = [error(f"has an unknown key {key!r}.") for key in sorted(set(user) - set(defaults))]
    values = {**defaults, **user}
    for key in ("APP_PASSWORD_CREATED", "SECOND_FACTOR_REMOVED", "NEW_ADDRESS", "LOGIN_BLOCKED"):
        if not isinstance(values[key], bool):
            errors.append(error(f"[{key!r}] must be True or False."))
    if values["DELIVERY"] not in ("queue", "email"):
        errors.append(error("['DELIVERY'] must be 'queue' or 'email'."))
    for key in ("FROM", "SITE_URL"):
        if values[key] is not None and not isinstance(values[key], str):
            errors.append(error(f"[{key!r}] must be a string or None."))
    return errors


def _check_web() -> list[Error | Warning]:
    """WEB_TRUSTED_PROXIES, and the throttled backend in AUTHENTICATION_BACKENDS."""
    from django.conf import settings

    from kumosubmit.protocol.listener import parse_networks

    errors: list[Error | Warning] = []
    proxies = app_settings.WEB_TRUSTED_PROXIES
    try:
        if isinstance(proxies, str):
            raise ValueError("must be a list, not one string")
        parse_networks(str(p) for p in proxies)
    except (TypeError, ValueError) as error:
        errors.append(
            Error(
                f"KUMOSUBMIT['WEB_TRUSTED_PROXIES']: {error}",
                hint="A list of addresses or networks, e.g. ['10.0.0.0/8', '::1'].",
                id="kumosubmit.E071",
            )
        )
    backends = list(getattr(settings, "AUTHENTICATION_BACKENDS", []))
    throttled = "kumosubmit.web.backends.ThrottledModelBackend"
    if "django.contrib.auth.backends.ModelBackend" in backends and throttled not in backends:
        errors.append(
            Warning(
                "Site passwords are checked without the sign-in throttle.",
                hint=f"Put {throttled!r} in AUTHENTICATION_BACKENDS instead of ModelBackend.",
                id="kumosubmit.W070",
            )
        )
    return errors


def _check_metrics() -> list[Error | Warning]:
    """METRICS_LISTEN (read by runsmtpd): None or one 'HOST:PORT'."""
    from kumosubmit.protocol.listener import parse_address

    value = app_settings.METRICS_LISTEN
    if value is None:
        return []
    try:
        parse_address(value)
    except (TypeError, ValueError, AttributeError):
        return [
            Error(
                f"KUMOSUBMIT['METRICS_LISTEN'] is {value!r}, not 'HOST:PORT' or None.",
                hint="For example '127.0.0.1:9587'; None serves no metrics.",
                id="kumosubmit.E040",
            )
        ]
    return []


def _check_listeners() -> list[Error | Warning]:
    from kumosubmit.protocol.listener import parse_address, parse_networks

    errors: list[Error | Warning] = []
    try:
        parse_networks(app_settings.TRUSTED_PROXIES)
    except (TypeError, ValueError) as error:
        errors.append(Error(f"KUMOSUBMIT['TRUSTED_PROXIES']: {error}", id="kumosubmit.E013"))
    if app_settings.PROXY_LISTEN and not app_settings.TRUSTED_PROXIES:
        errors.append(
            Error(
                "KUMOSUBMIT['PROXY_LISTEN'] needs TRUSTED_PROXIES: the balancers to believe.",
                id="kumosubmit.E014",
            )
        )
    for key in ("LISTEN", "IMPLICIT_TLS", "PROXY_LISTEN"):
        value = getattr(app_settings, key)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            errors.append(
                Error(f"KUMOSUBMIT[{key!r}] must be a list of 'HOST:PORT'.", id="kumosubmit.E003")
            )
            continue
        for address in value:
            try:
                parse_address(address)
            except (TypeError, ValueError):
                errors.append(
                    Error(
                        f"KUMOSUBMIT[{key!r}] has {address!r}, not 'HOST:PORT'.",
                        id="kumosubmit.E003",
                    )
                )
    return errors


def _check_tls() -> list[Error | Warning]:
    cert, key = app_settings.TLS_CERT, app_settings.TLS_KEY
    if bool(cert) != bool(key):
        return [
            Error(
                "TLS_CERT and TLS_KEY go together.",
                hint="Set both, or neither for a self-signed certificate.",
                id="kumosubmit.E004",
            )
        ]
    return [
        Error(f"KUMOSUBMIT[{name!r}] {path!s} is not a readable file.", id="kumosubmit.E005")
        for name, path in (("TLS_CERT", cert), ("TLS_KEY", key))
        if path and not Path(path).is_file()
    ]


def _check_argon2() -> list[Error | Warning]:
    import argon2

    params = app_settings.ARGON2
    try:
        # One real hash: argon2 validates its parameters only when it hashes.
        argon2.PasswordHasher(**params).hash("kumosubmit system check")
    except (TypeError, ValueError, argon2.exceptions.HashingError) as error:
        return [Error(f"KUMOSUBMIT['ARGON2'] is not usable: {error}", id="kumosubmit.E006")]
    return []


def _check_paths() -> list[Error | Warning]:
    errors: list[Error | Warning] = []
    for event, path in (app_settings.HOOKS or {}).items():
        from kumosubmit.hooks import EVENTS

        if event not in EVENTS:
            errors.append(
                Error(
                    f"KUMOSUBMIT['HOOKS'] names an unknown event {event!r}.", id="kumosubmit.E007"
                )
            )
            continue
        try:
            import_string(path)
        except ImportError as error:
            errors.append(
                Error(
                    f"Hook {event} handler {path!r} cannot be imported: {error}",
                    id="kumosubmit.E008",
                )
            )
    try:
        import_string(app_settings.SPOOL_BACKEND)
    except ImportError as error:
        errors.append(Error(f"SPOOL_BACKEND cannot be imported: {error}", id="kumosubmit.E009"))
    return errors


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_brute_force(
    name: str = "BRUTE_FORCE", id: str = "kumosubmit.E010"
) -> list[Error | Warning]:
    """KUMOSUBMIT["BRUTE_FORCE"] (read by credentials/throttle.py), or WEB_BRUTE_FORCE
    (web/throttle.py): known keys, sane numbers."""
    user = getattr(app_settings, name)

    def error(message: str) -> Error:
        return Error(
            f"KUMOSUBMIT[{name!r}] {message}",
            hint="See the defaults in kumosubmit/conf.py.",
            id=id,
        )

    if not isinstance(user, dict):
        return [error("must be a dict.")]
    defaults = DEFAULTS[name]
    errors = [error(f"has an unknown key {key!r}.") for key in sorted(set(user) - set(defaults))]
    values = {**defaults, **user}
    if not isinstance(values["ENABLED"], bool):
        errors.append(error("['ENABLED'] must be True or False."))
    for key in ("WINDOW", "BLOCK_DURATION"):
        if not _is_number(values[key]) or not 0 < values[key] <= 365 * 86400:
            errors.append(error(f"[{key!r}] must be a number of seconds above 0."))
    for key in ("DELAY", "MAX_DELAY"):
        if not _is_number(values[key]) or values[key] < 0:
            errors.append(error(f"[{key!r}] must be a number of seconds, 0 or more."))
    for key in ("IP_BLOCK_AFTER", "LOGIN_BLOCK_AFTER"):
        if values[key] is not None and not _is_whole(values[key], 1, 2**31 - 1):
            errors.append(error(f"[{key!r}] must be a whole number above 0, or None."))
    if not _is_whole(values["IPV6_PREFIX"], 32, 128):
        errors.append(error("['IPV6_PREFIX'] must be a prefix length from 32 to 128."))
    if errors:
        return errors
    if values["MAX_DELAY"] < values["DELAY"]:
        errors.append(error("['MAX_DELAY'] is below ['DELAY']."))
    idle = app_settings.IDLE_TIMEOUT
    if name == "BRUTE_FORCE" and _is_number(idle) and values["MAX_DELAY"] >= idle:
        # The idle timer runs while a failure is being delayed: the client would be cut off.
        errors.append(error(f"['MAX_DELAY'] must be below IDLE_TIMEOUT ({idle} s)."))
    return errors


def _check_auth_lanes() -> list[Error | Warning]:
    """KUMOSUBMIT["AUTH_LANES"]: known keys, sane numbers (read by credentials/lanes.py)."""
    user = app_settings.AUTH_LANES

    def error(message: str) -> Error:
        return Error(
            f"KUMOSUBMIT['AUTH_LANES'] {message}",
            hint="See the defaults in kumosubmit/conf.py and docs/security.md.",
            id="kumosubmit.E080",
        )

    if not isinstance(user, dict):
        return [error("must be a dict.")]
    defaults = DEFAULTS["AUTH_LANES"]
    errors = [error(f"has an unknown key {key!r}.") for key in sorted(set(user) - set(defaults))]
    values = {**defaults, **user}
    if not isinstance(values["ENABLED"], bool):
        errors.append(error("['ENABLED'] must be True or False."))
    for key in ("KNOWN_PAIR_TTL", "SPRAY_WINDOW", "SPRAY_HOLD"):
        if not _is_number(values[key]) or not 0 < values[key] <= 10 * 365 * 86400:
            errors.append(error(f"[{key!r}] must be a number of seconds above 0."))
    for key in ("MAX_WAIT", "SPRAY_DELAY"):
        if not _is_number(values[key]) or values[key] < 0:
            errors.append(error(f"[{key!r}] must be a number of seconds, 0 or more."))
    for key in (
        "QUEUE",
        "SPRAY_QUEUE",
        "KNOWN_MAX_FAILURES",
        "SPRAY_LOGIN_ADDRESSES",
        "SPRAY_UNKNOWN_ADDRESSES",
    ):
        if not _is_whole(values[key], 1, 2**31 - 1):
            errors.append(error(f"[{key!r}] must be a whole number above 0."))
    if not _is_whole(values["IPV4_PREFIX"], 8, 32):
        errors.append(error("['IPV4_PREFIX'] must be a prefix length from 8 to 32."))
    if not _is_whole(values["IPV6_PREFIX"], 32, 128):
        errors.append(error("['IPV6_PREFIX'] must be a prefix length from 32 to 128."))
    if errors:
        return errors
    if values["SPRAY_QUEUE"] > values["QUEUE"]:
        errors.append(error("['SPRAY_QUEUE'] is above ['QUEUE']: a spray would loosen the lane."))
    hook_timeout = app_settings.HOOK_TIMEOUT
    # (A HOOK_TIMEOUT that is no positive number is E011 already.)
    if _is_number(hook_timeout) and hook_timeout > 0 and values["MAX_WAIT"] >= hook_timeout:
        errors.append(
            Warning(
                f"KUMOSUBMIT['AUTH_LANES']['MAX_WAIT'] ({values['MAX_WAIT']} s) is not below "
                f"HOOK_TIMEOUT ({hook_timeout} s): a long wait in the bounded lane is cut by "
                "the hook's time limit, and logged as a failing hook.",
                hint="Lower MAX_WAIT, or raise HOOK_TIMEOUT.",
                id="kumosubmit.W080",
            )
        )
    idle = app_settings.IDLE_TIMEOUT
    if _is_number(idle) and values["SPRAY_DELAY"] >= idle:
        # The idle timer runs while a failure is being delayed: the client would be cut off.
        errors.append(error(f"['SPRAY_DELAY'] must be below IDLE_TIMEOUT ({idle} s)."))
    return errors


_POSITIVE = (
    "PROXY_TIMEOUT",
    "AUTH_CACHE_SIZE",
    "MAX_MESSAGE_SIZE",
    "DATA_MEMORY_BUDGET",
    "IDLE_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "HOOK_TIMEOUT",
    "MAX_ERRORS",
    "MAX_AUTH_ATTEMPTS",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_IP",
    "DATA_TIMEOUT",
    "MAX_RECIPIENTS",
)
#: Numbers above 0, or None for no limit.
_POSITIVE_OR_NONE = ("MAX_MESSAGES_PER_CONNECTION",)


def _check_numbers() -> list[Error | Warning]:
    errors: list[Error | Warning] = []
    for key in _POSITIVE:
        value = getattr(app_settings, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            errors.append(
                Error(
                    f"KUMOSUBMIT[{key!r}] must be a number above 0, not {value!r}.",
                    id="kumosubmit.E011",
                )
            )
    for key in _POSITIVE_OR_NONE:
        value = getattr(app_settings, key)
        if value is not None and not _is_whole(value, 1, 2**31 - 1):
            errors.append(
                Error(
                    f"KUMOSUBMIT[{key!r}] must be a whole number above 0, or None (no limit), "
                    f"not {value!r}.",
                    id="kumosubmit.E011",
                )
            )
    for key in ("ARGON2_NICENESS", "ARGON2_PRIORITY_NICENESS"):
        niceness = getattr(app_settings, key)
        if not _is_whole(niceness, 0, 19):
            errors.append(
                Error(
                    f"KUMOSUBMIT[{key!r}] must be a whole number 0-19, not {niceness!r}.",
                    id="kumosubmit.E011",
                )
            )
    threads = app_settings.ARGON2_PRIORITY_THREADS
    if not _is_whole(threads, 0, 64):
        errors.append(
            Error(
                f"KUMOSUBMIT['ARGON2_PRIORITY_THREADS'] must be a whole number 0-64, not "
                f"{threads!r}.",
                id="kumosubmit.E011",
            )
        )
    retention = app_settings.AUDIT_RETENTION
    if retention is not None and (not _is_number(retention) or retention < 0):
        errors.append(
            Error(
                "KUMOSUBMIT['AUDIT_RETENTION'] must be a number of seconds, or None "
                f"(kept for ever), not {retention!r}.",
                id="kumosubmit.E011",
            )
        )
    for key in ("ARGON2_KEEP_MEMORY", "ARGON2_SCHED_IDLE"):
        if not isinstance(getattr(app_settings, key), bool):
            errors.append(
                Error(f"KUMOSUBMIT[{key!r}] must be True or False.", id="kumosubmit.E011")
            )
    ttl = app_settings.AUTH_CACHE_TTL
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 0:
        errors.append(
            Error(
                f"KUMOSUBMIT['AUTH_CACHE_TTL'] must be seconds (0: off), not {ttl!r}.",
                id="kumosubmit.E011",
            )
        )
    budget, largest = app_settings.DATA_MEMORY_BUDGET, app_settings.MAX_MESSAGE_SIZE
    if _is_number(budget) and _is_number(largest) and 0 < budget < largest:
        errors.append(
            Error(
                f"KUMOSUBMIT['DATA_MEMORY_BUDGET'] ({budget}) is below MAX_MESSAGE_SIZE "
                f"({largest}): a message of the largest size could never be held.",
                hint="Raise DATA_MEMORY_BUDGET to a few times MAX_MESSAGE_SIZE.",
                id="kumosubmit.E015",
            )
        )
    if app_settings.BARE_LINE_ENDINGS not in ("reject", "normalize"):
        errors.append(
            Error(
                "KUMOSUBMIT['BARE_LINE_ENDINGS'] must be 'reject' or 'normalize'.",
                id="kumosubmit.E012",
            )
        )
    return errors


@register(Tags.security, deploy=True)
def check_argon2_strength(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    params = app_settings.ARGON2
    # OWASP's floor for argon2id: 19 MiB with t=2 (or more memory with t=1).
    if params.get("memory_cost", 0) < 19 * 1024 or params.get("time_cost", 0) < 2:
        return [
            Warning(
                "KUMOSUBMIT['ARGON2'] is weaker than OWASP's minimum for argon2id.",
                hint="Use memory_cost >= 19456 and time_cost >= 2 (the default is 65536, 3).",
                id="kumosubmit.W001",
            )
        ]
    return []


@register()
def check_relay(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    """KUMOSUBMIT["RELAY"]: known keys, an upstream runrelay can use, sane numbers."""
    from kumosubmit.relay.config import (
        TLS_MODES,
        RelayConfigError,
        is_this_host,
        parse_upstream,
        relay_settings,
    )

    def error(message: str, id: int) -> Error:
        return Error(
            f"KUMOSUBMIT['RELAY'] {message}",
            hint="See docs/relay.md and the defaults in kumosubmit/conf.py.",
            id=f"kumosubmit.E{id:03d}",
        )

    user = app_settings.RELAY
    if not isinstance(user, dict):
        return [error("must be a dict.", 20)]
    unknown = sorted(set(user) - set(DEFAULTS["RELAY"]))
    errors = [error(f"has an unknown key {key!r}.", 20) for key in unknown]
    values = relay_settings()
    upstream, tls = values["UPSTREAM"], values["TLS"]
    if tls not in TLS_MODES:
        errors.append(error(f"['TLS'] must be one of {', '.join(TLS_MODES)}.", 21))
    if upstream is not None:
        try:
            host, _ = parse_upstream(upstream)
        except RelayConfigError as problem:
            errors.append(error(f"['UPSTREAM']: {problem}", 21))
        else:
            if tls == "none" and not is_this_host(host):
                errors.append(error("['TLS'] 'none' is only for an MTA on this host.", 21))
    elif values["HANDOFF"]:
        errors.append(error("['HANDOFF'] needs ['UPSTREAM'].", 21))
    for key in ("VERIFY_CERTIFICATE", "HANDOFF"):
        if not isinstance(values[key], bool):
            errors.append(error(f"[{key!r}] must be True or False.", 20))
    if values["CA_FILE"] is not None and not Path(values["CA_FILE"]).is_file():
        errors.append(error(f"['CA_FILE'] {values['CA_FILE']!s} is not a readable file.", 22))
    if bool(values["USERNAME"]) != bool(values["PASSWORD"]):
        errors.append(error("['USERNAME'] and ['PASSWORD'] go together.", 22))
    for key in ("WORKERS", "MESSAGES_PER_CONNECTION"):
        if not _is_whole(values[key], 1, 10_000):
            errors.append(error(f"[{key!r}] must be a whole number from 1 to 10000.", 23))
    seconds = ("TIMEOUT", "DATA_TIMEOUT", "MAX_RETRY_DELAY", "MAX_AGE", "LEASE", "POLL_INTERVAL")
    for key in seconds:
        if not _is_number(values[key]) or values[key] <= 0:
            errors.append(error(f"[{key!r}] must be a number of seconds above 0.", 23))
    if not _is_number(values["RETRY_DELAY"]) or values["RETRY_DELAY"] < 0:
        errors.append(error("['RETRY_DELAY'] must be a number of seconds, 0 or more.", 23))
    retention = values["RETENTION"]
    if retention is not None and (not _is_number(retention) or retention < 0):
        errors.append(error("['RETENTION'] must be a number of seconds, or None.", 23))
    return errors


@register()
def check_app_passwords(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """REQUIRE_APP_PASSWORDS and MAX_APP_PASSWORDS (read by credentials/ and web/)."""
    errors = []
    if not isinstance(app_settings.REQUIRE_APP_PASSWORDS, bool):
        message = "KUMOSUBMIT['REQUIRE_APP_PASSWORDS'] must be True or False."
        errors.append(Error(message, id="kumosubmit.E030"))
    if not _is_whole(app_settings.MAX_APP_PASSWORDS, 1, 10_000):
        errors.append(
            Error(
                "KUMOSUBMIT['MAX_APP_PASSWORDS'] must be a whole number from 1 to 10000.",
                hint="It bounds the live app passwords of one login (the default is 20).",
                id="kumosubmit.E030",
            )
        )
    return errors


# -- what a host project must set (docs/integration.md) ---------------------------------

#: The worker count runsmtpd is about to start, while it runs the checks; otherwise the
#: checks go by KUMOSUBMIT["WORKERS"].
_runsmtpd_workers: ContextVar[int | None] = ContextVar("runsmtpd_workers", default=None)


@contextmanager
def checking_runsmtpd(workers: int) -> Iterator[None]:
    """Run the checks within this for ``runsmtpd`` with ``workers`` processes."""
    token = _runsmtpd_workers.set(workers)
    try:
        yield
    finally:
        _runsmtpd_workers.reset(token)


@register(Tags.urls)
def check_site_pages(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """The self-service URLs are included, and sign-in leads to pages that exist."""
    from django.urls import NoReverseMatch, reverse

    from kumosubmit.web.account import site_page

    try:
        reverse("credentials:index")
    except NoReverseMatch:
        return [
            Warning(
                "kumosubmit's self-service pages are not in the project's URLs.",
                hint='Add path("credentials/", include("kumosubmit.web.urls")) to the '
                "ROOT_URLCONF's urlpatterns; a site without them can silence this with "
                'SILENCED_SYSTEM_CHECKS = ["kumosubmit.W052"].',
                id="kumosubmit.W052",
            )
        ]
    from django.conf import settings

    warnings = []
    if site_page("LOGIN_URL") is None:
        warnings.append(
            Warning(
                f"LOGIN_URL ({settings.LOGIN_URL!r}) is no page of this site; kumosubmit's "
                "pages send visitors to their own sign-in page instead, other views to a 404.",
                hint='Set LOGIN_URL = "credentials:sign_in" (the app\'s sign-in page), or '
                'include path("accounts/", include("django.contrib.auth.urls")) and set '
                'LOGIN_URL = "login".',
                id="kumosubmit.W050",
            )
        )
    if site_page("LOGIN_REDIRECT_URL") is None:
        warnings.append(
            Warning(
                f"LOGIN_REDIRECT_URL ({settings.LOGIN_REDIRECT_URL!r}) is no page of this "
                "site: signing in without a 'next' page ends on a 404.",
                hint='Set LOGIN_REDIRECT_URL = "credentials:index" (the SMTP logins page), or '
                "the name of a page of your own.",
                id="kumosubmit.W051",
            )
        )
    return warnings


_WAL = re.compile(r"journal_mode\s*=\s*['\"]?wal\b", re.IGNORECASE)


@register()
def check_sqlite_wal(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Several runsmtpd workers on SQLite need its write-ahead log.

    In SQLite's default rollback-journal mode a writer locks readers out, so one
    worker's commit stalls every other worker's AUTH and MAIL queries. It reads the
    settings, not the database.
    """
    from django.conf import settings
    from django.db import DEFAULT_DB_ALIAS

    database = settings.DATABASES.get(DEFAULT_DB_ALIAS, {})
    if database.get("ENGINE") != "django.db.backends.sqlite3":
        return []
    workers = _runsmtpd_workers.get() or app_settings.WORKERS or os.cpu_count() or 1
    if not _is_whole(workers, 2, 2**31 - 1):
        return []
    init_command = (database.get("OPTIONS") or {}).get("init_command") or ""
    if _WAL.search(init_command):
        return []
    return [
        Warning(
            f"runsmtpd runs {workers} worker processes on SQLite without its write-ahead "
            "log (WAL): a commit in one worker locks the others' reads out.",
            hint='Add "init_command": "PRAGMA journal_mode=WAL;" (and "transaction_mode": '
            '"IMMEDIATE") to DATABASES["default"]["OPTIONS"], or set KUMOSUBMIT["WORKERS"] '
            "= 1 (runsmtpd --workers 1).",
            id="kumosubmit.W053",
        )
    ]


#: The built-in validators and the settings each needs.
_OAUTH_NEEDS = {
    "kumosubmit.oauth.introspection.validate": ("INTROSPECTION_URL",),
    "kumosubmit.oauth.jwt.validate": ("JWKS_URL", "ISSUER"),
}


def _is_loopback_url(url: str) -> bool:
    import ipaddress
    import urllib.parse

    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@register(Tags.security)
def check_oauth(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    """KUMOSUBMIT["OAUTH"]: the token validators (kumosubmit/oauth/, docs/oauth.md)."""
    from django.apps import apps

    configured = app_settings.OAUTH
    if not isinstance(configured, dict):
        return [Error("KUMOSUBMIT['OAUTH'] must be a dict.", id="kumosubmit.E090")]
    errors: list[Error | Warning] = []
    for key in sorted(set(configured) - set(DEFAULTS["OAUTH"])):
        errors.append(
            Error(
                f"KUMOSUBMIT['OAUTH'] has an unknown key {key!r}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS['OAUTH']))}.",
                id="kumosubmit.E090",
            )
        )
    oauth = app_settings.oauth
    validator = oauth["VALIDATOR"]
    if validator:
        try:
            import_string(validator)
        except ImportError as error:
            errors.append(
                Error(
                    f"KUMOSUBMIT['OAUTH']['VALIDATOR'] cannot be imported: {error}",
                    hint="A dotted path such as 'kumosubmit.oauth.toolkit.validate'.",
                    id="kumosubmit.E091",
                )
            )
    if validator == "kumosubmit.oauth.toolkit.validate":
        if not apps.is_installed("oauth2_provider"):
            errors.append(
                Error(
                    "The toolkit validator needs django-oauth-toolkit in INSTALLED_APPS.",
                    hint="Add 'oauth2_provider' to INSTALLED_APPS (docs/oauth.md).",
                    id="kumosubmit.E092",
                )
            )
        else:
            from oauth2_provider.settings import oauth2_settings

            if not oauth2_settings.COMPLIANT_BCP_RFC9700_TOKEN_STORAGE:
                errors.append(
                    Warning(
                        "django-oauth-toolkit keeps access tokens in the clear in its table.",
                        hint=(
                            "Set OAUTH2_PROVIDER['COMPLIANT_BCP_RFC9700_TOKEN_STORAGE'] = True "
                            "so that only checksums are kept (docs/oauth.md)."
                        ),
                        id="kumosubmit.W091",
                    )
                )
    for key in _OAUTH_NEEDS.get(validator or "", ()):
        if not oauth[key]:
            errors.append(
                Error(
                    f"KUMOSUBMIT['OAUTH'][{key!r}] is needed by the validator {validator}.",
                    id="kumosubmit.E093",
                )
            )
    for key in ("INTROSPECTION_URL", "JWKS_URL", "OPENID_CONFIGURATION"):
        url = oauth[key]
        if not url:
            continue
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            errors.append(
                Error(f"KUMOSUBMIT['OAUTH'][{key!r}] must be an http(s) URL.", id="kumosubmit.E093")
            )
        elif url.startswith("http://") and not _is_loopback_url(url):
            errors.append(
                Warning(
                    f"KUMOSUBMIT['OAUTH'][{key!r}] is plain HTTP to another host: tokens or "
                    "keys could be read or changed on the way.",
                    hint="Use https://.",
                    id="kumosubmit.W090",
                )
            )
    if validator == "kumosubmit.oauth.introspection.validate" and not oauth["CLIENT_ID"]:
        errors.append(
            Warning(
                "Introspection without CLIENT_ID: most providers require client credentials "
                "(RFC 7662 section 2.1).",
                id="kumosubmit.W092",
            )
        )
    for key, low, high in (("CACHE_TTL", 0, 3600), ("JWKS_CACHE_TTL", 0, 86400)):
        if not _is_number(oauth[key]) or not low <= oauth[key] <= high:
            errors.append(
                Error(
                    f"KUMOSUBMIT['OAUTH'][{key!r}] must be a number of seconds from {low} "
                    f"to {high}.",
                    id="kumosubmit.E094",
                )
            )
    if not _is_number(oauth["HTTP_TIMEOUT"]) or not 0 < oauth["HTTP_TIMEOUT"] <= 60:
        errors.append(
            Error(
                "KUMOSUBMIT['OAUTH']['HTTP_TIMEOUT'] must be seconds, more than 0, at most 60.",
                id="kumosubmit.E094",
            )
        )
    if not _is_number(oauth["TOKEN_DAYS"]) or not 0 < oauth["TOKEN_DAYS"] <= 36500:
        errors.append(
            Error(
                "KUMOSUBMIT['OAUTH']['TOKEN_DAYS'] must be from 1 to 36500.", id="kumosubmit.E094"
            )
        )
    if not isinstance(oauth["SCOPE"], str) or not oauth["SCOPE"] or " " in oauth["SCOPE"]:
        errors.append(
            Error("KUMOSUBMIT['OAUTH']['SCOPE'] must be one scope.", id="kumosubmit.E095")
        )
    if not isinstance(oauth["LOGIN_CLAIM"], str) or not oauth["LOGIN_CLAIM"]:
        errors.append(
            Error("KUMOSUBMIT['OAUTH']['LOGIN_CLAIM'] must be a claim name.", id="kumosubmit.E095")
        )
    algorithms = oauth["ALGORITHMS"]
    if (
        not isinstance(algorithms, list | tuple)
        or not algorithms
        or any(
            not isinstance(a, str) or a.lower() == "none" or a.startswith("HS") for a in algorithms
        )
    ):
        errors.append(
            Error(
                "KUMOSUBMIT['OAUTH']['ALGORITHMS'] must list asymmetric JWS algorithms.",
                hint="For example ['RS256', 'ES256']; neither 'none' nor HMAC (HS256).",
                id="kumosubmit.E095",
            )
        )
    return errors


@register()
def check_send_limits(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """SEND_LIMITS and the settings around it (read by kumosubmit/sendlimits/)."""
    from kumosubmit.sendlimits.backends import CacheBackend, SendLimitBackend
    from kumosubmit.sendlimits.notice import DELIVERIES
    from kumosubmit.sendlimits.rules import KINDS, RuleError, parse_limits, parse_rules

    errors = []
    try:
        parse_limits(app_settings.SEND_LIMITS, where="KUMOSUBMIT['SEND_LIMITS']")
    except RuleError as problem:
        errors.append(
            Error(
                f"KUMOSUBMIT['SEND_LIMITS']: {problem}.",
                hint=f"A dict of {' and '.join(KINDS)}, each a list of rules like "
                "'30/minute' (N/second, minute, hour or day) or None; None for no limits.",
                id="kumosubmit.E060",
            )
        )
    path = app_settings.SEND_LIMITS_BACKEND
    try:
        backend = import_string(path)
    except ImportError:
        backend = None
    if not (isinstance(backend, type) and issubclass(backend, SendLimitBackend)):
        errors.append(
            Error(
                f"KUMOSUBMIT['SEND_LIMITS_BACKEND'] {path!r} is not a SendLimitBackend.",
                hint="kumosubmit.sendlimits.backends.DatabaseBackend (the default) or "
                "kumosubmit.sendlimits.backends.CacheBackend (Redis).",
                id="kumosubmit.E061",
            )
        )
    elif issubclass(backend, CacheBackend):
        errors += _check_limits_cache()
    if app_settings.SEND_LIMITS_NOTICE not in DELIVERIES:
        errors.append(
            Error(
                f"KUMOSUBMIT['SEND_LIMITS_NOTICE'] is {app_settings.SEND_LIMITS_NOTICE!r}.",
                hint="'spool' (kumosubmit's own queue), 'email_backend' (Django's "
                "EMAIL_BACKEND) or None (no notice).",
                id="kumosubmit.E063",
            )
        )
    near = app_settings.SEND_LIMITS_NEAR
    if not _is_number(near) or not 0 < near <= 1:
        errors.append(
            Error(
                "KUMOSUBMIT['SEND_LIMITS_NEAR'] must be a share above 0 and at most 1.",
                hint="The admin lists a credential as near a limit from this share on (0.8).",
                id="kumosubmit.E063",
            )
        )
    lease = app_settings.SEND_LIMITS_LEASE
    if lease is not None and (not _is_number(lease) or not 0 <= lease <= 0.1):
        errors.append(
            Error(
                "KUMOSUBMIT['SEND_LIMITS_LEASE'] must be a share from 0 to 0.1.",
                hint="A connection reserves ahead up to this share of a rule's count "
                "(0.05, the default); 0 never reserves ahead.",
                id="kumosubmit.E065",
            )
        )
    factor = app_settings.SUSPEND_FACTOR
    if factor is not None and (not _is_number(factor) or factor <= 1):
        errors.append(
            Error(
                "KUMOSUBMIT['SUSPEND_FACTOR'] must be None (off) or a number above 1.",
                hint="A login sending more than this many times its usual rate is suspended.",
                id="kumosubmit.E064",
            )
        )
    try:
        floor = parse_rules([app_settings.SUSPEND_MIN_RATE])
    except RuleError:
        floor = None
    if not floor:
        errors.append(
            Error(
                f"KUMOSUBMIT['SUSPEND_MIN_RATE'] {app_settings.SUSPEND_MIN_RATE!r} is not a "
                "rule like '20/hour'.",
                hint="The usual rate a login is held to when its own is lower (or unknown).",
                id="kumosubmit.E064",
            )
        )
    return errors


def _check_limits_cache() -> list[Error]:
    from django.conf import settings

    alias = app_settings.SEND_LIMITS_CACHE
    config = (getattr(settings, "CACHES", {}) or {}).get(alias)
    if config is None:
        problem = f"there is no cache {alias!r} in CACHES"
    elif config.get("BACKEND") != "django.core.cache.backends.redis.RedisCache":
        problem = f"the cache {alias!r} is a {config.get('BACKEND')}, not Django's RedisCache"
    else:
        try:
            import redis  # noqa: F401
        except ImportError:
            problem = "the redis package is not installed (pip install 'kumosubmit[redis]')"
        else:
            return []
    return [
        Error(
            f"KUMOSUBMIT['SEND_LIMITS_CACHE']: {problem}.",
            hint="The Redis backend needs a cache with BACKEND "
            "'django.core.cache.backends.redis.RedisCache' and LOCATION 'redis://HOST:PORT'.",
            id="kumosubmit.E062",
        )
    ]
