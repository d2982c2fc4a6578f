"""Events from the tables' streams, end to end in the emulator: the order item's stream (the
outbox) and the stock table's stream are delivered to the publishers as Lambda's event source
mappings would (``LocalAws.deliver_events``), the publishers put events on the template's bus, and
EventBridge's rules deliver them to the two consumers.

Besides the consumers, a spy rule on the bus copies every shop event into an SQS queue, so the
tests see what was published, in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local.streams import DUPLICATE_DELIVERY_TAG
from shop.domain import catalog
from shop.models.catalog import StockAdjustmentRequest
from shop.models.events import PUBLISHED
from shop.repositories import event_records
from tests.conftest import LocalAws, notifications_for
from tests.service.orders_helpers import Shop, available, open_shop, seed_product


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=50)
    with open_shop(local_aws) as opened:
        yield opened


class BusSpy:
    """Every event put on the shop's bus, through a rule with an SQS target (as an auditor would)."""

    def __init__(self, local_aws: LocalAws) -> None:
        self.sqs = local_aws.client("sqs")
        self.queue_url = self.sqs.create_queue(QueueName="bus-spy")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        bus = local_aws.stack.event_bus_names["ShopEventBus"]
        events = local_aws.client("events")
        events.put_rule(
            Name="bus-spy", EventBusName=bus, EventPattern=json.dumps({"source": ["shop.orders", "shop.inventory"]})
        )
        events.put_targets(Rule="bus-spy", EventBusName=bus, Targets=[{"Id": "spy", "Arn": queue_arn}])
        self.seen: list[dict[str, Any]] = []

    def events(self) -> list[dict[str, Any]]:
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return self.seen
            for message in messages:
                self.seen.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def of_order(self, order_id: str) -> list[tuple[str, str]]:
        return [
            (event["detail-type"], event["detail"]["event_id"])
            for event in self.events()
            if event["detail"].get("order_id") == order_id
        ]


@pytest.fixture
def spy(local_aws: LocalAws) -> BusSpy:
    return BusSpy(local_aws)


def _duplicate_stream_deliveries(local_aws: LocalAws, logical_id: str) -> None:
    arn = local_aws.client("lambda").get_function(FunctionName=local_aws.function(logical_id))["Configuration"][
        "FunctionArn"
    ]
    local_aws.client("lambda").tag_resource(Resource=arn, Tags={DUPLICATE_DELIVERY_TAG: "true"})


