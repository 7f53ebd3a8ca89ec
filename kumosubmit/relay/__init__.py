"""The relay: delivering stored messages to the upstream MTA, at least once, never lost.

One module per concern: ``config`` (settings and options), ``queue`` (claims,
leases and state transitions), ``client`` (the SMTP delivery), ``dsn``
(failure reports), ``worker`` (the delivery loop), ``handoff`` (the worker in
runsmtpd's loop) and ``retention`` (removing delivered content). See
docs/relay.md.
"""
