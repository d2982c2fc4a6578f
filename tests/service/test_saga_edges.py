"""The sagas' states and Retry/Catch edges that only a fault takes, each by a saga whose end is checked.

`make test` prints which states and edges of both state machines the whole suite took
(tests/statemachine_coverage.py) and fails below 100%. The tests here take those that no other
test takes: a step that loses its answer once (its first retrier), a step that keeps failing
until its last retrier gives up and its catcher hands over (to the compensation, the refund saga
or a dead letter), a reservation that lapsed, a capture the provider did or did not apply, the
redrive's own steps, a refund waiting out an open breaker. Each asserts where the order ended:
its status, the payments ledger as an admin sees it, the stock and, if any, the dead letter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from shop import aws
from shop.config import inventory_settings
from shop.domain import inventory
from shop.domain import payments as payment_domain
from shop.errors import OrderContention
from tests.conftest import BOTH_WORKFLOW_TYPES, LocalAws
from tests.service.faults import SdkFault, StepFaults, inject, open_breaker, updates_payment_to
from tests.service.orders_helpers import Shop, available, open_shop, seed_product

PRICE, STOCK, QUANTITY = 1250, 10, 2
TOTAL = PRICE * QUANTITY


class Ledger(NamedTuple):
    status: str
    authorized: int
    captured: int
    refunded: int


class End(NamedTuple):
    status: str
    failure_reason: str | None
    payment: Ledger | None
    available: int


CAPTURED = Ledger("CAPTURED", TOTAL, TOTAL, 0)
REFUNDED = Ledger("REFUNDED", TOTAL, TOTAL, TOTAL)
VOIDED = Ledger("VOIDED", TOTAL, 0, 0)


def end_of(shop: Shop, order_id: str) -> End:
    """Where the order ended, as an admin sees it through the API, and the stock left."""
    order = shop.get(order_id, who="admin").json_body
    payment = order["payment"]
    ledger = None
    if payment is not None:
        amounts = (payment[field]["amount"] for field in ("authorized", "captured", "refunded"))
        ledger = Ledger(payment["status"], *amounts)
    return End(order["status"], order["failure_reason"], ledger, available("MUG-1"))


def letter_of(shop: Shop, order_id: str) -> tuple[str, str, str, int]:
    letter = shop.dead_letter(order_id)
    assert letter is not None
    return letter.status, letter.resume, letter.failed_step, letter.redrive_count


# Every saga path of this module runs in both workflow types (template parameter WorkflowType).
pytestmark = BOTH_WORKFLOW_TYPES


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=PRICE, stock=STOCK)
    with open_shop(local_aws) as opened:
        yield opened


def place(shop: Shop, token: str = "tok_visa") -> str:
    return str(shop.place_ok([("MUG-1", QUANTITY)], token=token)["order_id"])


def cancelled_during_capture(shop: Shop, faults: StepFaults) -> str:
    """An order whose customer cancels while the capture is in flight: it completes as REFUNDING."""
    at_capture = faults.pause_at("CapturePaymentFunction")
    order_id = place(shop)
    at_capture.wait_reached()
    assert shop.cancel(order_id).status_code == 202
    at_capture.released.set()
    return order_id


def completed(shop: Shop) -> str:
    order_id = place(shop)
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    return order_id


# ---------------------------------------------------------------------------- 1. an answer lost once
def test_each_forward_step_that_loses_its_answer_once_is_retried_and_the_order_completes(
    shop: Shop, faults: StepFaults
) -> None:
    faults.lose_answer_once(
        "ClaimOrderFunction",
        "ReserveStockFunction",
        "RecordProgressFunction",
        "AuthorizePaymentFunction",
        "CommitReservationFunction",
        "CapturePaymentFunction",
        "CompleteOrderFunction",
    )
    order_id = place(shop)

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert faults.lost == [
        ("ClaimOrderFunction", None),
        ("ReserveStockFunction", None),
        ("RecordProgressFunction", "reserve_stock"),
        ("AuthorizePaymentFunction", None),
        ("RecordProgressFunction", "authorize_payment"),
        ("CommitReservationFunction", None),
        ("CapturePaymentFunction", None),
        ("CompleteOrderFunction", None),
    ]
    assert end_of(shop, order_id) == End("COMPLETED", None, CAPTURED, STOCK - QUANTITY)


def test_each_compensation_that_loses_its_answer_once_is_retried_and_the_order_cancels(
    shop: Shop, faults: StepFaults
) -> None:
    faults.lose_answer_once("VoidPaymentFunction", "ReleaseReservationFunction", "CancelOrderFunction")
    order_id = place(shop, token="tok_chargeDeclined")

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert [logical_id for logical_id, _ in faults.lost] == [
        "VoidPaymentFunction",
        "ReleaseReservationFunction",
        "CancelOrderFunction",
    ]
    assert end_of(shop, order_id) == End("CANCELLED", "PAYMENT_DECLINED", Ledger("DECLINED", 0, 0, 0), STOCK)


def test_each_refund_step_that_loses_its_answer_once_is_retried_and_the_order_is_refunded(
    shop: Shop, faults: StepFaults
) -> None:
    faults.lose_answer_once(
        "ClaimOrderFunction",
        "StartRefundFunction",
        "RefundPaymentFunction",
        "ReleaseReservationFunction",
        "MarkRefundedFunction",
    )
    order_id = cancelled_during_capture(shop, faults)

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert shop.wait_refund(order_id) == "SUCCEEDED"
    lost = [logical_id for logical_id, _ in faults.lost]
    # StartRefund's answer is lost after it started the refund saga, whose steps may run first:
    # the order between the two executions is not fixed, each one's own order is.
    assert sorted(lost) == sorted(
        [
            "ClaimOrderFunction",  # the checkout's claim
            "StartRefundFunction",
            "ClaimOrderFunction",  # the refund saga's claim
            "RefundPaymentFunction",
            "ReleaseReservationFunction",
            "MarkRefundedFunction",
        ]
    )
    assert [step for step in lost if step != "StartRefundFunction"] == [
        "ClaimOrderFunction",
        "ClaimOrderFunction",
        "RefundPaymentFunction",
        "ReleaseReservationFunction",
        "MarkRefundedFunction",
    ]
    assert end_of(shop, order_id) == End("REFUNDED", None, REFUNDED, STOCK)


def test_each_redrive_step_that_loses_its_answer_once_is_retried_and_the_order_completes(
    shop: Shop, faults: StepFaults
) -> None:
    faults.fail("CompleteOrderFunction")
    faults.lose_answer_once("FlagOrderFunction")
    order_id = place(shop)
    assert shop.wait_checkout(order_id) == "FAILED"
    assert end_of(shop, order_id) == End("NEEDS_ATTENTION", None, CAPTURED, STOCK - QUANTITY)
    assert letter_of(shop, order_id) == ("OPEN", "complete", "complete_order", 0)

    faults.heal()
    faults.lose_answer_once("ReconcilePaymentFunction", "CommitReservationFunction", "CompleteOrderFunction")
    assert shop.redrive(order_id).status_code == 202

    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"
    assert [logical_id for logical_id, _ in faults.lost] == [
        "FlagOrderFunction",
        "ReconcilePaymentFunction",
        "CommitReservationFunction",
        "CompleteOrderFunction",
    ]
    assert end_of(shop, order_id) == End("COMPLETED", None, CAPTURED, STOCK - QUANTITY)
    assert letter_of(shop, order_id) == ("RESOLVED", "complete", "complete_order", 1)


# ---------------------------------------------------------------------------- 2. the checkout's own catches
@pytest.mark.parametrize(
    ("step", "end"),
    [
        ("reserve_stock", End("CANCELLED", "INVENTORY_UNAVAILABLE", None, STOCK)),
        ("authorize_payment", End("CANCELLED", "PAYMENT_UNAVAILABLE", VOIDED, STOCK)),
    ],
    ids=["reservation-not-recorded", "authorization-not-recorded"],
)
def test_a_checkpoint_that_keeps_failing_compensates_after_its_retries(
    shop: Shop, faults: StepFaults, step: str, end: End
) -> None:
    faults.fail("RecordProgressFunction", OrderContention, when=lambda event: event.get("step") == step)
    order_id = place(shop)

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert faults.refused["RecordProgressFunction"] == 5  # the first attempt and four retries
    assert end_of(shop, order_id) == end


def test_a_reservation_that_lapsed_before_the_commit_cancels_the_order_and_voids(
    shop: Shop, faults: StepFaults
) -> None:
    at_commit = faults.pause_at("CommitReservationFunction")
    order_id = place(shop)
    at_commit.wait_reached()
    # The saga stalled past the hold's expiry and the sweeper returned the stock.
    lapsed = int(time.time()) + inventory_settings().reservation_ttl_seconds + 1
    assert inventory.release_expired(lapsed).released == 1
    at_commit.released.set()

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    # The units were there all along: the order failed for the shop's slowness, not for a shortage.
    assert end_of(shop, order_id) == End("CANCELLED", "INVENTORY_UNAVAILABLE", VOIDED, STOCK)


def test_a_capture_the_provider_never_applied_is_voided(shop: Shop, faults: StepFaults) -> None:
    faults.fail("CapturePaymentFunction")
    faults.lose_answer_once("ReconcilePaymentFunction")  # the reconciliation is retried, then says: not captured
    order_id = place(shop)

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert faults.lost == [("ReconcilePaymentFunction", None)]
    assert end_of(shop, order_id) == End("CANCELLED", "PAYMENT_UNAVAILABLE", VOIDED, STOCK)


def test_a_capture_the_provider_applied_is_refunded_when_it_cannot_be_confirmed(shop: Shop, faults: StepFaults) -> None:
    """Every capture's ledger write fails and the reconciliation is down: the void finds the
    payment captured and hands the order to the refund saga (whose start loses its answer once)."""
    faults.fail("ReconcilePaymentFunction")
    faults.lose_answer_once("StartRefundFunction")
    lost = SdkFault(
        "UpdateItem", "ProvisionedThroughputExceededException", when=updates_payment_to("CAPTURED"), times=5
    )
    with inject(aws.dynamodb(), lost):
        order_id = place(shop)
        assert shop.wait_checkout(order_id) == "SUCCEEDED"
        assert shop.wait_refund(order_id) == "SUCCEEDED"

    assert lost.injected == 5
    assert faults.lost == [("StartRefundFunction", None)]
    assert end_of(shop, order_id) == End("REFUNDED", None, REFUNDED, STOCK)


def test_a_refund_that_cannot_be_started_leaves_the_order_for_an_operator(shop: Shop, faults: StepFaults) -> None:
    faults.fail("StartRefundFunction")
    order_id = cancelled_during_capture(shop, faults)

    assert shop.wait_checkout(order_id) == "FAILED"
    assert faults.refused["StartRefundFunction"] == 3  # the first attempt and two retries
    assert end_of(shop, order_id) == End("NEEDS_ATTENTION", None, CAPTURED, STOCK - QUANTITY)
    assert letter_of(shop, order_id) == ("OPEN", "complete", "start_refund", 0)


def test_a_cancellation_that_keeps_failing_is_dead_lettered(shop: Shop, faults: StepFaults) -> None:
    faults.fail("CancelOrderFunction")
    order_id = place(shop, token="tok_chargeDeclined")

    assert shop.wait_checkout(order_id) == "FAILED"
    assert faults.refused["CancelOrderFunction"] == 3
    assert end_of(shop, order_id) == End("NEEDS_ATTENTION", None, Ledger("DECLINED", 0, 0, 0), STOCK)
    assert letter_of(shop, order_id) == ("OPEN", "compensate", "cancel_order", 0)


# ---------------------------------------------------------------------------- 3. the redrive's own steps
def release_the_reservation(order_id: str) -> None:
    """The order's stock went back while it waited for an operator: its reservation is gone."""
    assert inventory.release(order_id).status == "RELEASED"


