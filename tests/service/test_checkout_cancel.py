"""Cancelling an order before, during and after the checkout saga's capture.

The saga is held before a chosen step (``PauseAt``) while the customer cancels, then released:
whatever the timing, the order ends consistent (CANCELLED: nothing captured, no stock held;
REFUNDED: the capture refunded in full and the stock returned).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from infra.local import lambda_runtime
from shop.domain import payments as payment_domain
from shop.errors import CircuitOpen
from shop.repositories import inventory as inventory_repository
from tests.conftest import BOTH_WORKFLOW_TYPES, LocalAws
from tests.service.faults import StepFaults
from tests.service.orders_helpers import PauseAt, Shop, available, open_shop, seed_product, steps

# Every saga path of this module runs in both workflow types (template parameter WorkflowType).
pytestmark = BOTH_WORKFLOW_TYPES


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=10)
    with open_shop(local_aws) as opened:
        yield opened


def _pause(local_aws: LocalAws, logical_id: str, step: str | None = None) -> PauseAt:
    pause = PauseAt(local_aws.function(logical_id), lambda event: step is None or event.get("step") == step)
    lambda_runtime.faults.before_invoke = pause
    return pause


def test_cancel_before_the_saga_claims_the_order_cancels_it_there_and_reserves_nothing(
    shop: Shop, local_aws: LocalAws
) -> None:
    """More units than there are: reserving first, the saga used to cancel the customer's cancelled order
    as OUT_OF_STOCK (the failure-rate alarm's stock-outs, the wrong event reason)."""
    pause = _pause(local_aws, "ClaimOrderFunction")
    placed = shop.place_ok([("MUG-1", 11)])
    pause.wait_reached()

    cancelled = shop.cancel(placed["order_id"])
    pause.released.set()

    assert cancelled.status_code == 202 and cancelled.json_body["status"] == "PENDING"
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"], order["payment"]) == ("CANCELLED", "CANCELLED_BY_CUSTOMER", None)
    assert steps(order) == [
        ("order_placed", "PENDING"),
        ("cancel_requested", "REQUESTED"),
        ("cancel_order", "CANCELLED"),
    ]
    assert available("MUG-1") == 10
    assert inventory_repository.get_reservation(placed["order_id"]) is None
    assert payment_domain.provider().lookup(f"{placed['order_id']}:authorize") is None


def test_a_claim_that_cancelled_the_order_and_lost_its_answer_ends_the_run_when_delivered_again(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """The retried claim found the order CANCELLED, not PENDING: it must not let the run go on to reserve."""
    pause = faults.pause_at("ClaimOrderFunction")
    faults.lose_answer_once("ClaimOrderFunction")
    placed = shop.place_ok([("MUG-1", 2)])
    pause.wait_reached()
    assert shop.cancel(placed["order_id"]).status_code == 202
    pause.released.set()

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    assert faults.lost == [("ClaimOrderFunction", None)]
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "CANCELLED_BY_CUSTOMER")
    assert ("reserve_stock", "SUCCEEDED") not in steps(order)
    assert available("MUG-1") == 10
    assert inventory_repository.get_reservation(placed["order_id"]) is None


def test_cancel_before_authorization_cancels_without_charging(shop: Shop, local_aws: LocalAws) -> None:
    pause = _pause(local_aws, "RecordProgressFunction", "reserve_stock")
    placed = shop.place_ok([("MUG-1", 3)])
    pause.wait_reached()

    cancelled = shop.cancel(placed["order_id"])
    pause.released.set()

    assert cancelled.status_code == 202
    assert cancelled.json_body["cancel_requested"] is True
    assert cancelled.json_body["status"] == "PENDING"
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "CANCELLED_BY_CUSTOMER")
    assert order["payment"] is None  # the saga stopped before the payment step
    assert available("MUG-1") == 10
    assert ("cancel_requested", "REQUESTED") in steps(order)


