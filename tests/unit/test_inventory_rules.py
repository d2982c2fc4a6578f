"""Pure inventory rules: reading DynamoDB's cancellation reasons, and the step events' models."""

from __future__ import annotations

from typing import Any

import pytest

from shop.domain.inventory import CancellationVerdict
from shop.domain.inventory import classify_cancellation as classify_reasons
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
from shop.models.common import CheckoutLine, Line
from shop.models.inventory import (
    CommitReservation,
    ReleaseReservation,
    Reservation,
    ReservationResult,
    ReserveStock,
)
from shop.repositories.inventory import CancellationReason


def classify_cancellation(
    codes: list[str], skus: list[str], limited_skus: list[str] | None = None
) -> CancellationVerdict:
    """The verdict on DynamoDB's CancellationReasons codes, as the repository hands them over."""
    return classify_reasons([CancellationReason(code=code) for code in codes], skus, limited_skus or [])


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


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (
            ["None", "None", "None", "None", "ConditionalCheckFailed", "None"],
            CancellationVerdict(over_limit_skus=["A"]),
        ),
        (
            ["None", "None", "ConditionalCheckFailed", "None", "None", "ConditionalCheckFailed"],
            CancellationVerdict(failed_skus=["B"], over_limit_skus=["C"]),
        ),
        (
            ["ConditionalCheckFailed", "None", "None", "None", "ConditionalCheckFailed", "None"],
            CancellationVerdict(reservation_failed=True, over_limit_skus=["A"]),
        ),
        (["None", "None", "None", "None", "TransactionConflict", "None"], CancellationVerdict(contention=True)),
        (["None", "None", "None", "None"], CancellationVerdict(unexpected=["4 reasons for 6 actions"])),
    ],
    ids=["over-limit", "short-and-over-limit", "exists-and-over-limit", "counter-conflict", "misaligned"],
)
def test_purchase_counter_reasons_follow_the_stock_actions(codes: list[str], expected: CancellationVerdict) -> None:
    """The counters of the limited lines (A and C here) are the last actions, in their order."""
    assert classify_cancellation(codes, SKUS, ["A", "C"]) == expected


def test_a_reserve_event_carries_each_lines_purchase_limit_and_the_customer() -> None:
    event = parse_event(
        ReserveStock,
        reserve_event(
            customer_id="alice", lines=[{"sku": "A", "quantity": 2, "purchase_limit": 3}, {"sku": "B", "quantity": 1}]
        ),
    )
    assert event.customer_id == "alice"
    assert [line.purchase_limit for line in event.lines] == [3, None]


def test_only_the_refund_keeps_purchase_units_when_releasing() -> None:
    assert parse_event(ReleaseReservation, {"order_id": "order-1"}).frees_purchase_units is True
    kept = parse_event(ReleaseReservation, {"order_id": "order-1", "frees_purchase_units": False})
    assert kept.frees_purchase_units is False
    with pytest.raises(FieldError):
        parse_event(ReleaseReservation, {"order_id": "order-1", "frees_purchase_units": "no"})


def test_a_line_taking_from_several_shards_is_named_once() -> None:
    # A's units come from two shards, so two actions; both short names A once.
    codes = ["None", "ConditionalCheckFailed", "ConditionalCheckFailed", "None"]
    assert classify_cancellation(codes, ["A", "A", "B"]) == CancellationVerdict(failed_skus=["A"])


def test_purchase_counter_reasons_come_after_every_shard_take() -> None:
    # A takes from two shards and B from one (three stock actions), then A's counter: a short
    # shard and a refused counter are told apart.
    codes = ["None", "None", "ConditionalCheckFailed", "None", "ConditionalCheckFailed"]
    assert classify_cancellation(codes, ["A", "A", "B"], ["A"]) == CancellationVerdict(
        failed_skus=["A"], over_limit_skus=["A"]
    )
    assert classify_cancellation(
        ["None", "None", "None", "None", "ConditionalCheckFailed"], ["A", "A", "B"], ["A"]
    ) == (CancellationVerdict(over_limit_skus=["A"]))


@pytest.mark.parametrize(
    ("fence", "expected"),
    [
        ("ConditionalCheckFailed", CancellationVerdict(claim_lost=True)),
        ("TransactionConflict", CancellationVerdict(contention=True)),
        ("ValidationError", CancellationVerdict(unexpected=["ValidationError"])),
        ("None", CancellationVerdict(over_limit_skus=["A"])),
    ],
)
def test_a_fenced_release_reads_its_last_reason_as_the_orders_claim(fence: str, expected: CancellationVerdict) -> None:
    # The saga's release: the reservation, A's return, B's return, A's counter, then the claim's condition.
    codes = ["None", "None", "None", "None", fence]
    if fence == "None":
        codes[3] = "ConditionalCheckFailed"
    verdict = classify_reasons([CancellationReason(code=code) for code in codes], ["A", "B"], ["A"], fenced=True)
    assert verdict == expected


def test_a_fenced_cancellation_with_a_reason_missing_is_unexpected() -> None:
    reasons = [CancellationReason(code="None")] * 3
    assert classify_reasons(reasons, ["A", "B"], fenced=True).unexpected == ["3 reasons for 4 actions"]


def reserve_event(**overrides: Any) -> dict[str, Any]:
    return {
        "order_id": "order-1",
        "lines": [{"sku": "SKU_1", "quantity": 2}, {"sku": "sku-2", "quantity": 100}],
        **overrides,
    }


def test_reserve_event_accepts_the_saga_correlation_ids() -> None:
    event = parse_event(ReserveStock, reserve_event(execution_name="exec-1"))
    assert event.lines == [CheckoutLine(sku="SKU_1", quantity=2), CheckoutLine(sku="sku-2", quantity=100)]
    assert [line.stock_shards for line in event.lines] == [1, 1]  # an event without the snapshot: one shard
    assert event.execution_name == "exec-1"
    assert event.customer_id is None

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
        (reserve_event(customer_id="has space"), "customer_id"),
        (reserve_event(customer_id=""), "customer_id"),
        (reserve_event(lines=[{"sku": "A", "quantity": 1, "purchase_limit": 0}]), "lines.0.purchase_limit"),
        (reserve_event(lines=[{"sku": "A", "quantity": 1, "purchase_limit": 101}]), "lines.0.purchase_limit"),
        (reserve_event(lines=[{"sku": "A", "quantity": 1, "purchase_limit": "2"}]), "lines.0.purchase_limit"),
        # A limited line counts against a customer: without one it cannot be reserved.
        (reserve_event(lines=[{"sku": "A", "quantity": 1, "purchase_limit": 2}]), "event"),
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
        lines=[{"sku": sku, "quantity": quantity} for sku, quantity in lines.items()],
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
