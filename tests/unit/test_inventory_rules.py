"""Pure inventory rules: reading DynamoDB's cancellation reasons, and the step events' models."""

from __future__ import annotations

from typing import Any

import pytest

from shop.domain.inventory import CancellationVerdict, classify_cancellation
from shop.errors import (
    Conflict,
    FieldError,
    InventoryContention,
    NotFound,
    OutOfStock,
    ReservationExpired,
    ReservationNotFound,
    TransientError,
)
from shop.models.base import parse_event
from shop.models.common import Line, ReserveLine
from shop.models.inventory import (
    CommitReservation,
    ReleaseReservation,
    Reservation,
    ReservationResult,
    ReserveStock,
)

SKUS = ["A", "B", "C"]


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (["ConditionalCheckFailed", "None", "None", "None"], CancellationVerdict(reservation_failed=True)),
        (["None", "None", "ConditionalCheckFailed", "None"], CancellationVerdict(failed_skus=["B"])),
        (
            ["None", "ConditionalCheckFailed", "None", "ConditionalCheckFailed"],
            CancellationVerdict(failed_skus=["A", "C"]),
        ),
        (
            ["ConditionalCheckFailed", "ConditionalCheckFailed", "None", "None"],
            CancellationVerdict(reservation_failed=True, failed_skus=["A"]),
        ),
        (["None", "TransactionConflict", "None", "None"], CancellationVerdict(contention=True)),
        (["None", "None", "ThrottlingError", "None"], CancellationVerdict(contention=True)),
        (["None", "ProvisionedThroughputExceeded", "None", "None"], CancellationVerdict(contention=True)),
        (
            ["None", "ConditionalCheckFailed", "TransactionConflict", "None"],
            CancellationVerdict(failed_skus=["A"], contention=True),
        ),
        (["ValidationError", "None", "None", "None"], CancellationVerdict(unexpected=["ValidationError"])),
        (["None", "None"], CancellationVerdict(unexpected=["2 reasons for 4 actions"])),
    ],
    ids=[
        "reservation-exists",
        "one-short",
        "two-short",
        "exists-and-short",
        "conflict",
        "throttled",
        "provisioned",
        "short-and-conflict",
        "unexpected",
        "misaligned",
    ],
)
def test_cancellation_reasons_line_up_with_the_actions(codes: list[str], expected: CancellationVerdict) -> None:
    assert classify_cancellation(codes, SKUS) == expected


def test_a_line_taking_from_several_shards_is_named_once() -> None:
    # A's units come from two shards, so two actions; both short names A once.
    codes = ["None", "ConditionalCheckFailed", "ConditionalCheckFailed", "None"]
    assert classify_cancellation(codes, ["A", "A", "B"]) == CancellationVerdict(failed_skus=["A"])


def reserve_event(**overrides: Any) -> dict[str, Any]:
    return {
        "order_id": "order-1",
        "lines": [{"sku": "SKU_1", "quantity": 2}, {"sku": "sku-2", "quantity": 100}],
        **overrides,
    }


def test_reserve_event_accepts_the_saga_correlation_ids() -> None:
    event = parse_event(ReserveStock, reserve_event(execution_name="exec-1"))
    assert event.lines == [ReserveLine(sku="SKU_1", quantity=2), ReserveLine(sku="sku-2", quantity=100)]
    assert [line.stock_shards for line in event.lines] == [1, 1]  # an event without the snapshot: one shard
    assert event.execution_name == "exec-1"

    for model in (CommitReservation, ReleaseReservation):
        step = parse_event(model, {"order_id": "order-1", "execution_name": "e"})
        assert step.order_id == "order-1"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (reserve_event(lines=[]), "lines"),
        (reserve_event(lines=[{"sku": f"S{n}", "quantity": 1} for n in range(51)]), "lines"),
        (reserve_event(lines=[{"sku": "A", "quantity": 0}]), "lines.0.quantity"),
        (reserve_event(lines=[{"sku": "A", "quantity": 101}]), "lines.0.quantity"),
        (reserve_event(lines=[{"sku": "A", "quantity": "1"}]), "lines.0.quantity"),
        (reserve_event(lines=[{"sku": "A", "quantity": True}]), "lines.0.quantity"),
        (reserve_event(lines=[{"sku": "A" * 65, "quantity": 1}]), "lines.0.sku"),
        (reserve_event(lines=[{"sku": "A", "quantity": 1, "stock_shards": 0}]), "lines.0.stock_shards"),
        (reserve_event(lines=[{"sku": "A", "quantity": 1, "stock_shards": 51}]), "lines.0.stock_shards"),
        (reserve_event(lines=[{"sku": "A", "quantity": 1, "price": 3}]), "lines.0.price"),
        (reserve_event(lines=[{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 2}]), "lines"),
        (reserve_event(order_id="has space"), "order_id"),
        (reserve_event(order_id="x" * 129), "order_id"),
        (reserve_event(reservation_id="order-1"), "reservation_id"),
        (reserve_event(order_id=None), "order_id"),
        (reserve_event(customer_id="c-1"), "customer_id"),
        ("not an object", "event"),
    ],
)
def test_bad_reserve_events_name_the_field(event: Any, field: str) -> None:
    with pytest.raises(FieldError) as raised:
        parse_event(ReserveStock, event)
    assert field in [error["field"] for error in raised.value.errors]
    assert raised.value.status == 400


@pytest.mark.parametrize("model", [CommitReservation, ReleaseReservation])
def test_step_events_accept_nothing_else(model: type[CommitReservation]) -> None:
    with pytest.raises(FieldError):
        parse_event(model, {"order_id": "order-1", "lines": []})
    with pytest.raises(FieldError):
        parse_event(model, {"order_id": 1})


def reservation(**lines: int) -> Reservation:
    return Reservation(
        reservation_id="order-1",
        order_id="order-1",
        lines=[{"sku": sku, "quantity": quantity} for sku, quantity in lines.items()],  # type: ignore[misc]
        status="RESERVED",
        expires_at=100,
        created_at="2024-01-01T00:00:00.000Z",
        updated_at="2024-01-01T00:00:00.000Z",
    )


def test_same_lines_ignores_order_but_not_quantities() -> None:
    stored = reservation(A=1, B=2)
    assert stored.same_lines([Line(sku="B", quantity=2), Line(sku="A", quantity=1)])
    assert not stored.same_lines([Line(sku="A", quantity=1), Line(sku="B", quantity=3)])
    assert not stored.same_lines([Line(sku="A", quantity=1)])


def test_results_have_one_shape_for_every_outcome() -> None:
    found = ReservationResult.of(reservation(A=1)).model_dump(mode="json")
    missing = ReservationResult.not_found("order-2").model_dump(mode="json")
    assert set(found) == set(missing) == {"reservation_id", "order_id", "status", "lines", "expires_at"}
    assert missing["status"] == "NOT_FOUND"


def test_inventory_errors_are_what_the_saga_matches() -> None:
    assert issubclass(InventoryContention, TransientError)
    assert issubclass(ReservationExpired, Conflict) and ReservationExpired.status == 409
    assert issubclass(ReservationNotFound, NotFound)
    short = OutOfStock(["A", "B"])
    assert short.short_skus == ["A", "B"] and short.extensions == {"short_skus": ["A", "B"]}
