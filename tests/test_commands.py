"""createsmtpuser and changesmtppassword: in process, piped into a real process, and on a pty."""

from __future__ import annotations

import io
import os
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from kumosubmit.credentials import hashing
from kumosubmit.credentials.models import SmtpLogin

ROOT = Path(__file__).resolve().parent.parent
ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
NEW_PASSWORD = "tr0ub4dor & 3 staple"


def run(command: str, *args: str, stdin: str, **options: object) -> tuple[str, str]:
    """call_command with ``stdin`` as standard input; returns (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command(command, *args, stdin=io.StringIO(stdin), stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def assert_verifies(login: SmtpLogin, password: str) -> None:
    assert hashing.verify(login.password_hash, password)[0]
    assert login.has_usable_password()
    assert password not in login.password_hash


# --- createsmtpuser, in process -------------------------------------------------------


def test_create_with_password_stdin(secret_watch):
    secret_watch.add(PASSWORD)
    out, err = run("createsmtpuser", ALICE, "--password-stdin", stdin=PASSWORD + "\n")

    assert out == f"Created SMTP login {ALICE}.\n"
    assert err == ""
    login = SmtpLogin.objects.get(username=ALICE)
    assert_verifies(login, PASSWORD)
    assert not hashing.verify(login.password_hash, PASSWORD + "\n")[0]
    assert login.is_active
    assert login.owner is None
    assert login.password_changed_at is not None
    assert not login.identities.exists()


def test_create_normalizes_the_name_to_lowercase(secret_watch):
    secret_watch.add(PASSWORD)
    out, _ = run("createsmtpuser", "  Alice@Example.COM ", password_stdin=True, stdin=PASSWORD)

    assert out == f"Created SMTP login {ALICE}.\n"
    assert list(SmtpLogin.objects.values_list("username", flat=True)) == [ALICE]


@pytest.mark.parametrize("existing", [ALICE, "ALICE@example.com"])
@pytest.mark.parametrize("new", [ALICE, "Alice@Example.com"])
def test_create_refuses_an_existing_login(secret_watch, existing, new):
    secret_watch.add(PASSWORD, NEW_PASSWORD)
    run("createsmtpuser", existing, "--password-stdin", stdin=PASSWORD)
    before = SmtpLogin.objects.get()

    with pytest.raises(CommandError, match=rf"^SMTP login {ALICE} already exists\.$"):
        run("createsmtpuser", new, "--password-stdin", stdin=NEW_PASSWORD)

    after = SmtpLogin.objects.get()
    assert after.password_hash == before.password_hash
    assert_verifies(after, PASSWORD)


@pytest.mark.parametrize(
    ("piped", "password"),
    [
        ("s3cret pass\n", "s3cret pass"),
        ("s3cret pass\r\n", "s3cret pass"),
        ("s3cret pass", "s3cret pass"),
        ("  spaced out  \n", "  spaced out  "),
        ("first line\nsecond line\n", "first line"),
        ("ends in cr\r", "ends in cr\r"),
    ],
)
def test_password_stdin_strips_only_the_line_break(secret_watch, piped, password):
    secret_watch.add(password)
    run("createsmtpuser", ALICE, "--password-stdin", stdin=piped)

    assert_verifies(SmtpLogin.objects.get(), password)


@pytest.mark.parametrize("piped", ["", "\n", "\r\n"])
def test_create_refuses_an_empty_password(secret_watch, piped):
    with pytest.raises(CommandError, match="empty"):
        run("createsmtpuser", ALICE, "--password-stdin", stdin=piped)
    assert not SmtpLogin.objects.exists()


def test_create_without_a_terminal_or_password_stdin_says_what_to_do(secret_watch):
    secret_watch.add(PASSWORD)
    with pytest.raises(CommandError, match="--password-stdin"):
        run("createsmtpuser", ALICE, stdin=PASSWORD + "\n")
    assert not SmtpLogin.objects.exists()


@pytest.mark.parametrize("name", ["", "   "])
def test_create_refuses_a_blank_name(secret_watch, name):
    with pytest.raises(CommandError, match="blank"):
        run("createsmtpuser", name, "--password-stdin", stdin=PASSWORD)
    assert not SmtpLogin.objects.exists()


def test_create_inactive(secret_watch):
    secret_watch.add(PASSWORD)
    run("createsmtpuser", ALICE, "--inactive", "--password-stdin", stdin=PASSWORD)

    login = SmtpLogin.objects.get()
    assert not login.is_active
    assert_verifies(login, PASSWORD)


def test_create_with_identities_to_act_as(secret_watch):
    secret_watch.add(PASSWORD)
    run(
        "createsmtpuser",
        ALICE,
        "--act-as",
        "Sales@Example.com",
        "--act-as",
        "support@example.com",
        "--act-as",
        "sales@example.com",  # the same as the first, once normalized
        "--password-stdin",
        stdin=PASSWORD,
    )

    login = SmtpLogin.objects.get()
    assert sorted(login.identities.values_list("identity", flat=True)) == [
        "sales@example.com",
        "support@example.com",
    ]
    assert login.may_act_as("SALES@example.com")
    assert login.may_act_as("support@example.com")
    assert not login.may_act_as("ceo@example.com")


def test_create_with_an_owner(secret_watch):
    secret_watch.add(PASSWORD)
    ops = get_user_model().objects.create_user("ops")
    run("createsmtpuser", ALICE, "--owner", "ops", "--password-stdin", stdin=PASSWORD)

    login = SmtpLogin.objects.get()
    assert login.owner == ops
    assert list(ops.smtp_logins.all()) == [login]


def test_create_with_an_unknown_owner_fails_and_creates_nothing(secret_watch):
    secret_watch.add(PASSWORD)
    get_user_model().objects.create_user("ops")
    with pytest.raises(CommandError, match="no Django user 'nobody'"):
        run("createsmtpuser", ALICE, "--owner", "nobody", "--password-stdin", stdin=PASSWORD)
    assert not SmtpLogin.objects.exists()


# --- changesmtppassword, in process ---------------------------------------------------


def test_change_password(secret_watch, make_login):
    secret_watch.add(NEW_PASSWORD)
    old = make_login(ALICE, PASSWORD)

    out, err = run(
        "changesmtppassword", "Alice@Example.com", "--password-stdin", stdin=NEW_PASSWORD
    )

    assert out == f"Password changed for SMTP login {ALICE}.\n"
    assert err == ""
    login = SmtpLogin.objects.get()
    assert login.password_hash != old.password_hash
    assert not hashing.verify(login.password_hash, PASSWORD)[0]
    assert_verifies(login, NEW_PASSWORD)
    assert login.password_changed_at > old.password_changed_at


def test_change_password_keeps_everything_else(secret_watch, make_login):
    secret_watch.add(NEW_PASSWORD)
    make_login(ALICE, PASSWORD, is_active=False, may_act_as=("sales@example.com",))

    run("changesmtppassword", ALICE, "--password-stdin", stdin=NEW_PASSWORD + "\r\n")

    login = SmtpLogin.objects.get()
    assert not login.is_active
    assert login.may_act_as("sales@example.com")
    assert_verifies(login, NEW_PASSWORD)


def test_change_password_of_an_unknown_login(secret_watch, make_login):
    secret_watch.add(NEW_PASSWORD)
    make_login(ALICE, PASSWORD)
    with pytest.raises(CommandError, match=r"^SMTP login bob@example\.com does not exist\.$"):
        run("changesmtppassword", "bob@example.com", "--password-stdin", stdin=NEW_PASSWORD)
    assert_verifies(SmtpLogin.objects.get(), PASSWORD)


@pytest.mark.parametrize("piped", ["", "\n"])
def test_change_password_refuses_an_empty_one(secret_watch, make_login, piped):
    before = make_login(ALICE, PASSWORD)
    with pytest.raises(CommandError, match="empty"):
        run("changesmtppassword", ALICE, "--password-stdin", stdin=piped)
    after = SmtpLogin.objects.get()
    assert after.password_hash == before.password_hash
    assert after.password_changed_at == before.password_changed_at


def test_change_password_without_a_terminal_or_password_stdin(secret_watch, make_login):
    secret_watch.add(NEW_PASSWORD)
    before = make_login(ALICE, PASSWORD)
    with pytest.raises(CommandError, match="--password-stdin"):
        run("changesmtppassword", ALICE, stdin=NEW_PASSWORD)
    assert SmtpLogin.objects.get().password_hash == before.password_hash


# --- real processes: manage.py with its own SQLite file --------------------------------


class Site:
    """A migrated SQLite database and the environment manage.py needs to use it."""

    def __init__(self, directory: Path) -> None:
        self.db = directory / "x.sqlite3"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": f"sqlite:///{self.db}",
            "KUMOSUBMIT_DATA_DIR": str(directory),
        }

    def manage(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def row(self, username: str) -> tuple[str, str, int] | None:
        with sqlite3.connect(self.db) as conn:
            return conn.execute(
                "SELECT username, password_hash, is_active FROM kumosubmit_smtplogin"
                " WHERE username = ?",
                (username,),
            ).fetchone()

    def raw_bytes(self) -> bytes:
        """The database file and its WAL, as stored on disk."""
        return b"".join(p.read_bytes() for p in sorted(self.db.parent.glob(self.db.name + "*")))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    site = Site(tmp_path_factory.mktemp("site"))
    done = site.manage("migrate", "--no-input")
    assert done.returncode == 0, done.stderr
    return site


def assert_not_shown(password: str, *outputs: str | bytes) -> None:
    for output in outputs:
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        assert password not in text


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_subprocess_create_with_the_password_piped_in(site, newline):
    password = f"piped in from a script {len(newline)}"
    name = f"Piped{len(newline)}@Example.com"
    done = site.manage("createsmtpuser", name, "--password-stdin", stdin=password + newline)

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Created SMTP login {name.lower()}.\n"
    assert_not_shown(password, done.stdout, done.stderr)
    _, password_hash, is_active = site.row(name.lower())
    assert is_active
    assert hashing.verify(password_hash, password)[0]
    assert not hashing.verify(password_hash, password + newline)[0]
    assert password.encode() not in site.raw_bytes()


def test_subprocess_errors_exit_1_with_one_line(site):
    password = "the first one wins"
    first = site.manage("createsmtpuser", "dup@example.com", "--password-stdin", stdin=password)
    assert first.returncode == 0, first.stderr
    hash_before = site.row("dup@example.com")[1]

    done = site.manage("createsmtpuser", "DUP@example.com", "--password-stdin", stdin="second try")

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == "CommandError: SMTP login dup@example.com already exists.\n"
    assert site.row("dup@example.com")[1] == hash_before


def test_subprocess_without_a_terminal_or_password_stdin(site):
    done = site.manage("createsmtpuser", "noinput@example.com")  # stdin is /dev/null

    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "--password-stdin" in done.stderr
    assert site.row("noinput@example.com") is None


def test_subprocess_change_password(site):
    old, new = "before the change", "after the change"
    site.manage("createsmtpuser", "change@example.com", "--password-stdin", stdin=old)

    done = site.manage("changesmtppassword", "change@example.com", "--password-stdin", stdin=new)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "Password changed for SMTP login change@example.com.\n"
    assert_not_shown(new, done.stdout, done.stderr)
    password_hash = site.row("change@example.com")[1]
    assert not hashing.verify(password_hash, old)[0]
    assert hashing.verify(password_hash, new)[0]


# --- the interactive prompt, on a real pseudo-terminal ---------------------------------

# Makes the pty the child's controlling terminal (getpass opens /dev/tty), then runs
# Python with the remaining arguments. start_new_session=True made it a session leader.
_ON_TTY = (
    "import fcntl, os, sys, termios;"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0);"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


class Terminal:
    """manage.py running on a pseudo-terminal, driven like a person at a keyboard."""

    def __init__(self, site: Site, *args: str) -> None:
        master, slave = os.openpty()
        self.master = master
        self.transcript = b""
        self._seen = 0
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _ON_TTY, "manage.py", *args],
                cwd=ROOT,
                env=site.env,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
            )
        finally:
            os.close(slave)

    def _read(self, deadline: float) -> bool:
        """Read what the program wrote; False once it closed the terminal."""
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 4096)
        except OSError:  # EIO: every process closed its end
            chunk = b""
        self.transcript += chunk
        return bool(chunk)

    def expect(self, text: str, timeout: float = 30) -> None:
        """Wait until ``text`` appears (after what earlier calls already matched)."""
        wanted = text.encode()
        deadline = time.monotonic() + timeout
        while (at := self.transcript.find(wanted, self._seen)) < 0:
            if time.monotonic() > deadline or not self._read(deadline):
                raise AssertionError(f"never saw {text!r}; the terminal shows {self.transcript!r}")
        self._seen = at + len(wanted)

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")  # Enter sends CR; the tty makes it NL

    def finish(self, timeout: float = 30) -> int:
        """Read to the end; the exit status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(deadline):
            pass
        return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal(site: Site) -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        started.append(Terminal(site, *args))
        return started[-1]

    yield start
    for term in started:
        term.close()


