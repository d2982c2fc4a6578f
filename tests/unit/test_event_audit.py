"""`make chaos`'s audit of the events (infra/local/event_audit.py): each rule finds what it is for,
and a run whose events are right, redeliveries included, passes."""

from __future__ import annotations

import json

from infra.local.event_audit import BusEvent, BusRecorder, OrderBooks, StockMarker, audit, audit_stock


def _books(order_id: str, status: str, *reached: str) -> OrderBooks:
    return OrderBooks(order_id=order_id, status=status, statuses_reached=frozenset({"PENDING", *reached, status}))


def _event(order_id: str, status: str, version: int) -> BusEvent:
    detail_type = {
        "PENDING": "OrderPlaced",
        "COMPLETED": "OrderCompleted",
        "CANCELLED": "OrderCancelled",
        "REFUNDED": "OrderRefunded",
        "NEEDS_ATTENTION": "OrderNeedsAttention",
    }[status]
    event_id = f"{order_id}:PLACED" if status == "PENDING" else f"{order_id}:{status}:{version}"
    return BusEvent(detail_type=detail_type, event_id=event_id, order_id=order_id, status=status)


def _emails(*events: BusEvent) -> dict[str, str]:
    return {event.event_id: str(event.order_id) for event in events}


def test_a_run_whose_events_are_right_passes_and_redeliveries_are_counted_not_judged() -> None:
    refunded = [_event("r", "PENDING", 1), _event("r", "COMPLETED", 5), _event("r", "REFUNDED", 9)]
    flagged_twice = [
        _event("n", "PENDING", 1),
        _event("n", "NEEDS_ATTENTION", 4),
        _event("n", "NEEDS_ATTENTION", 7),  # a redrive that failed again: a new transition
        _event("n", "COMPLETED", 10),
    ]
    orders = {"r": _books("r", "REFUNDED", "COMPLETED"), "n": _books("n", "COMPLETED", "NEEDS_ATTENTION")}
    events = [*refunded, refunded[1], *flagged_twice, flagged_twice[0]]  # two redeliveries

    result = audit(orders, events, _emails(refunded[1], refunded[2], flagged_twice[3]))

    assert result.problems == []
    assert (result.puts, result.distinct, result.emails) == (9, 7, 3)


def test_a_lost_transition_a_missing_placement_and_a_missing_e_mail_are_found() -> None:
    orders = {"a": _books("a", "COMPLETED"), "b": _books("b", "CANCELLED")}
    events = [_event("a", "PENDING", 1), _event("b", "CANCELLED", 3)]

    problems = audit(orders, events, {}).problems

    assert "order a: reached COMPLETED, but no OrderCompleted was published" in problems
    assert "order b: 0 OrderPlaced events, not one" in problems
    assert f"order b: no e-mail queued for OrderCancelled {events[1].event_id}" in problems


def test_one_transition_published_under_two_ids_is_found() -> None:
    orders = {"a": _books("a", "COMPLETED")}
    events = [_event("a", "PENDING", 1), _event("a", "COMPLETED", 5), _event("a", "COMPLETED", 6)]

    [problem] = audit(orders, events, _emails(*events[1:])).problems

    assert problem == "order a: one transition to COMPLETED published as 2 events: ['a:COMPLETED:5', 'a:COMPLETED:6']"


def test_an_event_of_a_status_never_reached_and_a_stale_last_word_are_found() -> None:
    orders = {"a": _books("a", "CANCELLED", "NEEDS_ATTENTION")}
    events = [
        _event("a", "PENDING", 1),
        _event("a", "CANCELLED", 4),
        _event("a", "NEEDS_ATTENTION", 6),
        _event("a", "REFUNDED", 8),
    ]

    problems = audit(orders, events, _emails(events[1], events[3])).problems

    assert problems == [
        "order a: OrderRefunded a:REFUNDED:8 announces REFUNDED, which it never reached",
        "order a: the latest event, a:REFUNDED:8, is not its final status CANCELLED",
    ]


def test_events_and_e_mails_of_orders_never_placed_are_found() -> None:
    stray = _event("ghost", "COMPLETED", 3)
    problems = audit({}, [stray], _emails(stray)).problems
    assert problems == ["order ghost: 1 events, but the run placed no such order"]

    orders = {"a": _books("a", "CANCELLED")}
    events = [_event("a", "PENDING", 1), _event("a", "CANCELLED", 3)]
    problems = audit(orders, events, {**_emails(events[1]), "a:COMPLETED:2": "a"}).problems
    assert problems == ["order a: an e-mail queued for a:COMPLETED:2, an event never published"]


def test_the_recorder_reads_what_put_events_carries() -> None:
    recorder = BusRecorder()
    recorder(
        {
            "Source": "shop.orders",
            "DetailType": "OrderCompleted",
            "Detail": json.dumps({"event_id": "a:COMPLETED:5", "order_id": "a", "status": "COMPLETED"}),
        }
    )
    recorder(
        {"Source": "shop.inventory", "DetailType": "StockLow", "Detail": json.dumps({"event_id": "S:STOCK_LOW:1"})}
    )

    assert recorder.events == [
        BusEvent(detail_type="OrderCompleted", event_id="a:COMPLETED:5", order_id="a", status="COMPLETED"),
        BusEvent(detail_type="StockLow", event_id="S:STOCK_LOW:1", order_id=None, status=None, sku=None),
    ]
    assert audit({}, recorder.events[1:], {}).problems == []  # stock events are not order events


def _low(sku: str, fall: int) -> BusEvent:
    return BusEvent(detail_type="StockLow", event_id=f"{sku}:STOCK_LOW:{fall}", order_id=None, status=None, sku=sku)


def test_stock_falls_each_announced_once_with_one_alert_pass() -> None:
    markers = {"A": StockMarker(fall=2, low=True, published=True), "B": StockMarker(fall=1, low=False, published=True)}
    events = [_low("A", 1), _low("A", 2), _low("A", 2), _low("B", 1)]  # a redelivered put repeats an id

    problems = audit_stock(
        markers, {"A": 0, "B": 40, "C": 90}, 5, events, ["A:STOCK_LOW:1", "A:STOCK_LOW:2", "B:STOCK_LOW:1"]
    )

    assert problems == []


def test_a_lost_fall_an_extra_announcement_and_alerts_are_found() -> None:
    markers = {
        "A": StockMarker(fall=2, low=True, published=False),
        "B": StockMarker(fall=1, low=False, published=True),
        "D": StockMarker(fall=1, low=True, published=True),
    }
    events = [_low("A", 1), _low("B", 1), _low("B", 2), _low("D", 1)]
    alerts = ["A:STOCK_LOW:1", "A:STOCK_LOW:1", "D:STOCK_LOW:1"]

    problems = audit_stock(markers, {"A": 0, "B": 9, "C": 3, "D": 14}, 5, events, alerts)

    assert problems == [
        "SKU A: fall A:STOCK_LOW:2 never announced",
        "SKU A: fall 2 claimed, still not announced after every delivery",
        "SKU B: B:STOCK_LOW:2 announced, not a fall",
        "SKU C: 3 left (threshold 5), but not marked low: a fall lost",
        # Restocked, and its fall announced, but never re-armed: the next fall would go unannounced.
        "SKU D: 14 left (threshold 5), but still marked low: its next fall is lost",
        "StockLow B:STOCK_LOW:1: no operators' alert recorded",
        "StockLow B:STOCK_LOW:2: no operators' alert recorded",
        "StockLow A:STOCK_LOW:1: 2 alerts recorded",
    ]
