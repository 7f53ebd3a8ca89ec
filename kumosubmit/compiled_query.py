"""Querysets compiled to SQL once, then run with new arguments: the reads every AUTH makes.

For the small reads on the AUTH path (the failure counters, the login, its allowed
senders), Django spends far longer building and compiling the queryset than the
database spends running it: the failure counters cost the database thread 325 µs
of CPU built each time against 58 µs compiled once, on SQLite
(``bench/auth_queries.py``, docs/benchmarks.md). Their shape never changes, only
the strings in them. So a :class:`CompiledQuery` builds its queryset once per database (and
number of arguments), with a marker string in each argument's place, keeps the
SQL and the parameters Django made of it, and from then on runs that SQL with
the arguments where the markers were. Rows become model instances through
``Manager.raw``, with the converters the queryset itself would have used.

Only arguments that reach the parameters unchanged can be put back this way:
strings compared as they are (``exact`` and ``in`` on text columns). A lookup
that transforms or escapes its argument (``contains``, ``iexact``) leaves a
changed marker behind, and compiling refuses it rather than run the wrong query.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Model, QuerySet

M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class CompiledSQL:
    """One compiled shape: the SQL, and where each parameter comes from.

    ``sources[i]`` is the index of the argument that is parameter ``i``, or None
    for a value the queryset itself put there, kept in ``constants[i]``.
    """

    model: type[Model]
    sql: str
    sources: tuple[int | None, ...]
    constants: tuple[Any, ...]

    def params(self, args: Sequence[str]) -> list[Any]:
        return [
            constant if source is None else args[source]
            for source, constant in zip(self.sources, self.constants, strict=True)
        ]


class CompiledQuery(Generic[M]):
    """``build(*args)``'s queryset, compiled once per database and number of arguments."""

    def __init__(self, build: Callable[..., QuerySet[M]]) -> None:
        self.build = build
        self._token = secrets.token_hex(8)
        self._compiled: dict[tuple[str, str, int], CompiledSQL] = {}

    def __call__(self, *args: str, using: str = DEFAULT_DB_ALIAS) -> list[M]:
        """The rows ``build(*args)`` would give, as model instances."""
        compiled = self.compiled(len(args), using)
        manager = compiled.model._default_manager.db_manager(using)
        return list(manager.raw(compiled.sql, compiled.params(args)))

    def compiled(self, arity: int, using: str = DEFAULT_DB_ALIAS) -> CompiledSQL:
        """The SQL for ``arity`` arguments on database ``using``, compiled on first use."""
        connection = connections[using]
        key = (using, connection.vendor, arity)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(arity, using)
        return compiled

    def _compile(self, arity: int, using: str) -> CompiledSQL:
        # "%", "_" and "\\" are what LIKE escaping changes: a lookup that would
        # escape its argument (iexact on SQLite, say) cannot leave a marker as it was.
        markers = [f"kumosubmit_argument%{self._token}\\{n}" for n in range(arity)]
        queryset = self.build(*markers)
        sql, params = queryset.query.get_compiler(using=using).as_sql()
        sources: list[int | None] = []
        for param in params:
            source = markers.index(param) if isinstance(param, str) and param in markers else None
            if source is None and self._token in repr(param):
                raise ValueError(f"a lookup in {self.build!r} changes its argument: {param!r}")
            sources.append(source)
        if self._token in sql:
            raise ValueError(f"{self.build!r} puts an argument into its SQL itself")
        unused = set(range(arity)) - set(sources)
        if unused:
            raise ValueError(f"{self.build!r} does not use arguments {sorted(unused)}")
        return CompiledSQL(queryset.model, sql, tuple(sources), tuple(params))
