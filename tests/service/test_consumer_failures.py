"""An event a consumer keeps failing on is kept, not dropped, and handed back until the consumer takes it.

EventBridge invokes the consumers asynchronously: Lambda retries a failed invocation twice and then,
without an on-failure destination, drops the event. The template gives every function EventBridge
invokes a destination, ConsumerFailuresQueue (the emulator writes Lambda's invocation record there,
``infra.local.moto_events``), and RedriveConsumerFailuresFunction hands each event back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shop.errors import TransientError
from shop.models.events import ConsumerFailuresStatus, RedriveResult
from shop.repositories import event_records
from tests.conftest import LocalAws, notifications_for
from tests.service.orders_helpers import Shop, open_shop, seed_product
from tests.service.test_events import BusSpy


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=50)
    with open_shop(local_aws) as opened:
        yield opened


def redrive(local_aws: LocalAws) -> RedriveResult:
    """One run of the scheduled redriver, as its schedule invokes it."""
    response = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function("RedriveConsumerFailuresFunction"),
        Payload=json.dumps({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}),
    )
    assert "FunctionError" not in response, response["Payload"].read()
    return RedriveResult.model_validate_json(response["Payload"].read())


def waiting(local_aws: LocalAws) -> tuple[int, int]:
    """Messages in the queue: (visible, being handled or hidden after a failed hand-back)."""
    attributes = local_aws.client("sqs").get_queue_attributes(
        QueueUrl=local_aws.stack.queue_urls["ConsumerFailuresQueue"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def operators_count(shop: Shop) -> dict[str, int]:
    """What GET /admin/consumer-failures says."""
    response = shop.client.http.get("/admin/consumer-failures", headers=shop.headers("admin"))
    assert response.status_code == 200, response.body
    return ConsumerFailuresStatus.model_validate_json(response.body).model_dump()


def notifications_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The notification consumer's table is unavailable (for longer than Lambda's retries)."""

    def busy(notification: Any) -> bool:
        raise TransientError("NotificationsTable is throttling")

    monkeypatch.setattr(event_records, "add_notification", busy)


