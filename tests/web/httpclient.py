"""A plain HTTP client for a server process, bound to a chosen loopback source address.

The server sees that address as REMOTE_ADDR (the whole of 127.0.0.0/8 is loopback
on Linux), so one test can sign in "from" several clients.
"""

from __future__ import annotations

import http.client
import re
from http.cookies import SimpleCookie
from urllib.parse import urlencode

CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class SiteClient:
    """Cookies, CSRF tokens and form POSTs over fresh connections from ``source``."""

    def __init__(self, port: int, source: str, host: str = "127.0.0.1") -> None:
        self.port, self.source, self.host = port, source, host
        self.cookies: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict | None = None,
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=30, source_address=(self.source, 0)
        )
        try:
            all_headers = {"Host": f"{self.host}:{self.port}", **(headers or {})}
            if self.cookies:
                all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            body = None
            if form is not None:
                body = urlencode(form)
                all_headers["Content-Type"] = "application/x-www-form-urlencoded"
                all_headers["Referer"] = f"http://{self.host}:{self.port}{path}"
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            text = response.read().decode()
            for value in response.headers.get_all("Set-Cookie") or []:
                for key, morsel in SimpleCookie(value).items():
                    self.cookies[key] = morsel.value
            return response.status, dict(response.headers), text
        finally:
            conn.close()

    def submit(
        self, path: str, form: dict[str, str], headers: dict | None = None
    ) -> tuple[int, dict[str, str], str]:
        """GET the form's page for a CSRF token, then POST the form to it."""
        status, _, page = self.request("GET", path, headers=headers)
        assert status == 200, (status, page[:500])
        token = CSRF_INPUT.search(page)
        assert token, page[:500]
        return self.request("POST", path, {"csrfmiddlewaretoken": token[1], **form}, headers)

    def sign_in(
        self,
        username: str,
        password: str,
        path: str = "/accounts/login/",
        headers: dict | None = None,
    ) -> int:
        """The status of the sign-in POST: 302 signed in, 200 refused (the form again)."""
        return self.submit(path, {"username": username, "password": password}, headers)[0]
