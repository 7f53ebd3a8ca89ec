"""Remembering verified passwords for a while, as Dovecot's auth_cache does (off by default).

A correct password costs one argon2 verification per AUTH: by design tens of
milliseconds of a core. A busy application that opens a new connection for
every message pays that each time. With ``AUTH_CACHE_TTL`` above 0, a
(credential, password) pair that verified is remembered for that many seconds,
and the next AUTH with the same pair skips argon2.

What is kept is neither the password nor anything a stolen copy of memory
could be attacked with offline: an HMAC-SHA256, under a key made at random
in each process and never stored, of the credential's identity, its *current
stored hash* and the password. The credential row is read from the database
on every AUTH anyway (to find the hash to verify), so a cache entry matches
only while that row still holds the same hash: a password change (a new
salt, so a new hash even for the same password), a deactivated login (not
found), a revoked or expired app password (refused after the match, as
always) all take effect at once, in every process and on every host, with no
message passed between them.

Only successes are remembered: every wrong password still costs a full
verification and counts towards the brute-force penalties.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from kumosubmit.conf import app_settings, clears_on_setting_change


class AuthCache:
    """Keyed digests of verified (credential, hash, password) triples, with a TTL and a size cap."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._key = secrets.token_bytes(32)
        self._clock = clock
        self._lock = threading.Lock()
        # digest -> monotonic time it expires; oldest first, for eviction.
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    @staticmethod
    def enabled() -> bool:
        return app_settings.AUTH_CACHE_TTL > 0

    def _digest(self, credential: str, password_hash: str, password: str) -> bytes:
        message = "\0".join((credential, password_hash, password)).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def remember(self, credential: str, password_hash: str, password: str) -> None:
        """Note that ``password`` verified against ``password_hash`` of ``credential``."""
        if not self.enabled():
            return
        digest = self._digest(credential, password_hash, password)
        expires = self._clock() + app_settings.AUTH_CACHE_TTL
        with self._lock:
            self._entries[digest] = expires
            self._entries.move_to_end(digest)
            while len(self._entries) > app_settings.AUTH_CACHE_SIZE:
                self._entries.popitem(last=False)

    def verified(self, credential: str, password_hash: str, password: str) -> bool:
        """Whether this exact triple verified within the TTL (and the cache is on)."""
        if not self.enabled():
            return False
        digest = self._digest(credential, password_hash, password)
        with self._lock:
            expires = self._entries.get(digest)
            if expires is None:
                return False
            if expires <= self._clock():
                del self._entries[digest]
                return False
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    cache_clear = clear  # so a settings change (in tests) starts it afresh

    def __len__(self) -> int:
        return len(self._entries)


#: The process's cache, shared by all its sessions.
auth_cache = clears_on_setting_change(AuthCache())
