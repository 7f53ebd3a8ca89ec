"""CPU per AUTH session: where kumosubmit's workers spend it, beside the plain sink.

Run from the repository root:

    .venv/bin/python bench/auth_cpu.py [--cheap] [--concurrency 8] [--seconds 20]

Starts ``runsmtpd --workers 2`` (``bench/settings.py``, a fresh SQLite database, as
``bench/submission.py`` does), loads it with the load generator's ``auth`` scenario
(connect, STARTTLS, AUTH PLAIN, QUIT) after a short warm-up, and reads every thread's
CPU time from ``/proc`` before and after. Then the same for the plain sink
(``bench/sink.py``: no hashing, no database), the baseline: what aiosmtpd, asyncio and
TLS cost on their own. It prints milliseconds of CPU per AUTH session:

- the event loops: each process's main thread (``runsmtpd``'s supervisor, which
  mostly sleeps, is counted here too);
- their other threads still alive at the end: the database threads and the argon2 pool
  threads (argon2's memory wipe and the starts of its lane threads);
- threads that ended during the run: argon2's lane threads, a few per verification;
- the load generator's processes, and the share of the machine left idle.

With ``--cheap`` (``BENCH_ARGON2=cheap``: t=1, 1 MiB, one lane) the hashing all but
vanishes and what is left is the Python around it. Without it, the figures show what the
AUTH target of issue 5 loses to everything that is not argon2 (docs/benchmarks.md).
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from bench.submission import PASSWORD, SENDER_DOMAIN, Kumosubmit, Sink, Target  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat_path: Path) -> float:
    """utime + stime of a /proc .../stat file, in seconds (a process's counts its dead
    threads too)."""
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def snapshot(pids: list[int]) -> dict[str, Any]:
    """Each process's total and each of its live threads' CPU seconds, and /proc/stat's."""
    processes: dict[int, float] = {}
    threads: dict[tuple[int, int], float] = {}
    for pid in pids:
        try:
            processes[pid] = cpu_seconds(Path(f"/proc/{pid}/stat"))
            for task in Path(f"/proc/{pid}/task").iterdir():
                threads[(pid, int(task.name))] = cpu_seconds(task / "stat")
        except (OSError, ValueError):  # gone meanwhile
            continue
    with open("/proc/stat") as f:
        machine = [int(n) for n in f.readline().split()[1:]]
    return {"processes": processes, "threads": threads, "machine": machine}


def split(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """CPU seconds between two snapshots: event loops, other live threads, ended threads."""
    loops = others = 0.0
    for (pid, tid), seconds in after["threads"].items():
        used = seconds - before["threads"].get((pid, tid), 0.0)
        if tid == pid:
            loops += used
        else:
            others += used
    total = sum(
        seconds - before["processes"].get(pid, 0.0) for pid, seconds in after["processes"].items()
    )
    machine = [b - a for a, b in zip(before["machine"], after["machine"], strict=True)]
    idle = (machine[3] + machine[4]) / max(1, sum(machine))  # idle + iowait
    return {
        "event_loops": loops,
        "other_threads": others,
        "ended_threads": max(0.0, total - loops - others),
        "idle_share": idle,
    }


def measure(target: Target, concurrency: int, seconds: float) -> dict[str, Any]:
    """The auth scenario against ``target``, with each part's CPU per AUTH session."""
    config = loadgen.Config(
        port=target.port,
        scenario="auth",
        concurrency=concurrency,
        duration=min(3.0, seconds),
        processes=2,
        password=PASSWORD,
        sender="load{n}@" + SENDER_DOMAIN,
        label=target.name,
    )
    loadgen.run_load(config)  # warm-up: imports, first connections, the pools' threads
    pids = loadgen.process_tree(target.pid)
    config.duration = seconds
    before, load_before = snapshot(pids), os.times()
    result = loadgen.run_load(config)
    after, load_after = snapshot(pids), os.times()
    parts = split(before, after)
    load = (load_after.children_user + load_after.children_system) - (
        load_before.children_user + load_before.children_system
    )
    sessions = result["auths"] or 1
    per_session = {
        name: round(value / sessions * 1000, 3)
        for name, value in {**parts, "load_generator": load}.items()
        if name != "idle_share"
    }
    return {
        "rate": result["rate"],
        "auths": result["auths"],
        "errors": result["errors"],
        "ms_per_session": per_session,
        "server_ms_per_session": round(
            sum(v for k, v in per_session.items() if k != "load_generator"), 3
        ),
        "idle_share": round(parts["idle_share"], 4),
    }


def run(
    name: str, start: Callable[[], tuple[Target, Callable[[], Any]]], options: Any
) -> dict[str, Any]:
    print(f"== {name}", flush=True)
    target, stop = start()
    try:
        figures = measure(target, options.concurrency, options.seconds)
    finally:
        stop()
    print("   ", json.dumps(figures), flush=True)
    return figures


def print_table(results: dict[str, dict[str, Any]], concurrency: int) -> None:
    names = list(results)
    print(f"\nCPU per AUTH session (ms), concurrency {concurrency}:")
    print(f"{'':28}" + "".join(f"{name:>28}" for name in names))
    rows = ["event_loops", "other_threads", "ended_threads", "load_generator"]
    for row in rows:
        cells = "".join(f"{results[n]['ms_per_session'][row]:>28.2f}" for n in names)
        print(f"{row.replace('_', ' '):28}{cells}")
    for label, key, form in (
        ("server total", "server_ms_per_session", ".2f"),
        ("AUTH/s", "rate", ".1f"),
        ("machine idle", "idle_share", ".1%"),
    ):
        print(f"{label:28}" + "".join(f"{results[n][key]:>28{form}}" for n in names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cheap", action="store_true", help="cheap argon2 (t=1, 1 MiB)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    options = parser.parse_args(argv)
    loadgen.raise_fd_limit()
    directory = Path(tempfile.mkdtemp(prefix="kumosubmit-auth-cpu-"))

    def kumosubmit() -> tuple[Target, Callable[[], Any]]:
        server = Kumosubmit(directory / "kumosubmit", None, options.workers, cheap=options.cheap)
        return server.start(), server.stop

    def sink() -> tuple[Target, Callable[[], Any]]:
        server = Sink(options.workers)
        return server.start(), server.stop

    label = "kumosubmit (cheap argon2)" if options.cheap else "kumosubmit"
    try:
        results = {label: run(label, kumosubmit, options), "sink": run("sink", sink, options)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print_table(results, options.concurrency)
    if options.json:
        figures = {"options": vars(options), "results": results}
        options.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