def test_a_checkpoint_delivered_again_after_the_cancellation_answers_with_the_cancelled_order(
    shop: Shop, local_aws: LocalAws
) -> None:
    """The run stopped at its checkpoint for the customer's cancel and compensated; the checkpoint's
    invocation delivered once more, late, finds the order CANCELLED: it answers with it and asks for no
    compensation again (only an order still in its checkout is stopped there)."""
    pause = _pause(local_aws, "RecordProgressFunction", "reserve_stock")
    checkpoints: list[dict[str, object]] = []

    def remember(function_name: str, event: dict[str, object]) -> None:
        if function_name == pause.function_name:
            checkpoints.append(event)
        pause(function_name, event)

    lambda_runtime.faults.before_invoke = remember
    placed = shop.place_ok([("MUG-1", 3)])
    pause.wait_reached()
    assert shop.cancel(placed["order_id"]).status_code == 202
    pause.released.set()
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    cancelled = shop.order(placed["order_id"])
    assert cancelled.status == "CANCELLED" and cancelled.cancel_requested

    [checkpoint] = checkpoints
    answer = local_aws.client("lambda").invoke(FunctionName=pause.function_name, Payload=json.dumps(checkpoint))

    assert "FunctionError" not in answer
    assert json.loads(answer["Payload"].read())["status"] == "CANCELLED"
    assert shop.order(placed["order_id"]).version == cancelled.version
    assert available("MUG-1") == 10


def test_cancel_after_authorization_voids_before_capture(shop: Shop, local_aws: LocalAws) -> None:
    pause = _pause(local_aws, "RecordProgressFunction", "authorize_payment")
    placed = shop.place_ok([("MUG-1", 2)])
    pause.wait_reached()

    assert shop.cancel(placed["order_id"]).status_code == 202
    pause.released.set()

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "CANCELLED_BY_CUSTOMER")
    assert order["payment"]["status"] == "VOIDED"
    assert order["payment"]["captured"]["amount"] == 0
    assert available("MUG-1") == 10


def test_cancel_during_the_first_capture_attempt_ends_refunded(shop: Shop, local_aws: LocalAws) -> None:
    """The first attempt does not read the order (a checkout costs no extra read): a cancel that lands
    there is honoured by a refund."""
    pause = _pause(local_aws, "CapturePaymentFunction")
    placed = shop.place_ok([("MUG-1", 2)])
    pause.wait_reached()

    cancelled = shop.cancel(placed["order_id"])
    pause.released.set()

    assert cancelled.status_code == 202
    assert cancelled.json_body["status"] == "PAYMENT_AUTHORIZED"
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    assert shop.wait_refund(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert order["status"] == "REFUNDED"
    assert order["failure_reason"] is None
    assert order["payment"]["captured"] == order["total"]
    assert order["payment"]["refunded"] == order["total"]
    assert available("MUG-1") == 10
    assert ("complete_order", "REFUND_REQUIRED") in steps(order)
    assert ("complete_order", "COMPLETED") not in steps(order)


def _capture_held_back_once(faults: StepFaults) -> PauseAt:
    """The capture's first attempt meets an open breaker (the provider never sees it); the saga is
    paused just before it so that the test can cancel while the capture waits to retry."""
    faults.fail("CapturePaymentFunction", CircuitOpen, when=lambda event: event.get("attempt") == 0)
    return faults.pause_at("CapturePaymentFunction")


def test_cancel_while_the_capture_waits_out_an_open_breaker_voids_instead_of_charging(
    shop: Shop, faults: StepFaults
) -> None:
    """An open breaker retries the capture for up to most of an hour: before, a cancel in that time was
    charged once the provider came back, then refunded."""
    pause = _capture_held_back_once(faults)
    placed = shop.place_ok([("MUG-1", 2)])
    pause.wait_reached()
    assert shop.cancel(placed["order_id"]).json_body["status"] == "PAYMENT_AUTHORIZED"
    pause.released.set()

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    assert faults.refused["CapturePaymentFunction"] == 1
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "CANCELLED_BY_CUSTOMER")
    assert order["payment"]["status"] == "VOIDED"
    assert order["payment"]["captured"]["amount"] == order["payment"]["refunded"]["amount"] == 0
    assert payment_domain.provider().lookup(f"{placed['order_id']}:capture") is None
    assert payment_domain.provider().lookup(f"{placed['order_id']}:void") is not None
    assert shop.executions("RefundStateMachine") == []
    assert available("MUG-1") == 10
    assert ("capture_payment", "SUCCEEDED") not in steps(order)


def test_a_retried_capture_with_no_cancel_captures(shop: Shop, faults: StepFaults) -> None:
    faults.fail("CapturePaymentFunction", CircuitOpen, when=lambda event: event.get("attempt") == 0)
    placed = shop.place_ok([("MUG-1", 2)])

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    assert faults.refused["CapturePaymentFunction"] == 1
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["payment"]["captured"]) == ("COMPLETED", order["total"])
    assert available("MUG-1") == 8


