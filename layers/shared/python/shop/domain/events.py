"""Events from the tables' streams: the order item's own stream is the outbox.

An order's state change and the record of it are one write (the order item; its stream keeps the
old and new images), so no saga step writes anything more for events. The publisher reads the
stream and puts an event on the bus for each transition a consumer cares about:

- ``INSERT`` of an order: ``OrderPlaced``;
- ``MODIFY`` whose status changed to COMPLETED, CANCELLED, REFUNDED or NEEDS_ATTENTION: the
  matching event. Other writes (a claim, a progress step, a cancel request) announce nothing.

Ids are stable: ``{order id}:{status}:{version}`` (``version`` is bumped by every write of the
order), so a redelivered record gives the same event and consumers deduplicate on it. Records are
handled in stream order; once a record of an order failed, the later records of that order in the
batch are failed too without publishing (Lambda retries the batch from the first failure), so a
consumer never sees an order's events out of order.

StockLow comes from the stock table's stream (keys only): each record names a SKU whose counter
moved; its current total is judged against the low-stock threshold (the one the operators'
console flags by), and a fall is announced once (``event_records.claim_fall``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from shop.config import inventory_settings
from shop.models.base import iso_now
from shop.models.events import (
    EMAIL_TEMPLATES,
    INVENTORY_SOURCE,
    ORDER_EVENT_FOR_STATUS,
    ORDERS_SOURCE,
    PUBLISHED,
    BusEvent,
    EmailNotification,
    EventLine,
    LowStockAlert,
    OrderEventDetail,
    OrderPlaced,
    OutgoingEvent,
    StockLow,
)
from shop.models.orders import Order
from shop.repositories import catalog, event_bus, event_records
from shop.repositories import orders as order_repository


class LaterRecordOfAFailedKey(Exception):
    """An earlier record of the same item failed in this batch: this one waits for it."""


# ---------------------------------------------------------------------------- order transitions
def order_event_id(order: Order) -> str:
    return f"{order.order_id}:{order.status}:{order.version}"


def order_transition(old: Order | None, new: Order | None) -> OutgoingEvent | None:
    """The event a change of the order item announces, if any (pure)."""
    if new is None:
        return None  # orders are never deleted; a removal announces nothing
    common: dict[str, Any] = {
        "version": 1,
        "event_id": order_event_id(new) if old is not None else f"{new.order_id}:PLACED",
        "occurred_at": new.updated_at,
        "order_id": new.order_id,
        "customer_id": new.customer_id,
        "status": new.status,
        "total": new.total,
    }
    if old is None:
        lines = [EventLine(sku=line.sku, quantity=line.quantity) for line in new.items]
        return OutgoingEvent(source=ORDERS_SOURCE, detail_type="OrderPlaced", detail=OrderPlaced(**common, items=lines))
    if old.status == new.status:
        return None
    detail_type = ORDER_EVENT_FOR_STATUS.get(new.status)
    if detail_type is None:
        return None
    _, model = PUBLISHED[detail_type]
    if detail_type == "OrderCancelled":
        common["reason"] = new.failure_reason
    detail = model(**common)
    assert isinstance(detail, OrderEventDetail)
    return OutgoingEvent(source=ORDERS_SOURCE, detail_type=detail_type, detail=detail)


def _image(record: DynamoDBRecord, which: str) -> Order | None:
    raw = (record.raw_event.get("dynamodb") or {}).get(which)
    return order_repository.to_order(raw) if raw else None


def _key_of(record: DynamoDBRecord) -> str:
    keys = (record.raw_event.get("dynamodb") or {}).get("Keys") or {}
    return "|".join(f"{name}={next(iter(value.values()))}" for name, value in sorted(keys.items()))


def _in_key_order(handle: Callable[[DynamoDBRecord], None]) -> Callable[[DynamoDBRecord], None]:
    """``handle`` per record, except after a record of the same key failed in this batch."""
    failed_keys: set[str] = set()

    def handle_in_order(record: DynamoDBRecord) -> None:
        key = _key_of(record)
        if key in failed_keys:
            raise LaterRecordOfAFailedKey(key)
        try:
            handle(record)
        except Exception:
            failed_keys.add(key)
            raise

    return handle_in_order


def _process(
    event: Mapping[str, Any], context: Any, handle: Callable[[DynamoDBRecord], None]
) -> PartialItemFailureResponse:
    return process_partial_response(
        event=dict(event),
        record_handler=_in_key_order(handle),
        processor=BatchProcessor(event_type=EventType.DynamoDBStreams),
        context=context,
    )


def _publish_order_record(record: DynamoDBRecord) -> None:
    announced = order_transition(_image(record, "OldImage"), _image(record, "NewImage"))
    if announced is not None:
        event_bus.put(announced)


def publish_order_changes(event: Mapping[str, Any], context: Any) -> PartialItemFailureResponse:
    """The orders stream's batch: each transition published; the records that failed reported."""
    return _process(event, context, _publish_order_record)


