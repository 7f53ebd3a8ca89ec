"""The Python examples of docs/hooks.md.

docs/hooks.md quotes each block between two ``# --`` lines verbatim
(tests/test_hook_examples.py checks it), and tests/test_hook_examples.py runs
every one of them through real SMTP sessions. Change both together.
"""

# -- imports --
import functools
import hashlib
import hmac
import ipaddress
import logging
import time
from pathlib import Path

import dkim

from kumosubmit.hooks import reject
from kumosubmit.policy import senders

# -- deny-listed peer --
DENIED_NETWORKS = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")]


def is_peer_deny_listed(address):
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in DENIED_NETWORKS)


def deny_listed_peer(conn_meta):
    """smtp_server_connection_accepted: refuse listed networks before the greeting."""
    peer = conn_meta.get_meta("received_from")  # "192.0.2.7:50123"
    if is_peer_deny_listed(conn_meta.get_meta("peer_address")):
        reject(421, f"service not accepted from {peer}")


# -- sender domain --
REFUSED_SENDER_DOMAINS = {"bad.example"}


def refuse_sender_domain(sender, conn_meta):
    """smtp_server_mail_from: no mail from these domains, whoever logged in."""
    if sender.domain.lower() in REFUSED_SENDER_DOMAINS:
        reject(550, "5.7.1 not from that domain")


# -- recipient domain --
REFUSED_RECIPIENT_DOMAINS = {"bad.example"}


def refuse_recipient_domain(recipient, conn_meta):
    """smtp_server_rcpt_to: refuse one recipient; the others of the message go on."""
    if recipient.domain.lower() in REFUSED_RECIPIENT_DOMAINS:
        reject(550, f"5.7.1 no mail to {recipient.domain} from here")


# -- dkim --
#: The signing domains: domain -> (selector, file with the RSA private key in PEM).
DKIM_KEYS = {}


@functools.cache
def dkim_key(path):
    return Path(path).read_bytes()  # read once per process


def dkim_sign(message, conn_meta):
    """smtp_server_message_received: sign for the domain of the From: header."""
    author = message.from_header()
    if author is None or author.domain.lower() not in DKIM_KEYS:
        return
    selector, key_file = DKIM_KEYS[author.domain.lower()]
    signature = dkim.sign(
        message.content,
        selector=selector.encode(),
        domain=author.domain.lower().encode(),
        privkey=dkim_key(key_file),
        include_headers=[b"From", b"To", b"Subject"],
    )
    name, _, value = signature.decode().partition(":")
    message.prepend_header(name, value.strip())


# -- auth over a dict --
# An example only: never keep passwords in plain text.
PASSWORD_DATABASE = {"daniel": "tiger"}


def auth_from_dict(authz, authc, password, conn_meta):
    """smtp_server_auth_plain: True lets the client in, False is 535, None passes."""
    expected = PASSWORD_DATABASE.get(authc)
    if expected is None:
        return None  # not one of ours: the next handler decides
    if password == "" or authz != authc:
        return False
    return hmac.compare_digest(expected.encode(), password.encode())


async def sender_policy(sender, conn_meta):
    """smtp_server_mail_from, in the built-in sender policy's place: the dict's users send
    as name@example.com; database logins keep the built-in rule."""
    login = conn_meta.get_meta("authn_id")
    if login in PASSWORD_DATABASE:
        if sender.address.lower() != f"{login}@example.com":
            reject(553, "5.7.1 Sender address not allowed for this login")
    else:
        await senders.check_sender(sender, conn_meta)


# -- settings --
KUMOSUBMIT = {
    "HOOKS": {
        # The dict first; logins it does not know go on to the database (SmtpLogin).
        "smtp_server_auth_plain": [
            "tests.hook_examples.auth_from_dict",
            "kumosubmit.credentials.service.authenticate",
        ],
    },
    "BUILTIN_HOOKS": {
        # The limits stay; the sender policy is replaced by one that knows the dict.
        "smtp_server_mail_from": [
            "kumosubmit.policy.limits.mail_from",
            "tests.hook_examples.sender_policy",
            "kumosubmit.policy.sendlimits.mail_from",
        ],
    },
}


# -- ehlo --
def no_help(domain, conn_meta, extensions):
    """smtp_server_ehlo: advertise the extensions without HELP."""
    return [line for line in extensions if line != "HELP"]


# -- aliases --
ALIASES = {"team@example.org": ["ann@example.org", "bob@example.org"]}


def expand_aliases(message, conn_meta):
    """smtp_server_data: one recipient becomes several (the stored envelope has them)."""
    recipients = []
    for recipient in message.recipient_list():
        recipients += ALIASES.get(str(recipient).lower(), [recipient])
    message.set_recipient_list(recipients)


# -- tenant --
def tenant_by_listener(conn_meta):
    """smtp_server_connection_accepted: implicit TLS (port 465) is for the app's own mail."""
    implicit = conn_meta.get_meta("listener") == "implicit-tls"
    conn_meta.set_meta("tenant", "transactional" if implicit else "bulk")


def queue_by_tenant(message, conn_meta):
    """smtp_server_message_received: set the message's own meta, stored with it."""
    tenant = conn_meta.get_meta("tenant") or "default"  # copied into the message's meta
    message.set_meta("queue", f"{tenant}-outbound")
    if message.get_first_named_header("X-Tenant") is None:
        message.append_header("X-Tenant", tenant)


# -- rewrite --
def brand_greeting(status, response, command, conn_meta):
    """smtp_server_rewrite_response: (status, response), None keeping that part."""
    if command is None and status == 220:
        return None, "mail.example.com ESMTP ready"
    return None


# -- wrapper --
log = logging.getLogger("myproject.auth")


async def log_auth_outcome(authz, authc, password, conn_meta):
    """A wrapper around smtp_server_auth_plain: runs before the others, then gets the verdict."""
    started = time.monotonic()
    verdict = yield  # True, False, or None (no decision, an error, a 4xx refusal)
    outcome = {True: "accepted", False: "refused", None: "undecided"}[verdict]
    log.info("AUTH for %s %s in %.0f ms", authc, outcome, (time.monotonic() - started) * 1000)


# -- tokens --
# An example only: a project's own service tokens, kept as SHA-256 digests.
SERVICE_TOKENS = {hashlib.sha256(b"svc-backup-0123456789").hexdigest(): "backup@example.com"}


def service_token(authz, token, conn_meta):
    """smtp_server_auth_oauthbearer: the login the token is good for, False, or None."""
    login = SERVICE_TOKENS.get(hashlib.sha256(token.encode()).hexdigest())
    if login is None:
        return None  # not one of ours: the next handler (the built-in validator) decides
    return login


# -- token settings --
KUMOSUBMIT_TOKENS = {
    "HOOKS": {
        # The project's service tokens first; other tokens go to the configured validator.
        "smtp_server_auth_oauthbearer": [
            "tests.hook_examples.service_token",
            "kumosubmit.oauth.validate",
        ],
    },
}


# -- end --
