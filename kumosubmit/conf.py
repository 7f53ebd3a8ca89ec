"""kumosubmit's settings, read in one place.

Every setting is a key of the ``KUMOSUBMIT`` dict in the Django settings;
missing keys take the defaults below. Values are read at call time, so
``override_settings`` works in tests; nothing is written back into
``django.conf.settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Listeners. STARTTLS listeners (RFC 6409) and implicit-TLS ones (RFC 8314). When no
    # listener of any kind is given (here or on runsmtpd's command line), runsmtpd listens
    # on DEFAULT_LISTEN.
    "LISTEN": [],
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
    # Threads per process, beside those, that run only the priority lane's verifications
    # (known login and network pairs, AUTH_LANES), not under SCHED_IDLE: a known user's
    # AUTH starts at once while the other lane is busy. Each keeps memory_cost KiB too.
    "ARGON2_PRIORITY_THREADS": 1,
    # Their nice increment (0-19): 0 lets a known user's verification take its share of
    # the cores from whatever else runs, the sessions of a spray's connections included.
    "ARGON2_PRIORITY_NICENESS": 0,
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
    # Recipients per message (452 4.5.3 beyond).
    "MAX_RECIPIENTS": 100,
    # Messages per connection; beyond, 421 4.7.0 at MAIL and a close. None: no cap, as
    # Postfix: Django's email backend sends a whole send_mass_mail() over one connection
    # and raises at the first refusal (docs/security.md, "Messages per connection").
    "MAX_MESSAGES_PER_CONNECTION": None,
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
    # Failed web sign-ins (the self-service sign-in, the admin's, password change), with
    # the same rules, counted apart from AUTH (kumosubmit/web/throttle.py). The delay holds
    # one server thread, so it stops lower than AUTH's.
    "WEB_BRUTE_FORCE": {
        "ENABLED": True,
        "WINDOW": 900,
        "DELAY": 1.0,
        "MAX_DELAY": 8.0,
        "IP_BLOCK_AFTER": 10,
        "LOGIN_BLOCK_AFTER": 20,
        "BLOCK_DURATION": 900,
        "IPV6_PREFIX": 64,
    },
    # Reverse proxies in front of the web pages (addresses or networks). Only a request
    # from one of them may name the client in X-Forwarded-For; from anyone else the header
    # is ignored and the peer is the client (kumosubmit/web/addresses.py).
    "WEB_TRUSTED_PROXIES": [],
    # -- second factor for the web (kumosubmit/web/second_factor.py, docs/web.md) ----------
    # Who must have one (TOTP or a passkey) before using the pages or the admin: "staff"
    # (staff and superusers), "all", or "none". Anyone may enrol one.
    "SECOND_FACTOR": "staff",
    # Seconds a second-factor check stays fresh: creating an app password or setting a
    # login's own password asks for it again after this.
    "SECOND_FACTOR_MAX_AGE": 600,
    # Single-use recovery codes made when TOTP is set up (and on request).
    "RECOVERY_CODES": 10,
    # The name authenticator apps and passkeys show for this site.
    "SECOND_FACTOR_ISSUER": "kumosubmit",
    # The WebAuthn relying party id: a domain the pages are served under; None: the host
    # each page was served from.
    "WEBAUTHN_RP_ID": None,
    # -- notices to owners (kumosubmit/notices.py) ---------------------------------------
    # Each kind is sent only if on. The recipient is the site user's e-mail address (for a
    # login: its owner's, else the login name if it is an address).
    "NOTICES": {
        "APP_PASSWORD_CREATED": True,
        "SECOND_FACTOR_REMOVED": True,
        "NEW_ADDRESS": True,  # a login first used from a new address or IPv6 network
        "LOGIN_BLOCKED": True,  # a block fell on a login
        "DECOY_USED": True,  # a decoy login was tried: to the site's ADMINS
        # "queue": stored as a message of kumosubmit's own queue, which runrelay delivers;
        # "email": sent through Django's EMAIL_BACKEND.
        "DELIVERY": "queue",
        # The sender; None: postmaster@HOSTNAME (queue) or DEFAULT_FROM_EMAIL (email).
        "FROM": None,
        # The pages' address, e.g. "https://mail.example.com", for the links in notices
        # that no web request caused (new address, block). None: links from the request.
        "SITE_URL": None,
    },
    # The legitimate user first (kumosubmit/credentials/lanes.py, docs/security.md): an AUTH
    # from a network where its login succeeded lately takes the argon2 pool's priority lane;
    # every other one a bounded lane (454 4.7.0 at once when full). A spray from many
    # addresses tightens the bounded lane site-wide. Counted in the database, as BRUTE_FORCE.
    "AUTH_LANES": {
        "ENABLED": True,
        # Seconds a good AUTH keeps its login and network known (30 days).
        "KNOWN_PAIR_TTL": 30 * 86400,
        # The network of a client: IPv4 /24, IPv6 /IPV6_PREFIX.
        "IPV4_PREFIX": 24,
        "IPV6_PREFIX": 64,
        # Wrong passwords from a known network before the pair loses its priority (until
        # its next good AUTH).
        "KNOWN_MAX_FAILURES": 3,
        # Attempts that may wait in the bounded lane of one process; more get 454 at once.
        # (A waiting attacker costs nothing but a socket; one refused comes back at once.)
        "QUEUE": 32,
        # Seconds an attempt may wait there for its verification to start; then it gets
        # 454, unverified (keep it below HOOK_TIMEOUT, whose 454 is logged as an error).
        "MAX_WAIT": 5.0,
        # While a spray is seen: the bounded lane's length, and seconds every failure in it
        # waits before its 535 (besides BRUTE_FORCE's delay).
        "SPRAY_QUEUE": 4,
        "SPRAY_DELAY": 5.0,
        # A spray: in one SPRAY_WINDOW seconds, one login fails from SPRAY_LOGIN_ADDRESSES
        # addresses, or names that are no login fail from SPRAY_UNKNOWN_ADDRESSES addresses
        # (only failures in the bounded lane count).
        "SPRAY_WINDOW": 60,
        "SPRAY_LOGIN_ADDRESSES": 10,
        "SPRAY_UNKNOWN_ADDRESSES": 20,
        # Seconds the lane stays tightened after the spray was last seen.
        "SPRAY_HOLD": 120,
    },
    # -- sending limits (kumosubmit/sendlimits/, docs/limits.md) ----------------------
    # What one login may send, by default: per kind, a list of rules "N/second|minute|
    # hour|day" (KumoMTA's throttle notation), or None for no limit of that kind. A
    # login may have its own (admin, createsmtpuser); an app password tighter ones.
    # Over a rule: 451 4.7.1 at MAIL FROM or RCPT TO. None: no limits at all.
    "SEND_LIMITS": {"MESSAGES": ["500/hour", "2000/day"], "RECIPIENTS": ["5000/day"]},
    # Where the counts are kept, shared by every process and host: the database, or
    # "kumosubmit.sendlimits.backends.CacheBackend" (Redis, via SEND_LIMITS_CACHE).
    "SEND_LIMITS_BACKEND": "kumosubmit.sendlimits.backends.DatabaseBackend",
    # The CACHES alias the Redis backend uses (a django.core.cache.backends.redis.RedisCache).
    "SEND_LIMITS_CACHE": "default",
    # A connection that sends many messages reserves ahead, up to this share of a rule's
    # count (5 %: 25 of "500/hour"), so it need not ask the store for every message; a
    # rule of fewer than 2 / share per period (40) is never reserved ahead. 0: never.
    "SEND_LIMITS_LEASE": 0.05,
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
    # -- tokens: AUTH OAUTHBEARER and XOAUTH2 (kumosubmit/oauth/, docs/oauth.md) ------------
    # Keys left out take these values; checks E050-E055, W050.
    "OAUTH": {
        # Who checks a token: "kumosubmit.oauth.toolkit.validate" (django-oauth-toolkit in
        # this project), "kumosubmit.oauth.introspection.validate" (RFC 7662) or
        # "kumosubmit.oauth.jwt.validate" (a JWT and the provider's JWKS), or a path of
        # one's own. None: the token mechanisms are not offered (unless a project handles
        # smtp_server_auth_oauthbearer itself).
        "VALIDATOR": None,
        # The scope a token needs; also named in the error challenge (RFC 7628 3.2.2).
        "SCOPE": "smtp",
        # The provider's discovery document, named in the error challenge; None: left out.
        "OPENID_CONFIGURATION": None,
        # An external provider: the claim (JWT) or introspection field that holds the
        # SMTP login's username.
        "LOGIN_CLAIM": "email",
        # RFC 7662 introspection: the endpoint and this server's client credentials.
        "INTROSPECTION_URL": None,
        "CLIENT_ID": None,
        "CLIENT_SECRET": None,
        # Seconds an introspection answer is reused; never beyond the token's "exp".
        "CACHE_TTL": 60,
        # JWTs: the provider's JWKS, the "iss" and "aud" they must carry, the algorithms.
        "JWKS_URL": None,
        "ISSUER": None,
        "AUDIENCE": None,
        "ALGORITHMS": ["RS256", "ES256"],
        # Seconds the JWKS is kept (a token signed by an unknown key fetches it anew).
        "JWKS_CACHE_TTL": 300,
        # Seconds an HTTP request to the provider may take.
        "HTTP_TIMEOUT": 5,
        # Days a token made by `createsmtptoken` or the self-service pages lasts by default.
        "TOKEN_DAYS": 90,
    },
}


#: The STARTTLS listener runsmtpd binds when no listener of any kind is configured.
DEFAULT_LISTEN = ["127.0.0.1:2587"]


class AppSettings:
    """Attribute access to the ``KUMOSUBMIT`` dict with defaults."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"kumosubmit has no setting {name!r}")
        user: dict[str, Any] = getattr(settings, "KUMOSUBMIT", {}) or {}
        return user.get(name, DEFAULTS[name])

    @property
    def oauth(self) -> dict[str, Any]:
        """``OAUTH`` with the defaults for the keys the project left out."""
        configured = self.OAUTH
        if not isinstance(configured, dict):
            return dict(DEFAULTS["OAUTH"])
        return {**DEFAULTS["OAUTH"], **configured}

    @property
    def data_dir(self) -> Path:
        if self.DATA_DIR:
            return Path(self.DATA_DIR)
        return Path(getattr(settings, "BASE_DIR", Path.cwd())) / "var"


app_settings = AppSettings()

_caches_to_clear: list[Any] = []
C = TypeVar("C")


def clears_on_setting_change(func: C) -> C:
    """Mark an ``functools.cache``-d function to be cleared when KUMOSUBMIT changes."""
    _caches_to_clear.append(func)
    return func


@receiver(setting_changed, dispatch_uid="kumosubmit.conf.reset")
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "KUMOSUBMIT":
        for func in _caches_to_clear:
            func.cache_clear()
