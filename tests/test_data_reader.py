"""protocol/data.py: the DATA framing, against a line-by-line reading of RFC 5321.

The stream is cut into arbitrary chunks (as TCP and TLS records cut it), so
the end mark, CRLF pairs and stuffed dots fall across chunk boundaries. The
same rules are tested end to end over TLS in tests/security/test_protocol.py
and tests/test_memory.py.
"""

from __future__ import annotations

import asyncio
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from kumosubmit.protocol import replies
from kumosubmit.protocol.budget import MemoryBudget, Reservation
from kumosubmit.protocol.data import MAX_LINE, DataReader, declared_size

AFTER = b"NOOP\r\n"  # what a pipelining client may send after the end mark


def stuff(message: bytes) -> bytes:
    """What a client sends for ``message`` (which ends with CRLF, or is empty)."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def run(
    stream: bytes,
    cuts: list[int],
    *,
    bare: str = "reject",
    size_limit: int | None = None,
    budget: int = 10**9,
) -> tuple[DataReader, bytes, MemoryBudget]:
    """Feed ``stream`` in pieces cut at ``cuts``; return the reader and what it left."""

    async def go() -> tuple[DataReader, bytes, MemoryBudget]:
        stream_reader = asyncio.StreamReader(limit=MAX_LINE)
        memory = MemoryBudget(budget)
        reader = DataReader(
            stream_reader,
            size_limit=size_limit,
            bare_line_endings=bare,
            reservation=Reservation(memory),
        )

        async def feed() -> None:
            start = 0
            for cut in [*sorted(set(cuts)), len(stream)]:
                stream_reader.feed_data(stream[start:cut])
                start = cut
                await asyncio.sleep(0)
            stream_reader.feed_eof()

        feeding = asyncio.ensure_future(feed())
        await reader.read()
        await feeding
        return reader, await stream_reader.read(), memory

    return asyncio.run(go())


# Lines of printable text, dots, stray CR/LF now and then, and a long line rarely.
LINE = st.one_of(
    st.binary(max_size=80).map(lambda b: re.sub(rb"[\r\n]", b"x", b)),
    st.sampled_from([b"", b".", b"..", b".x", b" .", b"a.b", b"\r", b"x\ny", b".\r"]),
    st.integers(min_value=990, max_value=1010).map(lambda n: b"y" * n),
)
MESSAGE = st.lists(LINE, max_size=60).map(lambda lines: b"".join(x + b"\r\n" for x in lines))


def cuts_for(data: st.DataObject, stream: bytes) -> list[int]:
    return data.draw(st.lists(st.integers(0, len(stream)), max_size=20))


def expected(message: bytes, bare: str) -> tuple[set[str | None], bytes]:
    """What a line-by-line reader would answer: (possible refusals, content if accepted)."""
    stuffed = stuff(message)[:-3]
    by_crlf = any(len(line) + 2 > MAX_LINE for line in stuffed.split(b"\r\n")[:-1])
    by_lf = any(len(line) + 1 > MAX_LINE for line in stuffed.split(b"\n")[:-1])
    has_bare = bool(re.search(rb"\r(?!\n)|(?<!\r)\n", message))
    has_bare = bool(re.search(rb"\r(?!\n)|(?<!\r)\n", message))
    # Lines are measured from LF to LF: the same as CRLF to CRLF unless there are bare
    # line endings, which are refused, or normalized into more, shorter lines.
    assert by_crlf == by_lf or has_bare
    refusals: set[str | None] = set()
    if by_lf:
        refusals.add(replies.LINE_TOO_LONG)
    if has_bare and bare == "reject":
        # Whichever the reader meets first, in the chunk where it meets it.
        refusals.add(replies.BARE_LINE_ENDING)
    if refusals:
        return refusals, b""
    if has_bare:
        return {None}, re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    return {None}, message


@settings(max_examples=300, deadline=None)
@given(MESSAGE, st.data())
def test_any_message_cut_anywhere(message, data):
    bare = data.draw(st.sampled_from(["reject", "normalize"]))
    stream = stuff(message) + AFTER
    reader, rest, memory = run(stream, cuts_for(data, stream), bare=bare)
    refusals, content = expected(message, bare)
    assert reader.refusal in refusals
    assert bytes(reader.content) == content
    assert rest == AFTER  # not a byte past the end mark was taken
    if reader.refusal is None:
        assert reader.received == memory.in_use == len(stream) - len(AFTER) - 3


def test_empty_message_and_empty_lines():
    for message in (b"", b"\r\n", b"\r\n\r\n", b".\r\n", b"\r\n.\r\n"):
        for cut in range(len(stuff(message)) + 1):
            reader, rest, _ = run(stuff(message) + AFTER, [cut])
            assert (reader.refusal, bytes(reader.content), rest) == (None, message, AFTER)


def test_only_crlf_dot_crlf_ends_the_data():
    stream = b"a\n.\nb\r.\rc\r\n.x\r\n..\r\n.\r\n" + AFTER
    reader, rest, _ = run(stream, [], bare="normalize")
    assert bytes(reader.content) == b"a\r\n.\r\nb\r\n.\r\nc\r\nx\r\n.\r\n"
    assert rest == AFTER


def test_line_length_limit():
    ok = b"." + b"y" * 998 + b"\r\n"  # 998 octets of text: 1001 with the dot and CRLF
    reader, _, _ = run(stuff(ok[1:]) + AFTER, [500])
    assert (reader.refusal, bytes(reader.content)) == (None, ok[1:])
    reader, rest, _ = run(stuff(b"y" * 1000 + b"\r\n") + AFTER, [500])
    assert (reader.refusal, rest) == (replies.LINE_TOO_LONG, AFTER)
    # Without its CRLF in sight, a line is given up on once it cannot fit any more.
    reader, rest, _ = run(b"y" * 100_000 + b"\r\n.\r\n" + AFTER, [3000, 50_000])
    assert (reader.refusal, rest) == (replies.LINE_TOO_LONG, AFTER)
    # Normalized, bare LFs end lines like CRLFs do.
    reader, _, _ = run(b"x\n" * 600 + b"\r\n.\r\n", [], bare="normalize")
    assert (reader.refusal, bytes(reader.content)) == (None, b"x\r\n" * 600 + b"\r\n")


def test_too_big_is_refused_after_the_end_and_nothing_is_kept():
    message = b"x" * 98 + b"\r\n"
    reader, rest, memory = run(stuff(message * 20) + AFTER, [7, 500], size_limit=1000)
    assert reader.refusal == replies.MESSAGE_TOO_BIG
    assert reader.content == bytearray()
    assert rest == AFTER
    assert memory.in_use == 0
    # Exactly at the limit is fine (the limit counts the data as sent, without the end mark).
    reader, _, _ = run(stuff(message * 10) + AFTER, [], size_limit=1000)
    assert reader.refusal is None


def test_budget_exhausted_is_refused_and_released():
    message = b"z" * 98 + b"\r\n"
    reader, rest, memory = run(stuff(message * 30) + AFTER, [1000, 2000], budget=2500)
    assert reader.refusal == replies.INSUFFICIENT_STORAGE
    assert (reader.content, rest, memory.in_use) == (bytearray(), AFTER, 0)
    reader, _, memory = run(stuff(message * 20) + AFTER, [1000], budget=2500)
    assert reader.refusal is None
    assert memory.in_use == 2000  # held until the session stores the message and releases it


def test_declared_size():
    assert declared_size(["BODY=8BITMIME", "SIZE=1234"]) == 1234
    assert declared_size(["SMTPUTF8"]) is None
    assert declared_size(["SIZE=x"]) is None