def test_a_capture_made_before_the_cancel_is_refunded_not_voided(shop: Shop, faults: StepFaults) -> None:
    """The first attempt captured and its answer was lost; the customer cancelled before the retry. The
    retry finds the capture made (it reads the ledger before the order) and the order is refunded."""
    faults.lose_answer_once("CapturePaymentFunction")
    pause = faults.pause_at("CapturePaymentFunction")
    placed = shop.place_ok([("MUG-1", 2)])
    pause.wait_reached()
    assert shop.cancel(placed["order_id"]).status_code == 202
    pause.released.set()

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    assert shop.wait_refund(placed["order_id"]) == "SUCCEEDED"
    assert faults.lost == [("CapturePaymentFunction", None)]
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"]) == ("REFUNDED", None)
    assert order["payment"]["captured"] == order["payment"]["refunded"] == order["total"]
    assert available("MUG-1") == 10


def test_cancel_after_completion_refunds_in_full_once(shop: Shop) -> None:
    placed = shop.place_ok([("MUG-1", 2)])
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    assert available("MUG-1") == 8

    first = shop.cancel(placed["order_id"])

    assert first.status_code == 202
    assert first.json_body["status"] == "REFUNDING"
    assert shop.wait_refund(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert order["status"] == "REFUNDED"
    assert order["payment"]["refunded"] == order["total"] == order["payment"]["captured"]
    assert available("MUG-1") == 10
    again = shop.cancel(placed["order_id"])
    assert again.status_code == 202
    assert again.json_body == order
    assert len(shop.executions("RefundStateMachine")) == 1
    assert available("MUG-1") == 10


def test_cancelling_twice_while_pending_changes_nothing_more(shop: Shop, local_aws: LocalAws) -> None:
    pause = _pause(local_aws, "RecordProgressFunction", "reserve_stock")
    placed = shop.place_ok([("MUG-1", 1)])
    pause.wait_reached()

    first = shop.cancel(placed["order_id"]).json_body
    second = shop.cancel(placed["order_id"]).json_body
    pause.released.set()

    assert second == first
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert order["status"] == "CANCELLED"
    assert steps(order).count(("cancel_requested", "REQUESTED")) == 1
    assert shop.cancel(placed["order_id"]).json_body == order


def test_only_the_owner_or_an_admin_may_cancel(shop: Shop) -> None:
    placed = shop.place_ok([("MUG-1", 1)])
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    before = shop.order(placed["order_id"])

    stranger = shop.cancel(placed["order_id"], who="bob")
    missing = shop.cancel("no-such-order", who="bob")

    assert stranger.status_code == missing.status_code == 404
    assert stranger.json_body["type"] == missing.json_body["type"]
    assert shop.order(placed["order_id"]) == before
    assert shop.executions("RefundStateMachine") == []
    by_admin = shop.cancel(placed["order_id"], who="admin")
    assert by_admin.status_code == 202
    assert shop.wait_refund(placed["order_id"]) == "SUCCEEDED"
    assert shop.order(placed["order_id"]).status == "REFUNDED"


def test_the_saga_duration_of_a_run_that_cancels_at_its_claim_is_its_own_run(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The claim settles an order cancelled before its first run: it published the order's age as
    SagaDuration (an order whose saga start was deferred, started by the sweeper long after)."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    pause = PauseAt(local_aws.function("ClaimOrderFunction"))
    lambda_runtime.faults.before_invoke = pause
    order_id = shop.place_ok([("MUG-1", 1)])["order_id"]
    pause.wait_reached()
    local_aws.client("dynamodb").update_item(
        TableName=local_aws.table("OrdersTable"),
        Key={"order_id": {"S": order_id}},
        UpdateExpression="SET created_at = :long_ago",
        ExpressionAttributeValues={":long_ago": {"S": "2000-01-01T00:00:00.000Z"}},
    )
    assert shop.cancel(order_id).status_code == 202
    capfd.readouterr()
    pause.released.set()
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert (shop.order(order_id).status, shop.order(order_id).failure_reason) == ("CANCELLED", "CANCELLED_BY_CUSTOMER")

    printed = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert any("OrdersCancelled" in line for line in printed), printed
    durations = [seconds for line in printed for seconds in line.get("SagaDuration", [])]
    assert durations and all(0 <= seconds < 24 * 3600 for seconds in durations), durations
