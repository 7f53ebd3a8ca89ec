"""Fixtures for the relay tests: SMTP sinks on loopback, queued messages, a relay run.

``Sink`` is a real aiosmtpd server on a free loopback port, in a thread with its
own event loop, that records every message it accepts. A test decides its
replies: per recipient (``rcpt_replies``), for the next DATA commands
(``data_replies``), a delay before answering DATA (``data_delay``: a slow
upstream), or cutting the connection in the middle of DATA (``drop_in_data``).
It can offer STARTTLS or implicit TLS with the test CA's certificate, and
require AUTH.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from django.db import connection

from kumosubmit.db import close_db
from kumosubmit.relay.config import RelayConfig
from kumosubmit.relay.worker import RelayWorker
from kumosubmit.spool.models import Message
from tests.live import free_port
from tests.tlsutil import TestPKI

IS_POSTGRES = connection.vendor == "postgresql"


@dataclass
class Received:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]
    login: str | None
    tls: bool

    @property
    def message_id(self) -> str:
        parsed = email.message_from_bytes(self.content, policy=email.policy.compat32)
        return str(parsed["Message-ID"] or "")


class _SinkSMTP(SMTP):
    sink: Sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sink.connections += 1
        super().connection_made(transport)

    async def smtp_DATA(self, arg: str) -> None:
        assert self.envelope is not None
        if self.sink.drop_in_data > 0 and self.envelope.rcpt_tos and not arg:
            # Take the start of the content, then hang up: the client never learns its fate.
            self.sink.drop_in_data -= 1
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")
            self.sink.dropped += 1
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_DATA(arg)


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        reply = self.sink.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        sink = self.sink
        sink.data_commands += 1
        if sink.data_delay:
            await asyncio.sleep(sink.data_delay)
        if sink.data_replies:
            reply = sink.data_replies.pop(0)
            if not reply.startswith("250"):
                return reply
        assert isinstance(envelope.original_content, bytes)
        login = session.auth_data.login.decode() if session.auth_data else None
        sink.received.append(
            Received(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                content=envelope.original_content,
                mail_options=list(envelope.mail_options),
                login=login,
                tls=server.transport.get_extra_info("sslcontext") is not None
                if server.transport
                else False,
            )
        )
        return "250 2.0.0 OK accepted"


class Sink:
    """An SMTP server that accepts (or refuses, defers, stalls, drops) and records."""

    def __init__(
        self,
        pki: TestPKI | None = None,
        *,
        tls: str = "none",
        auth: tuple[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = free_port(host)
        self.tls = tls
        self.auth = auth
        self.pki = pki
        self.received: list[Received] = []
        self.rcpt_replies: dict[str, str] = {}
        self.data_replies: list[str] = []
        self.data_delay = 0.0
        self.drop_in_data = 0
        self.dropped = 0
        self.connections = 0
        self.data_commands = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = self.auth is not None and (data.login.decode(), data.password.decode()) == self.auth
        return AuthResult(success=ok, handled=False, auth_data=data)

    def _factory(self) -> SMTP:
        context = self.pki and self.pki_context()
        smtp = _SinkSMTP(
            _Handler(self),
            hostname="sink.test",
            enable_SMTPUTF8=True,
            tls_context=context if self.tls == "starttls" else None,
            require_starttls=self.tls == "starttls",
            authenticator=self._authenticate if self.auth else None,
            auth_required=self.auth is not None,
            auth_require_tls=self.tls != "none",
            timeout=30,
        )
        smtp.sink = self
        return smtp

    def pki_context(self) -> Any:
        import ssl

        assert self.pki is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        return context

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep aiosmtpd's per-line DEBUG records of this sink out of the test's log capture.

        They cost more than the sink's own work; the listener's records (the same
        ``mail.log`` logger, other threads) are kept for the leak checks.
        """
        return record.thread != self._thread.ident

    def start(self) -> Sink:
        logging.getLogger("mail.log").addFilter(self)
        self._thread.start()
        ssl_context = self.pki_context() if self.tls == "implicit" else None

        async def serve() -> asyncio.AbstractServer:
            return await self.loop.create_server(
                self._factory, self.host, self.port, ssl=ssl_context
            )

        self._server = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        logging.getLogger("mail.log").removeFilter(self)

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        """Wait until at least ``count`` messages were accepted."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} received"
            time.sleep(0.02)
        return self.received

    def message_ids(self) -> list[str]:
        return [received.message_id for received in self.received]


@pytest.fixture
def make_sink(pki: TestPKI) -> Iterator[Callable[..., Sink]]:
    sinks: list[Sink] = []

    def make(**options: Any) -> Sink:
        sink = Sink(pki, **options).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


@pytest.fixture
def sink(make_sink: Callable[..., Sink]) -> Sink:
    """A plaintext sink on loopback that accepts everything."""
    return make_sink()


def relay_config(sink: Sink, **overrides: Any) -> RelayConfig:
    """A relay to ``sink`` with short timeouts and retry delays, for tests."""
    values: dict[str, Any] = {
        "host": sink.host,
        "port": sink.port,
        "tls": sink.tls if sink.tls != "none" else "none",
        "ca_file": str(sink.pki.ca_cert) if sink.pki else None,
        "helo_name": "relay.test",
        "workers": 2,
        "timeout": 5,
        "data_timeout": 5,
        "retry_delay": 1,
        "max_retry_delay": 60,
        "lease": 30,
        "poll_interval": 0.1,
    }
    if sink.auth:
        values["username"], values["password"] = sink.auth
    return RelayConfig(**{**values, **overrides})


def run_relay(config: RelayConfig, *, once: bool = True) -> dict[str, int]:
    """Run a relay worker in this thread until nothing due is left (``--once``)."""

    async def run() -> dict[str, int]:
        try:
            return await RelayWorker(config).run(once=once)
        finally:
            await close_db()

    return asyncio.run(run())


@pytest.fixture
def relay(transactional_db: None) -> Callable[..., dict[str, int]]:
    return run_relay


def message_content(queue_id: str, subject: str = "test", body: bytes = b"Hello.\r\n") -> bytes:
    return (
        f"Received: from client.test ([127.0.0.1])\r\n\tby mx.test.invalid (kumosubmit) "
        f"with ESMTPSA id {queue_id};\r\n\tMon, 23 Nov 2026 06:00:00 +0000\r\n"
        f"Message-ID: <{queue_id}@test.invalid>\r\nFrom: alice@example.com\r\n"
        f"To: bob@example.org\r\nSubject: {subject}\r\n\r\n"
    ).encode() + body


def new_message(
    mail_from: str = "alice@example.com",
    rcpt_tos: list[str] | tuple[str, ...] = ("bob@example.org",),
    content: bytes | None = None,
    **fields: Any,
) -> Message:
    """An unsaved message as the SMTP path stores it."""
    queue_id = fields.pop("queue_id", uuid.uuid4().hex)
    content = message_content(queue_id) if content is None else content
    return Message(
        queue_id=queue_id,
        mail_from=mail_from,
        rcpt_tos=list(rcpt_tos),
        size=len(content),
        content=content,
        authz_id=mail_from,
        authn_id=mail_from,
        conn_id="relay-test",
        meta={},
        **fields,
    )


@pytest.fixture
def queue_message(transactional_db: None) -> Callable[..., Message]:
    def make(*args: Any, **fields: Any) -> Message:
        message = new_message(*args, **fields)
        message.save()
        return message

    return make


@pytest.fixture
def queue_messages(transactional_db: None) -> Callable[[int], list[Message]]:
    def make(count: int, **fields: Any) -> list[Message]:
        return Message.objects.bulk_create(
            [new_message(**fields) for _ in range(count)], batch_size=500
        )

    return make


# -- Postfix as a real upstream -------------------------------------------------------

POSTFIX = shutil.which("postfix") or (
    "/usr/sbin/postfix" if os.path.exists("/usr/sbin/postfix") else None
)

_MASTER_CF = """\
{address} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


