"""Which writes of an order announce an event, with which stable id, and the publisher's ordering
per order when a record fails (pure: the bus is a fake)."""

from __future__ import annotations

from typing import Any

import pytest

from infra.local.template import load_template
from shop import aws
from shop.domain import events
from shop.errors import EventPublishFailed
from shop.models.events import OrderCancelled, OrderPlaced, OutgoingEvent
from shop.models.money import Money
from shop.models.orders import HistoryEntry, Order, OrderLine, OrderStatus
from shop.repositories.orders import _order_item


def _order(status: OrderStatus = "PENDING", order_id: str = "order-1", version: int = 0, **changes: Any) -> Order:
    line = OrderLine(sku="MUG-1", name="Mug", quantity=2, unit_price=Money(amount=500), line_total=Money(amount=1000))
    return Order(
        order_id=order_id,
        customer_id="alice",
        status=status,
        items=[line],
        total=Money(amount=1000),
        history=[HistoryEntry(step="order_placed", status="PENDING", at="2030-01-01T00:00:00.000Z")],
        created_at="2030-01-01T00:00:00.000Z",
        updated_at=f"2030-01-01T00:00:{version:02}.000Z",
        version=version,
    ).model_copy(update=changes)


def test_a_new_order_is_placed_with_its_lines() -> None:
    announced = events.order_transition(None, _order())
    assert announced is not None
    assert (announced.source, announced.detail_type, announced.event_id) == (
        "shop.orders",
        "OrderPlaced",
        "order-1:PLACED",
    )
    assert isinstance(announced.detail, OrderPlaced)
    assert [(line.sku, line.quantity) for line in announced.detail.items] == [("MUG-1", 2)]
    assert announced.detail.version == 1


@pytest.mark.parametrize(
    ("status", "detail_type"),
    [
        ("COMPLETED", "OrderCompleted"),
        ("CANCELLED", "OrderCancelled"),
        ("REFUNDED", "OrderRefunded"),
        ("NEEDS_ATTENTION", "OrderNeedsAttention"),
    ],
)
def test_each_announced_status_has_its_event(status: OrderStatus, detail_type: str) -> None:
    announced = events.order_transition(_order("PAYMENT_AUTHORIZED", version=4), _order(status, version=5))
    assert announced is not None
    assert (announced.detail_type, announced.event_id) == (detail_type, f"order-1:{status}:5")


@pytest.mark.parametrize("status", ["STOCK_RESERVED", "PAYMENT_AUTHORIZED", "REFUNDING"])
def test_steps_in_between_announce_nothing(status: OrderStatus) -> None:
    assert events.order_transition(_order("PENDING", version=1), _order(status, version=2)) is None


def test_a_write_that_keeps_the_status_announces_nothing() -> None:
    # A claim, a cancel request, a progress note: the status stays, nothing is published.
    before = _order("PENDING", version=1)
    assert events.order_transition(before, before.model_copy(update={"cancel_requested": True, "version": 2})) is None


def test_a_removed_order_announces_nothing() -> None:
    assert events.order_transition(_order("COMPLETED"), None) is None


def test_a_cancellation_carries_its_reason() -> None:
    announced = events.order_transition(
        _order("PAYMENT_AUTHORIZED", version=3), _order("CANCELLED", version=4, failure_reason="PAYMENT_DECLINED")
    )
    assert announced is not None and isinstance(announced.detail, OrderCancelled)
    assert (announced.detail.reason, announced.detail.failure_reason) == ("PAYMENT_DECLINED", "PAYMENT_DECLINED")


def test_a_reason_added_after_version_1_is_in_failure_reason_only() -> None:
    # Version 1's consumers may match its reasons exhaustively: reason stays within them (null here).
    announced = events.order_transition(
        _order("PENDING", version=1), _order("CANCELLED", version=2, failure_reason="INVENTORY_UNAVAILABLE")
    )
    assert announced is not None and isinstance(announced.detail, OrderCancelled)
    assert (announced.detail.reason, announced.detail.failure_reason) == (None, "INVENTORY_UNAVAILABLE")
    assert announced.detail.version == 1


def test_the_same_transition_always_gets_the_same_id_and_a_later_one_another() -> None:
    first = events.order_transition(_order("REFUNDING", version=6), _order("NEEDS_ATTENTION", version=7))
    again = events.order_transition(_order("REFUNDING", version=6), _order("NEEDS_ATTENTION", version=7))
    # An operator's redrive that fails again reaches NEEDS_ATTENTION a second time: a new event.
    later = events.order_transition(_order("REFUNDING", version=9), _order("NEEDS_ATTENTION", version=10))
    assert first is not None and again is not None and later is not None
    assert first.event_id == again.event_id != later.event_id


