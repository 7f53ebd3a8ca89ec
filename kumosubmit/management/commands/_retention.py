"""The ``--age SECONDS`` and ``--dry-run`` options of the pruning commands.

Shared by ``prunemessages`` and ``pruneaudit``. (Django skips modules whose
names start with an underscore when it looks for commands.)
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser


def add_retention_arguments(parser: CommandParser, *, kept: str, default: str) -> None:
    """``--age`` (keep ``kept`` younger than that; ``default``: the setting) and ``--dry-run``."""
    parser.add_argument(
        "--age",
        type=float,
        metavar="SECONDS",
        help=f"Keep {kept} within this many seconds. Default: {default}.",
    )
    parser.add_argument("--dry-run", action="store_true", help="Only say how much it would remove.")


def retention_age(options: dict[str, Any], default: float | None) -> float | None:
    """``--age``, else ``default`` (None: keep everything); CommandError below 0."""
    age = options["age"] if options["age"] is not None else default
    if age is not None and age < 0:
        raise CommandError("--age must be 0 or more.")
    return age
