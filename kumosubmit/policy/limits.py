"""Per-connection limits: messages per connection and recipients per message."""

from __future__ import annotations

from kumosubmit.conf import app_settings
from kumosubmit.hooks import EnvelopeAddress, reject
from kumosubmit.meta import ConnectionMeta

TOO_MANY_MESSAGES = (421, "4.7.0 Too many messages in one connection, please reconnect")
TOO_MANY_RECIPIENTS = (452, "4.5.3 Too many recipients")


def mail_from(sender: EnvelopeAddress, conn_meta: ConnectionMeta) -> None:
    limit = app_settings.MAX_MESSAGES_PER_CONNECTION
    if limit is not None and conn_meta["messages_accepted"] >= limit:
        reject(*TOO_MANY_MESSAGES)


def rcpt_to(recipient: EnvelopeAddress, conn_meta: ConnectionMeta) -> None:
    if len(conn_meta.transaction.recipients) >= app_settings.MAX_RECIPIENTS:
        reject(*TOO_MANY_RECIPIENTS)
