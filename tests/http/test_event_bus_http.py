"""Every event of the contract's Events section, seen on the shop's bus of the running stack.

A subscriber of our own (an EventBridge rule on the bus with an SQS queue as its target, as another
team's service would subscribe) receives what orders placed over HTTP announce: each transition
once (one event id), in the order it happened, each detail valid against its committed JSON Schema,
and StockLow once when a sale takes a SKU to the low-stock threshold.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import requests

from infra import event_schemas
from infra.local.template import load_template, parameter_defaults
from tests.http.conftest import RunningStack
from tests.http.test_checkout_http import create_product, place_order, wait_for_terminal
from tests.http.test_ops_console import _dead_lettered_order

DEADLINE_SECONDS = 90.0
# The runtime parameter's default, as the stack deploys it.
LOW_STOCK_THRESHOLD = int(parameter_defaults(load_template())["LowStockThreshold"])


@pytest.fixture
def bus_subscriber(stack: RunningStack) -> Iterator[Subscriber]:
    """A queue subscribed to everything the shop puts on its bus."""
    sqs, events = stack.aws("sqs"), stack.aws("events")
    name = f"bus-subscriber-{secrets.token_hex(4)}"
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {"source": ["shop.orders", "shop.inventory"]}
    bus = stack.event_bus()
    events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "queue", "Arn": queue_arn}])
    try:
        yield Subscriber(stack, queue_url)
    finally:
        events.remove_targets(Rule=name, EventBusName=bus, Ids=["queue"])
        events.delete_rule(Name=name, EventBusName=bus)
        sqs.delete_queue(QueueUrl=queue_url)


class Subscriber:
    """What the subscribed queue has received so far (read and deleted as it arrives)."""

    def __init__(self, stack: RunningStack, queue_url: str) -> None:
        self._sqs = stack.aws("sqs")
        self._queue_url = queue_url
        self.events: list[dict[str, Any]] = []

    def wait_for(self, expected: set[tuple[str, str]]) -> list[dict[str, Any]]:
        """Every event received, once each (detail-type, subject) of ``expected`` is among them."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not expected <= (seen := {(event["detail-type"], _subject(event)) for event in self.events}):
            assert time.monotonic() < deadline, f"missing {expected - seen}"
            # Long polling: SQS answers as soon as a message is there, or after the wait.
            answer = self._sqs.receive_message(QueueUrl=self._queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for message in answer.get("Messages", []):
                self.events.append(json.loads(message["Body"]))
                self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])
        return self.events


def _subject(event: dict[str, Any]) -> str:
    detail = event["detail"]
    return str(detail.get("order_id") or detail.get("sku"))


def _valid(event: dict[str, Any]) -> None:
    schema_file = event_schemas.schema_path(event["detail-type"], event["detail"]["version"])
    jsonschema.validate(event["detail"], json.loads(schema_file.read_text()))


def test_each_transition_and_a_stock_fall_are_published_once_in_order(
    stack: RunningStack, bus_subscriber: Subscriber
) -> None:
    sku = create_product(stack, stock=LOW_STOCK_THRESHOLD + 5)
    # Six of ten units sold leave four: at or below the threshold, StockLow. The publisher judges the
    # SKU by its stock when it reads the change, so the refund below waits for the event first.
    placed = place_order(stack, "alice", sku, "tok_visa", quantity=6)
    assert placed.status_code == 202, placed.text
    completed = placed.json()["order_id"]
    assert wait_for_terminal(stack, "alice", completed)["status"] == "COMPLETED"
    bus_subscriber.wait_for({("StockLow", sku)})
    declined_order = place_order(stack, "alice", sku, "tok_chargeDeclined")
    declined = declined_order.json()["order_id"]
    assert wait_for_terminal(stack, "alice", declined)["status"] == "CANCELLED"
    cancel = requests.post(stack.url(f"/orders/{completed}/cancel"), headers=stack.auth("alice"), timeout=10)
    assert cancel.status_code == 202, cancel.text
    assert wait_for_terminal(stack, "alice", completed)["status"] == "REFUNDED"
    stuck = _dead_lettered_order(stack, stack.auth("alice"), sku)

    expected = {
        completed: ["OrderPlaced", "OrderCompleted", "OrderRefunded"],
        declined: ["OrderPlaced", "OrderCancelled"],
        stuck: ["OrderPlaced", "OrderNeedsAttention"],
    }
    awaited = {(kind, order_id) for order_id, kinds in expected.items() for kind in kinds} | {("StockLow", sku)}
    events = [event for event in bus_subscriber.wait_for(awaited) if _subject(event) in {*expected, sku}]

    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in events:
        _valid(event)
        assert event["source"] == ("shop.inventory" if event["detail-type"] == "StockLow" else "shop.orders")
        ids[(event["detail-type"], _subject(event))].add(event["detail"]["event_id"])
    # Each transition is one event (one id, however often it was delivered); nothing else was announced.
    assert {key: len(found) for key, found in ids.items()} == {key: 1 for key in awaited}
    for order_id, kinds in expected.items():
        published = sorted((e for e in events if _subject(e) == order_id), key=lambda e: e["detail"]["occurred_at"])
        assert list(dict.fromkeys(e["detail-type"] for e in published)) == kinds
    [cancelled] = {e["detail"]["reason"] for e in events if e["detail-type"] == "OrderCancelled"}
    assert cancelled == "PAYMENT_DECLINED"
    [low] = [e for e in events if e["detail-type"] == "StockLow"]
    assert (low["detail"]["available"], low["detail"]["threshold"]) == (LOW_STOCK_THRESHOLD - 1, LOW_STOCK_THRESHOLD)
