"""Sending limits per login and per app password, shared by every process and host.

- :mod:`~kumosubmit.sendlimits.rules`: the rules (``"30/minute"``), parsed;
- :mod:`~kumosubmit.sendlimits.sessions`: which apply to a session (the login's, else
  the site's defaults; an app password's own on top), as buckets;
- :mod:`~kumosubmit.sendlimits.backends`: GCRA state in the database (the default)
  or in Redis through Django's cache framework; reserve, release, use;
- :mod:`~kumosubmit.sendlimits.usage`: what is in use now (the pages, the admin);
- :mod:`~kumosubmit.sendlimits.notice`: the message to the owner and the admins;
- :mod:`~kumosubmit.sendlimits.suspicion`: the optional suspension of a login whose
  rate jumps far above its usual one.

:mod:`~kumosubmit.sendlimits.models` holds the database backend's state and the rates;
:mod:`~kumosubmit.sendlimits.forms` the field for rules. The SMTP side is two built-in
handlers of the events: :mod:`kumosubmit.policy.sendlimits`.
The design is explained in docs/limits.md.
"""
