"""Signals kumosubmit sends, for observers in the same process.

Receivers run in the thread that sends: for ``message_stored`` that is the
database thread (``kumosubmit.db.run_db``), right after the commit, so a
receiver must be quick and must not block; one that wants an event loop to
act hands over with ``loop.call_soon_threadsafe`` (see relay/handoff.py).
Decisions go through hooks (kumosubmit.hooks), never through signals.
"""

from django.dispatch import Signal

# Provides queue_id: a message is committed to the database spool (before its 250).
message_stored = Signal()
