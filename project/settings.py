"""Settings for running kumosubmit on its own.

Everything an operator changes comes from the environment, so one file serves
a laptop and a fleet: DATABASE_URL, DJANGO_SECRET_KEY, DJANGO_DEBUG,
DJANGO_ALLOWED_HOSTS and KUMOSUBMIT_DATA_DIR.
"""

import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

# Where the self-signed certificate and the default SQLite file live (ignored by git).
DATA_DIR = Path(os.environ.get("KUMOSUBMIT_DATA_DIR", BASE_DIR / "var"))


def _secret_key() -> str:
    """Use DJANGO_SECRET_KEY, or make one on first run and keep it in DATA_DIR."""
    if key := os.environ.get("DJANGO_SECRET_KEY"):
        return key
    path = DATA_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return key


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # The web's second factor (kumosubmit/web/second_factor.py): TOTP and recovery codes.
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    # The OAuth 2.0 provider whose tokens AUTH OAUTHBEARER/XOAUTH2 accept (docs/oauth.md).
    "oauth2_provider",
    "kumosubmit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    # Who must have a second factor is led to enrol, who has one to use it, before anything.
    "kumosubmit.web.middleware.SecondFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{DATA_DIR / 'kumosubmit.sqlite3'}",
        # runsmtpd is long-lived: keep connections, but check them before reuse.
        conn_max_age=600,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # WAL lets the admin read while runsmtpd writes; IMMEDIATE avoids lock upgrades.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
    }

elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Notice a database path that goes silent (no reset) within seconds, not hours.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": 15000,
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The self-service pages (kumosubmit/web/) sign in with Django's own views.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "credentials:index"
LOGOUT_REDIRECT_URL = "login"
# Every check of a site password is throttled like SMTP AUTH (kumosubmit/web/throttle.py).
AUTHENTICATION_BACKENDS = ["kumosubmit.web.backends.ThrottledModelBackend"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
# WhiteNoise warns on every request until collectstatic has made it; an empty one is fine.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve the admin's CSS and JS from the apps themselves, without collectstatic.
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "loggers": {
        "kumosubmit": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # aiosmtpd logs every command line at INFO; one line per connection is ours.
        "mail.log": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}

# django-oauth-toolkit: tokens with the "smtp" scope are good for the SMTP logins their
# user owns. Only checksums of tokens are stored (RFC 9700 section 4.14), never the tokens.
OAUTH2_PROVIDER = {
    "SCOPES": {"smtp": "Send mail through the submission server"},
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
}

# kumosubmit's own settings; every key is optional (see README, "Settings").
KUMOSUBMIT = {
    "DATA_DIR": DATA_DIR,
    "OAUTH": {"VALIDATOR": "kumosubmit.oauth.toolkit.validate"},
}
