"""``path("credentials/", include("kumosubmit.web.urls"))``: the self-service pages.

With them come a sign-in page, a sign-out and a site password page of the app's
own, for projects that have none (``kumosubmit/web/account.py``), and the second
factor's pages (``kumosubmit/web/security_views.py``).
"""

from django.urls import path

from kumosubmit.web import account, views
from kumosubmit.web import security_views as second_factor_views

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
    path("<int:login_id>/tokens/new/", views.create_token, name="create_token"),
    path("<int:login_id>/tokens/<int:token_id>/revoke/", views.revoke_token, name="revoke_token"),
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
    # The second factor (kumosubmit/web/second_factor.py).
    path("verify/", second_factor_views.verify, name="second_factor_verify"),
    path(
        "verify/passkey/begin/",
        second_factor_views.passkey_assert_begin,
        name="passkey_assert_begin",
    ),
    path(
        "verify/passkey/finish/",
        second_factor_views.passkey_assert_finish,
        name="passkey_assert_finish",
    ),
    path("security/", second_factor_views.security, name="security"),
    path("security/totp/", second_factor_views.totp_enrol, name="totp_enrol"),
    path(
        "security/totp/<int:device_id>/remove/",
        second_factor_views.totp_remove,
        name="totp_remove",
    ),
    path("security/recovery-codes/", second_factor_views.recovery_codes, name="recovery_codes"),
    path(
        "security/passkeys/begin/",
        second_factor_views.passkey_register_begin,
        name="passkey_register_begin",
    ),
    path(
        "security/passkeys/finish/",
        second_factor_views.passkey_register_finish,
        name="passkey_register_finish",
    ),
    path(
        "security/passkeys/<int:passkey_id>/remove/",
        second_factor_views.passkey_remove,
        name="passkey_remove",
    ),
]
