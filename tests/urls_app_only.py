"""A host project's URLs with kumosubmit's pages and the admin, and no account pages."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("credentials/", include("kumosubmit.web.urls")),
]