def test_interactive_create_asks_twice(site, terminal):
    password = "typed at the keyboard"
    term = terminal("createsmtpuser", "Typed@Example.com")
    term.expect("Password: ")
    term.type(password)
    term.expect("Password (again): ")
    term.type(password)

    assert term.finish() == 0, term.transcript
    assert b"Created SMTP login typed@example.com." in term.transcript
    assert_not_shown(password, term.transcript)  # getpass turned echo off
    assert hashing.verify(site.row("typed@example.com")[1], password)[0]


def test_interactive_mismatch_asks_again(site, terminal):
    password = "the one that matches"
    term = terminal("createsmtpuser", "retry@example.com")
    term.expect("Password: ")
    term.type(password)
    term.expect("Password (again): ")
    term.type("a typo in the second")
    term.expect("Passwords do not match. Please try again.")
    term.expect("Password: ")
    term.type("")
    term.expect("The password cannot be empty. Please try again.")
    term.expect("Password: ")
    term.type(password)
    term.expect("Password (again): ")
    term.type(password)

    assert term.finish() == 0, term.transcript
    assert term.transcript.count(b"Password: ") == 3
    assert_not_shown(password, term.transcript)
    assert_not_shown("a typo in the second", term.transcript)
    assert hashing.verify(site.row("retry@example.com")[1], password)[0]


