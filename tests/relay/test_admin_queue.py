"""The queue in the admin: counts per state, filters, retry now, hold/release, delete."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from kumosubmit.spool.models import Message, MessageState
from tests.relay.conftest import new_message, relay_config

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:kumosubmit_message_changelist"
LATER = timezone.now() + timedelta(hours=1)


def make(state: str = MessageState.QUEUED, **fields) -> Message:
    message = new_message(state=state, **fields)
    message.save()
    return message


def act(client, action: str, *messages: Message, **extra):
    return client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [m.pk for m in messages], **extra},
        follow=True,
    )


def notes(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_changelist_counts_each_state_and_filters_by_it(admin_client):
    make()
    make()
    make(MessageState.DEFERRED, attempts=1, next_attempt_at=LATER, last_error="451 4.3.0 busy")
    make(MessageState.FAILED, attempts=1, next_attempt_at=None, last_error="550 5.1.1 no such")
    response = admin_client.get(reverse(CHANGELIST))
    content = response.content.decode()
    assert "queued 2 · in delivery 0 · deferred 1 · delivered 0 · failed 1 · held 0" in content
    assert "deferred (1)" in content and "queued (2)" in content  # the filter's choices
    assert "451 4.3.0 busy" in content  # the last error column
    response = admin_client.get(reverse(CHANGELIST), {"state": "failed"})
    assert [m.last_error for m in response.context["cl"].result_list] == ["550 5.1.1 no such"]


def test_retry_now_makes_messages_due_and_tries_failed_recipients_again(admin_client):
    deferred = make(MessageState.DEFERRED, attempts=2, next_attempt_at=LATER)
    failed = make(
        MessageState.FAILED,
        attempts=1,
        next_attempt_at=None,
        rcpt_tos=["bob@example.org", "carol@example.org"],
        recipient_outcomes=[
            {"state": "delivered", "reply": "250 ok"},
            {"state": "failed", "reply": "550 5.1.1 no such user"},
        ],
    )
    delivered = make(MessageState.DELIVERED, attempts=1, next_attempt_at=None)
    in_delivery = make(MessageState.DELIVERING, lease_owner="w1", next_attempt_at=LATER)
    before = timezone.now()
    response = act(admin_client, "retry_now", deferred, failed, delivered, in_delivery)
    assert notes(response) == [
        "2 messages retried now.",
        "2 messages were left as they were (their state does not allow it).",
    ]
    for message in (deferred, failed, delivered, in_delivery):
        message.refresh_from_db()
    assert deferred.state == failed.state == MessageState.DEFERRED
    assert before <= deferred.next_attempt_at <= timezone.now()
    assert [o["state"] for o in failed.recipient_outcomes] == ["delivered", "deferred"]
    assert failed.next_attempt_at is not None
    assert (delivered.state, delivered.next_attempt_at) == (MessageState.DELIVERED, None)
    assert (in_delivery.state, in_delivery.lease_owner) == (MessageState.DELIVERING, "w1")


def test_a_retried_failed_message_is_delivered_to_the_recipient_that_failed(
    admin_client, sink, relay
):
    sink.rcpt_replies["carol@example.org"] = "550 5.1.1 no such user"
    message = make(rcpt_tos=["bob@example.org", "carol@example.org"])
    message.mail_from = ""  # no DSN to muddle the count
    message.save()
    relay(relay_config(sink))
    message.refresh_from_db()
    assert message.state == MessageState.DELIVERED
    assert message.recipient_outcomes[1]["state"] == "failed"
    # The operator fixes the mailbox, then retries: only carol is sent to.
    del sink.rcpt_replies["carol@example.org"]
    message.state = MessageState.FAILED
    message.save()
    act(admin_client, "retry_now", message)
    relay(relay_config(sink))
    assert [r.rcpt_tos for r in sink.received] == [["bob@example.org"], ["carol@example.org"]]


def test_hold_keeps_a_message_back_until_released(admin_client, sink, relay):
    queued = make()
    deferred = make(MessageState.DEFERRED, attempts=1, next_attempt_at=timezone.now())
    response = act(admin_client, "hold", queued, deferred)
    assert notes(response) == ["2 messages held."]
    queued.refresh_from_db()
    assert (queued.state, queued.next_attempt_at) == (MessageState.HELD, None)
    assert relay(relay_config(sink)) == {}
    assert sink.received == []

    response = act(admin_client, "release", queued, deferred)
    assert notes(response) == ["2 messages released."]
    queued.refresh_from_db()
    deferred.refresh_from_db()
    assert (queued.state, deferred.state) == (MessageState.QUEUED, MessageState.DEFERRED)
    assert relay(relay_config(sink)) == {"delivered": 2}


def test_release_leaves_messages_that_are_not_held(admin_client):
    queued = make()
    response = act(admin_client, "release", queued)
    assert notes(response) == [
        "0 messages released.",
        "1 message was left as it was (its state does not allow it).",
    ]


def test_delete(admin_client):
    doomed, kept = make(), make()
    response = act(admin_client, "delete_selected", doomed, post="yes")
    assert response.status_code == 200
    assert list(Message.objects.values_list("pk", flat=True)) == [kept.pk]


def test_the_detail_page_shows_the_queue_fields(admin_client):
    message = make(
        MessageState.DEFERRED,
        attempts=3,
        next_attempt_at=LATER,
        last_error="451 4.3.0 <busy>",
        rcpt_tos=["bob@example.org", "carol@example.org"],
        recipient_outcomes=[{"state": "deferred", "reply": "451 4.3.0 <busy>"}],
    )
    content = admin_client.get(
        reverse("admin:kumosubmit_message_change", args=[message.pk])
    ).content.decode()
    assert "<td>bob@example.org</td><td>deferred</td><td>451 4.3.0 &lt;busy&gt;</td>" in content
    assert "<td>carol@example.org</td><td>pending</td><td></td>" in content
    assert 'name="_save"' not in content  # still read-only


def test_the_actions_need_the_change_permission(client):
    user = User.objects.create_user("viewer", password="a-long-password-1", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_message"))
    client.force_login(user)
    make()
    assert client.get(reverse(CHANGELIST)).context["action_form"] is None  # no actions at all
    user.user_permissions.add(
        Permission.objects.get(codename="change_message"),
        Permission.objects.get(codename="delete_message"),
    )
    user = User.objects.get(pk=user.pk)  # a fresh permission cache
    client.force_login(user)
    actions = dict(client.get(reverse(CHANGELIST)).context["action_form"].fields["action"].choices)
    assert {"retry_now", "hold", "release", "delete_selected"} <= set(actions)
