"""The contract every spool backend keeps."""

from __future__ import annotations

import abc
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SpooledMessage:
    """One accepted message: the envelope, the exact bytes, and its meta.

    ``content`` is a ``bytearray`` when it comes from the SMTP listener: the
    buffer the message was read into, so that a 35 MB message is not copied
    again on its way to the spool. Backends treat it as read-only.
    """

    mail_from: str
    rcpt_tos: list[str]
    content: bytes | bytearray
    meta: dict[str, Any] = field(default_factory=dict)
    queue_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class BaseSpool(abc.ABC):
    """Stores accepted messages.

    ``store`` must not return until the message is durable (committed): the
    client is told ``250`` right after, and may then forget the message. If it
    cannot store the message it must raise; the client then gets ``451``.
    """

    @abc.abstractmethod
    async def store(self, message: SpooledMessage) -> None:
        """Store ``message`` durably under ``message.queue_id``."""
