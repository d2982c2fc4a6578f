"""Events from the tables' streams: the order item's own stream is the outbox.

An order's state change and the record of it are one write (the order item; its stream keeps the
old and new images), so no saga step writes anything more for events. The publisher reads the
stream and puts an event on the bus for each transition a consumer cares about:

- ``INSERT`` of an order: ``OrderPlaced``;
- ``MODIFY`` whose status changed to COMPLETED, CANCELLED, REFUNDED or NEEDS_ATTENTION: the
  matching event. Other writes (a claim, a progress step, a cancel request) announce nothing.

Ids are stable: ``{order id}:{status}:{version}`` (``version`` is bumped by every write of the
order), so a redelivered record gives the same event and consumers deduplicate on it. Records are
handled in stream order; once a record failed, the records behind it in the batch are failed too
without being handled: Lambda retries the batch from the first failure, so handling them now would
only put their events twice (and a consumer never sees an order's events out of order).

StockLow comes from the stock table's stream (keys only): each record names a SKU whose counter
moved; its current total is judged against the low-stock threshold (the one the operators'
console flags by), and a fall is announced once (``event_records.claim_fall``).

A record is read (its images or keys into what it announces: pure), then acted on (the bus, the
markers: AWS calls). A failure to act is retried: the bus or a table is busy, or misconfigured,
and the same record succeeds once it is not. A failure to read cannot succeed on a retry: the
record, or the code reading it, is wrong, and retrying it would hold up every record behind it in
the shard until it expires (24 h), then lose them all. Such a record is set aside instead
(``unreadable_records``, whole), counted (metric ``UnreadableStreamRecords``, alarmed) and logged;
the records behind it go on. So is a record whose act meets an item it leads to that cannot be
read (a product item written behind the shop's back: ``RecordUnreadable``, raised before any
effect). ``republish_unreadable``, every quarter of an hour, reads each one again: once a fixed
publisher is deployed (or the item is repaired), their events are published by themselves (late,
with their original ids and times: consumers deduplicate and judge by them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from shop.config import inventory_settings
from shop.errors import RecordUnreadable
from shop.models.base import iso_now
from shop.models.catalog import Product
from shop.models.events import (
    EMAIL_TEMPLATES,
    INVENTORY_SOURCE,
    ORDER_EVENT_FOR_STATUS,
    ORDERS_SOURCE,
    PUBLISHED,
    BusEvent,
    CancelReasonV1,
    EmailNotification,
    EventLine,
    LowStockAlert,
    OrderEventDetail,
    OrderPlaced,
    OutgoingEvent,
    RepublishResult,
    StockLow,
    StreamSource,
    UnreadableRecord,
)
from shop.models.inventory import total_available, units_by_shard
from shop.models.orders import Order
from shop.observability import logger, metrics
from shop.repositories import catalog, event_bus, event_records, stock, unreadable_records
from shop.repositories import orders as order_repository
from shop.repositories.dynamodb import UNREADABLE_ITEM_ERRORS


class BehindAFailedRecord(Exception):
    """An earlier record of this batch failed: Lambda retries the batch from it, and this one with it."""


class OutOfTimeForTheBatch(Exception):
    """The invocation is near its timeout: this record and those behind it are left for the retry."""


# A record is begun only with this much of the invocation left: the longest one PutEvents can take
# (its client's timeouts and retries; before, botocore's 60 s timeouts and a fixed 5 s that a thrice
# throttled put outlasted), and a second for the record's own DynamoDB requests, which take
# milliseconds unless the table throttles them (their client's retries are not bounded so tightly: a
# throttled table can still outlast the margin). A batch cut here is answered with the records handled
# so far checkpointed; one that ran into Lambda's timeout answered nothing, and Lambda retried the
# whole batch, the records already put included, again and again under a busy bus (a helper's review).
BATCH_TIME_MARGIN_MS = int((event_bus.longest_put_seconds() + 1) * 1000)


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
        reason = new.failure_reason
        common["reason"] = reason if reason in get_args(CancelReasonV1) else None
        common["failure_reason"] = reason
    detail = model(**common)
    assert isinstance(detail, OrderEventDetail)
    return OutgoingEvent(source=ORDERS_SOURCE, detail_type=detail_type, detail=detail)


def _image(record: DynamoDBRecord, which: str) -> Order | None:
    raw = (record.raw_event.get("dynamodb") or {}).get(which)
    return order_repository.to_order(raw) if raw else None


def _key_of(record: DynamoDBRecord) -> str:
    keys = (record.raw_event.get("dynamodb") or {}).get("Keys") or {}
    return "|".join(f"{name}={next(iter(value.values()))}" for name, value in sorted(keys.items()))


def _until_the_first_failure(
    handle: Callable[[DynamoDBRecord], None], context: Any
) -> Callable[[DynamoDBRecord], None]:
    """``handle`` per record, until one fails or the invocation nears its timeout; every record behind
    it in this batch fails unhandled."""
    failed: list[str] = []

    def handle_in_order(record: DynamoDBRecord) -> None:
        if failed:
            raise BehindAFailedRecord(f"{_key_of(record)} waits for {failed[0]}")
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if remaining is not None and remaining() < BATCH_TIME_MARGIN_MS:
            failed.append(_key_of(record))
            raise OutOfTimeForTheBatch(f"{remaining()} ms left: {_key_of(record)} waits for the retry")
        try:
            handle(record)
        except Exception:
            failed.append(_key_of(record))
            raise

    return handle_in_order


def _process(
    event: Mapping[str, Any], context: Any, handle: Callable[[DynamoDBRecord], None]
) -> PartialItemFailureResponse:
    # A batch whose first record failed is answered like any other (every record reported), not as
    # a function error: the bus being busy is no error of the publisher's.
    return process_partial_response(
        event=dict(event),
        record_handler=_until_the_first_failure(handle, context),
        processor=BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False),
        context=context,
    )


# ---------------------------------------------------------------------------- records that cannot be read
def _sequence_number(record: Mapping[str, Any]) -> str:
    return str((record.get("dynamodb") or {}).get("SequenceNumber"))


def _keys_as_text(record: Mapping[str, Any]) -> dict[str, str]:
    keys = (record.get("dynamodb") or {}).get("Keys") or {}
    return {name: str(next(iter(value.values()), "")) for name, value in keys.items() if isinstance(value, dict)}


def _set_aside(source: StreamSource, record: Mapping[str, Any], error: Exception) -> None:
    """Keep a record its publisher cannot read, count it and log it; the batch goes on."""
    now = iso_now()
    unreadable = UnreadableRecord(
        record_id=f"{source}-{_sequence_number(record)}",
        source=source,
        sequence_number=_sequence_number(record),
        keys=_keys_as_text(record),
        status="OPEN",
        error=type(error).__name__,
        detail=str(error),
        attempts=1,
        set_aside_at=now,
        last_attempt_at=now,
        record=dict(record),
    )
    unreadable_records.set_aside(unreadable)  # busy: raises, and the record is retried
    metrics().add_metric(name="UnreadableStreamRecords", unit=MetricUnit.Count, value=1)
    logger().error(
        "stream record set aside: it cannot be read",
        exc_info=error,
        extra={"record_id": unreadable.record_id, "keys": unreadable.keys},
    )


@dataclass(frozen=True)
class _Reader:
    """How a source's records are read (pure: raises when the record cannot be) and acted on."""

    read: Callable[[DynamoDBRecord], Any]
    act: Callable[[DynamoDBRecord, Any], None]