# ---------------------------------------------------------------------------- the publisher's batch
def _record(sequence: int, old: Order | None, new: Order) -> dict[str, Any]:
    image: dict[str, Any] = {
        "Keys": {"order_id": {"S": new.order_id}},
        "SequenceNumber": str(sequence),
        "NewImage": _order_item(new),
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if old is not None:
        image["OldImage"] = _order_item(old)
    return {
        "eventID": str(sequence),
        "eventName": "INSERT" if old is None else "MODIFY",
        "eventSource": "aws:dynamodb",
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/1",
        "dynamodb": image,
    }


class FakeBus:
    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.put: list[str] = []

    def __call__(self, event: OutgoingEvent) -> None:
        if event.event_id in self.failing:
            raise EventPublishFailed(event.event_id)
        self.put.append(event.event_id)


def test_after_a_failed_record_the_records_behind_it_wait_and_each_event_is_put_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a_placed, b_placed = _order(order_id="a"), _order(order_id="b")
    a_done = _order("COMPLETED", order_id="a", version=5)
    b_done = _order("COMPLETED", order_id="b", version=5)
    records = [
        _record(1, None, a_placed),
        _record(2, None, b_placed),
        _record(3, _order("PAYMENT_AUTHORIZED", order_id="a", version=4), a_done),
        _record(4, _order("PAYMENT_AUTHORIZED", order_id="b", version=4), b_done),
    ]
    bus = FakeBus(failing={"b:PLACED"})
    monkeypatch.setattr(events.event_bus, "put", bus)

    response = events.publish_order_changes({"Records": records}, None)

    # Lambda retries from the first failure: what is behind it waits (before, the other orders'
    # records behind it were put now and again on the retry).
    assert [failure["itemIdentifier"] for failure in response["batchItemFailures"]] == ["2", "3", "4"]
    assert bus.put == ["a:PLACED"]
    bus.failing.clear()
    retried = events.publish_order_changes({"Records": records[1:]}, None)
    assert retried == {"batchItemFailures": []}
    assert bus.put == ["a:PLACED", "b:PLACED", "a:COMPLETED:5", "b:COMPLETED:5"]  # each once, each order in order


def test_a_batch_whose_first_record_fails_is_reported_whole_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    bus = FakeBus(failing={"a:PLACED"})
    monkeypatch.setattr(events.event_bus, "put", bus)
    batch = {"Records": [_record(1, None, _order(order_id="a")), _record(2, None, _order(order_id="b"))]}

    response = events.publish_order_changes(batch, None)

    assert [failure["itemIdentifier"] for failure in response["batchItemFailures"]] == ["1", "2"]
    assert bus.put == []


def test_a_batch_that_publishes_everything_reports_no_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    bus = FakeBus(failing=set())
    monkeypatch.setattr(events.event_bus, "put", bus)
    batch = {
        "Records": [_record(1, None, _order()), _record(2, _order(version=0), _order("STOCK_RESERVED", version=1))]
    }

    assert events.publish_order_changes(batch, None) == {"batchItemFailures": []}
    assert bus.put == ["order-1:PLACED"]


def _judged_with_reads(monkeypatch: pytest.MonkeyPatch, first: int, rereads: list[int]) -> list[str]:
    """What ``judge_stock`` did for a SKU whose first read of its one counter shows ``first`` units and the
    reads after it ``rereads``, the threshold being 5: "claim" (a fall) or "rearm" (above it)."""
    from types import SimpleNamespace

    from shop.models.catalog import ProductInfo
    from shop.repositories.event_records import Rearm
    from shop.repositories.stock import Shard

    info = ProductInfo(
        sku="S-1",
        name="S",
        description="",
        category="test",
        price=Money(amount=100),
        active=True,
        created_at="2030-01-01T00:00:00.000Z",
        updated_at="2030-01-01T00:00:00.000Z",
    )
    done: list[str] = []
    monkeypatch.setattr(events, "inventory_settings", lambda: SimpleNamespace(low_stock_threshold=5))
    monkeypatch.setattr(events.catalog, "get_product_info", lambda sku: info)
    monkeypatch.setattr(events.catalog, "stock_shards", lambda sku: {0: Shard(0, first, 1)})
    monkeypatch.setattr(
        events.stock,
        "reread_shards",
        lambda sku, read: [{0: Shard(0, units, 2 + n)} for n, units in enumerate(rereads)],
    )
    monkeypatch.setattr(events.event_records, "claim_fall", lambda *args, **kwargs: done.append("claim"))

    def rearm(*args: Any, **kwargs: Any) -> Rearm:
        done.append("rearm")
        return Rearm()

    monkeypatch.setattr(events.event_records, "rearm", rearm)
    assert events.judge_stock("S-1", claimant="1") is None
    return done


def test_a_fall_holds_only_when_every_read_after_it_is_at_or_below_the_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read of the counters a commit cut through may show too few units: a fall, the threshold itself
    included, stands only if no read after it is above the threshold, whatever the reads between."""
    assert _judged_with_reads(monkeypatch, 5, [5]) == ["claim"]
    assert _judged_with_reads(monkeypatch, 5, [9]) == ["rearm"]  # at the threshold: read again
    assert _judged_with_reads(monkeypatch, 3, [5, 9]) == ["rearm"]  # a read at it is no read above it


class NearlyOutOfTime:
    """A Lambda context with ``left_ms`` before the timeout, less ``spent_ms`` for each record handled."""

    def __init__(self, left_ms: int, spent_ms: int, bus: FakeBus) -> None:
        self.left_ms, self.spent_ms, self.bus = left_ms, spent_ms, bus

    def get_remaining_time_in_millis(self) -> int:
        return self.left_ms - self.spent_ms * len(self.bus.put)


def test_a_batch_near_the_timeout_leaves_the_rest_for_the_retry_with_what_was_put_checkpointed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a throttling bus a batch of 100 sequential puts can run past the publisher's timeout,
    which answers nothing: Lambda retried the whole batch, what was put included, every time. The
    batch now stops before a record it has no time for, and reports only it and those behind it."""
    bus = FakeBus(failing=set())
    monkeypatch.setattr(events.event_bus, "put", bus)
    records = [_record(n, None, _order(order_id=f"o{n}")) for n in range(1, 5)]
    # Each put takes 2 s: two records begin with the margin or more left, the third would not.
    context = NearlyOutOfTime(left_ms=events.BATCH_TIME_MARGIN_MS + 3_000, spent_ms=2_000, bus=bus)

    response = events.publish_order_changes({"Records": records}, context)

    assert bus.put == ["o1:PLACED", "o2:PLACED"]
    assert [failure["itemIdentifier"] for failure in response["batchItemFailures"]] == ["3", "4"]
    assert events.publish_order_changes({"Records": records[2:]}, None) == {"batchItemFailures": []}
    assert bus.put == ["o1:PLACED", "o2:PLACED", "o3:PLACED", "o4:PLACED"]


def test_a_record_that_begins_with_exactly_the_margin_left_is_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The margin is what a record needs: one that begins with it left still has time for its put."""
    bus = FakeBus(failing=set())
    monkeypatch.setattr(events.event_bus, "put", bus)
    records = [_record(n, None, _order(order_id=f"o{n}")) for n in range(1, 5)]
    # Each put takes 1.5 s: the third record begins with the margin exactly, the fourth with less.
    context = NearlyOutOfTime(left_ms=events.BATCH_TIME_MARGIN_MS + 3_000, spent_ms=1_500, bus=bus)

    response = events.publish_order_changes({"Records": records}, context)

    assert bus.put == ["o1:PLACED", "o2:PLACED", "o3:PLACED"]
    assert [failure["itemIdentifier"] for failure in response["batchItemFailures"]] == ["4"]


def test_the_margin_covers_the_longest_put_the_events_client_can_take() -> None:
    """The margin was a fixed 5 s while the client had botocore's 60 s timeouts and 4 attempts: a put
    throttled three times spent up to 7 s backing off alone, and the invocation ran into its timeout
    (a helper's probe). The client's own settings bound the put now, and the margin is derived from them."""
    config = aws.client("events").meta.config
    attempts = config.retries["total_max_attempts"]  # the first request included
    backoff = sum(2 ** (attempt - 1) for attempt in range(1, attempts))  # standard mode's cap per retry
    longest = attempts * (config.connect_timeout + config.read_timeout) + backoff
    assert longest * 1000 <= events.BATCH_TIME_MARGIN_MS
    publishers = ("PublishOrderEventsFunction", "PublishStockEventsFunction")
    for name in publishers:
        timeout_ms = load_template()["Resources"][name]["Properties"]["Timeout"] * 1000
        assert timeout_ms >= 3 * events.BATCH_TIME_MARGIN_MS, name  # most of an invocation is for work
