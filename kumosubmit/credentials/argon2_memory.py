"""argon2 verification that keeps each thread's working memory between verifications.

argon2-cffi's ``verify`` lets the reference implementation ``malloc`` the
``memory_cost`` KiB anew every time. Above glibc's largest mmap threshold
(32 MiB) that is a fresh mapping: every verification faults in and zeroes
64 MiB page by page, from four lane threads at once, then unmaps it. Handing
argon2 a buffer the thread already has (its ``allocate_cbk``/``free_cbk``)
skips all of that: 12.6 -> 15.4 verifications/s with both cores busy on the
2-core benchmark machine (docs/benchmarks.md), for one ``memory_cost`` of
resident memory per pool thread.

The kept memory is an anonymous mapping aligned to 2 MiB and marked
``MADV_HUGEPAGE``: argon2 reads a pseudo-random earlier block for every block it
fills, and with 4 KiB pages nearly every one of those reads misses the TLB. With
transparent huge pages (Linux's default ``madvise`` mode honours the mark) both
cores together verify about 7 % more per second (docs/benchmarks.md).

argon2 still wipes the memory before it hands it back (``clear_internal_memory``
in its ``free_memory``), and the copy of the password is wiped too
(``ARGON2_FLAG_CLEAR_PASSWORD``), so nothing derived from a password outlives a
verification. A hash this module does not parse (an old one without ``v=``, say)
is verified by argon2-cffi itself, as every hash is where libffi may not make
callbacks.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import mmap
import re
import threading
from typing import Any

import argon2
from argon2.exceptions import VerificationError, VerifyMismatchError
from argon2.low_level import Type, core, ffi, lib
from django.views.decorators.debug import sensitive_variables

_PHC_RE = re.compile(
    r"\$(argon2id|argon2i|argon2d)\$v=(\d{1,3})\$m=(\d{1,10}),t=(\d{1,10}),p=(\d{1,3})"
    r"\$([A-Za-z0-9+/]{11,})\$([A-Za-z0-9+/]{6,})"
)
_TYPES = {"argon2id": Type.ID, "argon2i": Type.I, "argon2d": Type.D}
_ALLOCATION_FAILED: int = lib.ARGON2_MEMORY_ALLOCATION_ERROR

_kept = threading.local()

#: The x86-64 and arm64 (4 KiB base page) transparent huge page size.
HUGE_PAGE = 2 * 1024 * 1024


class _KeptMemory:
    """``size`` bytes of argon2 working memory, in huge pages where the kernel gives them.

    ``array`` is a cffi ``uint8_t[size]`` over the mapping; it holds the mapping open.
    Where ``mmap`` cannot map anonymous private memory, it is plain ``malloc``ed memory.
    """

    def __init__(self, size: int) -> None:
        if not hasattr(mmap, "MAP_PRIVATE"):
            self.array = ffi.new("uint8_t[]", size)
            return
        # Over-map by one huge page so that the buffer can start on a 2 MiB boundary:
        # a huge page can only back an aligned 2 MiB of addresses.
        mapping = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            mapping.madvise(mmap.MADV_HUGEPAGE)
        whole = memoryview(mapping)
        start = -int(ffi.cast("uintptr_t", ffi.from_buffer(whole))) % HUGE_PAGE
        self.array = ffi.from_buffer("uint8_t[]", whole[start : start + size])


def _allocate_kept(memory: Any, size: int) -> int:
    """argon2's allocate_cbk: this thread's buffer, made (or remade, for another size) here."""
    kept = getattr(_kept, "memory", None)
    if kept is None or len(kept.array) != size:
        _kept.memory = None  # let the old one go before the new one is made
        kept = _kept.memory = _KeptMemory(size)
    memory[0] = kept.array
    return 0


def _keep(memory: Any, size: int) -> None:
    """argon2's free_cbk: argon2 has wiped the memory; the thread keeps it for next time."""


try:
    _ALLOCATE = ffi.callback("int(uint8_t **, size_t)", _allocate_kept, error=_ALLOCATION_FAILED)
    _FREE = ffi.callback("void(uint8_t *, size_t)", _keep)
except (MemoryError, OSError, RuntimeError):  # a system that refuses libffi's closures
    _ALLOCATE = _FREE = None

#: For what this module does not verify itself.
_argon2_cffi = argon2.PasswordHasher()


def kept_buffer() -> Any:
    """This thread's kept memory (a cffi ``uint8_t[]``), or None before its first verification."""
    kept = getattr(_kept, "memory", None)
    return None if kept is None else kept.array


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@sensitive_variables()
def verify(encoded: str, password: str | bytes) -> bool:
    """As ``argon2.PasswordHasher().verify``: True, or VerifyMismatchError / VerificationError."""
    secret = password.encode() if isinstance(password, str) else password
    match = _PHC_RE.fullmatch(encoded)
    if match is None or _ALLOCATE is None:
        return _argon2_cffi.verify(encoded, secret)
    name, version, memory_cost, time_cost, parallelism, salt_text, hash_text = match.groups()
    try:
        salt, expected = _b64decode(salt_text), _b64decode(hash_text)
    except (binascii.Error, ValueError):
        raise VerificationError("Decoding failed") from None  # as argon2-cffi says it
    out = ffi.new("uint8_t[]", len(expected))
    pwd = ffi.new("uint8_t[]", secret)  # argon2 wipes this copy (ARGON2_FLAG_CLEAR_PASSWORD)
    c_salt = ffi.new("uint8_t[]", salt)
    context = ffi.new(
        "argon2_context *",
        {
            "out": out,
            "outlen": len(expected),
            "pwd": pwd,
            "pwdlen": len(secret),
            "salt": c_salt,
            "saltlen": len(salt),
            "secret": ffi.NULL,
            "secretlen": 0,
            "ad": ffi.NULL,
            "adlen": 0,
            "t_cost": int(time_cost),
            "m_cost": int(memory_cost),
            "lanes": int(parallelism),
            "threads": int(parallelism),
            "version": int(version),
            "allocate_cbk": _ALLOCATE,
            "free_cbk": _FREE,
            "flags": lib.ARGON2_FLAG_CLEAR_PASSWORD,
        },
    )
    result = core(context, _TYPES[name].value)
    if result != lib.ARGON2_OK:
        raise VerificationError(argon2.low_level.error_to_str(result))
    if not hmac.compare_digest(bytes(ffi.buffer(out, len(expected))), expected):
        raise VerifyMismatchError
    return True
