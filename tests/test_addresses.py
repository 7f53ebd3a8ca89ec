"""The fast path for ``<local@domain>`` answers exactly as aiosmtpd's RFC 5322 parser does."""

from __future__ import annotations

import string

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from kumosubmit.addresses import split_simple_path

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
#: What an address line may hold: atoms, the specials, spaces and non-ASCII.
ALPHABET = ATEXT + '.@<>\\"()[]:;, \té'


def library(arg: str) -> tuple[str | None, str | None]:
    """aiosmtpd's own parser, as SubmissionSMTP would run it without the fast path."""
    return SMTP._getaddr(SMTP.__new__(SMTP), arg)


def agree(arg: str) -> None:
    fast = split_simple_path(arg)
    if fast is not None:
        assert fast == library(arg), arg


piece = st.text(alphabet=ALPHABET, max_size=12)


@settings(max_examples=3000, derandomize=True, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40) | st.builds("<{}@{}>{}".format, piece, piece, piece))
def test_any_line_the_fast_path_takes_parses_the_same(arg):
    agree(arg)


atom = st.text(alphabet=ATEXT, min_size=1, max_size=8)
dot_atom = st.lists(atom, min_size=1, max_size=3).map(".".join)
rest = st.sampled_from(["", " SIZE=1000", " BODY=8BITMIME SIZE=5", "  NOTIFY=NEVER", " x"])


@settings(max_examples=1000, derandomize=True, deadline=None)
@given(dot_atom, dot_atom, rest)
def test_plain_addresses_take_the_fast_path_and_parse_the_same(local, domain, tail):
    arg = f"<{local}@{domain}>{tail}"
    assert split_simple_path(arg) == (f"{local}@{domain}", tail.lstrip())
    agree(arg)


def test_other_forms_are_left_to_the_full_parser():
    others = ['<"a b"@example.com>', "<a@[127.0.0.1]>", "<>", " <a@b>", "a@b", "<é@b>", "<a@b> (c)"]
    for arg in others:
        assert split_simple_path(arg) is None, arg
