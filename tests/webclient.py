"""A small HTTP client for tests against a real web server process: cookies, CSRF, redirects.

Only the standard library (urllib), so it also drives a project installed from the
wheel without anything of ours on its path.
"""

from __future__ import annotations

import html
import http.client
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.cookiejar import CookieJar

_CSRF_INPUT = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


class _EveryStatus(urllib.request.HTTPErrorProcessor):
    """Hand back 3xx, 4xx and 5xx answers as they are, instead of raising or following."""

    def http_response(
        self, request: urllib.request.Request, response: http.client.HTTPResponse
    ) -> http.client.HTTPResponse:
        return response

    https_response = http_response


@dataclass
class Page:
    status: int
    url: str
    location: str | None
    content_type: str
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def csrf_token(self) -> str:
        match = _CSRF_INPUT.search(self.body)
        assert match, f"no CSRF token on {self.url}:\n{self.text[:2000]}"
        return html.unescape(match.group(1).decode())


class WebClient:
    """A browser without a browser: keeps cookies, and posts forms with their CSRF token."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.cookies = CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), _EveryStatus()
        )

    def _fetch(self, path: str, data: dict[str, str] | None) -> Page:
        url = path if path.startswith("http") else self.base_url + path
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(url, data=body)  # noqa: S310  (http to loopback)
        with self.opener.open(request, timeout=30) as response:
            return Page(
                status=response.status,
                url=url,
                location=response.headers.get("Location"),
                content_type=response.headers.get("Content-Type", ""),
                body=response.read(),
            )

    def get(self, path: str, *, follow: bool = True) -> Page:
        page = self._fetch(path, None)
        while follow and page.status in (301, 302, 303) and page.location:
            page = self._fetch(urllib.parse.urljoin(page.url, page.location), None)
        return page

    def post(
        self, path: str, data: dict[str, str], *, form_page: Page, follow: bool = True
    ) -> Page:
        """POST ``data`` with the CSRF token of ``form_page`` (the page the form is on)."""
        page = self._fetch(path, {"csrfmiddlewaretoken": form_page.csrf_token(), **data})
        if follow and page.status in (301, 302, 303) and page.location:
            return self.get(urllib.parse.urljoin(page.url, page.location))
        return page
