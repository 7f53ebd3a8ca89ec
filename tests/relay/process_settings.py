"""Settings for the runrelay processes the tests start: the project's, plus RELAY from the test.

The test passes ``KUMOSUBMIT["RELAY"]`` as JSON in ``KUMOSUBMIT_TEST_RELAY``
(short leases and retry delays, so a kill -9 is recovered from in seconds).
"""

import json
import os

from project.settings import *  # noqa: F403
from project.settings import KUMOSUBMIT

KUMOSUBMIT = {
    **KUMOSUBMIT,
    "HOSTNAME": "mx.test.invalid",
    "RELAY": json.loads(os.environ.get("KUMOSUBMIT_TEST_RELAY", "{}")),
}
