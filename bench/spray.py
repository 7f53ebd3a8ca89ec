"""Password spray (issue 19): the legitimate user's AUTH while a botnet sprays, beside Postfix.

Run from the repository root (as root, for Postfix):

    .venv/bin/python bench/spray.py [--duration 60] [--before 20] [--attackers 48]
                                    [--addresses 250] [--database-url URL] [--no-postfix]
                                    [--quick] [--json PATH]

For each server in turn, in one run: kumosubmit (``runsmtpd --workers 2``, bench/settings.py:
the production argon2 parameters, the brute-force penalties and AUTH lanes at their
defaults) and Postfix with Dovecot SASL on an ARGON2ID passwd-file
(/work/shared/anchors/postfix-submission.sh; used as it is when already running):

1. the legitimate client (login ``load1``, password ``pw``) signs in from its usual
   address, 127.0.0.2, three times: it "had signed in fine before";
2. it signs in once a second for ``--before`` seconds, alone: its AUTH times before;
3. ``--attackers`` tasks (in two processes) spray for ``--duration`` seconds: each
   connection comes from one of ``--addresses`` loopback addresses 127.0.x.y (x from 1,
   so none in the client's /24), and makes up to three AUTH PLAIN attempts with wrong
   passwords, for six real logins (load1, the victim, to load6) and for made-up names;
   meanwhile the legitimate client keeps signing in once a second.

The time measured is the AUTH command's (sent to 235), as loadgen.py's ``auth``. It
prints the table of the issue: server, spray rate (attack replies per second; the mix
of codes beside it), legitimate AUTHs that succeeded, their p50 and p99 during the
spray, and that p99 against the p99 before it. For kumosubmit it adds the argon2 work
each lane got (its /metrics) beside the machine's limit (verifications per second with
every core busy, measured first), so that "the attackers get no more argon2 work than
the cores can spare after the legitimate work" can be read off.

The attackers' load generator runs on the same cores as the servers; it runs at nice 19
so that it stands for a botnet's machines, not for the server's (the legitimate client
runs at the normal priority). Both servers get the same attackers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # bench/ is not a package
import submission

LEGIT_SOURCE = "127.0.0.2"
LEGIT_USER = "load1"
REAL_LOGINS = [f"load{n}" for n in range(1, 7)]  # the victim, load1, among them
UNKNOWN_LOGINS = ["admin", "info", "sales", "test", "office", "support", "user", "mail"]
#: Nice value of the attackers' processes (see the module's docstring).
ATTACKER_NICENESS = 19


def attacker_addresses(count: int) -> list[str]:
    """``count`` loopback addresses 127.0.x.y, each in a /24 of its own (x from 1)."""
    rng = random.Random(19)  # noqa: S311 - addresses, not secrets
    return [f"127.{n // 250}.{1 + n % 250}.{rng.randrange(2, 255)}" for n in range(count)]


# -- the legitimate client ----------------------------------------------------------------


class Legit:
    """Signs in from its usual address once a second; the AUTH command's times."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.context = loadgen.tls_context()
        blob = base64.b64encode(f"\0{LEGIT_USER}\0{submission.PASSWORD}".encode())
        self.auth = b"AUTH PLAIN " + blob + b"\r\n"
        self.times: list[float] = []
        self.failures: collections.Counter[str] = collections.Counter()

    async def sign_in(self) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(LEGIT_SOURCE, 0)
        )
        client = loadgen.Client(reader, writer)
        try:
            if (code := await client.reply()) != 220:
                raise loadgen.ReplyError(code)
            await client.expect(b"EHLO legit.bench\r\n", 250)
            await client.expect(b"STARTTLS\r\n", 220)
            await writer.start_tls(self.context)
            await client.expect(b"EHLO legit.bench\r\n", 250)
            started = time.monotonic()
            writer.write(self.auth)
            code = await client.reply()
            elapsed = time.monotonic() - started
            if code != 235:
                raise loadgen.ReplyError(code)
            self.times.append(elapsed)
            await client.expect(b"QUIT\r\n", 221)
        finally:
            client.abort()

    async def run(self, seconds: float, interval: float = 1.0) -> None:
        """Sign in every ``interval`` seconds (a late one is followed at once by the next)."""
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            try:
                await asyncio.wait_for(self.sign_in(), 60)
            except Exception as error:
                code = error.code if isinstance(error, loadgen.ReplyError) else None
                self.failures[str(code) if code is not None else type(error).__name__] += 1
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))

    @property
    def attempts(self) -> int:
        return len(self.times) + sum(self.failures.values())