def _read_and_act(reader: _Reader, record: DynamoDBRecord) -> Exception | None:
    """Read the record and act on it: None once done, else what makes it unreadable. A failure to
    act on a readable record raises (a busy bus or table: the record is retried)."""
    try:
        what = reader.read(record)
    except Exception as error:  # noqa: BLE001 - whatever the reading raised, the record is what is wrong
        return error
    try:
        reader.act(record, what)
    except RecordUnreadable as error:  # an item the record leads to: no retry can read it either
        return error
    return None


def _read_or_set_aside(source: StreamSource, reader: _Reader, record: DynamoDBRecord) -> None:
    unreadable = _read_and_act(reader, record)
    if unreadable is not None:
        _set_aside(source, record.raw_event, unreadable)


# ---------------------------------------------------------------------------- order transitions, published
def _read_order_record(record: DynamoDBRecord) -> OutgoingEvent | None:
    return order_transition(_image(record, "OldImage"), _image(record, "NewImage"))


def _publish_announced(record: DynamoDBRecord, announced: OutgoingEvent | None) -> None:
    if announced is not None:
        event_bus.put(announced)


ORDER_RECORDS = _Reader(read=_read_order_record, act=_publish_announced)


def publish_order_changes(event: Mapping[str, Any], context: Any) -> PartialItemFailureResponse:
    """The orders stream's batch: each transition published; the records that failed reported,
    the records that cannot be read set aside."""
    return _process(event, context, lambda record: _read_or_set_aside("orders", ORDER_RECORDS, record))


