"""CompiledQuery: the reads on the AUTH path, compiled once, give what their querysets give."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models import Q

from kumosubmit.compiled_query import CompiledQuery
from kumosubmit.credentials.models import AuthFailureCounter, SmtpLogin
from kumosubmit.credentials.throttle import _counters_of

pytestmark = pytest.mark.django_db

# Names a query built by pasting strings together would get wrong.
AWKWARD = "o'brien%s_\\x@example.com"


def active_login(username: str):
    return SmtpLogin.objects.filter(username=username, is_active=True).order_by()


@pytest.fixture
def logins():
    SmtpLogin.objects.create(username="alice@example.com")
    SmtpLogin.objects.create(username=AWKWARD)
    SmtpLogin.objects.create(username="bob@example.com", is_active=False)


@pytest.mark.parametrize(
    "username",
    [
        "alice@example.com",
        AWKWARD,
        "bob@example.com",  # inactive
        "nobody@example.com",
        "alice@example.com' OR '1'='1",
        "%",
        "_",
        "%s",
        "",
    ],
)
def test_rows_are_those_of_the_queryset(logins, username):
    compiled = CompiledQuery(active_login)
    expected = [login.pk for login in active_login(username)]
    found = compiled(username)
    assert [login.pk for login in found] == expected
    assert all(isinstance(login, SmtpLogin) for login in found)
    # A second argument goes through the same compiled SQL.
    assert [login.username for login in compiled("alice@example.com")] == ["alice@example.com"]


def test_each_number_of_arguments_is_compiled_once(logins):
    built = []

    def counters(*kinds_and_values: str):
        built.append(len(kinds_and_values))
        return _counters_of(*kinds_and_values)

    AuthFailureCounter.objects.create(kind="address", value="192.0.2.1", failures=2)
    AuthFailureCounter.objects.create(kind="login", value="alice@example.com", failures=3)
    AuthFailureCounter.objects.create(kind="login", value="192.0.2.1", failures=4)  # other kind
    compiled = CompiledQuery(counters)
    three = ("address", "192.0.2.1", "login", "alice@example.com", "pair", "192.0.2.1 alice")
    for _ in range(3):
        assert {(c.kind, c.value, c.failures) for c in compiled(*three)} == {
            ("address", "192.0.2.1", 2),
            ("login", "alice@example.com", 3),
        }
        assert [c.failures for c in compiled("login", "192.0.2.1")] == [4]
        assert compiled("login", "carol@example.com") == []
    assert sorted(built) == [2, 6]


@pytest.mark.parametrize(
    "build",
    [
        lambda name: SmtpLogin.objects.filter(username__contains=name),
        lambda name: SmtpLogin.objects.filter(username__startswith=name),
    ],
    ids=["contains", "startswith"],
)
def test_a_lookup_that_changes_its_argument_is_refused(logins, build):
    # Run with the argument put back unchanged, "%" would match every login.
    with pytest.raises(ValueError, match="changes its argument"):
        CompiledQuery(build)("%")


def test_iexact_is_refused_where_it_escapes_its_argument(logins):
    """SQLite's iexact is a LIKE with an escaped argument; PostgreSQL's compares UPPER()s."""
    build = lambda name: SmtpLogin.objects.filter(username__iexact=name)  # noqa: E731
    compiled = CompiledQuery(build)
    if connection.vendor == "sqlite":
        with pytest.raises(ValueError, match="changes its argument"):
            compiled("%")
        return
    for name in ("%", "ALICE@example.com", AWKWARD.upper()):
        assert [login.pk for login in compiled(name)] == [login.pk for login in build(name)]
    assert [login.username for login in compiled("ALICE@example.com")] == ["alice@example.com"]


def test_an_argument_the_query_does_not_use_is_refused():
    compiled = CompiledQuery(lambda name, unused: SmtpLogin.objects.filter(username=name))
    with pytest.raises(ValueError, match=r"does not use arguments \[1\]"):
        compiled("alice@example.com", "x")


def test_constants_of_the_queryset_are_kept(logins):
    compiled = CompiledQuery(
        lambda name: SmtpLogin.objects.filter(Q(username=name) | Q(username="bob@example.com"))
    )
    assert sorted(login.username for login in compiled("alice@example.com")) == [
        "alice@example.com",
        "bob@example.com",
    ]