def test_interactive_gives_up_after_three_mismatches(site, terminal):
    term = terminal("createsmtpuser", "giveup@example.com")
    typed = []
    for attempt in range(3):
        typed += [f"first try {attempt}", f"second try {attempt}"]
        term.expect("Password: ")
        term.type(typed[-2])
        term.expect("Password (again): ")
        term.type(typed[-1])
        term.expect("Passwords do not match.")
    term.expect("Aborting after 3 attempts")

    assert term.finish() == 1
    for password in typed:
        assert_not_shown(password, term.transcript)
    assert site.row("giveup@example.com") is None


def test_interactive_change_password(site, terminal):
    old, new = "old and forgotten", "new and memorable"
    site.manage("createsmtpuser", "interactive@example.com", "--password-stdin", stdin=old)

    term = terminal("changesmtppassword", "interactive@example.com")
    term.expect("Password: ")
    term.type(new)
    term.expect("Password (again): ")
    term.type(new)

    assert term.finish() == 0, term.transcript
    assert b"Password changed for SMTP login interactive@example.com." in term.transcript
    assert_not_shown(new, term.transcript)
    password_hash = site.row("interactive@example.com")[1]
    assert not hashing.verify(password_hash, old)[0]
    assert hashing.verify(password_hash, new)[0]


