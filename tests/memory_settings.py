"""Settings for the runsmtpd processes tests/test_memory.py starts.

The project's settings, with cheap argon2 (thousands of AUTHs), and the
``KUMOSUBMIT`` keys the test passes as JSON in ``KUMOSUBMIT_TEST_SETTINGS``
(connection limits for hundreds of sessions from 127.0.0.1, a small
DATA_MEMORY_BUDGET).
"""

import json
import os

from project.settings import *  # noqa: F403
from project.settings import KUMOSUBMIT

KUMOSUBMIT = {
    **KUMOSUBMIT,
    "HOSTNAME": "mx.test.invalid",
    "ARGON2": {"time_cost": 1, "memory_cost": 64, "parallelism": 1},
    **json.loads(os.environ.get("KUMOSUBMIT_TEST_SETTINGS", "{}")),
}
