"""Verification with memory kept per thread agrees with argon2-cffi and leaves nothing behind."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import argon2
import pytest
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import ffi

from kumosubmit.credentials import argon2_memory, hashing
from tests.live import plain_blob, quitting

PASSWORDS = ["correct horse", "", "naïve ünïcode ☃", "nul\0inside", "x" * 300]
PARAMETERS = [
    (argon2.Type.ID, {"time_cost": 1, "memory_cost": 64, "parallelism": 1}),
    (argon2.Type.ID, {"time_cost": 2, "memory_cost": 256, "parallelism": 4}),
    (argon2.Type.I, {"time_cost": 1, "memory_cost": 128, "parallelism": 2}),
    (argon2.Type.D, {"time_cost": 1, "memory_cost": 64, "parallelism": 1}),
]


def in_new_thread(func, *args):
    """func(*args) in a thread of its own (so it starts with no kept memory); its outcome."""
    outcome = {}

    def run():
        try:
            outcome["value"] = func(*args)
        except Exception as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.parametrize(("kind", "params"), PARAMETERS)
def test_agrees_with_argon2_cffi(kind, params):
    hasher = argon2.PasswordHasher(type=kind, **params)
    for password in PASSWORDS:
        encoded = hasher.hash(password)
        assert argon2_memory.verify(encoded, password) is True
        assert argon2_memory.verify(encoded, password.encode()) is True
        for wrong in (password + "!", password[:-1], "correct horsE"):
            if wrong == password:
                continue
            with pytest.raises(VerifyMismatchError):
                hasher.verify(encoded, wrong)
            with pytest.raises(VerifyMismatchError):
                argon2_memory.verify(encoded, wrong)


def test_the_memory_is_kept_for_the_next_verification_and_wiped():
    encoded = argon2.PasswordHasher(time_cost=1, memory_cost=256, parallelism=2).hash("pw")

    def twice():
        argon2_memory.verify(encoded, "pw")
        first = argon2_memory.kept_buffer()
        with pytest.raises(VerifyMismatchError):
            argon2_memory.verify(encoded, "wrong")
        second = argon2_memory.kept_buffer()
        return first, second, bytes(ffi.buffer(second))

    first, second, contents = in_new_thread(twice)
    assert first is second  # the same memory, not a new allocation
    assert len(contents) == 256 * 1024
    assert contents == bytes(len(contents))  # argon2 wiped it before handing it back


def test_each_thread_keeps_its_own_memory_and_another_size_replaces_it():
    small = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash("pw")
    large = argon2.PasswordHasher(time_cost=1, memory_cost=512, parallelism=1).hash("pw")

    def sizes():
        argon2_memory.verify(small, "pw")
        kept = [len(argon2_memory.kept_buffer())]
        argon2_memory.verify(large, "pw")
        kept.append(len(argon2_memory.kept_buffer()))
        return kept

    assert in_new_thread(sizes) == [64 * 1024, 512 * 1024]
    assert in_new_thread(argon2_memory.kept_buffer) is None


def _transparent_huge_pages() -> str:
    try:
        setting = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "absent"
    return re.search(r"\[(\w+)\]", setting).group(1)


def _anon_huge_kib(address: int) -> int:
    """AnonHugePages of the mapping of this process that holds ``address``."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        bounds = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if bounds:
            inside = int(bounds.group(1), 16) <= address < int(bounds.group(2), 16)
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    raise AssertionError("no mapping holds the kept memory")


@pytest.mark.skipif(
    _transparent_huge_pages() not in ("always", "madvise"),
    reason="the kernel gives no transparent huge pages here",
)
def test_the_kept_memory_is_in_huge_pages():
    encoded = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("pw")

    def where():
        argon2_memory.verify(encoded, "pw")
        kept = argon2_memory.kept_buffer()
        address = int(ffi.cast("uintptr_t", kept))
        return address, len(kept), _anon_huge_kib(address)

    address, size, huge_kib = in_new_thread(where)
    assert address % argon2_memory.HUGE_PAGE == 0
    assert size == 8 * 1024 * 1024
    assert huge_kib >= 4 * 1024  # at least half of it; normally all 8 MiB


def test_broken_and_unusual_hashes():
    encoded = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash("pw")
    head, salt, digest = encoded.rsplit("$", 2)
    for broken in (f"{head}${'A' * 13}${digest}", f"{head}$a$bcdefghijklmnop{salt}${digest}"):
        with pytest.raises(VerificationError, match="Decoding failed"):  # as argon2-cffi
            argon2.PasswordHasher().verify(broken, "pw")
        with pytest.raises(VerificationError, match="Decoding failed"):
            argon2_memory.verify(broken, "pw")
    with pytest.raises(VerificationError):  # argon2 refuses: a 2-block memory for one lane
        argon2_memory.verify(encoded.replace("m=64,", "m=2,"), "pw")
    with pytest.raises(VerifyMismatchError):
        argon2_memory.verify(f"{head}${salt}${'A' * len(digest)}", "pw")
    with pytest.raises(InvalidHashError):  # no argon2 hash at all: argon2-cffi's own answer
        argon2_memory.verify("$6$rounds=5000$salt$hash", "pw")
    # argon2 1.0 (v=16); without "v=" (the same version) argon2-cffi answers.
    old = argon2.low_level.hash_secret(
        b"pw", b"saltsaltsalt", 1, 64, 1, 32, argon2.Type.ID, version=0x10
    ).decode()
    assert "$v=16$" in old and argon2_memory.verify(old, "pw") is True
    unversioned = old.replace("v=16$", "")
    assert argon2.PasswordHasher().verify(unversioned, "pw") is True
    assert argon2_memory.verify(unversioned, "pw") is True


def test_hashing_verify_uses_it_or_argon2_cffi_as_set(settings):
    encoded = hashing.make_hash("pw")
    for keep in (True, False):
        settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "ARGON2_KEEP_MEMORY": keep}
        assert in_new_thread(hashing.verify, encoded, "pw") == (True, False)
        assert in_new_thread(hashing.verify, encoded, "nope") == (False, False)
        assert in_new_thread(hashing.verify, None, "pw") == (False, False)
        kept = in_new_thread(lambda: (hashing.verify(encoded, "pw"), argon2_memory.kept_buffer()))
        assert (kept[1] is not None) is keep


@pytest.mark.parametrize("keep", [True, False])
def test_auth_through_the_listener_either_way(settings, smtp_server, make_login, keep):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "ARGON2_KEEP_MEMORY": keep}
    make_login("alice@example.com", "s3cret pw")
    with quitting(smtp_server.starttls()) as client:
        blob = plain_blob("", "alice@example.com", "wrong")
        assert client.docmd("AUTH", "PLAIN " + blob)[0] == 535
    with quitting(smtp_server.starttls()) as client:
        blob = plain_blob("", "alice@example.com", "s3cret pw")
        assert client.docmd("AUTH", "PLAIN " + blob)[0] == 235