# ---------------------------------------------------------------------------- stock falls
def stock_low_event_id(sku: str, fall: int) -> str:
    return f"{sku}:STOCK_LOW:{fall}"


@dataclass(frozen=True)
class FallToAnnounce:
    """A StockLow to put on the bus; ``restocked``: the stock has risen above the threshold since the
    fall (its put failed and was retried), so the SKU is re-armed once the event is on the bus."""

    event: OutgoingEvent
    fall: int
    restocked: bool


def _product_to_judge(sku: str, threshold: int) -> tuple[Product, dict[int, stock.Shard]] | None:
    """The SKU's product with its stock as it stands, and the counters as read. A product item that is
    no product (written behind the shop's back) fails every retry alike: RecordUnreadable, and the record
    is set aside.

    A stock at or below ``threshold`` (a fall to announce) holds only if every read of the counters after
    it says so too (``stock.reread_shards``): a Query is not a snapshot, and a reshard or another order's
    gather committing through it shows part of the units. Before, such a torn read announced a StockLow,
    and alerted an operator, for a SKU whose stock never fell (a helper's probe)."""
    try:
        info = catalog.get_product_info(sku)
        first = catalog.stock_shards(sku) if info is not None else {}
    except UNREADABLE_ITEM_ERRORS as error:
        raise RecordUnreadable(f"the product item of {sku} cannot be read: {type(error).__name__}: {error}") from error
    if info is None:
        return None
    available = total_available(units_by_shard(first))
    if available < 0:
        # Counters the shop never takes below 0 (a hand edit): no StockLow can say it, and a record
        # retried for it would hold up every SKU behind it in the shard. Set aside; the
        # republisher judges the SKU again once its counters are repaired.
        raise RecordUnreadable(f"the stock counters of {sku} sum to {available}, below 0")
    if available <= threshold:
        for again in stock.reread_shards(sku, first):
            available = total_available(units_by_shard(again))
            if available > threshold:
                break
    return Product.of(info, available), first


def _rise_was_torn(sku: str, first: dict[int, stock.Shard], threshold: int) -> bool:
    """Whether a read after ``first`` is at or below the threshold: the rise ``first`` showed may have
    counted units twice (a reshard or a gather committing through the Query), so a re-arm rests on
    every read agreeing. Read only when a re-arm was written: a SKU coming back from low, rarely."""
    return any(total_available(units_by_shard(again)) <= threshold for again in stock.reread_shards(sku, first))


def judge_stock(sku: str, claimant: str) -> FallToAnnounce | None:
    """Whether the SKU's stock as it stands now starts a fall to or below the threshold; the
    StockLow to publish when it does and this record claimed it (already published: None)."""
    now = iso_now()  # before the read: a fall claimed after it was read is a later one than this reading's
    threshold = inventory_settings().low_stock_threshold
    judged = _product_to_judge(sku, threshold)
    if judged is None:
        return None  # a product being created or deleted: its stock is judged once it exists
    product, first = judged
    restocked = product.available > threshold
    if restocked:
        # Re-armed, unless this record's own fall is still to be announced (its put failed).
        rearm = event_records.rearm(sku, claimant)
        if rearm.rearmed_fall is not None and _rise_was_torn(sku, first, threshold):
            # The fall stands, announced once: re-armed on a torn read, the next record would have
            # claimed it again as a new fall (a reviewer's probe).
            event_records.undo_rearm(sku, rearm.rearmed_fall)
            return None
        claim = rearm.pending
    else:
        claim = event_records.claim_fall(sku, claimant, available=product.available, threshold=threshold, at=now)
    if claim is None or claim.published:
        return None
    # The event tells of the fall as it was claimed, not of the stock when a retried put succeeds.
    detail = StockLow(
        version=1,
        event_id=stock_low_event_id(sku, claim.fall),
        occurred_at=claim.fell_at or now,
        sku=sku,
        available=claim.available if claim.available is not None else product.available,
        threshold=threshold,
    )
    event = OutgoingEvent(source=INVENTORY_SOURCE, detail_type="StockLow", detail=detail)
    return FallToAnnounce(event=event, fall=claim.fall, restocked=restocked)


