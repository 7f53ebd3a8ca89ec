"""Making and revoking SMTP tokens with django-oauth-toolkit (``createsmtptoken``, the pages).

A token is an ``AccessToken`` with the ``smtp`` scope (``KUMOSUBMIT["OAUTH"]["SCOPE"]``)
for the owner of the login, made by the application :data:`APPLICATION_NAME`,
plus an :class:`~kumosubmit.oauth.models.SmtpToken` row that says which login it
was made for. The token text is returned once and kept nowhere by kumosubmit;
with ``OAUTH2_PROVIDER["COMPLIANT_BCP_RFC9700_TOKEN_STORAGE"] = True`` (the
project's settings) the toolkit keeps only its checksum too.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from kumosubmit.conf import app_settings
from kumosubmit.credentials.models import SmtpLogin
from kumosubmit.oauth import checksum
from kumosubmit.oauth.models import SmtpToken

#: The toolkit application the tokens are issued by (made on first use).
APPLICATION_NAME = "kumosubmit SMTP tokens"


class NoOwner(ValueError):
    """The login belongs to no site user, so no token can be issued for it."""


def default_expiry(days: float | None = None) -> datetime:
    if days is None:
        days = app_settings.oauth["TOKEN_DAYS"]
    return timezone.now() + timedelta(days=days)


def _application() -> object:
    from oauth2_provider.models import get_application_model

    model = get_application_model()
    application = model.objects.filter(name=APPLICATION_NAME, user=None).first()
    if application is None:
        application = model.objects.create(
            name=APPLICATION_NAME,
            client_type=model.CLIENT_CONFIDENTIAL,
            authorization_grant_type=model.GRANT_CLIENT_CREDENTIALS,
        )
    return application


@sensitive_variables("token")
def create_smtp_token(
    login: SmtpLogin, label: str, expires_at: datetime | None
) -> tuple[SmtpToken, str]:
    """Issue a token for ``login``'s owner; return its row and the token (show it once)."""
    from oauth2_provider.models import get_access_token_model, set_token_value
    from oauthlib.common import generate_token

    if login.owner_id is None:
        raise NoOwner(f"the login {login.username} has no owner (a site user) to issue it to")
    token = generate_token(length=40)
    access_token_model = get_access_token_model()
    with transaction.atomic():
        access_token = access_token_model(
            user_id=login.owner_id,
            application=_application(),
            scope=app_settings.oauth["SCOPE"],
            # The toolkit requires an expiry; "never" is a century.
            expires=expires_at or timezone.now() + timedelta(days=36500),
        )
        set_token_value(access_token, token)
        access_token.save()
        row = SmtpToken.objects.create(
            login=login,
            label=label,
            token_checksum=checksum(token),
            access_token_id=access_token.pk,
            expires_at=expires_at,
        )
    return row, token


def revoke_smtp_token(row: SmtpToken) -> bool:
    """Revoke it now (the toolkit's token is deleted); False if it was revoked already."""
    from oauth2_provider.models import get_access_token_model

    with transaction.atomic():
        done = SmtpToken.objects.filter(pk=row.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if row.access_token_id is not None:
            get_access_token_model().objects.filter(pk=row.access_token_id).delete()
    row.refresh_from_db(fields=["revoked_at"])
    return bool(done)
