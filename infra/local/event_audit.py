"""`make chaos`'s audit of the events: what reached the bus and the e-mail outbox against the orders.

The README promises that every order transition is published once, as consumers see it (one
``event_id`` per transition; a redelivery repeats the id, never mints another), and that the
notification consumer queues one e-mail per event. Under chaos the publishers meet Lambda and
DynamoDB faults (a lost answer redelivers a batch, a throttled bus fails a record), so the run
records every event put on the bus (``BusRecorder``, fed by ``moto_events.published_listeners``)
and, once everything is delivered, ``audit`` holds them to each order's books:

- one ``OrderPlaced`` per order, and no event of an order the run did not place;
- every status the order's history reached that is announced (COMPLETED, CANCELLED, REFUNDED,
  NEEDS_ATTENTION) has its event, and no event announces a status the order never had;
- COMPLETED, CANCELLED and REFUNDED are each reached at most once, so each has at most one event
  id (NEEDS_ATTENTION may recur: a redrive that fails again is a new transition, with a new id);
- the latest event (the highest order version) announces the order's final status;
- one queued e-mail per published completion, cancellation and refund, and none for an event
  that was never published;
- StockLow once per fall (``audit_stock``): a SKU's falls, as its marker counts them, are each on
  the bus under one id and nothing more; its latest fall is announced; a SKU whose stock ended at or
  below the threshold is marked low (its fall not lost); one operators' alert per StockLow event.

Pure: the chaos run gathers the inputs; ``tests/unit/test_event_audit.py`` holds each rule.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shop.domain.events import stock_low_event_id
from shop.models.events import ORDER_EVENT_FOR_STATUS

REACHED_ONCE = {"COMPLETED", "CANCELLED", "REFUNDED"}
EMAILED = {"OrderCompleted", "OrderCancelled", "OrderRefunded"}


@dataclass(frozen=True)
class OrderBooks:
    """What the audit needs of an order as it finally stands."""

    order_id: str
    status: str
    statuses_reached: frozenset[str]  # every status its history records


@dataclass(frozen=True)
class BusEvent:
    detail_type: str
    event_id: str
    order_id: str | None
    status: str | None
    sku: str | None = None


@dataclass(frozen=True)
class StockMarker:
    """A SKU's StockLow marker (OperationsTable ``stock-low#<sku>``): its falls so far, whether it
    is low now, and whether its latest fall was announced."""

    fall: int
    low: bool
    published: bool


@dataclass
class BusRecorder:
    """Every custom event put on a bus, in the order the puts happened (a ``published_listeners`` entry)."""

    events: list[BusEvent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, entry: Mapping[str, Any]) -> None:
        detail = json.loads(entry.get("Detail") or "{}")
        event = BusEvent(
            detail_type=str(entry.get("DetailType")),
            event_id=str(detail.get("event_id")),
            order_id=detail.get("order_id"),
            status=detail.get("status"),
            sku=detail.get("sku"),
        )
        with self._lock:
            self.events.append(event)


@dataclass
class EventAudit:
    problems: list[str]
    puts: int  # order events put on the bus, redeliveries included
    distinct: int  # order events by id
    emails: int


def _version(event_id: str) -> int:
    return int(event_id.rsplit(":", 1)[1]) if event_id.rsplit(":", 1)[-1].isdigit() else -1


def audit(orders: Mapping[str, OrderBooks], events: Iterable[BusEvent], emails: Mapping[str, str]) -> EventAudit:
    """``emails``: each queued e-mail's event id -> its order id."""
    order_events = [event for event in events if event.order_id is not None]
    distinct: dict[str, BusEvent] = {}
    for event in order_events:
        distinct.setdefault(event.event_id, event)
    by_order: dict[str, list[BusEvent]] = defaultdict(list)
    for event in distinct.values():
        by_order[str(event.order_id)].append(event)

    problems = [
        f"order {order_id}: {len(seen)} events, but the run placed no such order"
        for order_id, seen in by_order.items()
        if order_id not in orders
    ]
    for order_id, books in orders.items():
        problems += _order_problems(books, by_order.get(order_id, []))

    for event in distinct.values():
        if event.detail_type in EMAILED and event.event_id not in emails:
            problems.append(f"order {event.order_id}: no e-mail queued for {event.detail_type} {event.event_id}")
    problems += [
        f"order {order_id}: an e-mail queued for {event_id}, an event never published"
        for event_id, order_id in emails.items()
        if event_id not in distinct and order_id in orders
    ]
    return EventAudit(problems=problems, puts=len(order_events), distinct=len(distinct), emails=len(emails))


