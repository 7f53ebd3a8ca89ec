"""The message spool: where accepted mail is kept, durably, before the final 250."""

from __future__ import annotations

import functools

from django.utils.module_loading import import_string

from kumosubmit.conf import app_settings, clears_on_setting_change
from kumosubmit.spool.base import BaseSpool, SpooledMessage

__all__ = ["BaseSpool", "SpooledMessage", "get_spool"]


@clears_on_setting_change
@functools.cache
def get_spool() -> BaseSpool:
    """The configured spool backend (``KUMOSUBMIT["SPOOL_BACKEND"]``), made once."""
    spool: BaseSpool = import_string(app_settings.SPOOL_BACKEND)()
    return spool