def test_password_stdin_on_a_terminal_is_refused(site, terminal):
    term = terminal("createsmtpuser", "echo@example.com", "--password-stdin")
    term.expect("standard input is a terminal")

    assert term.finish() == 1
    assert site.row("echo@example.com") is None


# --- password rules (AUTH_PASSWORD_VALIDATORS) -----------------------------------------


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short1", "too short"),
        ("password123", "too common"),
        ("83659201746", "entirely numeric"),
        ("alice@example.com", "too similar to the username"),
    ],
)
def test_create_refuses_a_password_the_validators_refuse(secret_watch, password, problem):
    secret_watch.add(password)
    with pytest.raises(CommandError, match=f"The password was refused: .*{problem}"):
        run("createsmtpuser", ALICE, "--password-stdin", stdin=password)
    assert not SmtpLogin.objects.exists()


def test_change_password_refuses_a_weak_one_and_ends_a_forced_change(secret_watch, make_login):
    secret_watch.add(NEW_PASSWORD)
    before = make_login(ALICE, PASSWORD)
    SmtpLogin.objects.filter(pk=before.pk).update(must_change_password=True)
    with pytest.raises(CommandError, match="too common"):
        run("changesmtppassword", ALICE, "--password-stdin", stdin="password123")
    login = SmtpLogin.objects.get()
    assert login.password_hash == before.password_hash and login.must_change_password

    run("changesmtppassword", ALICE, "--password-stdin", stdin=NEW_PASSWORD)
    login = SmtpLogin.objects.get()
    assert_verifies(login, NEW_PASSWORD)
    assert not login.must_change_password


