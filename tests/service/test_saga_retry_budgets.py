"""What the state machines promise beyond "a step that fails once is retried": each step's own transient
errors retried for the whole budget its Retry names, the catches that route a redrive, the history a
compensation records, the duration a settling step publishes. The rest of the service tier retried
steps that lost one answer (any retrier passes that); a hand mutation run over statemachines/*.asl.json
found 19 changes (an error name dropped from a Retry, MaxAttempts lowered, a catch or a parameter lost)
that no test noticed. Each test here fails on one of them.

A fault at the Lambda runtime's seam (``faults``), the saga run to its end, and where the order ended
(status, ledger, stock, history, dead letter), as in test_saga_edges.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shop.domain import inventory
from shop.errors import (
    InventoryContention,
    OrderContention,
    PaymentProviderError,
    PaymentRecordsContention,
)
from tests.conftest import BOTH_WORKFLOW_TYPES, LocalAws
from tests.service.faults import Down, StepFaults
from tests.service.orders_helpers import Shop, available, open_shop, seed_product, steps

PRICE, STOCK, QUANTITY = 1250, 10, 2
TOTAL = PRICE * QUANTITY

pytestmark = BOTH_WORKFLOW_TYPES


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=PRICE, stock=STOCK)
    with open_shop(local_aws) as opened:
        yield opened


def place(shop: Shop, token: str = "tok_visa") -> str:
    return str(shop.place_ok([("MUG-1", QUANTITY)], token=token)["order_id"])


def first(times: int, also: Callable[[Any], bool] = lambda event: True) -> Callable[[Any], bool]:
    """A ``faults.fail`` predicate true for the first ``times`` matching invocations only."""
    seen = [0]
    lock = threading.Lock()

    def when(event: Any) -> bool:
        if not also(event):
            return False
        with lock:
            seen[0] += 1
            return seen[0] <= times

    return when


def of_execution(name_prefix: str, step: str | None = None) -> Callable[[Any], bool]:
    return lambda event: (
        str(event.get("execution_name", "")).startswith(name_prefix) and (step is None or event.get("step") == step)
    )


def ledger(shop: Shop, order_id: str) -> tuple[str, int, int, int]:
    payment = shop.get(order_id, who="admin").json_body["payment"]
    return payment["status"], *(payment[f]["amount"] for f in ("authorized", "captured", "refunded"))


# ---------------------------------------------------------------- 1. each step's own transient error, whole budget
# (logical id, the error the step's first retrier names, MaxAttempts of that retrier, which invocation)
CHECKOUT_FORWARD = [
    pytest.param("ClaimOrderFunction", OrderContention, 4, None, id="claim-order-contention"),
    pytest.param(
        "RecordProgressFunction", PaymentRecordsContention, 4, "reserve_stock", id="record-reserved-payments-busy"
    ),
    pytest.param("RecordProgressFunction", OrderContention, 4, "authorize_payment", id="record-authorized-order-busy"),
    pytest.param("CommitReservationFunction", InventoryContention, 4, None, id="commit-inventory-busy"),
    pytest.param("CompleteOrderFunction", OrderContention, 6, None, id="complete-order-busy"),
]


@pytest.mark.parametrize(("logical_id", "error", "times", "step"), CHECKOUT_FORWARD)
def test_a_forward_step_busy_for_its_whole_retry_budget_still_completes(
    shop: Shop, faults: StepFaults, logical_id: str, error: type[Exception], times: int, step: str | None
) -> None:
    faults.fail(logical_id, error, when=first(times, lambda event: step is None or event.get("step") == step))
    order_id = place(shop)

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    order = shop.get(order_id).json_body
    assert (order["status"], order["failure_reason"]) == ("COMPLETED", None)
    assert ledger(shop, order_id) == ("CAPTURED", TOTAL, TOTAL, 0)
    assert available("MUG-1") == STOCK - QUANTITY
    assert faults.refused[logical_id] == times


@pytest.mark.parametrize(
    ("logical_id", "error", "times"),
    [
        pytest.param("ReleaseReservationFunction", OrderContention, 5, id="release-order-busy"),
        pytest.param("CancelOrderFunction", OrderContention, 5, id="cancel-order-busy"),
    ],
)
def test_a_compensation_busy_for_its_whole_retry_budget_still_cancels(
    shop: Shop, faults: StepFaults, logical_id: str, error: type[Exception], times: int
) -> None:
    faults.fail(logical_id, error, when=first(times))
    order_id = place(shop, token="tok_chargeDeclined")

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    order = shop.get(order_id).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "PAYMENT_DECLINED")
    assert available("MUG-1") == STOCK
    assert faults.refused[logical_id] == times


def completed(shop: Shop) -> str:
    order_id = place(shop)
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    return order_id


@pytest.mark.parametrize(
    ("logical_id", "error", "times"),
    [
        pytest.param("ClaimOrderFunction", OrderContention, 5, id="claim-order-busy"),
        pytest.param("ClaimOrderFunction", Down, 2, id="claim-any-error-twice"),
        pytest.param("RefundPaymentFunction", PaymentRecordsContention, 5, id="refund-ledger-busy"),
        pytest.param("RefundPaymentFunction", PaymentProviderError, 5, id="refund-provider-error"),
        pytest.param("MarkRefundedFunction", OrderContention, 5, id="mark-refunded-busy"),
    ],
)
def test_a_refund_step_busy_for_its_whole_retry_budget_still_refunds(
    shop: Shop, faults: StepFaults, logical_id: str, error: type[Exception], times: int
) -> None:
    order_id = completed(shop)
    faults.fail(logical_id, error, when=first(times, of_execution(f"refund-{order_id}")))
    assert shop.cancel(order_id).status_code == 202

    assert shop.wait_refund(order_id) == "SUCCEEDED"
    assert shop.get(order_id).json_body["status"] == "REFUNDED"
    assert ledger(shop, order_id) == ("REFUNDED", TOTAL, TOTAL, TOTAL)
    assert available("MUG-1") == STOCK
    assert faults.refused[logical_id] == times


def flagged_at_completion(shop: Shop, faults: StepFaults) -> str:
    """A captured order whose completion kept failing: NEEDS_ATTENTION, letter resume=complete."""
    faults.fail("CompleteOrderFunction")
    order_id = place(shop)
    assert shop.wait_checkout(order_id) == "FAILED"
    faults.heal()
    return order_id


def test_a_redrive_whose_provider_lookup_fails_for_its_whole_budget_still_completes(
    shop: Shop, faults: StepFaults
) -> None:
    order_id = flagged_at_completion(shop, faults)
    faults.fail("ReconcilePaymentFunction", PaymentProviderError, when=first(5))

    assert shop.redrive(order_id).status_code == 202
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"
    assert shop.get(order_id).json_body["status"] == "COMPLETED"
    assert faults.refused["ReconcilePaymentFunction"] == 5


# ---------------------------------------------------------------- 2. catches the suite never took with this error
def test_a_redrive_of_a_captured_order_whose_reservation_no_longer_exists_is_refunded(
    shop: Shop, faults: StepFaults, local_aws: LocalAws
) -> None:
    """CommitCapturedOrder catches ReservationNotFound with ReservationExpired (-> the refund):
    the suite only ever released the reservation (ReservationExpired)."""
    order_id = flagged_at_completion(shop, faults)
    assert inventory.release(order_id).status == "RELEASED"  # its stock went back meanwhile...
    # ...and its reservation item is gone (purged, or a table restored from before the order).
    local_aws.client("dynamodb").delete_item(
        TableName=local_aws.table("ReservationsTable"), Key={"reservation_id": {"S": order_id}}
    )

    assert shop.redrive(order_id).status_code == 202
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"
    assert shop.wait_refund(order_id) == "SUCCEEDED"
    assert shop.get(order_id, who="admin").json_body["status"] == "REFUNDED"
    assert ledger(shop, order_id) == ("REFUNDED", TOTAL, TOTAL, TOTAL)


# ---------------------------------------------------------------------------- 3. the history a failure writes
def test_a_reservation_not_recorded_names_its_own_step_in_the_history(shop: Shop, faults: StepFaults) -> None:
    """ReservationNotRecorded's failure.step ("record_reservation", not the reservation itself)
    is what the cancelled order's history says failed."""
    faults.fail("RecordProgressFunction", OrderContention, when=lambda event: event.get("step") == "reserve_stock")
    order_id = place(shop)

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    order = shop.get(order_id).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "INVENTORY_UNAVAILABLE")
    assert steps(order)[-3:] == [
        ("record_reservation", "FAILED"),
        ("release_stock", "SUCCEEDED"),
        ("cancel_order", "CANCELLED"),
    ]


