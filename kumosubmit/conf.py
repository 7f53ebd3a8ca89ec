"""kumosubmit's settings, read in one place.

Every setting is a key of the ``KUMOSUBMIT`` dict in the Django settings;
missing keys take the defaults below. Values are read at call time, so
``override_settings`` works in tests; nothing is written back into
``django.conf.settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Listeners. STARTTLS listeners (RFC 6409) and implicit-TLS ones (RFC 8314).
    "LISTEN": ["127.0.0.1:2587"],
    "IMPLICIT_TLS": [],
    # STARTTLS listeners behind a TCP balancer: each connection starts with a PROXY
    # protocol header (v1 or v2), believed only from TRUSTED_PROXIES (addresses or networks).
    "PROXY_LISTEN": [],
    "TRUSTED_PROXIES": [],
    # Seconds a balancer has to send the PROXY header.
    "PROXY_TIMEOUT": 10,
    # Certificate and key (PEM). With neither, runsmtpd makes a self-signed pair in DATA_DIR.
    "TLS_CERT": None,
    "TLS_KEY": None,
    # Where runtime files (the self-signed certificate) are kept.
    "DATA_DIR": None,  # None: BASE_DIR / "var", or ./var without BASE_DIR
    # The name in the greeting and the Received header; None: the host's FQDN.
    "HOSTNAME": None,
    # Largest message accepted, in bytes; advertised with SIZE (RFC 1870).
    "MAX_MESSAGE_SIZE": 35_000_000,
    # Bytes of message data one worker process holds in memory at once, over all its
    # sessions (a message is held from DATA until it is stored). Beyond it, clients get
    # "452 4.3.1 Insufficient system storage" and retry later. At least MAX_MESSAGE_SIZE.
    "DATA_MEMORY_BUDGET": 256 * 1024 * 1024,
    # Seconds a client may stay silent before the connection is closed.
    "IDLE_TIMEOUT": 300,
    # Listener processes runsmtpd runs (None: the number of CPUs).
    "WORKERS": None,
    # Seconds runsmtpd lets open sessions finish after SIGTERM/SIGINT.
    "SHUTDOWN_TIMEOUT": 30,
    # "HOST:PORT" where runsmtpd serves Prometheus /metrics and /health over HTTP;
    # None: not served. Keep it on loopback or a private network (docs/deploy.md).
    "METRICS_LISTEN": None,
    # argon2id parameters for new hashes; older hashes are upgraded on login.
    # argon2-cffi's defaults (RFC 9106, low-memory profile).
    "ARGON2": {"time_cost": 3, "memory_cost": 65536, "parallelism": 4},
    # Seconds a verified (credential, password) pair is remembered, so the next AUTH with it
    # skips argon2 (as Dovecot's auth_cache); 0: off, every AUTH verifies. Kept as a keyed
    # hash, never the password; void as soon as the credential's row changes
    # (kumosubmit/credentials/authcache.py). At most AUTH_CACHE_SIZE pairs per process.
    "AUTH_CACHE_TTL": 0,
    "AUTH_CACHE_SIZE": 100_000,
    # How much lower than the rest of the process the argon2 threads run (Unix nice
    # increment, 0-19): an AUTH burst must not starve the sessions' event loop.
    "ARGON2_NICENESS": 19,
    # And run them under Linux's SCHED_IDLE: a session's thread that wakes up takes the core
    # from them at once. False: the nice value alone.
    "ARGON2_SCHED_IDLE": True,
    # Threads that run argon2 (each verify may itself use `parallelism` lanes).
    "ARGON2_THREADS": None,  # None: the CPUs shared out among runsmtpd's workers (at least 1)
    # Each argon2 thread keeps its verification memory (memory_cost KiB) for the next one
    # instead of mapping and faulting it in anew: about a fifth more verifications per
    # second (kumosubmit/credentials/argon2_memory.py). False: argon2-cffi's own verify.
    "ARGON2_KEEP_MEMORY": True,
    # Seconds the connection audit log is kept; `pruneaudit` deletes older rows (run it
    # daily, docs/deploy.md). None: kept for ever.
    "AUDIT_RETENTION": 90 * 86400,
    # Where accepted messages go: a BaseSpool subclass by dotted path.
    "SPOOL_BACKEND": "kumosubmit.spool.orm.DatabaseSpool",
    # Relaying stored messages to the upstream MTA (runrelay; docs/relay.md, checks E020).
    "RELAY": {
        "UPSTREAM": None,  # "HOST:PORT" of the MTA that sends the mail out
        "TLS": "starttls",  # or "implicit" (TLS from the first byte), "none" (same host only)
        "VERIFY_CERTIFICATE": True,  # check the upstream's certificate and name
        "CA_FILE": None,  # PEM bundle to verify it with; None: the system's CAs
        "USERNAME": None,  # AUTH to the upstream (only over TLS, or to this host)
        "PASSWORD": None,
        "HELO_NAME": None,  # None: HOSTNAME
        "WORKERS": 4,  # concurrent upstream connections per runrelay process
        "MESSAGES_PER_CONNECTION": 100,  # then QUIT and connect anew
        "TIMEOUT": 60,  # seconds for connecting and for each reply
        "DATA_TIMEOUT": 600,  # seconds for the reply to the end of DATA (RFC 5321: 10 min)
        "RETRY_DELAY": 60,  # seconds before the first retry of a deferred message; doubles
        "MAX_RETRY_DELAY": 3600,
        "MAX_AGE": 5 * 86400,  # seconds after arrival when a deferred message fails
        "LEASE": 120,  # seconds a worker keeps a claimed message without renewing (kill -9)
        "POLL_INTERVAL": 1.0,  # seconds between looks for due messages when idle
        "HANDOFF": False,  # runsmtpd relays itself, right after each commit and 250
        "RETENTION": 7 * 86400,  # seconds delivered content is kept; None: for ever
    },
    # Hook handlers by dotted path, per event: one path or a list, run after the built-ins,
    # e.g. {"smtp_server_mail_from": ["myapp.policy.mail_from"]} (docs/hooks.md).
    "HOOKS": {},
    # The built-in handlers, per event; an event listed here gets exactly this list (an
    # empty one drops them), e.g. {"smtp_server_mail_from": ["kumosubmit.policy.limits.mail_from"]}
    # keeps the limits but drops the sender policy. Unlisted events keep
    # kumosubmit.hooks.registry.BUILTINS.
    "BUILTIN_HOOKS": {},
    # Seconds a hook handler may take; a late one is answered as a failing one is (454 at
    # AUTH, 421 at connection, 451 elsewhere; docs/hooks.md).
    "HOOK_TIMEOUT": 10,
    # -- abuse limits --------------------------------------------------------------
    # Error replies (5xx) one connection may get; the next error is a 421 and a close.
    "MAX_ERRORS": 10,
    # AUTH attempts one connection may make before it is told 421 and closed.
    "MAX_AUTH_ATTEMPTS": 3,
    # Concurrent connections, in all and from one client address (421 4.7.0 beyond).
    "MAX_CONNECTIONS": 1000,
    "MAX_CONNECTIONS_PER_IP": 20,
    # Seconds a DATA upload may take in all before 421 4.4.2 (the idle timeout applies
    # between commands and while the client is silent).
    "DATA_TIMEOUT": 600,
    # Recipients per message (452 4.5.3 beyond) and messages per connection.
    "MAX_RECIPIENTS": 100,
    "MAX_MESSAGES_PER_CONNECTION": 100,
    # Bare CR or LF in DATA (SMTP smuggling): "reject" (550 5.6.0) or "normalize" to CRLF.
    "BARE_LINE_ENDINGS": "reject",
    # Failed-AUTH penalties, counted per client address and per login across processes
    # (in the database); the rules are in kumosubmit/credentials/throttle.py.
    "BRUTE_FORCE": {
        "ENABLED": True,
        "WINDOW": 900,  # seconds: a count starts over after this long without a failure
        "DELAY": 1.0,  # seconds before answering the first failure; doubles each time
        "MAX_DELAY": 15.0,  # (Dovecot: 2 s doubling up to 15 s)
        "IP_BLOCK_AFTER": 10,  # failures from one address before it gets 421 (None: never)
        # Failures for one login (from any address) before it is blocked, with 454, for
        # the addresses that failed for it; others may still try it (None: never).
        "LOGIN_BLOCK_AFTER": 20,
        "BLOCK_DURATION": 900,  # seconds a block lasts
        "IPV6_PREFIX": 64,  # an IPv6 client is counted by its network of this size
    },
    # -- sending limits (kumosubmit/sendlimits/, docs/limits.md) ----------------------
    # What one login may send, by default: per kind, a list of rules "N/second|minute|
    # hour|day" (KumoMTA's throttle notation), or None for no limit of that kind. A
    # login may have its own (admin, createsmtpuser); an app password tighter ones.
    # Over a rule: 451 4.7.1 at MAIL FROM or RCPT TO. None: no limits at all.
    "SEND_LIMITS": {"MESSAGES": ["30/minute", "1000/day"], "RECIPIENTS": ["5000/day"]},
    # Where the counts are kept, shared by every process and host: the database, or
    # "kumosubmit.sendlimits.backends.CacheBackend" (Redis, via SEND_LIMITS_CACHE).
    "SEND_LIMITS_BACKEND": "kumosubmit.sendlimits.backends.DatabaseBackend",
    # The CACHES alias the Redis backend uses (a django.core.cache.backends.redis.RedisCache).
    "SEND_LIMITS_CACHE": "default",
    # How the owner and the ADMINS hear of a limit reached (once per rule and window):
    # "spool" (a message in kumosubmit's own queue, relayed as any other),
    # "email_backend" (Django's send_mail), or None (no notice).
    "SEND_LIMITS_NOTICE": "spool",
    # The address of the admin and self-service pages, for the links in notices
    # (e.g. "https://mail.example.com"); None: the links are paths.
    "SITE_URL": None,
    # The admin lists a credential as near a limit from this share of it on.
    "SEND_LIMITS_NEAR": 0.8,
    # Suspicion: a login sending more than SUSPEND_FACTOR times its usual rate (its
    # average over the last week, or SUSPEND_MIN_RATE if that is higher) over the last
    # hour is suspended: AUTH works, MAIL FROM gets 451 4.7.1 until an admin lifts it.
    # None: off.
    "SUSPEND_FACTOR": None,
    "SUSPEND_MIN_RATE": "20/hour",
    # -- sender policy -------------------------------------------------------------
    # After AUTH, MAIL FROM must be an address the login may send as (553 5.7.1 if not).
    "CHECK_SENDER": True,
    # Also require the message's From: header to be an address the login may send as.
    "CHECK_HEADER_FROM": False,
    # -- app passwords (kumosubmit/web/, docs/web.md) -----------------------------------
    # Refuse a login's own password at AUTH, so only its app passwords work (each login
    # may override this in the admin).
    "REQUIRE_APP_PASSWORDS": False,
    # Live (neither revoked nor expired) app passwords one login may have at a time.
    "MAX_APP_PASSWORDS": 20,
}


class AppSettings:
    """Attribute access to the ``KUMOSUBMIT`` dict with defaults."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"kumosubmit has no setting {name!r}")
        user: dict[str, Any] = getattr(settings, "KUMOSUBMIT", {}) or {}
        return user.get(name, DEFAULTS[name])

    @property
    def data_dir(self) -> Path:
        if self.DATA_DIR:
            return Path(self.DATA_DIR)
        return Path(getattr(settings, "BASE_DIR", Path.cwd())) / "var"


app_settings = AppSettings()

_caches_to_clear: list[Any] = []


def clears_on_setting_change(func: Any) -> Any:
    """Mark an ``functools.cache``-d function to be cleared when KUMOSUBMIT changes."""
    _caches_to_clear.append(func)
    return func


@receiver(setting_changed, dispatch_uid="kumosubmit.conf.reset")
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "KUMOSUBMIT":
        for func in _caches_to_clear:
            func.cache_clear()
