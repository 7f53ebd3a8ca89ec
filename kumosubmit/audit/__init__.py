"""The audit log: one row per SMTP connection."""
