"""Settings for ``runsmtpd`` processes a test starts: the project's, plus what the test says.

``KUMOSUBMIT_TEST_SETTINGS`` (a JSON object) is merged into ``KUMOSUBMIT``;
``KUMOSUBMIT_TEST_REDIS`` (a redis:// URL) adds the cache ``sendlimits`` on it.
"""

import json
import os

from project.settings import *  # noqa: F403
from project.settings import KUMOSUBMIT

KUMOSUBMIT = {**KUMOSUBMIT, **json.loads(os.environ.get("KUMOSUBMIT_TEST_SETTINGS") or "{}")}
if os.environ.get("KUMOSUBMIT_TEST_REDIS"):
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "sendlimits": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["KUMOSUBMIT_TEST_REDIS"],
        },
    }