def completed_order(shop: Shop, local_aws: LocalAws) -> str:
    order_id: str = shop.place_ok([("MUG-1", 1)], who="carol")["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    local_aws.deliver_events()  # published; the consumer runs, with Lambda's retries
    return order_id


def test_the_event_a_consumer_failed_on_is_kept_and_taken_once_handed_back(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifications_fail(monkeypatch)
    order_id = completed_order(shop, local_aws)

    assert notifications_for(order_id) == []
    assert waiting(local_aws) == (1, 0)  # Lambda's invocation record, not a dropped event
    assert operators_count(shop) == {"waiting": 1, "in_hand": 0}

    monkeypatch.undo()  # the table is back
    assert redrive(local_aws) == RedriveResult(redelivered=1, still_failing=0, unrecognised=0)
    [email] = notifications_for(order_id)
    assert (email.template, email.event_id.split(":")[1]) == ("order-completed", "COMPLETED")
    assert waiting(local_aws) == (0, 0)
    assert operators_count(shop) == {"waiting": 0, "in_hand": 0}
    assert redrive(local_aws) == RedriveResult()  # nothing left to hand back


def test_a_completion_e_mail_handed_back_after_the_refunds_says_it_happened_first(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The completion's e-mail failed past Lambda's retries; the customer cancelled and the refund's
    e-mail was queued; the redriver handed the completion back an hour later. Queued last, it carried
    nothing to tell a mailer it was superseded. It carries the event's time now."""
    queue = event_records.add_notification

    def completion_fails(notification: Any) -> bool:
        if notification.template == "order-completed":
            raise TransientError("NotificationsTable is throttling")
        return queue(notification)

    monkeypatch.setattr(event_records, "add_notification", completion_fails)
    order_id = completed_order(shop, local_aws)
    assert shop.cancel(order_id, who="carol").json_body["status"] == "REFUNDING"
    assert shop.wait_refund(order_id) == "SUCCEEDED"
    local_aws.deliver_events()
    monkeypatch.undo()
    assert redrive(local_aws) == RedriveResult(redelivered=1, still_failing=0, unrecognised=0)

    emails = sorted(notifications_for(order_id), key=lambda email: email.created_at)
    assert [email.template for email in emails] == ["order-refunded", "order-completed"]  # queued late
    refunded, completed = emails
    assert completed.occurred_at < refunded.occurred_at  # a mailer sends by this, and drops the completion


def test_an_event_the_consumer_still_fails_on_stays_in_the_queue(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifications_fail(monkeypatch)
    order_id = completed_order(shop, local_aws)

    assert redrive(local_aws) == RedriveResult(redelivered=0, still_failing=1, unrecognised=0)
    assert waiting(local_aws) == (0, 1)  # hidden until the next run, not deleted
    assert operators_count(shop) == {"waiting": 0, "in_hand": 1}
    assert notifications_for(order_id) == []


def test_only_an_admin_reads_the_consumer_failures_count(shop: Shop) -> None:
    assert shop.client.http.get("/admin/consumer-failures", headers=shop.headers("alice")).status_code == 403
    assert shop.client.http.get("/admin/consumer-failures").status_code == 401
    extra = shop.client.http.get("/admin/consumer-failures?limit=5", headers=shop.headers("admin"))
    assert extra.status_code == 400  # the route takes no query


def test_an_event_eventbridge_could_not_deliver_is_handed_to_its_target(shop: Shop, local_aws: LocalAws) -> None:
    spy = BusSpy(local_aws)
    order_id = completed_order(shop, local_aws)
    [completion] = [e for e in spy.events() if e["detail-type"] == "OrderCompleted"]
    target = local_aws.client("lambda").get_function(FunctionName=local_aws.function("NotifyCustomerFunction"))
    # EventBridge's dead letter: the event itself, the target it failed to reach in an attribute.
    local_aws.client("sqs").send_message(
        QueueUrl=local_aws.stack.queue_urls["ConsumerFailuresQueue"],
        MessageBody=json.dumps(completion),
        MessageAttributes={
            "TARGET_ARN": {"DataType": "String", "StringValue": target["Configuration"]["FunctionArn"]},
            "ERROR_CODE": {"DataType": "String", "StringValue": "SDK_CLIENT_ERROR"},
        },
    )

    assert redrive(local_aws) == RedriveResult(redelivered=1, still_failing=0, unrecognised=0)
    # The consumer had taken the event already: handed back, it is a duplicate, not a second e-mail.
    [email] = notifications_for(order_id)
    assert email.duplicates_ignored == 1
    assert waiting(local_aws) == (0, 0)


def test_a_message_that_names_no_function_is_kept_for_an_operator(local_aws: LocalAws) -> None:
    local_aws.client("sqs").send_message(
        QueueUrl=local_aws.stack.queue_urls["ConsumerFailuresQueue"], MessageBody="not an event"
    )
    assert redrive(local_aws) == RedriveResult(redelivered=0, still_failing=0, unrecognised=1)
    assert waiting(local_aws) == (0, 1)


def test_a_run_counts_the_messages_it_could_not_read_towards_its_bound(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stops at MAX_PER_RUN messages, unreadable ones included: a queue filling with junk still
    ends each run within its timeout, and the next run goes on."""
    from shop.domain import consumer_failures as domain
    from shop.repositories.consumer_failures import RECEIVE_BATCH

    monkeypatch.setattr(domain, "MAX_PER_RUN", RECEIVE_BATCH)
    for _ in range(RECEIVE_BATCH + 1):
        local_aws.client("sqs").send_message(
            QueueUrl=local_aws.stack.queue_urls["ConsumerFailuresQueue"], MessageBody="not an event"
        )

    assert redrive(local_aws) == RedriveResult(redelivered=0, still_failing=0, unrecognised=RECEIVE_BATCH)
    assert waiting(local_aws) == (1, RECEIVE_BATCH)