# -- the attackers ----------------------------------------------------------------------------


async def _attacker(
    port: int, addresses: list[str], deadline: float, seed: int, codes: collections.Counter[str]
) -> None:
    rng = random.Random(seed)  # noqa: S311 - guesses, not secrets
    context = loadgen.tls_context()
    while time.monotonic() < deadline:
        source = rng.choice(addresses)
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 30
            )
            client = loadgen.Client(reader, writer)
            if (code := await asyncio.wait_for(client.reply(), 30)) != 220:
                raise loadgen.ReplyError(code)
            await client.expect(b"EHLO bot.example\r\n", 250)
            await client.expect(b"STARTTLS\r\n", 220)
            await asyncio.wait_for(writer.start_tls(context), 30)
            await client.expect(b"EHLO bot.example\r\n", 250)
            for _ in range(3):
                if time.monotonic() >= deadline:
                    break
                if rng.random() < 0.75:
                    login = rng.choice(REAL_LOGINS)
                else:
                    login = f"{rng.choice(UNKNOWN_LOGINS)}{rng.randrange(100)}"
                password = f"Summer{rng.randrange(10_000)}!"
                blob = base64.b64encode(f"\0{login}\0{password}".encode())
                writer.write(b"AUTH PLAIN " + blob + b"\r\n")
                code = await asyncio.wait_for(client.reply(), 60)
                codes[str(code) if code else "closed"] += 1
                if code in (0, 421, 235):
                    break
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.expect(b"QUIT\r\n", 221), 5)
        except (OSError, TimeoutError, loadgen.ReplyError, ConnectionError):
            codes["error"] += 1
            await asyncio.sleep(0.05)
        finally:
            if writer is not None:
                writer.transport.abort()


def _attackers_process(
    port: int, addresses: list[str], tasks: int, seconds: float, index: int, results: Any
) -> None:
    with contextlib.suppress(OSError):
        os.nice(ATTACKER_NICENESS)
    codes: collections.Counter[str] = collections.Counter()

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(_attacker(port, addresses, deadline, index * 1000 + n, codes) for n in range(tasks))
        )

    asyncio.run(main())
    results.put(dict(codes))


