"""A load generator for SMTP submission: asyncio, several processes, STARTTLS and AUTH PLAIN.

Run from the repository root, e.g.:

    .venv/bin/python bench/loadgen.py --port 2587 --scenario auth --concurrency 8 --duration 10
    .venv/bin/python bench/loadgen.py --port 2587 --scenario messages --per-session 500 \\
        --concurrency 8 --size 10240 --duration 10 --processes 2

It prints one JSON object (one line) with the figures. Scenarios:

``auth``      each client loops: connect, EHLO, STARTTLS, EHLO, AUTH PLAIN, QUIT.
``messages``  each session authenticates once, then sends ``--per-session`` messages of
              ``--size`` bytes; the latency is MAIL to the final 250 of each message.
``mixed``     ``--concurrency`` clients send one message per session while
              ``--auth-clients`` others only authenticate; the latency is the messages'.
``idle``      ``--sessions`` authenticated TLS sessions are opened and held while a probe
              authenticates and sends a message over a new session; the server's memory
              (``--server-pid`` and its children, from /proc) is read before and while held.
``large``     ``--count`` messages of ``--size`` bytes, one at a time; the time is DATA to
              the final 250, and the server's peak memory growth is read from /proc.

Clients connect from ``--source`` (default 127.0.0.3), so brute-force counters kept for
127.0.0.1 by other tests do not interfere. The client does as little as it can, since it
shares the cores with the server: raw asyncio streams, pre-encoded commands, no
certificate verification (servers here use self-signed certificates), no pipelining.
Time is bounded by ``--duration`` and work by ``--count`` (0: no bound), whichever
comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import base64
import collections
import json
import math
import multiprocessing
import os
import resource
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# The client reads only short replies; asyncio's TLS transport would allocate 256 KiB per
# connection to read into, which 10,000 idle sessions cannot afford on the client side.
asyncio.sslproto.SSLProtocol.max_size = 16 * 1024

SCENARIOS = ("auth", "messages", "mixed", "idle", "large")
LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\r\n"


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 2587
    scenario: str = "auth"
    concurrency: int = 1
    duration: float = 10.0
    count: int = 0  # 0: bounded by time only
    processes: int = 1
    source: str = "127.0.0.3"
    user: str = "load{n}"
    users: int = 50
    password: str = "pw"  # noqa: S105 - the benchmark logins' password
    sender: str = "load{n}@bench.example"
    recipient: str = "sink@example.org"
    size: int = 10 * 1024
    per_session: int = 1
    auth_clients: int = 8
    sessions: int = 100  # idle
    probes: int = 5  # idle: new sessions tried while the idle ones are held
    open_concurrency: int = 200  # idle: sessions being opened at once (all processes)
    hold: float = 10.0  # idle: seconds the sessions are held once open (probes included)
    metrics_url: str = ""  # idle: the server's /metrics, for its loop lag while holding
    server_pid: int = 0
    timeout: float = 60.0
    label: str = ""


class ReplyError(Exception):
    """The server answered with an unexpected code (or closed the connection: code 0)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed benchmark servers
    return context


