"""``path("credentials/", include("kumosubmit.web.urls"))``: the self-service pages.

With them come a sign-in page, a sign-out and a site password page of the app's
own, for projects that have none (``kumosubmit/web/account.py``).
"""

from django.urls import path

from kumosubmit.web import account, views

app_name = "credentials"

urlpatterns = [
    path("", views.index, name="index"),
    path("<int:login_id>/", views.login_detail, name="login"),
    path("<int:login_id>/password/", views.set_password, name="set_password"),
    path("<int:login_id>/app-passwords/new/", views.create, name="create"),
    path(
        "<int:login_id>/app-passwords/<int:app_password_id>/revoke/",
        views.revoke,
        name="revoke",
    ),
    path("sign-in/", account.SignInView.as_view(), name="sign_in"),
    path("sign-out/", account.SignOutView.as_view(), name="sign_out"),
    path(
        "site-password/",
        account.sign_in_required(account.SitePasswordView.as_view()),
        name="site_password",
    ),
    path(
        "site-password/done/",
        account.sign_in_required(account.SitePasswordDoneView.as_view()),
        name="site_password_done",
    ),
]