def _order_problems(books: OrderBooks, seen: list[BusEvent]) -> list[str]:
    order_id = books.order_id
    problems: list[str] = []
    placed = [event for event in seen if event.detail_type == "OrderPlaced"]
    if len(placed) != 1:
        problems.append(f"order {order_id}: {len(placed)} OrderPlaced events, not one")
    transitions = sorted(
        (event for event in seen if event.detail_type != "OrderPlaced"), key=lambda e: _version(e.event_id)
    )
    announced = Counter(event.status for event in transitions)
    reached = books.statuses_reached | {books.status}
    for status, detail_type in ORDER_EVENT_FOR_STATUS.items():
        if status in reached and not announced[status]:
            problems.append(f"order {order_id}: reached {status}, but no {detail_type} was published")
        if status in REACHED_ONCE and announced[status] > 1:
            ids = sorted(event.event_id for event in transitions if event.status == status)
            problems.append(f"order {order_id}: one transition to {status} published as {len(ids)} events: {ids}")
    problems += [
        f"order {order_id}: {event.detail_type} {event.event_id} announces {event.status}, which it never reached"
        for event in transitions
        if event.status not in reached
    ]
    if books.status in ORDER_EVENT_FOR_STATUS and transitions and transitions[-1].status != books.status:
        problems.append(
            f"order {order_id}: the latest event, {transitions[-1].event_id}, is not its final status {books.status}"
        )
    return problems


def audit_stock(
    markers: Mapping[str, StockMarker],
    final_available: Mapping[str, int],
    threshold: int,
    events: Iterable[BusEvent],
    alerts: Iterable[str],
) -> list[str]:
    """StockLow once per fall. ``alerts``: the event id of each operators' alert recorded."""
    announced: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.detail_type == "StockLow":
            announced[str(event.sku)].add(event.event_id)
    problems: list[str] = []
    for sku in sorted({*markers, *announced, *final_available}):
        marker = markers.get(sku, StockMarker(fall=0, low=False, published=False))
        falls = {stock_low_event_id(sku, fall) for fall in range(1, marker.fall + 1)}
        # Every delivery made, every fall the marker counts is on the bus (the SKU is re-armed only
        # after its fall was announced, and a claimed fall's record is retried until it is).
        problems += [f"SKU {sku}: fall {event_id} never announced" for event_id in sorted(falls - announced[sku])]
        problems += [f"SKU {sku}: {event_id} announced, not a fall" for event_id in sorted(announced[sku] - falls)]
        if marker.low and not marker.published:
            problems.append(f"SKU {sku}: fall {marker.fall} claimed, still not announced after every delivery")
        available = final_available.get(sku)
        if available is not None and available <= threshold and not marker.low:
            problems.append(f"SKU {sku}: {available} left (threshold {threshold}), but not marked low: a fall lost")
        if available is not None and available > threshold and marker.low:
            problems.append(
                f"SKU {sku}: {available} left (threshold {threshold}), but still marked low: its next fall is lost"
            )
    recorded = Counter(alerts)
    every_event = {event_id for ids in announced.values() for event_id in ids}
    problems += [
        f"StockLow {event_id}: no operators' alert recorded" for event_id in sorted(every_event - set(recorded))
    ]
    problems += [
        f"StockLow {event_id}: {count} alerts recorded" for event_id, count in sorted(recorded.items()) if count > 1
    ]
    return problems