def message_blob(size: int, sender: str, recipient: str) -> bytes:
    """A message of about ``size`` bytes ending in CRLF.CRLF (no line starts with a dot)."""
    head = (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: benchmark\r\n"
        f"Date: Mon, 23 Nov 2026 06:00:00 +0000\r\n"
        f"Message-ID: <bench.{size}@bench.example>\r\n\r\n"
    ).encode()
    body = LINE * max(1, (size - len(head)) // len(LINE))
    return head + body + b".\r\n"


class Client:
    """One SMTP connection on raw asyncio streams."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self) -> int:
        """The code of the next whole reply (0 if the server closed)."""
        readline = self.reader.readline
        while True:
            line = await readline()
            if len(line) < 4:
                return 0
            if line[3] != 45:  # not "-": the last line
                return int(line[:3])

    async def expect(self, command: bytes, code: int) -> None:
        self.writer.write(command)
        got = await self.reply()
        if got != code:
            raise ReplyError(got)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.transport.abort()


class Shared:
    """What every client of one process shares: config, blobs, results."""

    def __init__(self, config: Config, deadline: float) -> None:
        self.config = config
        self.deadline = deadline
        self.context = tls_context()
        self.remaining = config.count // config.processes if config.count else -1
        users = range(1, config.users + 1)
        self.auth = [
            b"AUTH PLAIN "
            + base64.b64encode(f"\0{config.user.format(n=n)}\0{config.password}".encode())
            + b"\r\n"
            for n in users
        ]
        self.mail = [f"MAIL FROM:<{config.sender.format(n=n)}>\r\n".encode() for n in users]
        self.rcpt = f"RCPT TO:<{config.recipient}>\r\n".encode()
        self.body = (
            message_blob(config.size, config.sender.format(n=1), config.recipient)
            if config.scenario != "auth"
            else b""
        )
        self.latencies: list[float] = []
        self.auth_latencies: list[float] = []
        self.ends: list[float] = []  # when each measured operation ended
        self.ready: list[float] = []  # when each client began its steady state
        self.done: list[float] = []  # when each client stopped
        self.errors: collections.Counter[str] = collections.Counter()
        self.sessions = 0
        self.auths = 0

    def go(self) -> bool:
        """Whether to start another measured operation (and count it)."""
        if time.monotonic() >= self.deadline:
            return False
        if self.remaining == 0:
            return False
        if self.remaining > 0:
            self.remaining -= 1
        return True

    async def connect(self, user: int) -> Client:
        """Connect, EHLO, STARTTLS, EHLO and AUTH PLAIN as user number ``user``."""
        config = self.config
        reader, writer = await asyncio.open_connection(
            config.host, config.port, local_addr=(config.source, 0)
        )
        client = Client(reader, writer)
        try:
            code = await client.reply()
            if code != 220:
                raise ReplyError(code)
            await client.expect(b"EHLO client.bench\r\n", 250)
            await client.expect(b"STARTTLS\r\n", 220)
            await writer.start_tls(self.context)
            await client.expect(b"EHLO client.bench\r\n", 250)
            started = time.monotonic()
            await client.expect(self.auth[user % len(self.auth)], 235)
            self.auth_latencies.append(time.monotonic() - started)
            self.auths += 1
        except BaseException:
            client.abort()
            raise
        return client

    async def quit(self, client: Client) -> None:
        try:
            await client.expect(b"QUIT\r\n", 221)
        finally:
            client.close()
        self.sessions += 1

    async def send(self, client: Client, user: int) -> float:
        """One message: MAIL, RCPT, DATA and the content; returns MAIL to the final 250."""
        started = time.monotonic()
        await client.expect(self.mail[user % len(self.mail)], 250)
        await client.expect(self.rcpt, 250)
        await client.expect(b"DATA\r\n", 354)
        await client.expect(self.body, 250)
        return time.monotonic() - started

    def failed(self, error: BaseException) -> None:
        if isinstance(error, ReplyError):
            self.errors[str(error.code) if error.code else "closed"] += 1
        else:
            self.errors[type(error).__name__] += 1


# -- the scenarios: each client is one coroutine ----------------------------------------


async def auth_client(shared: Shared, user: int) -> None:
    shared.ready.append(time.monotonic())
    while shared.go():
        try:
            client = await shared.connect(user)
            await shared.quit(client)
        except Exception as error:
            shared.failed(error)
            continue
        shared.ends.append(time.monotonic())
    shared.done.append(time.monotonic())


async def message_client(shared: Shared, user: int, client: Client | None = None) -> None:
    """Sessions of ``per_session`` messages; ``client`` is a first session already opened."""
    per_session = shared.config.per_session
    first = True
    while shared.go():
        try:
            if client is None:
                client = await shared.connect(user)
            if first:  # steady state: every message client is past its first AUTH
                shared.ready.append(time.monotonic())
                first = False
            sent = 0
            while True:
                shared.latencies.append(await shared.send(client, user))
                shared.ends.append(time.monotonic())
                sent += 1
                if sent >= per_session or not shared.go():
                    break
            await shared.quit(client)
        except Exception as error:
            shared.failed(error)
        client = None
    if client is not None:  # opened in advance, but the time was up at once
        await shared.quit(client)
    if first:
        shared.ready.append(time.monotonic())
    shared.done.append(time.monotonic())


async def auth_only_client(shared: Shared, user: int) -> None:
    """For ``mixed``: authenticate in a loop, unmeasured, until the time is up."""
    while time.monotonic() < shared.deadline:
        try:
            client = await shared.connect(user)
            await shared.quit(client)
        except Exception as error:
            shared.failed(error)


async def run_clients(shared: Shared, index: int, start: Callable[[], None]) -> None:
    """The clients of process ``index``; ``start()`` blocks until every process is ready.

    In ``messages`` every client opens and authenticates its first session before the
    clock starts, so that at 500 messages per session the figure is about messages,
    not about the AUTHs of the first seconds.
    """
    config = shared.config
    mine = _share(config.concurrency, config.processes, index)
    base = sum(_share(config.concurrency, config.processes, i) for i in range(index))
    opened: list[Client | None] = [None] * mine
    if config.scenario == "messages":

        async def open_first(i: int) -> None:
            try:
                opened[i] = await shared.connect(base + i)
            except Exception as error:
                shared.failed(error)

        await asyncio.gather(*(open_first(i) for i in range(mine)))
    await asyncio.get_running_loop().run_in_executor(None, start)
    shared.deadline = time.monotonic() + config.duration
    if config.scenario == "auth":
        coroutines = [auth_client(shared, base + i) for i in range(mine)]
    else:
        coroutines = [message_client(shared, base + i, opened[i]) for i in range(mine)]
    if config.scenario == "mixed":
        helpers = _share(config.auth_clients, config.processes, index)
        # Users the message clients do not use, so each login is busy once.
        coroutines += [
            auth_only_client(shared, config.concurrency + base + i) for i in range(helpers)
        ]
    await asyncio.gather(*coroutines)


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- processes ---------------------------------------------------------------------------


def _child(config: Config, index: int, barrier: Any, results: Any) -> None:
    raise_fd_limit()
    barrier.wait()

    async def main() -> dict[str, Any]:
        shared = Shared(config, math.inf)
        await run_clients(shared, index, lambda: barrier.wait(config.timeout * 5))
        measured = shared.auth_latencies if config.scenario == "auth" else shared.latencies
        return {
            "latencies": measured,
            "ends": shared.ends,
            "ready": shared.ready,
            "done": shared.done,
            "errors": dict(shared.errors),
            "sessions": shared.sessions,
            "auths": shared.auths,
        }

    try:
        results.put(asyncio.run(main()))
    except BaseException as error:  # reported to the parent, not lost
        results.put({"crash": repr(error)})


def run_load(config: Config) -> dict[str, Any]:
    """auth, messages or mixed over ``config.processes`` processes; the merged figures."""
    config.processes = max(1, min(config.processes, config.concurrency))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(config.processes + 1)
    results = context.Queue()
    children = [
        context.Process(target=_child, args=(config, i, barrier, results), daemon=True)
        for i in range(config.processes)
    ]
    for child in children:
        child.start()
    barrier.wait()  # every process is up
    barrier.wait(config.timeout * 5)  # every client is ready (messages: authenticated)
    started = time.monotonic()
    parts = [results.get(timeout=config.duration + config.timeout * 2) for _ in children]
    for child in children:
        child.join(10)
    crashes = [part["crash"] for part in parts if "crash" in part]
    if crashes:
        raise RuntimeError(f"load generator process failed: {crashes}")
    merged: dict[str, Any] = {key: [] for key in ("latencies", "ends", "ready", "done")}
    errors: collections.Counter[str] = collections.Counter()
    for part in parts:
        for key in merged:
            merged[key].extend(part[key])
        errors.update(part["errors"])
    ends = merged["ends"]
    count = len(merged["latencies"])
    elapsed = (max(ends) if ends else time.monotonic()) - started
    # Steady state: from when the last client got going to when the first one stopped.
    window_start = max(merged["ready"], default=started)
    window_end = min(merged["done"], default=started)
    in_window = sum(1 for end in ends if window_start <= end <= window_end)
    window = window_end - window_start
    if window >= 0.25 * elapsed and in_window:
        rate = in_window / window
    else:
        rate = count / elapsed if elapsed > 0 else 0.0
    return {
        **_header(config),
        "count": count,
        "rate": round(rate, 2),
        "rate_overall": round(count / elapsed, 2) if elapsed > 0 else 0.0,
        "elapsed": round(elapsed, 3),
        "sessions": sum(part["sessions"] for part in parts),
        "auths": sum(part["auths"] for part in parts),
        "errors": dict(errors),
        **percentiles(merged["latencies"]),
    }


def _header(config: Config) -> dict[str, Any]:
    header: dict[str, Any] = {
        "label": config.label,
        "scenario": config.scenario,
        "concurrency": config.concurrency,
        "processes": config.processes,
    }
    if config.scenario in ("messages", "mixed", "large"):
        header.update(size=config.size, per_session=config.per_session)
    if config.scenario == "mixed":
        header["auth_clients"] = config.auth_clients
    return header


def percentiles(samples: list[float]) -> dict[str, float | None]:
    """p50 and p99 in milliseconds (nearest rank)."""
    if not samples:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 2)

    return {"p50_ms": rank(0.5), "p99_ms": rank(0.99), "max_ms": round(ordered[-1] * 1000, 2)}


# -- server memory from /proc ------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a pre-fork server's workers)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces; the fields after its ")" do not.
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children[ppid].append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` figure (VmRSS, VmHWM) from /proc/<pid>/status; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def socket_count(pid: int) -> int:
    """Open sockets of a process (listening ones included)."""
    count = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    count += 1
            except OSError:
                continue
    except OSError:
        pass
    return count


def memory_snapshot(pid: int) -> dict[str, Any]:
    """RSS of the server's processes, in KiB, with each one's socket count."""
    processes = [
        {"pid": p, "rss_kib": status_kib(p, "VmRSS"), "sockets": socket_count(p)}
        for p in process_tree(pid)
    ]
    return {"rss_kib": sum(p["rss_kib"] for p in processes), "processes": processes}


def reset_peaks(pids: list[int]) -> None:
    """Reset VmHWM to the current RSS (clear_refs 5; needs the right to write it)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


# -- idle ----------------------------------------------------------------------------------


def _idle_child(config: Config, index: int, opened: Any, release: Any) -> None:
    raise_fd_limit()
    mine = _share(config.sessions, config.processes, index)

    async def main() -> dict[str, Any]:
        shared = Shared(config, time.monotonic() + config.timeout * 10)
        gate = asyncio.Semaphore(max(1, config.open_concurrency // config.processes))
        held: list[Client] = []

        async def open_one(n: int) -> None:
            async with gate:
                try:
                    held.append(await shared.connect(n))
                except Exception as error:
                    shared.failed(error)

        started = time.monotonic()
        await asyncio.gather(*(open_one(index * mine + n) for n in range(mine)))
        opening = time.monotonic() - started
        opened.put({"held": len(held), "errors": dict(shared.errors), "open_s": opening})
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        # Still open after the hold? A session the server dropped reads EOF at QUIT.
        alive = 0
        for client in held:
            if not client.reader.at_eof():
                alive += 1
            client.abort()
        return {"alive": alive}

    try:
        opened.put(asyncio.run(main()))
    except BaseException as error:  # reported to the parent
        opened.put({"crash": repr(error)})


async def _probe(config: Config) -> dict[str, Any]:
    """New sessions while the idle ones are held: AUTH and one message each."""
    shared = Shared(config, time.monotonic() + config.timeout)
    codes: collections.Counter[str] = collections.Counter()
    for n in range(config.probes):
        try:
            started = time.monotonic()
            client = await asyncio.wait_for(shared.connect(n), config.timeout)
            codes["235"] += 1
            shared.latencies.append(await asyncio.wait_for(shared.send(client, n), config.timeout))
            codes["250"] += 1
            await shared.quit(client)
            shared.ends.append(time.monotonic() - started)
        except Exception as error:
            shared.failed(error)
    return {
        "probe_codes": dict(codes),
        "probe_errors": dict(shared.errors),
        "probe_auth_ms": percentiles(shared.auth_latencies)["p50_ms"],
        "probe_message_ms": percentiles(shared.latencies)["p50_ms"],
        "probe_session_ms": percentiles(shared.ends)["max_ms"],
    }


def loop_lag_histogram(url: str) -> dict[float, float]:
    """The server's event-loop lag histogram (cumulative counts by upper bound), or {}."""
    if not url:
        return {}
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "kumosubmit_event_loop_lag_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
    return counts


def lag_between(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Loop lag while the sessions were held: samples, the p99's bucket, the share <= 10 ms."""
    if not before or not after:
        return {}
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = delta[math.inf]
    if not total:
        return {"hold_lag_samples": 0}
    p99_bound = next(bound for bound, count in delta.items() if count >= 0.99 * total)
    within = max((count for bound, count in delta.items() if bound <= 0.01), default=0.0)
    return {
        "hold_lag_samples": int(total),
        "hold_lag_p99_ms_at_most": p99_bound * 1000 if p99_bound != math.inf else None,
        "hold_lag_within_10ms": round(within / total, 4),
    }


def run_idle(config: Config) -> dict[str, Any]:
    """Open and hold ``config.sessions``; probe and read the server's memory meanwhile."""
    config.processes = max(1, min(config.processes, config.sessions))
    before = memory_snapshot(config.server_pid) if config.server_pid else None
    context = multiprocessing.get_context("fork")
    opened = context.Queue()
    release = context.Event()
    children = [
        context.Process(target=_idle_child, args=(config, i, opened, release), daemon=True)
        for i in range(config.processes)
    ]
    started = time.monotonic()
    for child in children:
        child.start()
    try:
        reports = [opened.get(timeout=config.timeout * 10) for _ in children]
        crashes = [r["crash"] for r in reports if "crash" in r]
        if crashes:
            raise RuntimeError(f"load generator process failed: {crashes}")
        open_s = time.monotonic() - started
        held = sum(r["held"] for r in reports)
        errors: collections.Counter[str] = collections.Counter()
        for r in reports:
            errors.update(r["errors"])
        during = memory_snapshot(config.server_pid) if config.server_pid else None
        lag_before = loop_lag_histogram(config.metrics_url)
        hold_until = time.monotonic() + config.hold
        probe = asyncio.run(_probe(config))
        after_probe = memory_snapshot(config.server_pid) if config.server_pid else None
        time.sleep(max(0.0, hold_until - time.monotonic()))
        hold_lag = lag_between(lag_before, loop_lag_histogram(config.metrics_url))
    finally:
        release.set()
    finals = [opened.get(timeout=config.timeout) for _ in children]
    for child in children:
        child.join(10)
    result: dict[str, Any] = {
        **_header(config),
        "sessions": config.sessions,
        "held": held,
        "still_open_at_end": sum(f.get("alive", 0) for f in finals),
        "open_s": round(open_s, 2),
        "probes": config.probes,
        "errors": dict(errors),
        **probe,
        **hold_lag,
    }
    if before and during and after_probe:
        grown = during["rss_kib"] - before["rss_kib"]
        result.update(
            rss_before_kib=before["rss_kib"],
            rss_held_kib=during["rss_kib"],
            rss_after_probe_kib=after_probe["rss_kib"],
            per_session_kib=round(grown / held, 1) if held else None,
            server_processes=during["processes"],
        )
    return result


# -- large -------------------------------------------------------------------------------


async def _large(config: Config) -> dict[str, Any]:
    shared = Shared(config, time.monotonic() + config.timeout)
    pids = process_tree(config.server_pid) if config.server_pid else []
    times: list[float] = []
    growths: list[int] = []
    for n in range(max(1, config.count)):
        try:
            client = await shared.connect(n)
            await client.expect(shared.mail[n % len(shared.mail)], 250)
            await client.expect(shared.rcpt, 250)
            base = {pid: status_kib(pid, "VmRSS") for pid in pids}
            reset_peaks(pids)
            started = time.monotonic()
            await client.expect(b"DATA\r\n", 354)
            await client.expect(shared.body, 250)
            times.append(time.monotonic() - started)
            if pids:
                growths.append(sum(max(0, status_kib(pid, "VmHWM") - base[pid]) for pid in pids))
            await shared.quit(client)
        except Exception as error:
            shared.failed(error)
    return {
        **_header(config),
        "count": len(times),
        "bytes": len(shared.body),
        "errors": dict(shared.errors),
        **percentiles(times),
        "growth_kib": max(growths) if growths else None,
    }


def run_large(config: Config) -> dict[str, Any]:
    return asyncio.run(_large(config))


def run(config: Config) -> dict[str, Any]:
    """Run ``config.scenario`` and return its figures."""
    raise_fd_limit()
    runners: dict[str, Callable[[Config], dict[str, Any]]] = {
        "auth": run_load,
        "messages": run_load,
        "mixed": run_load,
        "idle": run_idle,
        "large": run_large,
    }
    return runners[config.scenario](config)


def parse_args(argv: list[str] | None = None) -> Config:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if name == "scenario":
            parser.add_argument(flag, choices=SCENARIOS, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return Config(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    result = run(config)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
