"""Events against the running stack: an order placed over HTTP reaches the notification consumer
through the order item's stream, the publisher, the bus and the consumer's rule, exactly once, also
when the stream's batches are delivered twice (the local stack's test hook, a tag on the function).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer

from infra.local.streams import DUPLICATE_DELIVERY_TAG
from tests.http.conftest import RunningStack
from tests.http.test_checkout_http import create_product, place_order, wait_for_terminal

DEADLINE_SECONDS = 60
_deserializer = TypeDeserializer()


def notifications(stack: RunningStack, order_id: str) -> list[dict[str, Any]]:
    dynamodb = stack.aws("dynamodb")
    found: list[dict[str, Any]] = []
    request: dict[str, Any] = {
        "TableName": stack.table("NotificationsTable"),
        "FilterExpression": "order_id = :order",
        "ExpressionAttributeValues": {":order": {"S": order_id}},
        "ConsistentRead": True,
    }
    while True:
        page = dynamodb.scan(**request)
        found += [{k: _deserializer.deserialize(v) for k, v in item.items()} for item in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return found
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def wait_for_notification(stack: RunningStack, order_id: str, *, duplicates: int) -> list[dict[str, Any]]:
    """The order's queued e-mails once one is there having seen ``duplicates`` redeliveries."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        queued = notifications(stack, order_id)
        if any(int(item["duplicates_ignored"]) >= duplicates for item in queued):
            return queued
        assert time.monotonic() < deadline, f"no notification for {order_id} (so far: {queued})"
        time.sleep(0.2)  # polling interval of the check above


@pytest.fixture
def duplicated_stream_delivery(stack: RunningStack) -> Iterator[None]:
    lambda_client = stack.aws("lambda")
    arn = lambda_client.get_function(FunctionName=stack.function("PublishOrderEventsFunction"))["Configuration"][
        "FunctionArn"
    ]
    lambda_client.tag_resource(Resource=arn, Tags={DUPLICATE_DELIVERY_TAG: "true"})
    try:
        yield
    finally:
        lambda_client.untag_resource(Resource=arn, TagKeys=[DUPLICATE_DELIVERY_TAG])


def _completed_order(stack: RunningStack, who: str) -> dict[str, Any]:
    sku = create_product(stack, stock=20)
    placed = place_order(stack, who, sku, "tok_visa")
    assert placed.status_code == 202, placed.text
    order = wait_for_terminal(stack, who, placed.json()["order_id"])
    assert order["status"] == "COMPLETED"
    return order


def test_a_completed_order_queues_exactly_one_email(stack: RunningStack) -> None:
    order = _completed_order(stack, "alice")

    [email] = wait_for_notification(stack, order["order_id"], duplicates=0)

    assert email["template"] == "order-completed"
    assert email["customer_id"] == "alice"
    assert email["event_id"].startswith(f"{order['order_id']}:COMPLETED:")
    assert int(email["duplicates_ignored"]) == 0


def test_a_duplicated_stream_delivery_still_queues_exactly_one_email(
    stack: RunningStack, duplicated_stream_delivery: None
) -> None:
    order = _completed_order(stack, "bob")

    # Waits until the consumer has seen the OrderCompleted a second time (same id) ...
    queued = wait_for_notification(stack, order["order_id"], duplicates=1)

    # ... and it queued one e-mail.
    assert [(email["template"], email["customer_id"]) for email in queued] == [("order-completed", "bob")]