def publish_stock_changes(event: Mapping[str, Any], context: Any) -> PartialItemFailureResponse:
    """The stock stream's batch: each SKU judged once per batch (by its stock as it stands, which
    already includes the batch's later records), a fall announced once."""
    judged: set[str] = set()

    def announce_once_per_batch(record: DynamoDBRecord, sku: str) -> None:
        if sku not in judged:
            _announce_stock(record, sku)
            judged.add(sku)

    reader = _Reader(read=_read_stock_record, act=announce_once_per_batch)
    return _process(event, context, lambda record: _read_or_set_aside("stock", reader, record))


def _read_stock_record(record: DynamoDBRecord) -> str:
    """The SKU whose counter moved."""
    return stock.sku_of_stream_record(record.raw_event)


def _announce_stock(record: DynamoDBRecord, sku: str) -> None:
    fall = judge_stock(sku, claimant=_sequence_number(record.raw_event))
    if fall is not None:
        event_bus.put(fall.event)
        event_records.mark_published(sku, fall.fall, rearm=fall.restocked)


STOCK_RECORDS = _Reader(read=_read_stock_record, act=_announce_stock)
READERS: dict[StreamSource, _Reader] = {"orders": ORDER_RECORDS, "stock": STOCK_RECORDS}


def republish_unreadable() -> RepublishResult:
    """Read every record set aside again (the republisher's schedule): publish what it announces
    when it can be read now, and mark it PUBLISHED; count one more failed read otherwise. A
    failure to act (a busy bus or table) raises: the next run tries again, and what this run
    published stays PUBLISHED (a record published twice has one event id: consumers deduplicate)."""
    published = still_unreadable = 0
    for unreadable in unreadable_records.open_records():
        error: Exception | None
        if unreadable.images_dropped:
            # Kept without its images (too large): reading what is left would announce nothing and
            # close it unread. It stays for an operator, who reads the item by its keys.
            error = RecordUnreadable("kept without its images (too large for one item): read the item by its keys")
        else:
            error = _read_and_act(READERS[unreadable.source], DynamoDBRecord(unreadable.record))
        if error is not None:
            unreadable_records.failed_again(
                unreadable.record_id, error=type(error).__name__, detail=str(error), now=iso_now()
            )
            still_unreadable += 1
            continue
        unreadable_records.mark_published(unreadable.record_id, now=iso_now())
        logger().info("set-aside stream record published", extra={"record_id": unreadable.record_id})
        published += 1
    # A level, like the dead letters': the alarm stays raised while any record waits for a fix.
    metrics().add_metric(name="UnreadableStreamRecordsOpen", unit=MetricUnit.Count, value=still_unreadable)
    return RepublishResult(published=published, still_unreadable=still_unreadable)


# ---------------------------------------------------------------------------- consumers
def queue_email(delivered: BusEvent) -> EmailNotification | None:
    """The notification consumer: the e-mail this order event sends, queued once per event id.
    Returns it when this delivery queued it (None: a duplicate, or an event that sends none)."""
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
        occurred_at=detail.occurred_at,
        created_at=iso_now(),
    )
    return notification if event_records.add_notification(notification) else None


def record_low_stock(delivered: BusEvent) -> LowStockAlert | None:
    """The low-stock consumer: an alert for operators, once per event id."""
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