def test_interactive_weak_password_is_asked_again(site, terminal):
    password = "a far better choice"
    term = terminal("createsmtpuser", "weak@example.com")
    term.expect("Password: ")
    term.type("12345678")
    term.expect("Password (again): ")
    term.type("12345678")
    term.expect("This password is too common.")
    term.expect("Please choose another password.")
    term.expect("Password: ")
    term.type(password)
    term.expect("Password (again): ")
    term.type(password)

    assert term.finish() == 0, term.transcript
    assert_not_shown(password, term.transcript)
    assert hashing.verify(site.row("weak@example.com")[1], password)[0]


# --- importsmtpusers: logins from Dovecot with their hashes ----------------------------

#: Each scheme's sample login and password (non-ASCII too: Dovecot hashes UTF-8 bytes).
SAMPLES = {
    "ARGON2ID": ("argon2id@example.com", "argon2id pässword"),
    "ARGON2I": ("argon2i@example.com", "argon2i password"),
    "BLF-CRYPT": ("bcrypt@example.com", "bcrypt password"),
    "SHA512-CRYPT": ("sha512@example.com", "sha512 crypt pässword"),
    "SHA256-CRYPT": ("sha256@example.com", "sha256 crypt password"),
}
#: bcrypt reads 72 bytes; Dovecot ignored the rest, and so must the import.
LONG_BCRYPT = ("longbcrypt@example.com", "x" * 70 + "yz and then some more")


def hash_with_a_library(scheme: str, password: str) -> str:
    """What Dovecot would write, made with the Python libraries (no doveadm here)."""
    import argon2
    import bcrypt
    from passlib.hash import sha256_crypt, sha512_crypt

    small = {"time_cost": 2, "memory_cost": 1024, "parallelism": 1}
    if scheme == "ARGON2ID":
        return argon2.PasswordHasher(type=argon2.Type.ID, **small).hash(password)
    if scheme == "ARGON2I":
        return argon2.PasswordHasher(type=argon2.Type.I, **small).hash(password)
    if scheme == "BLF-CRYPT":
        return bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(5)).decode()
    if scheme == "SHA512-CRYPT":  # with Dovecot's rounds (passlib's own default is 656000)
        return sha512_crypt.using(rounds=5000).hash(password)
    return sha256_crypt.using(rounds=5000).hash(password)


