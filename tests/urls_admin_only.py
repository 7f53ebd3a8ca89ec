"""A host project's URLs with the admin only (kumosubmit's pages left out)."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
