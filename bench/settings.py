"""Settings for benchmarking ``runsmtpd``: the project's own, with the abuse limits opened up.

Used by ``bench/submission.py`` (``DJANGO_SETTINGS_MODULE=bench.settings``). Every
load-generator client connects from one address, so the per-address and total
connection caps would turn the benchmark into a test of the caps; each session
may send the 500 messages the benchmark asks of it, and the sending limits cost what the
defaults' rules cost, with counts the load never reaches. The brute-force counters stay
on: their bookkeeping is part of what every AUTH costs. Argon2 keeps the
production parameters (kumosubmit.conf DEFAULTS["ARGON2"]) unless
``BENCH_ARGON2=cheap``, which the idle-sessions section uses so that 10,000 AUTHs
take seconds, not the 12 minutes the real parameters would (the memory an idle
session holds does not depend on the hash it was checked with). ``BENCH_KUMOSUBMIT``
(a JSON object) overrides settings, to measure one against another:
``BENCH_KUMOSUBMIT='{"ARGON2_NICENESS": 0}' bench/submission.py --only mixed``.
``BENCH_REDIS_URL`` adds the cache ``sendlimits`` on that Redis, for the sending limits'
Redis backend (docs/benchmarks.md).
"""

import json
import os

from kumosubmit.conf import DEFAULTS
from project.settings import *  # noqa: F403
from project.settings import KUMOSUBMIT

KUMOSUBMIT = {
    **KUMOSUBMIT,
    "HOSTNAME": "kumosubmit.bench",
    "MAX_CONNECTIONS": 30_000,
    "MAX_CONNECTIONS_PER_IP": 30_000,
    "MAX_MESSAGES_PER_CONNECTION": 1000,
    # The sending limits' default rules (500/hour and 2000/day messages, 5000/day
    # recipients) with 1000 times the counts, which no load here meets, and a thousandth
    # of the lease: each connection reserves ahead 25, 100 and 250 units, as on the real
    # defaults, so every message pays what it pays there, and none is refused.
    "SEND_LIMITS": {
        "MESSAGES": ["500000/hour", "2000000/day"],
        "RECIPIENTS": ["5000000/day"],
    },
    "SEND_LIMITS_LEASE": DEFAULTS["SEND_LIMITS_LEASE"] / 1000,
}
if os.environ.get("BENCH_ARGON2") == "cheap":
    # OWASP's floor for argon2id (19 MiB, t=2) would still cost 10,000 x ~25 ms.
    KUMOSUBMIT["ARGON2"] = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}
KUMOSUBMIT.update(json.loads(os.environ.get("BENCH_KUMOSUBMIT") or "{}"))
if os.environ.get("BENCH_REDIS_URL"):
    # For the sending limits' Redis backend: "SEND_LIMITS_CACHE": "sendlimits".
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "sendlimits": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["BENCH_REDIS_URL"],
        },
    }
