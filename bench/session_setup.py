"""What a new connection costs the event loop before its first byte: the session object.

Every accepted connection makes a ``SubmissionSMTP`` (aiosmtpd's ``SMTP`` and
asyncio's ``StreamReaderProtocol`` underneath) in the worker's event loop. This
times ``SubmissionServer._protocol``, what ``create_server`` calls per connection,
beside a plain ``aiosmtpd.smtp.SMTP`` with a handler that has no hooks (the
baseline: what aiosmtpd itself costs). Run it at two commits to compare them.

    .venv/bin/python bench/session_setup.py            # --sessions N, --rounds N
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
os.environ.setdefault("KUMOSUBMIT_DATA_DIR", str(ROOT / "var" / "bench-session-setup"))


def per_session_us(make: Callable[[], object], sessions: int, rounds: int) -> float:
    """The median over ``rounds`` of the mean µs per ``make()`` (after a warm-up)."""
    for _ in range(200):
        make()
    figures = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(sessions):
            make()
        figures.append((time.perf_counter() - start) / sessions * 1e6)
    return statistics.median(figures)


async def measure(sessions: int, rounds: int) -> dict[str, float]:
    from aiosmtpd.smtp import SMTP

    from kumosubmit.protocol.listener import Listener, SubmissionServer

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server = SubmissionServer([Listener("127.0.0.1", 0, False)], context, hostname="bench")
    listener = server.listeners[0]
    loop = asyncio.get_running_loop()

    return {
        "aiosmtpd SMTP, no hooks (baseline)": per_session_us(
            lambda: SMTP(object(), hostname="bench", tls_context=context), sessions, rounds
        ),
        "SubmissionServer._protocol": per_session_us(
            lambda: server._protocol(loop, listener), sessions, rounds
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (the median is shown)")
    options = parser.parse_args(argv)

    import django

    django.setup()
    figures = asyncio.run(measure(options.sessions, options.rounds))
    baseline = figures["aiosmtpd SMTP, no hooks (baseline)"]
    print(f"new session objects, median of {options.rounds} rounds of {options.sessions}:")
    for name, value in figures.items():
        print(f"  {name:<40} {value:7.1f} µs  ({value / baseline:.2f} x baseline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