@pytest.mark.parametrize(
    ("trouble", "execution", "end", "letter"),
    [
        pytest.param(
            "reconciliation down",
            "FAILED",
            End("NEEDS_ATTENTION", None, CAPTURED, STOCK - QUANTITY),
            ("OPEN", "compensate", "reconcile_payment", 1),
            id="reconcile-failed",
        ),
        pytest.param(
            "commit down",
            "FAILED",
            End("NEEDS_ATTENTION", None, CAPTURED, STOCK - QUANTITY),
            ("OPEN", "complete", "complete_order", 1),
            id="commit-failed",
        ),
        pytest.param(
            "reservation gone",
            "SUCCEEDED",
            End("REFUNDED", None, REFUNDED, STOCK),
            ("RESOLVED", "complete", "complete_order", 1),
            id="reservation-gone-refunded",
        ),
        pytest.param(
            "reservation gone, refund not started",
            "FAILED",
            End("NEEDS_ATTENTION", None, CAPTURED, STOCK),
            ("OPEN", "complete", "start_refund", 1),
            id="reservation-gone-refund-handover-failed",
        ),
    ],
)
def test_a_redrive_of_a_captured_order_ends_where_its_own_steps_lead(
    shop: Shop,
    faults: StepFaults,
    trouble: str,
    execution: str,
    end: End,
    letter: tuple[str, str, str, int],
) -> None:
    faults.fail("CompleteOrderFunction")
    order_id = place(shop)
    assert shop.wait_checkout(order_id) == "FAILED"
    assert end_of(shop, order_id) == End("NEEDS_ATTENTION", None, CAPTURED, STOCK - QUANTITY)
    faults.heal()
    if trouble == "reconciliation down":
        faults.fail("ReconcilePaymentFunction")
    if trouble == "commit down":
        faults.fail("CommitReservationFunction")
    if trouble.startswith("reservation gone"):
        release_the_reservation(order_id)
    if trouble == "reservation gone, refund not started":
        faults.fail("StartRefundFunction")

    assert shop.redrive(order_id).status_code == 202

    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == execution
    if trouble == "reservation gone":
        assert shop.wait_refund(order_id) == "SUCCEEDED"
    assert end_of(shop, order_id) == end
    assert letter_of(shop, order_id) == letter


