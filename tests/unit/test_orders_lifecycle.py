"""The order's transitions: pure functions of the stored order (no AWS)."""

from __future__ import annotations

from typing import Any

import pytest

from shop.domain import order_lifecycle as lifecycle
from shop.errors import OrderStateConflict
from shop.models.money import Money
from shop.models.orders import CancelOrder, Failure, HistoryEntry, Order, OrderLine, OrderStatus

NOW = "2030-01-01T00:00:01.000Z"
LATER = "2030-01-01T00:00:02.000Z"


def _order(status: OrderStatus = "PENDING", **changes: Any) -> Order:
    line = OrderLine(sku="MUG-1", name="Mug", quantity=2, unit_price=Money(amount=500), line_total=Money(amount=1000))
    order = Order(
        order_id="order-1",
        customer_id="alice",
        status=status,
        items=[line],
        total=Money(amount=1000),
        history=[HistoryEntry(step="order_placed", status="PENDING", at="2030-01-01T00:00:00.000Z")],
        created_at="2030-01-01T00:00:00.000Z",
        updated_at="2030-01-01T00:00:00.000Z",
    )
    return order.model_copy(update=changes)


def _pairs(order: Order) -> list[tuple[str, str]]:
    return [(entry.step, entry.status) for entry in order.history]


def _cancel(reason: str, step: str | None, compensations: list[str]) -> CancelOrder:
    return CancelOrder.model_validate(
        {"order_id": "order-1", "failure": {"reason": reason, "step": step, "compensations": compensations}}
    )


def test_progress_moves_forward_and_records_once() -> None:
    reserved = lifecycle.progressed(_order(), "reserve_stock", NOW)
    assert reserved is not None
    assert reserved.status == "STOCK_RESERVED"
    assert _pairs(reserved)[-1] == ("reserve_stock", "SUCCEEDED")
    assert reserved.history[-1].at == NOW

    assert lifecycle.progressed(reserved, "reserve_stock", LATER) is None


def test_progress_never_moves_backwards() -> None:
    authorized = _order("PAYMENT_AUTHORIZED")
    late = lifecycle.progressed(authorized, "reserve_stock", NOW)
    assert late is not None and late.status == "PAYMENT_AUTHORIZED"


def test_progress_after_the_saga_moved_on_is_a_noop_or_a_conflict() -> None:
    recorded = lifecycle.progressed(_order(), "reserve_stock", NOW)
    assert recorded is not None
    cancelled = recorded.model_copy(update={"status": "CANCELLED"})
    assert lifecycle.progressed(cancelled, "reserve_stock", LATER) is None
    with pytest.raises(OrderStateConflict):
        lifecycle.progressed(cancelled, "authorize_payment", LATER)


def test_completion_completes_unless_the_customer_cancelled() -> None:
    done = lifecycle.completed(_order("PAYMENT_AUTHORIZED"), NOW)
    assert done is not None and done.status == "COMPLETED"
    assert _pairs(done)[-3:] == [
        ("commit_reservation", "SUCCEEDED"),
        ("capture_payment", "SUCCEEDED"),
        ("complete_order", "COMPLETED"),
    ]
    assert lifecycle.completed(done, LATER) is None

    flagged = _order("PAYMENT_AUTHORIZED", cancel_requested=True)
    refunding = lifecycle.completed(flagged, NOW)
    assert refunding is not None and refunding.status == "REFUNDING"
    assert _pairs(refunding)[-1] == ("complete_order", "REFUND_REQUIRED")
    assert lifecycle.completed(refunding, LATER) is None


def test_completion_of_a_cancelled_order_is_a_conflict() -> None:
    with pytest.raises(OrderStateConflict):
        lifecycle.completed(_order("CANCELLED"), NOW)


def test_cancel_records_the_failure_the_compensations_and_the_reason() -> None:
    step = _cancel("PAYMENT_DECLINED", "authorize_payment", ["void_payment", "release_stock"])

    cancelled = lifecycle.cancelled(_order("STOCK_RESERVED"), step, NOW)

    assert cancelled is not None
    assert (cancelled.status, cancelled.failure_reason) == ("CANCELLED", "PAYMENT_DECLINED")
    assert _pairs(cancelled)[1:] == [
        ("authorize_payment", "FAILED"),
        ("void_payment", "SUCCEEDED"),
        ("release_stock", "SUCCEEDED"),
        ("cancel_order", "CANCELLED"),
    ]
    assert lifecycle.cancelled(cancelled, step, LATER) is None


def test_a_redrive_may_cancel_an_order_that_needs_attention_but_never_a_completed_one() -> None:
    step = _cancel("CANCELLED_BY_CUSTOMER", None, ["release_stock"])
    redriven = lifecycle.cancelled(_order("NEEDS_ATTENTION"), step, NOW)
    assert redriven is not None and redriven.status == "CANCELLED"
    for status in ("COMPLETED", "REFUNDING", "REFUNDED"):
        with pytest.raises(OrderStateConflict):
            lifecycle.cancelled(_order(status), step, NOW)


