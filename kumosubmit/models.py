"""The app's models live beside the code that uses them; Django finds them here."""

from kumosubmit.audit.models import ConnectionRecord, SeenAddress
from kumosubmit.credentials.models import (
    AllowedSender,
    AppPassword,
    AuthFailureCounter,
    AuthorizedIdentity,
    KnownPair,
    SmtpLogin,
    SprayEvent,
    SprayMark,
)
from kumosubmit.oauth.models import SmtpToken
from kumosubmit.sendlimits.models import SendLimitState, SendRate
from kumosubmit.spool.models import Message
from kumosubmit.web.models import Passkey

__all__ = [
    "AllowedSender",
    "AppPassword",
    "AuthFailureCounter",
    "AuthorizedIdentity",
    "ConnectionRecord",
    "KnownPair",
    "Message",
    "Passkey",
    "SeenAddress",
    "SendLimitState",
    "SendRate",
    "SmtpLogin",
    "SmtpToken",
    "SprayEvent",
    "SprayMark",
]
