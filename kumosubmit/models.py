"""The app's models live beside the code that uses them; Django finds them here."""

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials.models import (
    AllowedSender,
    AppPassword,
    AuthFailureCounter,
    AuthorizedIdentity,
    SmtpLogin,
)
from kumosubmit.sendlimits.models import SendLimitState, SendRate
from kumosubmit.spool.models import Message

__all__ = [
    "AllowedSender",
    "AppPassword",
    "AuthFailureCounter",
    "AuthorizedIdentity",
    "ConnectionRecord",
    "Message",
    "SendLimitState",
    "SendRate",
    "SmtpLogin",
]