# ---------------------------------------------------------------------------- stock falls
def stock_low_event_id(sku: str, fall: int) -> str:
    return f"{sku}:STOCK_LOW:{fall}"


def judge_stock(sku: str, claimant: str) -> OutgoingEvent | None:
    """Whether the SKU's stock as it stands now starts a fall to or below the threshold; the
    StockLow to publish when it does and this record claimed it (already published: None)."""
    product = catalog.get_product(sku)
    if product is None:
        return None  # a product being created or deleted: its stock is judged once it exists
    threshold = inventory_settings().low_stock_threshold
    if product.available > threshold:
        # Re-armed, unless this record's own fall is still to be announced (its put failed).
        claim = event_records.rearm(sku, claimant)
    else:
        claim = event_records.claim_fall(sku, claimant)
    if claim is None or claim.published:
        return None
    detail = StockLow(
        version=1,
        event_id=stock_low_event_id(sku, claim.fall),
        occurred_at=iso_now(),
        sku=sku,
        available=product.available,
        threshold=threshold,
    )
    return OutgoingEvent(source=INVENTORY_SOURCE, detail_type="StockLow", detail=detail)


def publish_stock_changes(event: Mapping[str, Any], context: Any) -> PartialItemFailureResponse:
    """The stock stream's batch: each SKU judged once per batch (by its stock as it stands, which
    already includes the batch's later records), a fall announced once."""
    judged: set[str] = set()

    def handle(record: DynamoDBRecord) -> None:
        keys = (record.raw_event.get("dynamodb") or {}).get("Keys") or {}
        sku = keys["sku"]["S"]
        if sku in judged:
            return
        sequence = str((record.raw_event.get("dynamodb") or {}).get("SequenceNumber"))
        announced = judge_stock(sku, claimant=sequence)
        if announced is not None:
            event_bus.put(announced)
            event_records.mark_published(sku, int(announced.event_id.rsplit(":", 1)[1]))
        judged.add(sku)

    return _process(event, context, handle)


# ---------------------------------------------------------------------------- consumers
def queue_email(event: Mapping[str, Any]) -> EmailNotification | None:
    """The notification consumer: the e-mail this order event sends, queued once per event id.
    Returns it when this delivery queued it (None: a duplicate, or an event that sends none)."""
    delivered = BusEvent.model_validate(event)
    template = EMAIL_TEMPLATES.get(delivered.detail_type)
    if delivered.source != ORDERS_SOURCE or template is None:
        return None
    _, model = PUBLISHED[delivered.detail_type]
    detail = model.model_validate(delivered.detail)
    assert isinstance(detail, OrderEventDetail)
    notification = EmailNotification(
        event_id=detail.event_id,
        customer_id=detail.customer_id,
        order_id=detail.order_id,
        template=template,
        created_at=iso_now(),
    )
    return notification if event_records.add_notification(notification) else None


def record_low_stock(event: Mapping[str, Any]) -> LowStockAlert | None:
    """The low-stock consumer: an alert for operators, once per event id."""
    delivered = BusEvent.model_validate(event)
    if delivered.source != INVENTORY_SOURCE or delivered.detail_type != "StockLow":
        return None
    detail = StockLow.model_validate(delivered.detail)
    alert = LowStockAlert(
        event_id=detail.event_id,
        sku=detail.sku,
        available=detail.available,
        threshold=detail.threshold,
        occurred_at=detail.occurred_at,
        recorded_at=iso_now(),
    )
    return alert if event_records.add_low_stock_alert(alert) else None
