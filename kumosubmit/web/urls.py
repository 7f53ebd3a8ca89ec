"""``path("credentials/", include("kumosubmit.web.urls"))``: the self-service pages."""

from django.urls import path

from kumosubmit.web import views

app_name = "credentials"

urlpatterns = [
    path("", views.index, name="index"),
    path("<int:login_id>/", views.login_detail, name="login"),
    path("<int:login_id>/password/", views.set_password, name="set_password"),
    path("<int:login_id>/app-passwords/new/", views.create, name="create"),
    path(
        "<int:login_id>/app-passwords/<int:app_password_id>/limits/",
        views.app_password_limits,
        name="app_password_limits",
    ),
    path(
        "<int:login_id>/app-passwords/<int:app_password_id>/revoke/",
        views.revoke,
        name="revoke",
    ),
]