def test_a_capture_applied_but_unrecorded_completes_when_the_lookup_answers_within_its_retries(
    shop: Shop, faults: StepFaults
) -> None:
    """ReconcileCapture retries a provider error 5 times: an order the provider captured completes.
    With fewer retries the lookup gives up, the void finds the capture and the order is refunded."""
    from shop import aws
    from tests.service.faults import SdkFault, inject, updates_payment_to

    faults.fail("ReconcilePaymentFunction", PaymentProviderError, when=first(5))
    lost = SdkFault(
        "UpdateItem", "ProvisionedThroughputExceededException", when=updates_payment_to("CAPTURED"), times=5
    )
    with inject(aws.dynamodb(), lost):
        order_id = place(shop)
        assert shop.wait_checkout(order_id) == "SUCCEEDED"

    assert lost.injected == 5
    order = shop.get(order_id, who="admin").json_body
    assert (order["status"], order["failure_reason"]) == ("COMPLETED", None)
    assert ledger(shop, order_id) == ("CAPTURED", TOTAL, TOTAL, 0)
    assert shop.execution_status("RefundStateMachine", f"refund-{order_id}") is None
    assert faults.refused["ReconcilePaymentFunction"] == 5


@pytest.mark.parametrize(
    ("logical_id", "token", "metric", "status"),
    [
        pytest.param("CancelOrderFunction", "tok_chargeDeclined", "OrdersCancelled", "CANCELLED", id="cancel"),
        pytest.param("CompleteOrderFunction", "tok_visa", "OrdersCompleted", "COMPLETED", id="complete"),
    ],
)
def test_the_saga_duration_a_settling_step_publishes_is_its_executions_not_the_orders_age(
    shop: Shop,
    local_aws: LocalAws,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    logical_id: str,
    token: str,
    metric: str,
    status: str,
) -> None:
    """The step is passed $$.Execution.StartTime; without it the order's placement is used."""
    import json

    from infra.local import lambda_runtime
    from tests.service.orders_helpers import PauseAt

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    pause = PauseAt(local_aws.function(logical_id))
    lambda_runtime.faults.before_invoke = pause
    order_id = place(shop, token=token)
    pause.wait_reached()
    local_aws.client("dynamodb").update_item(
        TableName=local_aws.table("OrdersTable"),
        Key={"order_id": {"S": order_id}},
        UpdateExpression="SET created_at = :long_ago",
        ExpressionAttributeValues={":long_ago": {"S": "2000-01-01T00:00:00.000Z"}},
    )
    capfd.readouterr()
    pause.released.set()
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert shop.order(order_id).status == status

    printed = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert any(metric in line for line in printed), printed
    durations = [seconds for line in printed for seconds in line.get("SagaDuration", [])]
    assert durations and all(0 <= seconds < 24 * 3600 for seconds in durations), durations


