"""TLS to the upstream (STARTTLS, implicit), certificate verification, and AUTH."""

from __future__ import annotations

import ssl

import pytest

from kumosubmit.relay.config import RelayConfig, RelayConfigError
from kumosubmit.spool.models import MessageState
from tests.relay.conftest import relay_config

UPSTREAM_LOGIN = ("relay@example.com", "upstream-secret-7f3a")


def test_starttls_verified_against_the_ca_file_with_auth(
    make_sink, relay, queue_message, secret_watch
):
    secret_watch.add(UPSTREAM_LOGIN[1])
    sink = make_sink(tls="starttls", auth=UPSTREAM_LOGIN)
    message = queue_message()
    assert relay(relay_config(sink)) == {"delivered": 1}
    (received,) = sink.received
    assert received.tls
    assert received.login == "relay@example.com"
    assert received.content == bytes(message.content)


def test_implicit_tls(make_sink, relay, queue_message):
    sink = make_sink(tls="implicit")
    queue_message()
    assert relay(relay_config(sink, tls="implicit")) == {"delivered": 1}
    assert sink.received[0].tls


def test_certificates_are_verified_by_default(make_sink, relay, queue_message):
    sink = make_sink(tls="starttls")
    message = queue_message()
    # No CA file: the system's CAs do not know the test CA, so nothing is sent.
    assert relay(relay_config(sink, ca_file=None)) == {"deferred": 1}
    message.refresh_from_db()
    assert message.state == MessageState.DEFERRED
    assert "CERTIFICATE_VERIFY_FAILED" in message.last_error
    assert sink.received == []


def test_the_name_is_verified_too(make_sink, relay, queue_message):
    # A certificate from the right CA, but for localhost and 127.0.0.1, not 127.0.0.2.
    sink = make_sink(tls="implicit", host="127.0.0.2")
    message = queue_message()
    assert relay(relay_config(sink, tls="implicit")) == {"deferred": 1}
    message.refresh_from_db()
    assert "CERTIFICATE_VERIFY_FAILED" in message.last_error
    assert "127.0.0.2" in message.last_error
    assert sink.received == []


def test_verification_can_be_turned_off(make_sink, relay, queue_message):
    sink = make_sink(tls="starttls")
    queue_message()
    config = relay_config(sink, ca_file=None, verify_certificate=False)
    assert relay(config) == {"delivered": 1}


def test_a_refused_auth_defers_rather_than_bounces(make_sink, relay, queue_message):
    sink = make_sink(tls="starttls", auth=UPSTREAM_LOGIN)
    message = queue_message()
    config = relay_config(sink, username="relay@example.com", password="wrong password")
    assert relay(config) == {"deferred": 1}
    message.refresh_from_db()
    assert message.last_error.startswith("535")
    assert "wrong password" not in message.last_error


def test_a_starttls_upstream_that_does_not_offer_it_defers(sink, relay, queue_message):
    message = queue_message()
    assert relay(relay_config(sink, tls="starttls")) == {"deferred": 1}
    message.refresh_from_db()
    assert message.state == MessageState.DEFERRED
    assert sink.received == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"tls": "none", "host": "192.0.2.25"}, "only for an MTA on this host"),
        ({"tls": "ssl"}, "TLS must be one of"),
        ({"username": "relay"}, "USERNAME and PASSWORD go together"),
        ({"workers": 0}, "WORKERS must be 1 or more"),
    ],
)
def test_unsafe_or_unusable_configurations_are_refused(changes, problem):
    config = RelayConfig(**{"host": "127.0.0.1", "port": 25, "tls": "starttls", **changes})
    with pytest.raises(RelayConfigError, match=problem):
        config.validate()


def test_the_client_context_is_tls_1_2_or_newer():
    context = RelayConfig(host="mta.example", port=587).tls_context()
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
