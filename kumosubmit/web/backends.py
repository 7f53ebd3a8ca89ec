"""The authentication backend that throttles every check of a site password.

It replaces ``django.contrib.auth.backends.ModelBackend`` in
``AUTHENTICATION_BACKENDS``: whatever calls ``authenticate()`` (the sign-in
page, the admin's sign-in, and the password change form of
:mod:`kumosubmit.web.forms`) is counted and delayed, and refused while blocked,
before any password hashing (kumosubmit/web/throttle.py).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.views.decorators.debug import sensitive_variables

from kumosubmit.web import throttle
from kumosubmit.web.addresses import client_address

#: Set on the request when a sign-in was refused for a block, so the form can say so.
BLOCKED_ATTRIBUTE = "kumosubmit_sign_in_block"


class ThrottledModelBackend(ModelBackend):
    """``ModelBackend`` behind the web sign-in throttle."""

    @sensitive_variables("password")
    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> AbstractBaseUser | None:
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if username is None or password is None:
            return None
        policy = throttle.policy()
        address = client_address(request) if request is not None else None
        keys = throttle.Keys.of(policy, address, str(username))
        block = throttle.blocking(policy, keys)
        if block is not None:
            if request is not None:
                setattr(request, BLOCKED_ATTRIBUTE, block)
            # Stops authenticate() at once: no other backend tries, no hash is computed.
            raise PermissionDenied("sign-in blocked")
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            throttle.wait(throttle.record_failure(policy, keys))
        elif policy.enabled:
            throttle.forget_failures(keys)
        return user
