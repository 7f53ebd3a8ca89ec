from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("admin/", admin.site.urls),
    # Django's sign-in, sign-out and password pages (templates/registration/).
    path("accounts/", include("django.contrib.auth.urls")),
    # Self-service: a user's SMTP logins and app passwords (kumosubmit/web/, docs/web.md).
    path("credentials/", include("kumosubmit.web.urls")),
    # django-oauth-toolkit: authorize, token, revoke, introspect (docs/oauth.md).
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("", RedirectView.as_view(pattern_name="credentials:index"), name="home"),
]