def dovecot_hash(scheme: str, password: str) -> str:
    """``{SCHEME}hash``: from Dovecot's own ``doveadm pw`` where it is installed."""
    doveadm = shutil.which("doveadm")
    if doveadm is None:
        if os.environ.get("CI"):
            pytest.fail("doveadm is missing (apt-get install dovecot-core), and CI must use it")
        return f"{{{scheme}}}{hash_with_a_library(scheme, password)}"
    done = subprocess.run(
        [doveadm, "pw", "-s", scheme, "-p", password], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("scheme", [*SAMPLES, "SHA512-CRYPT-PASSLIB-ROUNDS"])
def test_hashes_made_by_the_libraries_import_and_verify(scheme, db):
    """Also what other tools write: bcrypt's $2b$, passlib's (Ansible's) 656000 rounds."""
    from passlib.hash import sha512_crypt

    password = "made by a library ü"
    if scheme == "SHA512-CRYPT-PASSLIB-ROUNDS":
        field = "{SHA512-CRYPT}" + sha512_crypt.hash(password)
    else:
        field = f"{{{scheme}}}{hash_with_a_library(scheme, password)}"
    out, _ = run("importsmtpusers", "-", stdin=f"lib@example.com:{field}\n")
    assert out == "Imported 1 login, skipped 0, refused 0 (of 1 line).\n"
    stored = SmtpLogin.objects.get().password_hash
    assert hashing.verify(stored, password) == (True, True)
    assert hashing.verify(stored, password.upper()) == (False, False)


@pytest.fixture(scope="module")
def passwd_file(tmp_path_factory) -> Path:
    """A Dovecot passwd-file with one login per scheme, a comment and a blank line."""
    lines = ["# made by the tests", ""]
    for scheme, (user, password) in SAMPLES.items():
        lines.append(f"{user}:{dovecot_hash(scheme, password)}:1000:1000::/home/{user}::")
    user, password = LONG_BCRYPT
    lines.append(f"{user}:{dovecot_hash('BLF-CRYPT', password)}")
    path = tmp_path_factory.mktemp("import") / "passwd"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_every_scheme_verifies_at_login_and_upgrades_to_argon2id(
    passwd_file, smtp_server, secret_watch
):
    from tests.live import plain_blob, quitting

    out, err = run("importsmtpusers", str(passwd_file), "--format", "dovecot", stdin="")
    assert out == "Imported 6 logins, skipped 0, refused 0 (of 6 lines).\n"
    assert err == ""
    logins = [*SAMPLES.values(), LONG_BCRYPT]
    for scheme, (user, _) in SAMPLES.items():
        stored = SmtpLogin.objects.get(username=user).password_hash
        assert stored.startswith("$argon2" if scheme.startswith("ARGON2") else f"{{{scheme}}}$")
        assert SmtpLogin.objects.get(username=user).has_usable_password()
    for user, password in logins:
        secret_watch.add(password)
        before = SmtpLogin.objects.get(username=user).password_hash
        with quitting(smtp_server.starttls()) as client:
            wrong = plain_blob("", user, "!" + password)  # bcrypt reads the first 72 bytes
            assert client.docmd("AUTH", "PLAIN " + wrong)[0] == 535
        assert SmtpLogin.objects.get(username=user).password_hash == before
        with quitting(smtp_server.starttls()) as client:
            assert client.docmd("AUTH", "PLAIN " + plain_blob("", user, password))[0] == 235, user
        after = SmtpLogin.objects.get(username=user).password_hash
        assert after.startswith("$argon2id$v=19$m=64,t=1,p=1$"), (user, after)  # upgraded
        assert hashing.verify(after, password) == (True, False)
        with quitting(smtp_server.starttls()) as client:  # and the new hash works
            assert client.docmd("AUTH", "PLAIN " + plain_blob("", user, password))[0] == 235


def test_import_refuses_plain_unless_asked_and_then_hashes_it(tmp_path, secret_watch):
    plain = "in the clear once"
    secret_watch.add(plain)
    path = tmp_path / "passwd"
    path.write_text(f"carol@example.com:{{PLAIN}}{plain}\ndave@example.com:{{CLEARTEXT}}{plain}\n")
    with pytest.raises(CommandError, match="2 lines were refused"):
        run("importsmtpusers", str(path), stdin="")
    assert not SmtpLogin.objects.exists()

    out, err = run("importsmtpusers", str(path), "--allow-plain", stdin="")
    assert out == "Imported 2 logins, skipped 0, refused 0 (of 2 lines).\n"
    for login in SmtpLogin.objects.all():
        assert login.password_hash.startswith("$argon2id$")
        assert hashing.verify(login.password_hash, plain) == (True, False)
    assert plain not in out + err


def test_import_reports_each_bad_line_and_goes_on(tmp_path, make_login, secret_watch):
    make_login("exists@example.com", PASSWORD)
    good = dovecot_hash("SHA512-CRYPT", "good password")
    md5 = "{MD5-CRYPT}$1$abcdefgh$XxXxXxXxXxXxXxXxXxXxX."
    lines = [
        "# a comment",
        f"first@example.com:{good}",
        f"md5@example.com:{md5}",
        "",
        "nocolon",
        f"exists@example.com:{good}",
        "plain@example.com:{PLAIN}never shown",
        "malformed@example.com:{SHA512-CRYPT}$6$salt$tooshort",
        f"First@Example.com:{good}",
        f"costly@example.com:{{BLF-CRYPT}}$2y$16${'a' * 53}",
        f"bad name@example.com:{good}",
        f"bare@example.com:{good.partition('}')[2]}",
        f"crypt@example.com:{{CRYPT}}{good.partition('}')[2]}",
        f"nologin@example.com:{good}::::::nologin",
    ]
    path = tmp_path / "passwd"
    path.write_text("\n".join(lines))
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match=r"^6 lines were refused \(see above\)"):
        call_command("importsmtpusers", str(path), stdout=out, stderr=err)
    assert err.getvalue().splitlines() == [
        "line 3: refused: md5@example.com: unsupported scheme {MD5-CRYPT} (supported: "
        "{ARGON2ID}, {ARGON2I}, {BLF-CRYPT}, {SHA512-CRYPT}, {SHA256-CRYPT})",
        "line 5: refused: not user:password",
        "line 6: skipped: exists@example.com exists already",
        "line 7: refused: plain@example.com: {PLAIN} is a password in the clear; "
        "refused without --allow-plain",
        "line 8: refused: malformed@example.com: malformed {SHA512-CRYPT} hash",
        "line 9: skipped: first@example.com came earlier in the file",
        "line 10: refused: costly@example.com: {BLF-CRYPT} cost 16 is outside 4..15",
        "line 11: refused: the login name has a space, a colon or a control character",
    ]
    assert out.getvalue() == "Imported 4 logins, skipped 2, refused 6 (of 12 lines).\n"
    imported = dict(SmtpLogin.objects.values_list("username", "is_active"))
    assert imported == {
        "exists@example.com": True,
        "first@example.com": True,
        "bare@example.com": True,
        "crypt@example.com": True,
        "nologin@example.com": False,
    }
    # A bare crypt string or {CRYPT} is stored under the scheme its prefix names.
    assert SmtpLogin.objects.get(username="crypt@example.com").password_hash == good
    assert SmtpLogin.objects.get(username="bare@example.com").password_hash == good
    assert SmtpLogin.objects.get(username="exists@example.com").has_usable_password()
    assert "never shown" not in err.getvalue()


