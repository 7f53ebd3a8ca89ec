"""Self-service pages: a signed-in user manages the SMTP logins linked to them.

They see their logins, make app passwords (shown once), revoke them, set a
login's own password, and read their recent sign-ins from the audit table.
Included by the project at ``credentials/`` (``kumosubmit.web.urls``); the
templates are the app's (``kumosubmit/templates/kumosubmit/``), which a project
may override. See docs/web.md and docs/integration.md.
"""