def test_a_refund_hand_over_whose_start_is_refused_for_its_whole_budget_still_refunds(
    shop: Shop, faults: StepFaults
) -> None:
    """StartRefund retries SagaNotStarted (a throttled StartExecution) 5 times, not only States.ALL's 2."""
    from shop.errors import SagaNotStarted

    faults.fail("StartRefundFunction", SagaNotStarted, when=first(5))
    at_capture = faults.pause_at("CapturePaymentFunction")
    order_id = place(shop)
    at_capture.wait_reached()
    assert shop.cancel(order_id).status_code == 202
    at_capture.released.set()

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert shop.wait_refund(order_id) == "SUCCEEDED"
    assert shop.get(order_id, who="admin").json_body["status"] == "REFUNDED"
    assert ledger(shop, order_id) == ("REFUNDED", TOTAL, TOTAL, TOTAL)
    assert faults.refused["StartRefundFunction"] == 5


def test_a_completion_flag_refused_for_its_whole_budget_still_dead_letters_from_the_saga(
    shop: Shop, faults: StepFaults, local_aws: LocalAws
) -> None:
    """FlagCompletion retries any error 6 times: the saga itself flags the order and writes the
    letter (resume=complete, failed_step=complete_order), not the stopped-execution fallback."""
    faults.fail("CompleteOrderFunction")
    faults.fail("FlagOrderFunction", Down, when=first(6))
    order_id = place(shop)

    assert shop.wait_checkout(order_id) == "FAILED"
    local_aws.deliver_events()
    order = shop.get(order_id, who="admin").json_body
    assert (order["status"], order["payment"]["status"]) == ("NEEDS_ATTENTION", "CAPTURED")
    letter = shop.dead_letter(order_id)
    assert letter is not None
    assert (letter.status, letter.resume, letter.failed_step) == ("OPEN", "complete", "complete_order")
    assert faults.refused["FlagOrderFunction"] == 6


def test_a_cancel_before_the_payment_records_only_the_release_it_made(shop: Shop, faults: StepFaults) -> None:
    """CancelledBeforePayment's compensations are the release only: the history of an order
    cancelled at the reservation's checkpoint never says a payment was voided."""
    at_checkpoint = faults.pause_at("RecordProgressFunction")
    order_id = place(shop)
    at_checkpoint.wait_reached()
    assert shop.cancel(order_id).status_code == 202
    at_checkpoint.released.set()

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    order = shop.get(order_id).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "CANCELLED_BY_CUSTOMER")
    assert order["payment"] is None
    assert steps(order)[-2:] == [("release_stock", "SUCCEEDED"), ("cancel_order", "CANCELLED")]
    assert "void_payment" not in [step for step, _ in steps(order)]
