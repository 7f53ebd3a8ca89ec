"""kumosubmit: an authenticated SMTP submission server as a reusable Django app."""

__version__ = "0.1.0"