def test_a_completed_order_sends_one_email_and_its_events_in_order(
    shop: Shop, local_aws: LocalAws, spy: BusSpy
) -> None:
    placed = shop.place_ok([("MUG-1", 2)], who="carol")
    order_id = placed["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    version = shop.order(order_id).version

    assert local_aws.deliver_events() > 0

    assert spy.of_order(order_id) == [
        ("OrderPlaced", f"{order_id}:PLACED"),
        ("OrderCompleted", f"{order_id}:COMPLETED:{version}"),
    ]
    completed = next(e for e in spy.events() if e["detail-type"] == "OrderCompleted")
    assert completed["source"] == "shop.orders"
    assert completed["detail"]["version"] == 1
    assert completed["detail"]["customer_id"] == "carol"
    assert completed["detail"]["total"] == {"amount": 2500, "currency": "USD"}
    [email] = notifications_for(order_id)
    assert (email.template, email.customer_id, email.event_id) == (
        "order-completed",
        "carol",
        completed["detail"]["event_id"],
    )
    assert email.duplicates_ignored == 0


def test_delivering_again_publishes_nothing_new(shop: Shop, local_aws: LocalAws, spy: BusSpy) -> None:
    placed = shop.place_ok([("MUG-1", 1)])
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    local_aws.deliver_events()
    published = len(spy.events())

    assert local_aws.deliver_events() == 0
    assert len(spy.events()) == published


def test_a_declined_order_is_announced_cancelled_with_its_reason(shop: Shop, local_aws: LocalAws, spy: BusSpy) -> None:
    placed = shop.place_ok([("MUG-1", 1)], token="tok_chargeDeclined")
    order_id = placed["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"

    local_aws.deliver_events()

    assert [kind for kind, _ in spy.of_order(order_id)] == ["OrderPlaced", "OrderCancelled"]
    cancelled = next(e for e in spy.events() if e["detail-type"] == "OrderCancelled")
    assert cancelled["detail"]["reason"] == "PAYMENT_DECLINED"
    assert [email.template for email in notifications_for(order_id)] == ["order-cancelled"]


def test_a_duplicated_stream_delivery_still_sends_one_email(shop: Shop, local_aws: LocalAws, spy: BusSpy) -> None:
    _duplicate_stream_deliveries(local_aws, "PublishOrderEventsFunction")
    placed = shop.place_ok([("MUG-1", 1)])
    order_id = placed["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"

    local_aws.deliver_events()

    # Published twice (at least once, as on AWS), with the same id both times ...
    completed = [event_id for kind, event_id in spy.of_order(order_id) if kind == "OrderCompleted"]
    assert len(completed) == 2 and len(set(completed)) == 1
    # ... and the consumer saw both and queued one e-mail.
    [email] = notifications_for(order_id)
    assert email.template == "order-completed"
    assert email.duplicates_ignored == 1


def refuse_the_first_put_of(monkeypatch: pytest.MonkeyPatch, detail_type: str) -> list[str]:
    """The bus refuses the first put of a ``detail_type`` event (throttled); the list gets its id."""
    from shop.errors import EventPublishFailed
    from shop.models.events import OutgoingEvent
    from shop.repositories import event_bus

    put = event_bus.put
    refused: list[str] = []

    def refusing(event: OutgoingEvent) -> None:
        if event.detail_type == detail_type and not refused:
            refused.append(event.event_id)
            raise EventPublishFailed("throttled")
        put(event)

    monkeypatch.setattr(event_bus, "put", refusing)
    return refused


def _adjust(sku: str, delta: int) -> None:
    catalog.adjust_stock(sku, StockAdjustmentRequest(delta=delta, reason="test"), actor="admin")


def _alerts(sku: str) -> list[tuple[str, int]]:
    return sorted((alert.event_id, alert.available) for alert in event_records.low_stock_alerts() if alert.sku == sku)


@pytest.mark.parametrize("duplicated", [False, True], ids=["once", "duplicated-delivery"])
def test_stock_low_is_announced_once_per_fall(local_aws: LocalAws, spy: BusSpy, duplicated: bool) -> None:
    if duplicated:
        _duplicate_stream_deliveries(local_aws, "PublishStockEventsFunction")
    seed_product("LAMP-1", stock=9)  # the threshold is 5 (LowStockThreshold)
    local_aws.deliver_events()
    assert _alerts("LAMP-1") == []

    _adjust("LAMP-1", -4)  # 5: at the threshold
    local_aws.deliver_events()
    _adjust("LAMP-1", -2)  # 3: still the same fall
    local_aws.deliver_events()
    assert _alerts("LAMP-1") == [("LAMP-1:STOCK_LOW:1", 5)]

    _adjust("LAMP-1", 10)  # 13: restocked, re-armed
    local_aws.deliver_events()
    _adjust("LAMP-1", -12)  # 1: a second fall
    local_aws.deliver_events()

    assert available("LAMP-1") == 1
    assert _alerts("LAMP-1") == [("LAMP-1:STOCK_LOW:1", 5), ("LAMP-1:STOCK_LOW:2", 1)]
    stock_low = [e for e in spy.events() if e["detail-type"] == "StockLow"]
    assert {e["detail"]["event_id"] for e in stock_low} == {"LAMP-1:STOCK_LOW:1", "LAMP-1:STOCK_LOW:2"}
    assert all(e["source"] == "shop.inventory" and e["detail"]["threshold"] == 5 for e in stock_low)
    # A duplicated delivery finds its fall already announced: nothing is put on the bus twice.
    assert len(stock_low) == 2


def test_a_fall_whose_put_failed_until_a_restock_is_announced_as_it_fell_and_rearms(
    local_aws: LocalAws, spy: BusSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_product("LAMP-9", stock=9)  # the threshold is 5
    local_aws.deliver_events()
    refused = refuse_the_first_put_of(monkeypatch, "StockLow")
    _adjust("LAMP-9", -5)  # 4: the first fall, whose put fails
    local_aws.deliver_events()
    _adjust("LAMP-9", 10)  # 14: restocked before the fall's record is retried
    local_aws.deliver_events()
    # The fall is announced late, with the stock it fell to (not the 14 of the moment the put succeeded).
    assert refused == ["LAMP-9:STOCK_LOW:1"] and _alerts("LAMP-9") == [("LAMP-9:STOCK_LOW:1", 4)]

    _adjust("LAMP-9", -12)  # 2: a second fall
    local_aws.deliver_events()

    # Left marked low after the late announcement, the SKU never announced this fall.
    assert _alerts("LAMP-9") == [("LAMP-9:STOCK_LOW:1", 4), ("LAMP-9:STOCK_LOW:2", 2)]


def test_a_fall_below_a_lowered_threshold_is_announced(local_aws: LocalAws, spy: BusSpy) -> None:
    seed_product("LAMP-8", stock=9)  # the threshold is 5
    local_aws.deliver_events()
    _adjust("LAMP-8", -5)  # 4: the first fall
    local_aws.deliver_events()
    assert _alerts("LAMP-8") == [("LAMP-8:STOCK_LOW:1", 4)]

    local_aws.set_runtime_parameter("low-stock-threshold", "2")  # 4 is not low any more (the console: normal)
    _adjust("LAMP-8", -2)  # 2: at the new threshold, with no move above it in between
    local_aws.deliver_events()
    _adjust("LAMP-8", -1)  # 1: still the same fall
    local_aws.deliver_events()

    # Before, the marker stayed low from the fall to 4 until a restock above 2: this fall was never announced.
    assert _alerts("LAMP-8") == [("LAMP-8:STOCK_LOW:1", 4), ("LAMP-8:STOCK_LOW:2", 2)]
    stock_low = [e["detail"] for e in spy.events() if e["detail-type"] == "StockLow"]
    assert [(d["event_id"], d["available"], d["threshold"]) for d in stock_low] == [
        ("LAMP-8:STOCK_LOW:1", 4, 5),
        ("LAMP-8:STOCK_LOW:2", 2, 2),
    ]


def test_a_rise_after_the_threshold_was_lowered_is_no_fall(local_aws: LocalAws, spy: BusSpy) -> None:
    """Fall to 4 (threshold 5) announced, then down to 1; the threshold lowered to 3, under which 1 is
    still low; a restock to 2 is a rise that never went above 3. Judged by the announced level (4), it
    was announced as a second fall (a helper's probe); the fall's lowest level (1) says it is the same."""
    seed_product("LAMP-7", stock=9)
    local_aws.deliver_events()
    _adjust("LAMP-7", -5)  # 4: the fall
    local_aws.deliver_events()
    _adjust("LAMP-7", -3)  # 1: the same fall
    local_aws.deliver_events()

    local_aws.set_runtime_parameter("low-stock-threshold", "3")
    _adjust("LAMP-7", +1)  # 2
    local_aws.deliver_events()
    assert _alerts("LAMP-7") == [("LAMP-7:STOCK_LOW:1", 4)]

    _adjust("LAMP-7", +5)  # 7: above the threshold, re-armed
    local_aws.deliver_events()
    _adjust("LAMP-7", -4)  # 3: a new fall
    local_aws.deliver_events()
    assert _alerts("LAMP-7") == [("LAMP-7:STOCK_LOW:1", 4), ("LAMP-7:STOCK_LOW:2", 3)]


def test_a_stock_counter_the_shop_cannot_read_holds_nothing_and_stops_nothing(
    shop: Shop, local_aws: LocalAws, spy: BusSpy
) -> None:
    from shop.domain import reconciliation_job

    seed_product("LAMP-2", stock=9)
    seed_product("LAMP-3", stock=9)
    local_aws.deliver_events()
    # Written behind the shop's back: a counter beyond the SKU's shards, its units as text.
    planted = {"sku": {"S": "LAMP-2"}, "shard": {"N": "7"}, "available": {"S": "seven"}}
    local_aws.client("dynamodb").put_item(TableName=local_aws.table("StockTable"), Item=planted)
    _adjust("LAMP-3", -5)  # 4: a fall behind the planted counter's record in the stream

    # Its record is judged like any (the SKU's readable counters), and the fall behind it is
    # announced; before, the publisher failed on it at every retry, and a stream stalls so.
    assert local_aws.deliver_events() == 2 and local_aws.deliver_events() == 0
    assert _alerts("LAMP-3") == [("LAMP-3:STOCK_LOW:1", 4)] and _alerts("LAMP-2") == []
    # The SKU's page and the listing show what can be sold, and it sells.
    assert shop.client.http.get("/products/LAMP-2").json_body["available"] == 9
    listed = shop.client.http.get("/products?limit=100")
    assert listed.status_code == 200 and {"LAMP-2", "LAMP-3"} <= {item["sku"] for item in listed.json_body["items"]}
    placed = shop.place_ok([("LAMP-2", 2)])
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED" and available("LAMP-2") == 7
    # The books check reports the item with its SKU, and judges the other SKUs' stock as ever.
    report = reconciliation_job.run(quiescent=True)
    [unreadable] = report.discrepancies
    assert (unreadable.kind, unreadable.sku) == ("record_unreadable", "LAMP-2")
    assert unreadable.detail.startswith("StockTable item {'sku': 'LAMP-2', 'shard': '7'}")


def test_every_published_detail_type_is_declared(local_aws: LocalAws) -> None:
    assert set(PUBLISHED) == {
        "OrderPlaced",
        "OrderCompleted",
        "OrderCancelled",
        "OrderRefunded",
        "OrderNeedsAttention",
        "StockLow",
    }


def test_a_failed_publish_is_retried_from_that_record_and_keeps_the_order(
    shop: Shop, local_aws: LocalAws, spy: BusSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = refuse_the_first_put_of(monkeypatch, "OrderCompleted")
    placed = shop.place_ok([("MUG-1", 1)])
    order_id = placed["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"

    local_aws.deliver_events()  # the completion's record failed: it and what follows stay in the stream
    assert [kind for kind, _ in spy.of_order(order_id)] == ["OrderPlaced"]
    assert notifications_for(order_id) == []

    local_aws.deliver_events()  # retried from the failed record: the placement is not published again

    assert spy.of_order(order_id) == [("OrderPlaced", f"{order_id}:PLACED"), ("OrderCompleted", refused[0])]
    assert [email.template for email in notifications_for(order_id)] == ["order-completed"]


def test_a_publisher_that_fails_gets_the_whole_batch_again(shop: Shop, local_aws: LocalAws, spy: BusSpy) -> None:
    from infra.local import lambda_runtime

    publisher = local_aws.function("PublishOrderEventsFunction")
    failed: list[str] = []

    def crash_once(function_name: str, event: Any) -> None:
        if function_name == publisher and not failed:
            failed.append(function_name)
            raise RuntimeError("the publisher crashed")

    lambda_runtime.faults.before_invoke = crash_once
    placed = shop.place_ok([("MUG-1", 1)])
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"

    local_aws.deliver_events()  # the orders stream's batch errored: nothing of it is done
    assert spy.of_order(placed["order_id"]) == []

    local_aws.deliver_events()
    assert [kind for kind, _ in spy.of_order(placed["order_id"])] == ["OrderPlaced", "OrderCompleted"]


def test_a_refund_is_announced_after_the_completion(shop: Shop, local_aws: LocalAws, spy: BusSpy) -> None:
    placed = shop.place_ok([("MUG-1", 1)])
    order_id = placed["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    local_aws.deliver_events()
    assert shop.cancel(order_id).status_code == 202
    assert shop.wait_refund(order_id) == "SUCCEEDED"

    local_aws.deliver_events()

    assert [kind for kind, _ in spy.of_order(order_id)] == ["OrderPlaced", "OrderCompleted", "OrderRefunded"]
    assert sorted(email.template for email in notifications_for(order_id)) == [
        "order-completed",
        "order-refunded",
    ]