@dataclass
class Postfix:
    """A Postfix instance of our own: 127.0.0.1 on a free port, a maildir for all mail."""

    directory: Path
    port: int
    host: str = "127.0.0.1"
    mailbox: Path = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.mailbox = self.directory / "mail" / "box"
        self.log = self.directory / "maillog"

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert POSTFIX is not None
        return subprocess.run(
            [POSTFIX, "-c", str(self.directory / "conf"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def delivered(self) -> list[bytes]:
        """The messages in the maildir (as Postfix wrote them: LF line endings)."""
        new = self.mailbox / "new"
        return [path.read_bytes() for path in sorted(new.iterdir())] if new.is_dir() else []

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def postfix() -> Iterator[Postfix]:
    """Postfix from the OS packages as an upstream, delivering every message to one maildir.

    It listens only on 127.0.0.1 at a free port, with its own configuration and
    queue directories, and relays nowhere (every domain is a virtual mailbox domain);
    it refuses RCPT TO:<nobody@upstream.test> with 554.
    """
    if POSTFIX is None:
        pytest.skip("postfix is not installed (apt-get install postfix)")
    # Not under pytest's tmp_path: its parents are private to root, and Postfix's
    # daemons (user postfix) must reach their data and mail directories.
    directory = Path(tempfile.mkdtemp(prefix="kumosubmit-postfix-"))
    directory.chmod(0o755)
    owner = pwd.getpwnam("postfix")
    for sub in ("conf", "queue", "data", "mail"):
        (directory / sub).mkdir()
    os.chown(directory / "data", owner.pw_uid, owner.pw_gid)
    os.chown(directory / "mail", owner.pw_uid, owner.pw_gid)
    instance = Postfix(directory, free_port())
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": directory / "queue",
        "data_directory": directory / "data",
        "command_directory": "/usr/sbin",
        "daemon_directory": "/usr/lib/postfix/sbin",
        "shlib_directory": "/usr/lib/postfix",
        "meta_directory": "/etc/postfix",
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": "upstream.test",
        "mydomain": "upstream.test",
        "myorigin": "upstream.test",
        "mydestination": "",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "relayhost": "",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        # One mailbox that does not exist, as on any real MTA.
        "smtpd_recipient_restrictions": "check_recipient_access"
        " inline:{ {nobody@upstream.test=REJECT no such user} }, permit",
        # Keep the message as sent: no headers added or rewritten for "local" clients.
        "local_header_rewrite_clients": "",
        "virtual_mailbox_domains": "static:ALL",
        "virtual_mailbox_base": directory / "mail",
        "virtual_mailbox_maps": "static:box/",
        "virtual_uid_maps": f"static:{owner.pw_uid}",
        "virtual_gid_maps": f"static:{owner.pw_gid}",
        "virtual_minimum_uid": "1",
        "maillog_file": instance.log,
        "maillog_file_prefixes": directory,
        "alias_maps": "",
        "alias_database": "",
        "smtputf8_enable": "yes",
        "biff": "no",
    }
    (directory / "conf" / "main.cf").write_text(
        "".join(f"{key} = {value}\n" for key, value in settings.items())
    )
    (directory / "conf" / "master.cf").write_text(
        _MASTER_CF.format(address=f"127.0.0.1:{instance.port}")
    )
    try:
        started = instance.postfix("start")
        assert started.returncode == 0, started.stdout + started.stderr + instance.log_text()
        deadline = time.monotonic() + 20
        while "daemon started" not in instance.log_text():
            assert time.monotonic() < deadline, instance.log_text()
            time.sleep(0.1)
        yield instance
    finally:
        instance.postfix("stop")
        shutil.rmtree(directory, ignore_errors=True)
