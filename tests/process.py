"""Running ``manage.py`` commands as real processes against the test database."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """A DATABASE_URL for the database the tests are using (the test database)."""
    s = connection.settings_dict
    if s["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def command_env(data_dir: Path, database: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DATABASE_URL=database or database_url(),
        KUMOSUBMIT_DATA_DIR=str(data_dir),
        DJANGO_SECRET_KEY="test-secret-key-not-for-production",
        PYTHONUNBUFFERED="1",
    )
    return env


def manage(
    *args: str, env: dict[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


class ManageProcess:
    """A long-running ``manage.py`` command whose output we can wait on."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,  # unbuffered: select() must see every byte not yet read
        )
        self.output = ""

    def wait_for(self, text: str, timeout: float = 30, *, count: int = 1) -> str:
        """Read output until ``text`` appears (``count`` times); fail with the output if not."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while self.output.count(text) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError(f"{text!r} not seen in time; output:\n{self.output}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"exited before {text!r}; output:\n{self.output}")
                self.output += chunk.decode(errors="replace")
        return self.output

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 30) -> int:
        """Wait for exit and collect the rest of the output."""
        rest, _ = self.proc.communicate(timeout=timeout)
        self.output += rest.decode(errors="replace")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)