def test_import_csv_with_owners_and_states(tmp_path, secret_watch):
    ops = get_user_model().objects.create_user("ops")
    sha = dovecot_hash("SHA256-CRYPT", "csv password")
    path = tmp_path / "logins.csv"
    path.write_text(
        "Username,Hash,Active,Owner\n"
        f"one@example.com,{sha},yes,ops\n"
        f'two@example.com,"{sha}",no,\n'
        f"three@example.com,{sha},maybe,ops\n"
        f"four@example.com,{sha},,nobody\n"
        "\n"
        f"five@example.com,{sha}\n",
        encoding="utf-8-sig",  # a BOM, as spreadsheets write it
    )
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="2 lines were refused"):
        call_command("importsmtpusers", str(path), "--format", "csv", stdout=out, stderr=err)
    assert err.getvalue().splitlines() == [
        "line 4: refused: active is 'maybe', not yes or no",
        "line 5: refused: four@example.com: there is no Django user 'nobody'",
    ]
    assert out.getvalue() == "Imported 3 logins, skipped 0, refused 2 (of 5 lines).\n"
    logins = {login.username: login for login in SmtpLogin.objects.all()}
    assert set(logins) == {"one@example.com", "two@example.com", "five@example.com"}
    assert logins["one@example.com"].owner == ops and logins["one@example.com"].is_active
    assert logins["two@example.com"].owner is None and not logins["two@example.com"].is_active
    assert logins["five@example.com"].password_hash == sha