# ---------------------------------------------------------------------------- 4. the refund saga
@pytest.mark.parametrize(
    ("logical_id", "end", "failed_step"),
    [
        ("ReleaseReservationFunction", End("NEEDS_ATTENTION", None, REFUNDED, STOCK - QUANTITY), "return_stock"),
        ("MarkRefundedFunction", End("NEEDS_ATTENTION", None, REFUNDED, STOCK), "refund_order"),
    ],
    ids=["return-stock-failed", "mark-refunded-failed"],
)
def test_a_refund_step_that_keeps_failing_is_dead_lettered(
    shop: Shop, faults: StepFaults, logical_id: str, end: End, failed_step: str
) -> None:
    order_id = completed(shop)
    faults.fail(logical_id)
    assert shop.cancel(order_id).status_code == 202

    assert shop.wait_refund(order_id) == "FAILED"
    assert faults.refused[logical_id] == 3  # the first attempt and two retries
    assert end_of(shop, order_id) == end
    assert letter_of(shop, order_id) == ("OPEN", "refund", failed_step, 0)


def test_a_refund_waits_out_an_open_breaker_and_refunds_in_full(shop: Shop, faults: StepFaults) -> None:
    shop.aws.set_runtime_parameter("payment-breaker-cooldown-seconds", "2")
    order_id = completed(shop)
    at_refund = faults.pause_at("RefundPaymentFunction")
    assert shop.cancel(order_id).status_code == 202
    at_refund.wait_reached()
    open_breaker()  # the provider-wide breaker opened while this refund was due
    at_refund.released.set()

    assert shop.wait_refund(order_id) == "SUCCEEDED"
    assert end_of(shop, order_id) == End("REFUNDED", None, REFUNDED, STOCK)
    assert payment_domain.payment_breaker().state().state == "CLOSED"  # its half-open probe closed it
