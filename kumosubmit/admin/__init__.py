"""The admin, one module per concern; importing this package registers them all."""

from kumosubmit.admin import lanes as _lanes  # noqa: F401  (registers)
from kumosubmit.admin import logs as _logs  # noqa: F401  (registers)
from kumosubmit.admin import second_factor as _second_factor  # noqa: F401  (registers)
from kumosubmit.admin import sendlimits as _sendlimits  # noqa: F401  (registers)
from kumosubmit.admin import tokens as _tokens  # noqa: F401  (registers)
from kumosubmit.admin.logins import hash_summary
from kumosubmit.admin.spool import CONTENT_PREVIEW_BYTES

__all__ = ["CONTENT_PREVIEW_BYTES", "hash_summary"]
