"""An external OAuth provider: RFC 7662 introspection and JWTs checked against a JWKS.

The provider is a small real HTTP server on loopback, in a thread of the test;
the JWTs are signed with joserfc, the keys made by it. The listener is the
in-process one, so the settings of each test apply to it.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.oauth import checksum, introspection
from kumosubmit.oauth import jwt as jwt_validator
from tests.live import LiveSMTPServer, quitting

ALICE = "alice@example.com"
ISSUER = "https://id.example.com/"
AUDIENCE = "smtp.example.com"
CLIENT_ID = "kumosubmit"
CLIENT_SECRET = "client secret of kumosubmit"


class Provider:
    """What the HTTP server answers, and what it was asked."""

    def __init__(self) -> None:
        self.keys = KeySet.generate_key_set("RSA", 2048, count=1)
        self.published = self.keys
        self.introspected: dict[str, dict[str, Any]] = {}  # token -> answer
        self.calls: list[str] = []
        self.authorization: list[str | None] = []
        self.delay = 0.0
        self.url = ""

    def sign(self, claims: dict[str, Any], key: RSAKey | OctKey | None = None, alg="RS256") -> str:
        key = key or self.keys.keys[0]
        header = {"alg": alg, "kid": key.kid} if key.kid else {"alg": alg}
        return jwt.encode(header, claims, key, algorithms=[alg])


@pytest.fixture
def provider() -> Iterator[Provider]:
    state = Provider()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def answer(self, body: Any) -> None:
            time.sleep(state.delay)
            data = json.dumps(body).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up (the timeout test)

        def do_GET(self) -> None:
            state.calls.append(self.path)
            self.answer(state.published.as_dict(private=False))

        def do_POST(self) -> None:
            state.calls.append(self.path)
            state.authorization.append(self.headers.get("Authorization"))
            length = int(self.headers["Content-Length"])
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            token = form["token"][0]
            self.answer(state.introspected.get(token, {"active": False}))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    introspection.cache.clear()
    jwt_validator.keys.clear()
    yield
    introspection.cache.clear()
    jwt_validator.keys.clear()


@pytest.fixture
def use(settings, provider: Provider) -> Callable[..., None]:
    def configure(validator: str, **options: Any) -> None:
        settings.KUMOSUBMIT = {
            **settings.KUMOSUBMIT,
            "OAUTH": {
                "VALIDATOR": f"kumosubmit.oauth.{validator}.validate",
                "INTROSPECTION_URL": f"{provider.url}/introspect",
                "CLIENT_ID": CLIENT_ID,
                "CLIENT_SECRET": CLIENT_SECRET,
                "JWKS_URL": f"{provider.url}/jwks",
                "ISSUER": ISSUER,
                "AUDIENCE": AUDIENCE,
                **options,
            },
        }

    return configure


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def auth(server: LiveSMTPServer, token: str, user: str = ALICE) -> int:
    """AUTH XOAUTH2: 235, 535 (after the error challenge), or the code of another reply."""
    with quitting(server.starttls()) as client:
        code, text = client.docmd("AUTH", "XOAUTH2 " + xoauth2(user, token))
        if code != 334:
            return code
        assert json.loads(base64.b64decode(text))["status"] == "invalid_token"
        return client.docmd("")[0]


def last_note(server: LiveSMTPServer) -> dict[str, Any]:
    server.settle()
    return ConnectionRecord.objects.order_by("-pk").first().meta["auth_credentials"][-1]


@pytest.fixture
def alice(make_login):
    return make_login(ALICE, "own password of alice")


# -- RFC 7662 introspection ------------------------------------------------------------


def claims(**changes: Any) -> dict[str, Any]:
    return {
        "active": True,
        "scope": "openid smtp",
        "email": ALICE,
        "client_id": "thunderbird",
        "exp": int(time.time()) + 600,
        **changes,
    }


def test_introspection_good_token_is_cached(smtp_server, provider, use, alice, secret_watch):
    use("introspection")
    token = "opaque-token-of-alice-0123456789"
    secret_watch.add_bearer(ALICE, token)
    secret_watch.add(CLIENT_SECRET)
    provider.introspected[token] = claims()
    assert auth(smtp_server, token) == 235
    assert last_note(smtp_server) == {
        "kind": "oauth_token",
        "result": "accepted",
        "application": "thunderbird",
        "attempt": 0,
    }
    assert auth(smtp_server, token) == 235
    assert last_note(smtp_server)["cached"] is True
    assert provider.calls == ["/introspect"]
    expected = base64.b64encode(
        f"{CLIENT_ID}:{urllib.parse.quote(CLIENT_SECRET, safe='')}".encode()
    ).decode()
    assert provider.authorization == [f"Basic {expected}"]
    record = ConnectionRecord.objects.order_by("-pk").first()
    assert record.authc == ALICE and record.auth_outcome == "success"


@pytest.mark.parametrize(
    ("answer", "result"),
    [
        ({"active": False}, "invalid_token"),
        (claims(exp=int(time.time()) - 5), "expired"),
        (claims(scope="openid email"), "wrong_scope"),
        (claims(email="mallory@example.com"), "no_login"),
        (claims(email=None), "no_login"),
    ],
)
def test_introspection_refusals(smtp_server, provider, use, alice, secret_watch, answer, result):
    use("introspection")
    token = "opaque-token-refused-0123456789"
    secret_watch.add_bearer(ALICE, token)
    provider.introspected[token] = answer
    assert auth(smtp_server, token) == 535
    assert last_note(smtp_server)["result"] == result
    # An inactive or expired token's answer is not kept; an active one's is (the scope
    # and the login are checked again at every AUTH).
    kept = introspection.cache.get(checksum(token)) is not None
    assert kept == (result not in ("invalid_token", "expired"))


def test_introspection_cache_never_outlives_the_token(settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "OAUTH": {"CACHE_TTL": 60}}
    assert introspection._ttl({"exp": time.time() + 3}) <= 3
    assert introspection._ttl({"exp": time.time() + 3600}) == 60
    assert introspection._ttl({}) == 0  # no exp: not kept
    introspection.cache.put("k", {"active": True}, 0.05)
    assert introspection.cache.get("k") == {"active": True}
    time.sleep(0.06)
    assert introspection.cache.get("k") is None


def test_unreachable_or_slow_provider_is_454(smtp_server, provider, use, alice, secret_watch):
    token = "opaque-token-timeout-0123456789"
    secret_watch.add_bearer(ALICE, token)
    provider.introspected[token] = claims()
    provider.delay = 1.0
    use("introspection", HTTP_TIMEOUT=0.2)
    assert auth(smtp_server, token) == 454
    provider.delay = 0
    use("introspection", INTROSPECTION_URL="http://127.0.0.1:9/introspect")
    assert auth(smtp_server, token) == 454


# -- JWTs and the JWKS ------------------------------------------------------------------


def jwt_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "email": ALICE,
        "scope": "smtp",
        "iat": now,
        "exp": now + 600,
        **changes,
    }


def test_jwt_good_token(smtp_server, provider, use, alice, secret_watch):
    use("jwt")
    token = provider.sign(jwt_claims(azp="thunderbird"))
    secret_watch.add_bearer(ALICE, token)
    assert auth(smtp_server, token) == 235
    assert last_note(smtp_server)["application"] == "thunderbird"
    assert auth(smtp_server, token) == 235
    assert provider.calls == ["/jwks"]  # the JWKS is kept


def test_jwt_scope_as_a_list_and_another_claim(smtp_server, provider, use, alice, secret_watch):
    use("jwt", LOGIN_CLAIM="preferred_username")
    claims = jwt_claims(scp=["smtp"], preferred_username=ALICE)
    del claims["scope"]
    token = provider.sign(claims)
    secret_watch.add_bearer(ALICE, token)
    assert auth(smtp_server, token) == 235


@pytest.mark.parametrize(
    ("changes", "result"),
    [
        ({"iss": "https://evil.example.com/"}, "invalid_token"),
        ({"aud": "other.example.com"}, "invalid_token"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"exp": None}, "invalid_token"),
        ({"scope": "openid"}, "wrong_scope"),
        ({"email": "mallory@example.com"}, "no_login"),
    ],
)
def test_jwt_refusals(smtp_server, provider, use, alice, secret_watch, changes, result):
    use("jwt")
    token = provider.sign({k: v for k, v in jwt_claims(**changes).items() if v is not None})
    secret_watch.add_bearer(ALICE, token)
    assert auth(smtp_server, token) == 535
    assert last_note(smtp_server)["result"] == result


def test_jwt_signed_by_another_key_or_algorithm(smtp_server, provider, use, alice, secret_watch):
    use("jwt")
    stranger = RSAKey.generate_key(2048, parameters={"kid": provider.keys.keys[0].kid})
    forged = [
        provider.sign(jwt_claims(), key=stranger),
        # An HMAC signature (with the key id of the provider's key): HS256 is not allowed.
        provider.sign(
            jwt_claims(),
            key=OctKey.import_key(b"a shared secret of 32 bytes....!", {"kid": stranger.kid}),
            alg="HS256",
        ),
        # alg "none", unsigned.
        "eyJhbGciOiJub25lIn0."
        + base64.urlsafe_b64encode(json.dumps(jwt_claims()).encode()).decode().rstrip("=")
        + ".",
    ]
    for token in forged:
        secret_watch.add_bearer(ALICE, token)
        assert auth(smtp_server, token) == 535
        assert last_note(smtp_server)["result"] == "invalid_token"


def test_jwt_key_rotation_fetches_the_jwks_again(smtp_server, provider, use, alice, secret_watch):
    use("jwt")
    old = provider.sign(jwt_claims())
    secret_watch.add_bearer(ALICE, old)
    assert auth(smtp_server, old) == 235
    # The provider publishes a new key and signs with it.
    new_key = RSAKey.generate_key(2048, parameters={"kid": "rotated"})
    provider.published = KeySet([*provider.keys.keys, new_key])
    jwt_validator.keys.fetched -= jwt_validator.REFETCH_INTERVAL  # the last fetch is old
    token = provider.sign(jwt_claims(), key=new_key)
    secret_watch.add_bearer(ALICE, token)
    assert auth(smtp_server, token) == 235
    assert provider.calls == ["/jwks", "/jwks"]


def test_jwks_unreachable_is_454(smtp_server, provider, use, alice, secret_watch):
    use("jwt", JWKS_URL="http://127.0.0.1:9/jwks")
    token = provider.sign(jwt_claims())
    secret_watch.add_bearer(ALICE, token)
    assert auth(smtp_server, token) == 454
