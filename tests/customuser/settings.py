"""The test settings with AUTH_USER_MODEL = "customuser.EmailUser" (keyed by email)."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.customuser"]
AUTH_USER_MODEL = "customuser.EmailUser"
