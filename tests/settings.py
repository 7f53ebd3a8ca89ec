"""Test settings: the project's, with cheap argon2 and everything logged for leak checks."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("KUMOSUBMIT_DATA_DIR", tempfile.mkdtemp(prefix="kumosubmit-test-"))

from project.settings import *  # noqa: F403
from project.settings import DATA_DIR, DATABASES, KUMOSUBMIT

# Cheap argon2id for the suite; the real parameters are exercised in bench/.
TEST_ARGON2 = {"time_cost": 1, "memory_cost": 64, "parallelism": 1}
KUMOSUBMIT = {
    **KUMOSUBMIT,
    "ARGON2": TEST_ARGON2,
    "HOSTNAME": "mx.test.invalid",
    # No penalty delay unless a test asks for one (tests/security/test_bruteforce.py does).
    "BRUTE_FORCE": {"DELAY": 0},
    "WEB_BRUTE_FORCE": {"DELAY": 0},
    # The tests of other things sign staff in with force_login; tests/web/test_second_factor.py
    # sets the policy it tests.
    "SECOND_FACTOR": "none",
    # The defaults' rules (two message rules, one recipient rule), wide enough that no test
    # other than tests/test_sendlimits*.py meets them: every session runs the limits' code.
    "SEND_LIMITS": {"MESSAGES": ["100000/minute", "1000000/day"], "RECIPIENTS": ["5000000/day"]},
}

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so the listener's thread and the tests share it with
    # real locking (WAL) instead of shared-cache table locks.
    DATABASES["default"]["TEST"] = {"NAME": str(Path(DATA_DIR) / "test.sqlite3")}

# Everything reaches the root logger, where the tests look for leaked passwords.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {
        "kumosubmit": {"level": "DEBUG", "propagate": True},
        "mail.log": {"level": "DEBUG", "propagate": True},
    },
}