def start_attackers(
    port: int, addresses: list[str], tasks: int, seconds: float, processes: int = 2
) -> tuple[list[Any], Any]:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [
        context.Process(
            target=_attackers_process,
            args=(port, addresses, loadgen._share(tasks, processes, i), seconds, i, results),
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    return workers, results


# -- kumosubmit's own figures ------------------------------------------------------------------


def lane_figures(metrics_url: str) -> dict[str, float]:
    """Jobs started per lane and full-lane refusals, summed over the workers."""
    from prometheus_client.parser import text_string_to_metric_families

    figures: dict[str, float] = collections.defaultdict(float)
    with urllib.request.urlopen(metrics_url, timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            lane = sample.labels.get("lane")
            if sample.name == "kumosubmit_auth_lane_wait_seconds_count":
                figures[f"{lane}_jobs"] += sample.value
            elif sample.name == "kumosubmit_auth_lane_wait_seconds_sum":
                figures[f"{lane}_wait_seconds"] += sample.value
            elif sample.name == "kumosubmit_auth_lane_refusals_total":
                figures[f"{lane}_refused"] += sample.value
            elif sample.name == "kumosubmit_argon2_seconds_sum":
                figures["argon2_seconds"] += sample.value
    return dict(figures)


# -- one server ---------------------------------------------------------------------------------


def greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return sock.recv(512).startswith(b"220")
    except OSError:
        return False


def scenario(
    name: str, port: int, options: argparse.Namespace, metrics_url: str = ""
) -> dict[str, Any]:
    print(f"{name}: warming up, then {options.before:.0f} s alone ...", flush=True)
    legit = Legit(port)
    warm = Legit(port)
    asyncio.run(warm.run(3))
    if warm.failures:
        raise RuntimeError(f"{name}: the legitimate client cannot sign in: {dict(warm.failures)}")
    asyncio.run(legit.run(options.before))
    before = loadgen.percentiles(legit.times)
    before_failures = dict(legit.failures)
    print(f"    before: {json.dumps(before)} failures {before_failures}", flush=True)
    lanes_before = lane_figures(metrics_url) if metrics_url else {}
    print(f"{name}: {options.attackers} attackers for {options.duration:.0f} s ...", flush=True)
    addresses = attacker_addresses(options.addresses)
    workers, results = start_attackers(port, addresses, options.attackers, options.duration)
    during = Legit(port)
    started = time.monotonic()
    asyncio.run(during.run(options.duration))
    codes: collections.Counter[str] = collections.Counter()
    for _ in workers:
        codes.update(results.get(timeout=options.duration + 180))
    for worker in workers:
        worker.join(30)
    elapsed = max(options.duration, time.monotonic() - started)
    lanes_after = lane_figures(metrics_url) if metrics_url else {}
    if metrics_url and os.environ.get("SPRAY_METRICS_DUMP"):
        with urllib.request.urlopen(metrics_url, timeout=10) as response:  # noqa: S310
            Path(os.environ["SPRAY_METRICS_DUMP"]).write_bytes(response.read())
    replies = sum(count for code, count in codes.items() if code != "error")
    result: dict[str, Any] = {
        "server": name,
        "before": before,
        "before_failures": before_failures,
        "during": loadgen.percentiles(during.times),
        "samples_ms": {
            "before": [round(t * 1000, 1) for t in legit.times],
            "during": [round(t * 1000, 1) for t in during.times],
        },
        "legit_ok": len(during.times),
        "legit_attempts": during.attempts,
        "legit_failures": dict(during.failures),
        "spray_rate": round(replies / elapsed, 1),
        "attack_replies": dict(codes),
        "seconds": round(elapsed, 1),
    }
    if metrics_url:
        moved = {
            key: lanes_after.get(key, 0) - lanes_before.get(key, 0)
            for key in sorted(set(lanes_after) | set(lanes_before))
        }
        result["lanes"] = {
            key: round(value / elapsed, 2)
            for key, value in moved.items()
            if not key.endswith("_wait_seconds")
        }
        for lane in ("priority", "bounded"):
            jobs = moved.get(f"{lane}_jobs", 0)
            if jobs:
                wait = moved.get(f"{lane}_wait_seconds", 0) / jobs
                result["lanes"][f"{lane}_mean_wait_ms"] = round(wait * 1000, 1)
    print("   ", json.dumps(result), flush=True)
    return result


@contextlib.contextmanager
def postfix_running(options: argparse.Namespace) -> Iterator[tuple[int | None, str]]:
    """The anchor's port (None if it could not be had), and a note; stopped only if started."""
    if options.no_postfix:
        yield None, "Postfix left out (--no-postfix)"
        return
    if greets(submission.POSTFIX_PORT):
        yield submission.POSTFIX_PORT, "Postfix was already running: used as it was"
        return
    postfix = submission.Postfix()
    target = postfix.start()
    try:
        yield (target.port if target else None), ("" if target else f"Postfix: {postfix.note}")
    finally:
        postfix.stop()


def _cell(value: float | None, unit: str = " ms") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(
        "| server | spray rate | legitimate AUTH ok | p50 | p99 "
        "| p99 vs. its p99 before the spray |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        before, during = r["before"]["p99_ms"], r["during"]["p99_ms"]
        ratio = f"\u00d7 {during / before:.1f}" if before and during else "-"
        print(
            f"| {r['server']} | {r['spray_rate']:.1f}/s | {r['legit_ok']}/{r['legit_attempts']} "
            f"| {_cell(r['during']['p50_ms'])} | {_cell(during)} "
            f"| {ratio} (before: p50 {_cell(r['before']['p50_ms'])}, p99 {_cell(before)}) |"
        )
    print()
    for r in results:
        print(f"{r['server']}: attack replies {r['attack_replies']}", end="")
        if "lanes" in r:
            print(f"; per second: {r['lanes']}", end="")
        print()


def verdicts(results: list[dict[str, Any]], limit: float | None) -> list[str]:
    by_name = {r["server"]: r for r in results}
    kumo = by_name.get("kumosubmit")
    if kumo is None:
        return []
    lines = []
    ok = kumo["legit_ok"] == kumo["legit_attempts"] and not kumo["legit_failures"]
    lines.append(f"{'PASS' if ok else 'MISS'} every legitimate AUTH succeeds")
    before, during = kumo["before"]["p99_ms"], kumo["during"]["p99_ms"]
    if before and during:
        ok = during <= 3 * before
        lines.append(f"{'PASS' if ok else 'MISS'} p99 {during:.0f} ms <= 3 x {before:.0f} ms")
    postfix = by_name.get("Postfix + Dovecot")
    if postfix and postfix["during"]["p99_ms"] and during:
        ok = during < postfix["during"]["p99_ms"]
        lines.append(
            f"{'PASS' if ok else 'MISS'} p99 {during:.0f} ms < Postfix + Dovecot's "
            f"{postfix['during']['p99_ms']:.0f} ms"
        )
    lanes = kumo.get("lanes") or {}
    if limit and "bounded_jobs" in lanes:
        spare = limit - lanes.get("priority_jobs", 0)
        ok = lanes["bounded_jobs"] <= spare
        lines.append(
            f"{'PASS' if ok else 'MISS'} attackers' argon2 work {lanes['bounded_jobs']:.1f}/s "
            f"<= what the cores spare after the legitimate work ({limit:.1f} - "
            f"{lanes.get('priority_jobs', 0):.1f} = {spare:.1f}/s)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of spray (60)")
    parser.add_argument("--before", type=float, default=20, help="seconds alone before it (20)")
    parser.add_argument("--attackers", type=int, default=48, help="attacker tasks (48)")
    parser.add_argument("--addresses", type=int, default=250, help="attacking addresses (250)")
    parser.add_argument("--limit-seconds", type=float, default=5, help="argon2 limit run (5)")
    parser.add_argument("--database-url", metavar="URL", help="PostgreSQL server to use")
    parser.add_argument("--no-postfix", action="store_true", help="leave Postfix out")
    parser.add_argument("--quick", action="store_true", help="10 s of spray, 5 s before")
    parser.add_argument("--json", metavar="PATH", type=Path, help="write every figure here")
    options = parser.parse_args(argv)
    if options.quick:
        options.duration, options.before, options.limit_seconds = 10, 5, 2
    loadgen.raise_fd_limit()
    info = submission.machine()
    print(f"machine: {info}", flush=True)
    started = time.monotonic()
    limit = submission.physical_limit(options.limit_seconds)
    print(f"argon2 limit: {json.dumps(limit)}", flush=True)
    results = []
    notes = []
    directory = Path(tempfile.mkdtemp(prefix="kumosubmit-spray-"))
    drop = None
    try:
        url = None
        if options.database_url:
            url, drop = submission.temporary_postgres(options.database_url, "spray")
        kumo = submission.Kumosubmit(directory / "kumosubmit", url, 2, metrics=True)
        target = kumo.start()
        try:
            results.append(scenario("kumosubmit", target.port, options, kumo.metrics_url))
        finally:
            stopped = kumo.stop()
            print("kumosubmit at shutdown:", json.dumps(stopped), flush=True)
            text = kumo.log_text()
            if os.environ.get("SPRAY_KEEP_LOG"):
                Path(os.environ["SPRAY_KEEP_LOG"]).write_text(text)
            if "Traceback" in text:
                at = text.index("Traceback")
                print("first traceback in runsmtpd's log:\n" + text[max(0, at - 300) : at + 2500])
        with postfix_running(options) as (port, note):
            if note:
                notes.append(note)
                print(note, flush=True)
            if port is not None:
                results.append(scenario("Postfix + Dovecot", port, options))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if drop is not None:
            drop()
    print_table(results)
    lines = verdicts(results, limit["verifications_per_s"])
    print("\n".join(lines))
    elapsed = time.monotonic() - started
    print(f"\n{info}\nrun took {elapsed:.0f} s. {' '.join(notes)}")
    if options.json:
        options.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "options": vars(options),
                    "limit": limit,
                    "results": results,
                    "verdicts": lines,
                    "notes": notes,
                    "elapsed_s": round(elapsed),
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
