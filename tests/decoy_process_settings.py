"""Settings for the runsmtpd processes of tests/security/test_decoys.py: the project's, with
admins to alert and the test's host name."""

from project.settings import *  # noqa: F403
from project.settings import KUMOSUBMIT

ADMINS = [("Operations", "ops@example.com")]
KUMOSUBMIT = {**KUMOSUBMIT, "HOSTNAME": "mx.test.invalid"}
