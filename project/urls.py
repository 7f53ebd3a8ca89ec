from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from kumosubmit.web.forms import AdminSignInForm

# The admin's sign-in counts failures with the others (kumosubmit/web/throttle.py) and
# says when a block refused it; its password change is the site's throttled one.
admin.site.login_form = AdminSignInForm

urlpatterns = [
    path(
        "admin/password_change/",
        RedirectView.as_view(pattern_name="password_change", query_string=True),
    ),
    path("admin/", admin.site.urls),
    # Django's sign-in, sign-out and password pages (templates/registration/), throttled.
    path("accounts/", include("kumosubmit.web.account_urls")),
    # Self-service: a user's SMTP logins and app passwords (kumosubmit/web/, docs/web.md).
    path("credentials/", include("kumosubmit.web.urls")),
    # django-oauth-toolkit: authorize, token, revoke, introspect (docs/oauth.md).
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("", RedirectView.as_view(pattern_name="credentials:index"), name="home"),
]