def test_refunded_only_after_a_refund_was_requested() -> None:
    refunded = lifecycle.refunded(_order("REFUNDING", failure_reason=None), NOW)
    assert refunded is not None and refunded.status == "REFUNDED"
    assert lifecycle.refunded(refunded, LATER) is None
    with pytest.raises(OrderStateConflict):
        lifecycle.refunded(_order("COMPLETED"), NOW)


def test_a_cancelled_order_is_refunded_only_when_its_letter_asked_for_it() -> None:
    """The reconciliation letters a CANCELLED order whose payment was captured; its redrive refunds it."""
    with pytest.raises(OrderStateConflict):
        lifecycle.refunded(_order("CANCELLED", failure_reason="PAYMENT_UNAVAILABLE"), NOW)
    refunded = lifecycle.refunded(_order("CANCELLED", failure_reason="PAYMENT_UNAVAILABLE", dead_lettered=True), NOW)
    assert refunded is not None and (refunded.status, refunded.failure_reason) == ("REFUNDED", None)


def test_flagging_needs_attention_records_the_failed_step_once() -> None:
    flagged = lifecycle.flagged(_order("STOCK_RESERVED"), "void_payment", NOW)
    assert flagged is not None and flagged.status == "NEEDS_ATTENTION"
    assert _pairs(flagged)[-2:] == [("void_payment", "FAILED"), ("needs_attention", "NEEDS_ATTENTION")]
    assert lifecycle.flagged(flagged, "void_payment", LATER) is None
    with pytest.raises(OrderStateConflict):
        lifecycle.flagged(_order("COMPLETED"), "void_payment", NOW)


def test_cancel_request_on_a_pending_order_raises_the_flag_once() -> None:
    decision = lifecycle.decide_cancel(_order("STOCK_RESERVED"), NOW)
    assert decision.order is not None and not decision.start_refund
    assert decision.order.cancel_requested
    assert decision.order.status == "STOCK_RESERVED"  # the saga decides at its next checkpoint
    again = lifecycle.decide_cancel(decision.order, LATER)
    assert again.order is None and not again.start_refund


def test_cancel_request_on_a_completed_order_starts_a_refund() -> None:
    decision = lifecycle.decide_cancel(_order("COMPLETED"), NOW)
    assert decision.order is not None and decision.start_refund
    assert decision.order.status == "REFUNDING"
    # Asking again only makes sure the refund saga runs (starting it again is a no-op).
    again = lifecycle.decide_cancel(decision.order, LATER)
    assert again.order is None and again.start_refund


@pytest.mark.parametrize("status", ["CANCELLED", "REFUNDED"])
def test_cancel_request_on_a_settled_order_changes_nothing(status: OrderStatus) -> None:
    decision = lifecycle.decide_cancel(_order(status), NOW)
    assert decision.order is None and not decision.start_refund


def test_cancel_request_on_an_order_needing_attention_is_recorded_for_the_redrive() -> None:
    decision = lifecycle.decide_cancel(_order("NEEDS_ATTENTION"), NOW)
    assert decision.order is not None and not decision.start_refund
    assert (decision.order.status, decision.order.cancel_requested) == ("NEEDS_ATTENTION", True)
    assert lifecycle.decide_cancel(decision.order, LATER).order is None  # asking again changes nothing


@pytest.mark.parametrize("status", ["PENDING", "STOCK_RESERVED", "PAYMENT_AUTHORIZED", "NEEDS_ATTENTION"])
def test_a_capture_that_cannot_complete_hands_the_order_to_the_refund_saga(status: OrderStatus) -> None:
    refunding = lifecycle.refund_started(_order(status), NOW)
    assert refunding is not None and (refunding.status, refunding.failure_reason) == ("REFUNDING", None)
    assert lifecycle.refund_started(refunding, LATER) is None


@pytest.mark.parametrize("status", ["COMPLETED", "CANCELLED"])
def test_a_settled_order_is_not_handed_to_the_refund_saga(status: OrderStatus) -> None:
    with pytest.raises(OrderStateConflict):
        lifecycle.refund_started(_order(status), NOW)


def test_cancel_racing_completion_ends_refunded_whichever_writes_first() -> None:
    authorized = _order("PAYMENT_AUTHORIZED")
    # The cancel request wins the write: completion sees the flag and hands over to the refund.
    flagged = lifecycle.decide_cancel(authorized, NOW).order
    assert flagged is not None
    after = lifecycle.completed(flagged, LATER)
    assert after is not None and after.status == "REFUNDING"
    # The completion wins the write: the cancel request turns into a refund.
    completed = lifecycle.completed(authorized, NOW)
    assert completed is not None
    decision = lifecycle.decide_cancel(completed, LATER)
    assert decision.start_refund and decision.order is not None and decision.order.status == "REFUNDING"


