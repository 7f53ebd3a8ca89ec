"""CPU per message: this tree's runsmtpd beside another commit's, or beside other settings,
in turn, in one run.

Run from the repository root:

    git worktree add /tmp/kumosubmit-baseline COMMIT
    .venv/bin/python bench/message_cpu.py --baseline /tmp/kumosubmit-baseline \\
        [--rounds 4] [--seconds 8] [--per-session 500] [--concurrency 8]
    .venv/bin/python bench/message_cpu.py --compare "limits off=$(cat bench/limits_off.json)"

Both servers run ``runsmtpd --workers 2`` (``bench/settings.py``, cheap argon2, a fresh
SQLite database each, as ``bench/submission.py`` sets them up). Each round loads one
and then the other with the load generator's ``messages`` scenario and reads the CPU
time of the server's processes (all their threads, the ones that ended included) from
``/proc`` before and after. CPU per message is what a change to the per-message path
costs, and unlike messages per second it hardly moves when something else on this
2-core machine takes a core for a while. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from bench.submission import (  # noqa: E402
    Kumosubmit,
    Target,
    _compare,
    temporary_postgres,
)

TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (runsmtpd's workers), their threads included."""
    total = 0.0
    pids = [pid, *_children(pid)]
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(child) for child in children]
    return found


def measure(target: Target, options: argparse.Namespace) -> dict[str, Any]:
    before = server_cpu(target.pid)
    result = loadgen.run(
        loadgen.Config(
            port=target.port,
            scenario="messages",
            per_session=options.per_session,
            concurrency=options.concurrency,
            duration=options.seconds,
            processes=2,
            server_pid=target.pid,
            label=target.name,
        )
    )
    cpu = server_cpu(target.pid) - before
    count = result["count"] or 1
    return {
        "cpu_ms_per_message": 1000 * cpu / count,
        "rate": result["rate"],
        "errors": result["errors"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, metavar="PATH", help="another commit's tree")
    parser.add_argument(
        "--compare",
        action="append",
        type=_compare,
        metavar="NAME=JSON",
        help="this tree with these KUMOSUBMIT settings over bench/settings.py (repeatable)",
    )
    parser.add_argument("--database-url", metavar="URL", help="a PostgreSQL server to use")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--per-session", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, metavar="PATH")
    options = parser.parse_args(argv)
    if not options.baseline and not options.compare:
        parser.error("give --baseline PATH or --compare NAME=JSON")
    loadgen.raise_fd_limit()
    directory = Path(tempfile.mkdtemp(prefix="kumosubmit-message-cpu-"))
    drops: list[Any] = []

    def database(name: str) -> str | None:
        if not options.database_url:
            return None
        url, drop = temporary_postgres(options.database_url, f"cpu_{name}")
        drops.append(drop)
        return url

    servers = {
        "kumosubmit": Kumosubmit(directory / "kumosubmit", database("kumosubmit"), 2, cheap=True)
    }
    if options.baseline:
        servers["baseline"] = Kumosubmit(
            directory / "baseline",
            database("baseline"),
            2,
            cheap=True,
            root=options.baseline,
            name="baseline",
        )
    for n, (name, settings) in enumerate(options.compare or []):
        servers[name] = Kumosubmit(
            directory / f"compare{n}",
            database(f"compare{n}"),
            2,
            cheap=True,
            name=name,
            settings=settings,
        )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    try:
        targets = {name: server.start() for name, server in servers.items()}
        for target in targets.values():  # a warm-up each: first sessions, caches
            measure(target, argparse.Namespace(**{**vars(options), "seconds": 2}))
        for round_ in range(options.rounds):
            # Each round in turn, the next in the other order: drift falls on all alike.
            order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
            for name in order:
                results[name].append(measure(targets[name], options))
                print(name, json.dumps(results[name][-1]), flush=True)
    finally:
        for server in servers.values():
            server.stop()
        for drop in drops:
            drop()
        shutil.rmtree(directory, ignore_errors=True)
    print()
    print(f"{'server':<12} {'CPU ms/message (median, range)':<34} messages/s (median)")
    medians = {}
    for name, runs in results.items():
        cpu = [run["cpu_ms_per_message"] for run in runs]
        medians[name] = statistics.median(cpu)
        rate = statistics.median(run["rate"] for run in runs)
        print(
            f"{name:<12} {medians[name]:6.3f} ({min(cpu):.3f}-{max(cpu):.3f}){'':<14} {rate:8.0f}"
        )
    print()
    ratios = {}
    for name in servers:
        if name != "kumosubmit":
            ratios[name] = medians["kumosubmit"] / medians[name]
            print(f"kumosubmit / {name} CPU per message: {ratios[name]:.3f}")
    if options.json:
        options.json.write_text(json.dumps({"results": results, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