def test_import_csv_needs_its_columns(tmp_path, db):
    path = tmp_path / "logins.csv"
    path.write_text("name,secret\nx,y\n")
    with pytest.raises(CommandError, match="1 line was refused"):
        run("importsmtpusers", str(path), "--format", "csv", stdin="")


def test_import_owner_for_all_dry_run_and_stdin(secret_watch):
    ops = get_user_model().objects.create_user("ops")
    text = f"a@example.com:{dovecot_hash('SHA512-CRYPT', 'from a pipe')}\n"
    with pytest.raises(CommandError, match="no Django user 'nobody'"):
        run("importsmtpusers", "-", "--owner", "nobody", stdin=text)
    out, _ = run("importsmtpusers", "-", "--owner", "ops", "--dry-run", stdin=text)
    assert out == "Would import 1 login, skipped 0, refused 0 (of 1 line).\n"
    assert not SmtpLogin.objects.exists()
    out, _ = run("importsmtpusers", "-", "--owner", "ops", stdin=text)
    assert out == "Imported 1 login, skipped 0, refused 0 (of 1 line).\n"
    assert SmtpLogin.objects.get().owner == ops


def test_import_of_a_missing_file_is_one_error(db):
    with pytest.raises(CommandError, match=r"^/nonexistent/passwd: no such file\.$"):
        run("importsmtpusers", "/nonexistent/passwd", stdin="")


def test_import_as_a_process_shows_progress_only_on_a_terminal(site, terminal, tmp_path):
    sha = dovecot_hash("SHA512-CRYPT", "many users")
    path = tmp_path / "passwd"
    path.write_text("".join(f"user{n}@example.com:{sha}\n" for n in range(1200)) + "bad\n")

    piped = site.manage("importsmtpusers", str(path))
    assert piped.returncode == 1
    assert piped.stdout == "Imported 1200 logins, skipped 0, refused 1 (of 1201 lines).\n"
    assert piped.stderr.splitlines() == [
        "line 1201: refused: not user:password",
        "CommandError: 1 line was refused (see above); the other lines were handled.",
    ]
    assert "Importing [" not in piped.stderr

    again = terminal("importsmtpusers", str(path))
    assert again.finish() == 1
    screen = again.transcript.decode()
    assert "Importing [##############################] 1201/1201 lines 100%" in screen
    assert "line 1200: skipped: user1199@example.com exists already" in screen
    # The second run found all 1200 in the database.
    assert "Imported 0 logins, skipped 1200, refused 1 (of 1201 lines)." in screen