def test_failure_model_rejects_unknown_reasons() -> None:
    with pytest.raises(ValueError):
        Failure.model_validate({"reason": "BORED"})


# ---------------------------------------------------------------------------- the checkout failure rate's counts
@pytest.mark.parametrize(
    ("reason", "failed"),
    [
        ("PAYMENT_UNAVAILABLE", True),
        ("INVENTORY_UNAVAILABLE", True),
        ("PAYMENT_DECLINED", False),
        ("OUT_OF_STOCK", False),
        ("PURCHASE_LIMIT_EXCEEDED", False),
        ("CANCELLED_BY_CUSTOMER", False),
    ],
)
def test_a_checkout_cancelled_is_failed_by_the_shop_only_for_the_shops_reasons(reason: str, failed: bool) -> None:
    cancelled = lifecycle.cancelled(_order("STOCK_RESERVED"), _cancel(reason, None, []), NOW)
    assert cancelled is not None
    assert lifecycle.checkout_outcome("STOCK_RESERVED", cancelled) == lifecycle.CheckoutOutcome(failed)


def test_a_checkout_ends_once_whatever_settles_it_after_a_flag() -> None:
    flagged = lifecycle.flagged(_order("PAYMENT_AUTHORIZED"), "commit_reservation", NOW)
    assert flagged is not None
    assert lifecycle.checkout_outcome("PAYMENT_AUTHORIZED", flagged) == lifecycle.CheckoutOutcome(True)
    # The redrive's end (completed, cancelled or refunded) is the same checkout's, counted already.
    completed = lifecycle.completed(flagged, LATER)
    refunding = lifecycle.refund_started(flagged, LATER)
    cancelled = lifecycle.cancelled(flagged, _cancel("PAYMENT_UNAVAILABLE", None, []), LATER)
    for settled in (completed, refunding, cancelled):
        assert settled is not None and lifecycle.checkout_outcome("NEEDS_ATTENTION", settled) is None


def test_a_paid_checkout_refunded_is_failed_by_the_shop_unless_its_customer_cancelled() -> None:
    not_completed = lifecycle.refund_started(_order("PAYMENT_AUTHORIZED"), NOW)
    assert not_completed is not None
    assert lifecycle.checkout_outcome("PAYMENT_AUTHORIZED", not_completed) == lifecycle.CheckoutOutcome(True)
    asked = lifecycle.decide_cancel(_order("PAYMENT_AUTHORIZED"), NOW).order
    assert asked is not None
    refunding = lifecycle.completed(asked, LATER)
    assert refunding is not None and refunding.status == "REFUNDING"
    assert lifecycle.checkout_outcome("PAYMENT_AUTHORIZED", refunding) == lifecycle.CheckoutOutcome(False)


def test_no_outcome_while_the_checkout_runs_or_after_it_ended() -> None:
    reserved = lifecycle.progressed(_order(), "reserve_stock", NOW)
    assert reserved is not None and lifecycle.checkout_outcome("PENDING", reserved) is None
    refund_flagged = lifecycle.flagged(_order("REFUNDING"), "refund_payment", NOW)
    assert refund_flagged is not None and lifecycle.checkout_outcome("REFUNDING", refund_flagged) is None
    completed = lifecycle.completed(_order("PAYMENT_AUTHORIZED"), NOW)
    assert completed is not None
    assert lifecycle.checkout_outcome("PAYMENT_AUTHORIZED", completed) == lifecycle.CheckoutOutcome(False)


def test_the_write_that_ends_the_checkout_drops_the_payment_token_and_no_other_does() -> None:
    def token(order: Order | None) -> str | None:
        assert order is not None
        return order.payment_token

    paying = _order("PAYMENT_AUTHORIZED", payment_token="tok_visa")
    assert token(lifecycle.progressed(_order("PENDING", payment_token="tok_visa"), "reserve_stock", NOW)) == "tok_visa"
    assert token(lifecycle.decide_cancel(paying, NOW).order) == "tok_visa"  # the saga decides at its checkpoint
    assert token(lifecycle.flagged(paying, "capture_payment", NOW)) == "tok_visa"  # a redrive may check out again
    assert token(lifecycle.completed(paying, NOW)) is None
    assert token(lifecycle.completed(paying.model_copy(update={"cancel_requested": True}), NOW)) is None  # REFUNDING
    assert token(lifecycle.cancelled(paying, _cancel("PAYMENT_DECLINED", "authorize_payment", []), NOW)) is None
    assert token(lifecycle.refund_started(paying, NOW)) is None
    assert token(lifecycle.decide_cancel(_order("COMPLETED", payment_token="tok_visa"), NOW).order) is None
