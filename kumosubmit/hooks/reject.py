"""``reject(code, text)``: a handler's way to refuse, as KumoMTA's ``kumo.reject``."""

from __future__ import annotations

import re
from typing import NoReturn

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}( |$)")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class Reject(Exception):
    """Refuse the current command with exactly ``code`` and ``text``.

    The text gets an enhanced status code (RFC 3463) if it has none: the
    code's class with ``.0.0`` (``550 go away`` becomes ``550 5.0.0 go
    away``). A ``421`` also closes the connection (RFC 5321 section 3.8).
    """

    def __init__(self, code: int, text: str) -> None:
        if not isinstance(code, int) or not 400 <= code <= 599:
            raise ValueError(f"reject() takes a 4xx or 5xx code, not {code!r}")
        text = _UNPRINTABLE.sub(" ", str(text)).strip()
        if not _ENHANCED.match(text):
            text = f"{code // 100}.0.0 {text}".rstrip()
        super().__init__(code, text)
        self.code = code
        self.text = text
        #: What an AUTH refused this way counts as in conn_meta (kumosubmit.meta.AUTH_*);
        #: None: a failure for a 5xx code, an error for a 4xx one.
        self.auth_outcome: str | None = None

    @property
    def reply(self) -> str:
        return f"{self.code} {self.text}"

    def __str__(self) -> str:
        return self.reply


def reject(code: int, text: str) -> NoReturn:
    """Refuse the current command: the client gets ``code`` and ``text`` (see :class:`Reject`)."""
    raise Reject(code, text)
