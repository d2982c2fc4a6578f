"""Recovery that holds: one fault at one seam at a time, then everything healthy again (and, where
the fault outlasts every retry, an operator's redrive); then the books are checked.

Every test asserts the end state, not the call sequence: the order's status, our payments
ledger, the provider's own ledger and the stock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.local import lambda_runtime
from shop import aws
from shop.config import recovery_settings
from shop.domain import operations, reconciliation_job, recovery
from shop.domain import payments as payment_domain
from shop.errors import OrderStateConflict, PaymentProviderError
from shop.models.base import zoned_instant
from shop.models.orders import DeadLetter, ExecutionStatusChange
from shop.models.payments import Payment
from shop.payments.simulator import SimulatorLedger, SimulatorProvider
from shop.repositories import dead_letters, sagas
from shop.repositories.payments import PaymentsRepository
from tests.conftest import WORKFLOW_TYPES, LocalAws
from tests.service.faults import SdkFault, StepFaults, inject, open_breaker, updates_payment_to
from tests.service.orders_helpers import (
    HoldEvery,
    PauseAt,
    Shop,
    available,
    eventually,
    open_shop,
    seed_product,
    steps,
)

PRICE = 1250
STOCK = 10


class ServiceUnavailable(Exception):
    """Stands for a step's dependency being down (an error no retrier names)."""


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=PRICE, stock=STOCK)
    with open_shop(local_aws) as opened:
        yield opened


@dataclass(frozen=True)
class Books:
    status: str
    failure_reason: str | None
    ours: Payment | None
    provider: SimulatorLedger | None
    available: int

    def provider_entries(self, kind: str) -> int:
        return len(self.provider.of_kind(kind)) if self.provider else 0


def books(shop: Shop, order_id: str) -> Books:
    order = shop.order(order_id)
    authorization = payment_domain.simulator().lookup(f"{order_id}:authorize")
    provider = None
    if authorization is not None and authorization.reference is not None:
        provider = payment_domain.simulator().ledger(authorization.reference)
    return Books(
        status=order.status,
        failure_reason=order.failure_reason,
        ours=PaymentsRepository().get(order_id),
        provider=provider,
        available=available("MUG-1"),
    )


def fail_functions(local_aws: LocalAws, *logical_ids: str) -> None:
    names = {local_aws.function(logical_id) for logical_id in logical_ids}

    def fail(function_name: str, event: Any) -> None:
        if function_name in names:
            raise ServiceUnavailable(f"{function_name} is down")

    lambda_runtime.faults.before_invoke = fail


def heal() -> None:
    lambda_runtime.faults.clear()


def checkout_stopped(shop: Shop, order_id: str, statuses: tuple[str, ...] = ("NEEDS_ATTENTION",)) -> None:
    assert shop.wait_checkout(order_id) in ("FAILED", "SUCCEEDED")
    shop.wait_status(order_id, *statuses)


# ---------------------------------------------------------------------------- 1. ambiguous payment outcomes
def test_an_authorization_whose_ledger_write_failed_is_voided_at_the_provider(shop: Shop, local_aws: LocalAws) -> None:
    """The provider approved; writing that to our ledger failed until the authorize retries ran out."""
    at_void = PauseAt(local_aws.function("VoidPaymentFunction"))
    lambda_runtime.faults.before_invoke = at_void
    lost = SdkFault("UpdateItem", "ProvisionedThroughputExceededException", when=updates_payment_to("AUTHORIZED"))
    with inject(aws.dynamodb(), lost):
        order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
        at_void.wait_reached()
    at_void.released.set()

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    end = books(shop, order_id)
    assert lost.injected == 4  # the first attempt and three retries
    assert (end.status, end.failure_reason) == ("CANCELLED", "PAYMENT_UNAVAILABLE")
    assert end.ours is not None and (end.ours.status, end.ours.authorized_amount) == ("VOIDED", 2 * PRICE)
    assert end.provider is not None and end.provider.authorization.status == "VOIDED"  # the hold is released
    assert end.provider_entries("void") == 1 and end.provider_entries("capture") == 0
    assert end.available == STOCK


def test_a_capture_whose_ledger_write_failed_completes_the_order(shop: Shop) -> None:
    """The provider captured; writing that to our ledger failed on every capture attempt."""
    lost = SdkFault(
        "UpdateItem", "ProvisionedThroughputExceededException", when=updates_payment_to("CAPTURED"), times=5
    )
    with inject(aws.dynamodb(), lost):
        order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
        assert shop.wait_checkout(order_id) == "SUCCEEDED"

    end = books(shop, order_id)
    assert lost.injected == 5  # every capture attempt; the reconciliation then asked the provider
    assert end.status == "COMPLETED"
    assert end.ours is not None and (end.ours.status, end.ours.captured_amount) == ("CAPTURED", 2 * PRICE)
    assert end.provider is not None and end.provider.authorization.status == "CAPTURED"
    assert end.provider_entries("capture") == 1 and end.provider_entries("void") == 0
    assert end.available == STOCK - 2


@pytest.mark.parametrize("customer_cancels", [False, True], ids=["redriven", "cancelled-then-redriven"])
def test_a_capture_lost_until_the_order_needs_attention_is_redriven_from_the_truth(
    shop: Shop, customer_cancels: bool
) -> None:
    lost = SdkFault("UpdateItem", "ProvisionedThroughputExceededException", when=updates_payment_to("CAPTURED"))
    with inject(aws.dynamodb(), lost):
        order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
        checkout_stopped(shop, order_id)
    stuck = books(shop, order_id)
    assert stuck.provider is not None and stuck.provider.authorization.status == "CAPTURED"
    assert stuck.provider_entries("void") == 0  # a captured payment is never voided
    letter = shop.dead_letter(order_id)
    assert letter is not None and letter.status == "OPEN"
    if customer_cancels:
        cancelled = shop.cancel(order_id)
        assert cancelled.status_code == 202
        assert (cancelled.json_body["status"], cancelled.json_body["cancel_requested"]) == ("NEEDS_ATTENTION", True)

    assert shop.redrive(order_id).status_code == 202
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"

    if customer_cancels:
        assert shop.wait_refund(order_id) == "SUCCEEDED"
        end = books(shop, order_id)
        assert end.status == "REFUNDED"
        assert end.ours is not None and end.ours.refunded_amount == end.ours.captured_amount == 2 * PRICE
        assert end.provider is not None and end.provider.authorization.refunded_amount == 2 * PRICE
        assert end.available == STOCK
    else:
        end = books(shop, order_id)
        assert end.status == "COMPLETED"
        assert end.ours is not None and (end.ours.status, end.ours.captured_amount) == ("CAPTURED", 2 * PRICE)
        assert end.provider_entries("capture") == 1 and end.provider_entries("refund") == 0
        assert end.available == STOCK - 2
    resolved = shop.dead_letter(order_id)
    assert resolved is not None and resolved.status == "RESOLVED"


# ---------------------------------------------------------------------------- 2. orders without a saga
def sweep(local_aws: LocalAws, at: datetime) -> dict[str, Any]:
    response = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function("ResumeOrphanedOrdersFunction"),
        Payload=json.dumps({"source": "aws.events", "detail-type": "Scheduled Event", "time": at.isoformat()}),
    )
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read())


def test_a_sweep_stops_before_its_timeout_and_the_next_run_goes_on(shop: Shop) -> None:
    throttled = SdkFault("StartExecution", "ThrottlingException", times=3)
    with inject(aws.stepfunctions(), throttled):
        orphans = [shop.place([("MUG-1", 1)], key=f"backlog-{n}").json_body["order_id"] for n in range(3)]
    assert throttled.injected == 3
    due = datetime.now(UTC) + timedelta(seconds=61)
    clock = iter([60.0, 30.0, recovery.SWEEP_MARGIN_SECONDS - 1])  # time left before each order

    first = recovery.resume_orphans(due, seconds_left=lambda: next(clock))
    assert (first.examined, first.stopped_early) == (2, True)
    second = recovery.resume_orphans(due, seconds_left=lambda: 60.0)
    assert second.stopped_early is False
    assert sorted(first.started + second.started) == sorted(orphans)  # each started once, none left
    for order_id in orphans:
        assert shop.wait_checkout(order_id) == "SUCCEEDED"
        assert books(shop, order_id).status == "COMPLETED"


def test_an_order_in_progress_the_sweeper_cannot_read_never_holds_up_the_orphans_behind_it(
    shop: Shop, local_aws: LocalAws
) -> None:
    # Written by a version this one cannot read (or by hand), placed before the orphan: examined first.
    local_aws.client("dynamodb").put_item(
        TableName=local_aws.table("OrdersTable"),
        Item={
            "order_id": {"S": "from-a-newer-version"},
            "status": {"S": "SHIPPING"},
            "customer_id": {"S": "alice"},
            "in_progress_for": {"S": "alice"},
            "created_at": {"S": "2000-01-01T00:00:00.000Z"},
        },
    )
    with inject(aws.stepfunctions(), SdkFault("StartExecution", "ThrottlingException")):
        orphan = shop.place([("MUG-1", 1)], key="behind-the-unreadable").json_body["order_id"]

    assert sweep(local_aws, datetime.now(UTC) + timedelta(seconds=61))["started"] == [orphan]

    assert shop.wait_checkout(orphan) == "SUCCEEDED"
    assert books(shop, orphan).status == "COMPLETED"


@pytest.mark.parametrize("customer_cancels", [False, True], ids=["started", "cancelled-while-orphaned"])
def test_an_order_whose_saga_did_not_start_is_started_by_the_sweeper(
    shop: Shop, local_aws: LocalAws, customer_cancels: bool
) -> None:
    throttled = SdkFault("StartExecution", "ThrottlingException")
    with inject(aws.stepfunctions(), throttled):
        placed = shop.place([("MUG-1", 3)], key="orphan-1")  # accepted: the order is stored, its saga starts later
    assert throttled.injected == 1
    assert placed.status_code == 202 and placed.json_body["status"] == "PENDING"
    order_id = placed.json_body["order_id"]
    assert shop.execution_status("CheckoutStateMachine", order_id) is None
    assert shop.place([("MUG-1", 3)], key="orphan-1").json_body["order_id"] == order_id  # the same order again
    if customer_cancels:
        assert shop.cancel(order_id).json_body["cancel_requested"] is True

    now = datetime.now(UTC)
    assert sweep(local_aws, now)["started"] == []  # younger than the bound: left alone
    assert sweep(local_aws, now + timedelta(seconds=61))["started"] == [order_id]

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    end = books(shop, order_id)
    if customer_cancels:
        assert (end.status, end.failure_reason) == ("CANCELLED", "CANCELLED_BY_CUSTOMER")
        assert end.available == STOCK
        assert end.provider_entries("capture") == 0
    else:
        assert end.status == "COMPLETED"
        assert end.ours is not None and end.ours.captured_amount == 3 * PRICE
        assert end.available == STOCK - 3
    assert sweep(local_aws, now + timedelta(seconds=120))["started"] == []  # settled orders are not touched
    assert len(shop.executions("CheckoutStateMachine")) == 1


def test_a_refund_whose_saga_did_not_start_is_started_by_the_sweeper(shop: Shop, local_aws: LocalAws) -> None:
    order_id = shop.place_ok([("MUG-1", 1)])["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    with inject(aws.stepfunctions(), SdkFault("StartExecution", "ServiceUnavailable")):
        cancelled = shop.cancel(order_id)
    assert cancelled.status_code == 202 and cancelled.json_body["status"] == "REFUNDING"
    assert shop.execution_status("RefundStateMachine", f"refund-{order_id}") is None

    assert sweep(local_aws, datetime.now(UTC) + timedelta(seconds=61))["started"] == [order_id]

    assert shop.wait_refund(order_id) == "SUCCEEDED"
    end = books(shop, order_id)
    assert end.status == "REFUNDED"
    assert end.ours is not None and end.ours.refunded_amount == PRICE
    assert end.available == STOCK


def placed_ago(local_aws: LocalAws, order_id: str, seconds: int) -> None:
    """Date the order's placement back (its saga's own writes keep their time), so the sweep reaches it first."""
    placed = (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    local_aws.client("dynamodb").update_item(
        TableName=local_aws.table("OrdersTable"),
        Key={"order_id": {"S": order_id}},
        UpdateExpression="SET created_at = :placed",
        ExpressionAttributeValues={":placed": {"S": placed}},
    )


@pytest.mark.parametrize("workflow_type", WORKFLOW_TYPES, indirect=True)
def test_sagas_still_running_never_hide_a_newer_orphan_from_the_sweeper(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch, workflow_type: str
) -> None:
    """More sagas alive than a sweep's bound, all placed before the orphan (a provider incident). Before,
    the sweep examined the SWEEP_LIMIT oldest orders in progress, running ones included, and never
    reached the orphan; running sagas now never count towards the bound (STANDARD: listed once and set
    aside; EXPRESS: judged from each order's claim)."""
    monkeypatch.setattr(recovery, "SWEEP_LIMIT", 2)  # stands for the 1000 it is
    held = HoldEvery(local_aws.function("AuthorizePaymentFunction"))
    lambda_runtime.faults.before_invoke = held
    try:
        alive = [shop.place_ok([("MUG-1", 1)])["order_id"] for _ in range(2)]
        held.wait_arrived(len(alive))
        for order_id in alive:
            placed_ago(local_aws, order_id, 120)
        with inject(aws.stepfunctions(), SdkFault("StartExecution", "ThrottlingException", times=1)):
            orphan = shop.place([("MUG-1", 1)], key="behind-the-running").json_body["order_id"]

        swept = recovery.resume_orphans(datetime.now(UTC) + timedelta(seconds=61))
    finally:
        held.released.set()

    assert (swept.started, swept.settled) == ([orphan], [])
    for order_id in [*alive, orphan]:
        assert shop.wait_checkout(order_id) == "SUCCEEDED"
        assert books(shop, order_id).status == "COMPLETED"
    assert available("MUG-1") == STOCK - 3


@pytest.mark.parametrize("workflow_type", WORKFLOW_TYPES, indirect=True)
def test_an_orphan_whose_lookup_or_start_fails_waits_for_the_next_sweep_and_the_ones_behind_it_do_not(
    shop: Shop, local_aws: LocalAws, workflow_type: str
) -> None:
    """One order's lookup is throttled (STANDARD: its DescribeExecution; EXPRESS, judged from the order's
    claim: the order's read) and the next one's start fails. Before, either stopped the whole sweep and
    every order behind it, for as long as the error lasted."""
    with inject(aws.stepfunctions(), SdkFault("StartExecution", "ThrottlingException", times=3)):
        looked_up, not_started, behind = (
            shop.place([("MUG-1", 1)], key=f"orphan-{n}").json_body["order_id"] for n in range(3)
        )
    placed_ago(local_aws, looked_up, 300)
    placed_ago(local_aws, not_started, 200)
    if workflow_type == "STANDARD":
        client = aws.stepfunctions()
        lookup = SdkFault(
            "DescribeExecution", "ThrottlingException", when=lambda r: r["executionArn"].endswith(f":{looked_up}")
        )
    else:
        client = aws.dynamodb()
        lookup = SdkFault(
            "GetItem",
            "ProvisionedThroughputExceededException",
            when=lambda r: r["TableName"] == local_aws.table("OrdersTable") and r["Key"]["order_id"]["S"] == looked_up,
        )
    start = SdkFault("StartExecution", "ServiceUnavailable", when=lambda r: r["name"] == not_started)
    due = datetime.now(UTC) + timedelta(seconds=61)

    with inject(client, lookup), inject(aws.stepfunctions(), start):
        first = recovery.resume_orphans(due)
    assert (lookup.injected, start.injected) == (1, 1)
    assert (first.examined, first.started, first.stopped_early) == (3, [behind], False)
    assert shop.execution_status("CheckoutStateMachine", looked_up) is None
    assert shop.wait_checkout(behind) == "SUCCEEDED"

    assert recovery.resume_orphans(due).started == [looked_up, not_started]  # the next run, the errors gone
    for order_id in (looked_up, not_started, behind):
        assert shop.wait_checkout(order_id) == "SUCCEEDED"
        assert books(shop, order_id).status == "COMPLETED"
    assert available("MUG-1") == STOCK - 3


def test_the_sweeper_leaves_an_order_its_saga_moved_on_while_the_sweeper_looked_the_saga_up(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STANDARD; the running sagas could not be listed (throttled), so each order's execution is described.
    The sweeper read the order (PAYMENT_AUTHORIZED, its capture held), and before Step Functions answered,
    the customer's cancel turned the checkout's completion into a refund hand-over: the checkout SUCCEEDED
    and refund-<id> runs. Before, the sweeper judged its read against that status and flagged the order
    NEEDS_ATTENTION, with an open letter, under its running refund; it now sees the order moved on."""
    at_capture = PauseAt(local_aws.function("CapturePaymentFunction"))
    refunding = HoldEvery(local_aws.function("RefundPaymentFunction"))

    def hold(function_name: str, event: Any) -> None:
        at_capture(function_name, event)
        refunding(function_name, event)

    lambda_runtime.faults.before_invoke = hold
    described = sagas.status

    def described_after_the_saga_moved_on(machine: str, name: str) -> str | None:
        if name == order_id:  # the sweeper has read the order
            at_capture.released.set()
            eventually(lambda: described(machine, name) == "SUCCEEDED", "the checkout to hand over to its refund")
            refunding.wait_arrived(1)
        return described(machine, name)

    try:
        order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
        at_capture.wait_reached()
        assert shop.cancel(order_id).status_code == 202
        placed_ago(local_aws, order_id, 120)  # a slow checkout
        monkeypatch.setattr(sagas, "status", described_after_the_saga_moved_on)
        with inject(aws.stepfunctions(), SdkFault("ListExecutions", "ThrottlingException")):
            swept = recovery.resume_orphans(datetime.now(UTC) + timedelta(seconds=61))
        monkeypatch.setattr(sagas, "status", described)

        assert swept.settled == []
        assert shop.order(order_id).status == "REFUNDING"
        assert shop.dead_letter(order_id) is None
        assert shop.execution_status("RefundStateMachine", f"refund-{order_id}") == "RUNNING"
    finally:
        at_capture.released.set()
        refunding.released.set()

    assert shop.wait_refund(order_id) == "SUCCEEDED"
    end = books(shop, order_id)
    assert end.status == "REFUNDED"
    assert end.ours is not None and end.ours.refunded_amount == end.ours.captured_amount == 2 * PRICE
    assert end.available == STOCK
    assert shop.dead_letter(order_id) is None


def history_ago(local_aws: LocalAws, order_id: str, seconds: int) -> None:
    """Date every history entry of the order back (an operator who redrives it hours after the flag)."""
    table, key = local_aws.table("OrdersTable"), {"order_id": {"S": order_id}}
    dynamodb = local_aws.client("dynamodb")
    entries = dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]["history"]["L"]
    for entry in entries:  # stored as "step|status|at"
        step, status, at = entry["S"].split("|", 2)
        earlier = datetime.fromisoformat(at.replace("Z", "+00:00")) - timedelta(seconds=seconds)
        entry["S"] = f"{step}|{status}|" + earlier.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    dynamodb.update_item(
        TableName=table, Key=key, UpdateExpression="SET history = :h", ExpressionAttributeValues={":h": {"L": entries}}
    )


@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
def test_an_express_refund_a_late_redrive_began_is_continued_from_when_it_began(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """The customer cancels during the capture, the hand-over to the refund saga fails past its
    retries (NEEDS_ATTENTION), and an operator redrives two hours later: the refund begins then, and
    its continuation window (ExpressContinueForSeconds, an hour) is timed from then. Before, the
    redrive's move to REFUNDING appended no history (every entry was recorded), the sweeper timed the
    window from the old flag, and the refund's first stop was dead-lettered, not continued (a
    helper's probe)."""
    faults.fail("StartRefundFunction")
    at_capture = faults.pause_at("CapturePaymentFunction")
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
    at_capture.wait_reached()
    assert shop.cancel(order_id).status_code == 202
    at_capture.released.set()
    assert shop.wait_checkout(order_id) == "FAILED"
    letter = shop.dead_letter(order_id)
    assert shop.order(order_id).status == "NEEDS_ATTENTION" and letter is not None and letter.resume == "complete"
    faults.heal()

    history_ago(local_aws, order_id, 2 * 3600)
    at_refund = faults.pause_at("RefundPaymentFunction")
    assert shop.redrive(order_id).status_code == 202
    at_refund.wait_reached()
    assert shop.order(order_id).status == "REFUNDING"
    [run] = [e for e in shop.executions("RefundStateMachine") if e["name"] == f"refund-{order_id}"]
    shop.sfn.stop_execution(executionArn=run["executionArn"], error="States.Timeout", cause="its 5 minutes")
    faults.fail("RefundPaymentFunction")  # the stopped run's refund call does nothing
    at_refund.released.set()
    assert shop.wait_refund(order_id) == "ABORTED"
    faults.heal()

    swept = sweep(local_aws, _past_the_express_limit())

    assert (swept["started"], swept["settled"]) == ([order_id], []), (swept, shop.order(order_id).history[-3:])
    [continuation] = [
        e["name"] for e in shop.executions("RefundStateMachine") if e["name"].startswith(f"refund-{order_id}-continue-")
    ]
    assert shop.wait_execution("RefundStateMachine", continuation) == "SUCCEEDED"
    end = books(shop, order_id)
    assert end.status == "REFUNDED"
    assert end.ours is not None and end.ours.refunded_amount == end.ours.captured_amount == 2 * PRICE
    assert end.available == STOCK
    assert shop.dead_letter(order_id) is None or shop.dead_letter(order_id).status != "OPEN"  # type: ignore[union-attr]


def _past_the_express_limit() -> datetime:
    return datetime.now(UTC) + timedelta(
        seconds=recovery.EXPRESS_LIMIT_SECONDS + recovery.EXPRESS_SETTLE_MARGIN_SECONDS + 1
    )


def _stopped_before(shop: Shop, faults: StepFaults, order_id: str, pause: PauseAt, logical_id: str) -> None:
    """The first run stopped (its time limit) while its invocation of ``logical_id`` was on its way,
    which then does nothing (the sandbox went with the run)."""
    pause.wait_reached()
    [run] = [execution for execution in shop.executions("CheckoutStateMachine") if execution["name"] == order_id]
    shop.sfn.stop_execution(executionArn=run["executionArn"], error="States.Timeout", cause="its 5 minutes")
    faults.fail(logical_id)
    pause.released.set()
    assert shop.wait_checkout(order_id) == "ABORTED"
    eventually(lambda: faults.refused[logical_id] > 0, f"the stopped run's {logical_id} to do nothing")
    faults.heal()


def _continued(shop: Shop, local_aws: LocalAws, order_id: str) -> Books:
    swept = sweep(local_aws, _past_the_express_limit())
    assert swept["started"] == [order_id], (swept, shop.order(order_id))
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-continue-2") == "SUCCEEDED"
    return books(shop, order_id)


@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
@pytest.mark.parametrize("stopped_at", ["ReleaseReservationFunction", "CancelOrderFunction"])
def test_an_express_checkout_stopped_while_compensating_goes_on_compensating_for_its_reason(
    shop: Shop, local_aws: LocalAws, faults: StepFaults, stopped_at: str
) -> None:
    """The provider unavailable at authorization; the run voided (and released) and stopped before its
    last compensation. Its continuation checked out again: the order ended CANCELLED for
    INVENTORY_UNAVAILABLE with "authorize_payment SUCCEEDED" in its history, a payment never
    authorized (a helper's probe). The first compensation records why on the order, and the
    continuation compensates for that reason, as a redrive does."""
    pause = faults.pause_at(stopped_at)
    order_id = shop.place_ok([("MUG-1", 2)], token="tok_processingError")["order_id"]
    _stopped_before(shop, faults, order_id, pause, stopped_at)

    end = _continued(shop, local_aws, order_id)

    assert (end.status, end.failure_reason) == ("CANCELLED", "PAYMENT_UNAVAILABLE")
    assert end.ours is not None and (end.ours.status, end.ours.authorization_ref) == ("VOIDED", None)
    assert end.provider is None and end.available == STOCK
    assert ("authorize_payment", "SUCCEEDED") not in steps(shop.order(order_id))


def test_a_compensation_whose_record_on_the_order_is_busy_is_retried(shop: Shop) -> None:
    """Recording why the saga compensates is a write to the order, which can meet a transaction on it
    (TransactionConflict: OrderContention); the void's first retrier takes it, as the claim's does,
    rather than the last-resort one, whose two more attempts ended in a flagged order."""
    busy = SdkFault("UpdateItem", "TransactionConflictException", times=3, when=lambda r: "compensating" in str(r))
    with inject(aws.dynamodb(), busy):
        order_id = shop.place_ok([("MUG-1", 2)], token="tok_processingError")["order_id"]
        assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert busy.injected == 3  # past what the step's last-resort retrier takes (two more attempts)
    end = books(shop, order_id)
    assert (end.status, end.failure_reason, end.available) == ("CANCELLED", "PAYMENT_UNAVAILABLE", STOCK)


@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
def test_an_express_checkout_stopped_after_releasing_a_lost_reservation_authorizes_no_card(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """Every answer of the reservation lost (it was made): InventoryUnavailable released it, and the run
    stopped before CancelOrder. Its continuation authorized the customer's card for an order already
    compensated, then voided it (a helper's probe). Now it asks the provider, finds nothing, and cancels."""
    reserve, losing = local_aws.function("ReserveStockFunction"), lambda_runtime.faults.after_invoke

    def lose_the_first_runs_answers(function_name: str, event: Any) -> None:
        if function_name == reserve and "-continue-" not in str(event.get("execution_name")):
            raise lambda_runtime.lambda_timeout()
        if losing is not None:
            losing(function_name, event)

    lambda_runtime.faults.after_invoke = lose_the_first_runs_answers
    pause = faults.pause_at("CancelOrderFunction")
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
    _stopped_before(shop, faults, order_id, pause, "CancelOrderFunction")

    end = _continued(shop, local_aws, order_id)

    assert (end.status, end.failure_reason) == ("CANCELLED", "INVENTORY_UNAVAILABLE")
    assert payment_domain.simulator().lookup(f"{order_id}:authorize") is None  # no hold on the card
    assert end.available == STOCK


# ---------------------------------------------------------------------------- 3. last-resort steps fail too
def test_a_saga_whose_last_resort_step_fails_is_dead_lettered_from_its_execution_event(
    shop: Shop, local_aws: LocalAws
) -> None:
    fail_functions(local_aws, "VoidPaymentFunction", "FlagOrderFunction")
    order_id = shop.place_ok([("MUG-1", 2)], token="tok_chargeDeclined")["order_id"]

    assert shop.wait_checkout(order_id) == "FAILED"
    stuck = shop.wait_status(order_id, "NEEDS_ATTENTION")
    letter = shop.wait_dead_letter(order_id, "OPEN")
    assert (letter.status, letter.failed_step, letter.resume) == ("OPEN", "saga_failed", "compensate")
    assert ("needs_attention", "NEEDS_ATTENTION") in [(h.step, h.status) for h in stuck.history]
    assert shop.cancel(order_id).json_body["cancel_requested"] is True  # recorded, not dropped

    heal()
    assert shop.redrive(order_id).status_code == 202
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"
    end = books(shop, order_id)
    assert (end.status, end.failure_reason) == ("CANCELLED", "CANCELLED_BY_CUSTOMER")
    assert end.ours is not None and end.ours.status == "DECLINED" and end.ours.captured_amount == 0
    assert end.available == STOCK
    resolved = shop.dead_letter(order_id)
    assert resolved is not None and resolved.status == "RESOLVED"


def test_an_aborted_redrive_reopens_its_dead_letter(shop: Shop, local_aws: LocalAws) -> None:
    fail_functions(local_aws, "VoidPaymentFunction")
    order_id = shop.place_ok([("MUG-1", 2)], token="tok_chargeDeclined")["order_id"]
    checkout_stopped(shop, order_id)
    held = PauseAt(local_aws.function("ReconcilePaymentFunction"))
    lambda_runtime.faults.before_invoke = held

    assert shop.redrive(order_id).json_body["status"] == "REDRIVING"
    held.wait_reached()
    shop.sfn.stop_execution(executionArn=shop.execution_arn("CheckoutStateMachine", f"{order_id}-redrive-1"))
    reopened = shop.wait_dead_letter(order_id, "OPEN")
    held.released.set()
    assert reopened.redrive_count == 1

    heal()
    assert shop.redrive(order_id).json_body["redrive_count"] == 2
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-2") == "SUCCEEDED"
    end = books(shop, order_id)
    assert (end.status, end.failure_reason, end.available) == ("CANCELLED", "PAYMENT_DECLINED", STOCK)


def test_a_redrive_decided_from_a_stale_read_of_its_letter_is_refused(local_aws: LocalAws) -> None:
    """A redrive starts only from the letter it read: OPEN at ``expected_count``. An operator who read the
    letter before a first redrive ran and was reopened must not start redrive number 1 again (its execution
    name is taken). A mutation run turned ``redrive_count = :expected`` into ``>=`` and every test passed.
    A redrive's reopen belongs to its own execution only."""
    letter = dead_letters.record(
        order_id="ord-stale-redrive",
        resume="compensate",
        failed_step="void_payment",
        failure=None,
        error="States.TaskFailed",
        cause=None,
        execution_name="ord-stale-redrive",
        now="2026-12-01T00:00:00.000Z",
    )
    assert letter.redrive_count == 0
    started = dead_letters.start_redrive(
        "ord-stale-redrive", expected_count=0, execution_name="ord-stale-redrive-redrive-1", epoch=2, now="t1"
    )
    assert started is not None and started.redrive_count == 1
    assert not dead_letters.reopen_redrive(
        "ord-stale-redrive", execution_name="ord-stale-redrive-redrive-0", error=None, cause=None, now="t2"
    )
    assert dead_letters.reopen_redrive(
        "ord-stale-redrive", execution_name="ord-stale-redrive-redrive-1", error="Aborted", cause=None, now="t3"
    )

    stale = dead_letters.start_redrive(
        "ord-stale-redrive", expected_count=0, execution_name="ord-stale-redrive-redrive-1", epoch=2, now="t4"
    )

    assert stale is None
    reopened = dead_letters.get("ord-stale-redrive")
    assert reopened is not None
    assert (reopened.status, reopened.redrive_count, reopened.error) == ("OPEN", 1, "Aborted")


def test_a_redrive_starts_only_from_an_open_letter_whatever_its_count(local_aws: LocalAws) -> None:
    """A letter already REDRIVING (or RESOLVED) at the count an operator read is not claimed again: a second
    claim would record a new execution and epoch over the running redrive's. Pins the ``#status = :open``
    clause of ``start_redrive``, which no other test told apart from the count's."""
    dead_letters.record(
        order_id="ord-not-open",
        resume="compensate",
        failed_step="void_payment",
        failure=None,
        error="States.TaskFailed",
        cause=None,
        execution_name="ord-not-open",
        now="2026-12-01T00:00:00.000Z",
    )
    started = dead_letters.start_redrive(
        "ord-not-open", expected_count=0, execution_name="ord-not-open-redrive-1", epoch=2, now="t1"
    )
    assert started is not None and (started.status, started.redrive_count) == ("REDRIVING", 1)

    assert (
        dead_letters.start_redrive(
            "ord-not-open", expected_count=1, execution_name="ord-not-open-redrive-2", epoch=3, now="t2"
        )
        is None
    )
    dead_letters.resolve("ord-not-open", now="t3")
    assert (
        dead_letters.start_redrive(
            "ord-not-open", expected_count=1, execution_name="ord-not-open-redrive-2", epoch=3, now="t4"
        )
        is None
    )
    letter = dead_letters.get("ord-not-open")
    assert letter is not None
    assert (letter.status, letter.redrive_count, letter.redrive_execution, letter.redrive_epoch) == (
        "RESOLVED",
        1,
        "ord-not-open-redrive-1",
        2,
    )


def test_a_resolved_letter_is_not_reopened_by_the_late_stop_of_its_redrive(local_aws: LocalAws) -> None:
    """Once the redrive's flag step resolved the letter, a late stop event of that same execution must not
    reopen it (an operator would redrive a settled order). Pins the ``#status = :redriving`` clause of
    ``reopen_redrive``: the execution name alone still matches."""
    dead_letters.record(
        order_id="ord-resolved-redrive",
        resume="compensate",
        failed_step="void_payment",
        failure=None,
        error="States.TaskFailed",
        cause=None,
        execution_name="ord-resolved-redrive",
        now="2026-12-01T00:00:00.000Z",
    )
    started = dead_letters.start_redrive(
        "ord-resolved-redrive", expected_count=0, execution_name="ord-resolved-redrive-redrive-1", epoch=2, now="t1"
    )
    assert started is not None
    dead_letters.resolve("ord-resolved-redrive", now="t2")

    assert not dead_letters.reopen_redrive(
        "ord-resolved-redrive", execution_name="ord-resolved-redrive-redrive-1", error="Aborted", cause=None, now="t3"
    )
    letter = dead_letters.get("ord-resolved-redrive")
    assert letter is not None and (letter.status, letter.error, letter.updated_at) == (
        "RESOLVED",
        "States.TaskFailed",
        "t2",
    )


def _letter_for_redrive(order_id: str) -> None:
    dead_letters.record(
        order_id=order_id,
        resume="compensate",
        failed_step="void_payment",
        failure=None,
        error="States.TaskFailed",
        cause=None,
        execution_name=order_id,
        now="2026-12-01T00:00:00.000Z",
    )


def test_a_redrive_that_lost_the_claim_to_another_ask_answers_and_starts_the_winners_run(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two asks read the letter OPEN; the one whose claim lost re-reads it and answers REDRIVING (and starts
    the winner's run, idempotent by name), not the stale OPEN letter it read first."""
    _letter_for_redrive("ord-lost-claim")
    claim = dead_letters.start_redrive
    started: list[str] = []

    def claimed_by_another(order_id: str, **kwargs: Any) -> None:
        claim(order_id, **kwargs)

    monkeypatch.setattr(dead_letters, "start_redrive", claimed_by_another)
    monkeypatch.setattr(sagas, "start", lambda arn, *, name, payload: started.append(name))

    letter = operations.redrive("ord-lost-claim")

    assert (letter.status, letter.redrive_count) == ("REDRIVING", 1)
    assert started == ["ord-lost-claim-redrive-1"]


def test_a_resolved_letter_whose_order_is_gone_starts_no_redrive(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking to redrive a RESOLVED letter starts nothing, even when no order's claim can say its run exists."""
    _letter_for_redrive("ord-resolved-gone")
    assert dead_letters.start_redrive(
        "ord-resolved-gone", expected_count=0, execution_name="ord-resolved-gone-redrive-1", epoch=2, now="t1"
    )
    dead_letters.resolve("ord-resolved-gone", now="t2")
    started: list[str] = []
    monkeypatch.setattr(sagas, "start", lambda arn, *, name, payload: started.append(name))

    assert operations.redrive("ord-resolved-gone").status == "RESOLVED"
    assert started == []


def test_resolving_the_letter_of_an_order_that_has_none_writes_none(local_aws: LocalAws) -> None:
    """The settling step resolves the letter of an order flagged NEEDS_ATTENTION; when the flag's letter was
    never written there is nothing to resolve, and no half letter (a status and a time, nothing an operator
    could read or redrive) may appear in the operators' list."""
    dead_letters.resolve("ord-never-lettered", now="2026-12-01T00:00:00.000Z")

    assert dead_letters.get("ord-never-lettered") is None
    assert dead_letters.list_page(limit=10, start_key=None) == ([], None)


def test_a_late_event_of_a_replaced_execution_leaves_the_running_redrive_alone(shop: Shop, local_aws: LocalAws) -> None:
    """EventBridge may deliver the first execution's FAILED event after the operator's redrive began."""
    fail_functions(local_aws, "VoidPaymentFunction")
    order_id = shop.place_ok([("MUG-1", 2)], token="tok_chargeDeclined")["order_id"]
    checkout_stopped(shop, order_id)
    first = shop.sfn.describe_execution(executionArn=shop.execution_arn("CheckoutStateMachine", order_id))
    held = PauseAt(local_aws.function("ReconcilePaymentFunction"))
    lambda_runtime.faults.before_invoke = held
    assert shop.redrive(order_id).json_body["status"] == "REDRIVING"
    held.wait_reached()

    late = ExecutionStatusChange.model_validate(
        {
            "executionArn": first["executionArn"],
            "stateMachineArn": first["stateMachineArn"],
            "name": first["name"],
            "status": "FAILED",
            "input": first["input"],
            "error": "CompensationFailed",
            "startDate": int(first["startDate"].timestamp() * 1000),
        }
    )
    assert recovery.settle_stopped_execution(late).action == "superseded"
    letter = shop.dead_letter(order_id)
    assert letter is not None and (letter.status, letter.redrive_count) == ("REDRIVING", 1)
    assert letter.failure is not None and letter.failure.reason == "PAYMENT_DECLINED"

    heal()
    held.released.set()
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"
    end = books(shop, order_id)
    assert (end.status, end.failure_reason, end.available) == ("CANCELLED", "PAYMENT_DECLINED", STOCK)
    assert end.ours is not None and (end.ours.status, end.ours.captured_amount) == ("DECLINED", 0)
    assert end.provider_entries("capture") == 0


def test_a_stop_event_whose_order_a_late_step_completes_meanwhile_letters_nothing(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkout was stopped while its CompleteOrder ran, and the step finishes (Lambda does not stop
    it) after the event's handler read the order in progress. The handler's flag, which holds no claim,
    refuses the COMPLETED order (the invocation fails, and EventBridge's next delivery finds it settled):
    no letter, no mark. Only a saga's own flag step, holding its claim, marks a settled order instead."""
    at_completion = PauseAt(local_aws.function("CompleteOrderFunction"))
    lambda_runtime.faults.before_invoke = at_completion
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
    at_completion.wait_reached()
    run = shop.sfn.describe_execution(executionArn=shop.execution_arn("CheckoutStateMachine", order_id))
    stopped = ExecutionStatusChange.model_validate(
        {
            "executionArn": run["executionArn"],
            "stateMachineArn": run["stateMachineArn"],
            "name": run["name"],
            "status": "ABORTED",
            "input": run["input"],
            "startDate": int(run["startDate"].timestamp() * 1000),
        }
    )
    letter_of = dead_letters.get

    def the_step_completes_the_order_meanwhile(letter_id: str) -> DeadLetter | None:
        at_completion.released.set()
        shop.wait_status(order_id, "COMPLETED")
        return letter_of(letter_id)

    with monkeypatch.context() as patched:
        patched.setattr(dead_letters, "get", the_step_completes_the_order_meanwhile)
        with pytest.raises(OrderStateConflict):
            recovery.settle_stopped_execution(stopped)

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    order = shop.order(order_id)
    assert (order.status, order.dead_lettered, shop.dead_letter(order_id)) == ("COMPLETED", None, None)
    assert recovery.settle_stopped_execution(stopped).action == "already_settled"
    assert shop.dead_letter(order_id) is None


# ---------------------------------------------------------------------------- 4. cancel, and refunds that fail
def _refund_failed(shop: Shop, local_aws: LocalAws) -> str:
    """An order whose checkout stopped, cancelled by its customer, whose redrive's refund saga failed."""
    fail_functions(local_aws, "CompleteOrderFunction")
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
    checkout_stopped(shop, order_id)
    assert shop.cancel(order_id).json_body["cancel_requested"] is True
    fail_functions(local_aws, "RefundPaymentFunction", "FlagOrderFunction")
    assert shop.redrive(order_id).status_code == 202
    assert shop.wait_refund(order_id) == "FAILED"
    return order_id


def test_a_refund_saga_that_fails_leaves_its_dead_letter_open(shop: Shop, local_aws: LocalAws) -> None:
    order_id = _refund_failed(shop, local_aws)

    stuck = shop.wait_status(order_id, "NEEDS_ATTENTION")
    letter = shop.wait_dead_letter(order_id, "OPEN")
    assert letter.resume == "refund"
    assert stuck.cancel_requested

    heal()
    assert shop.redrive(order_id).status_code == 202
    assert shop.wait_execution("RefundStateMachine", f"refund-{order_id}-redrive-2") == "SUCCEEDED"
    end = books(shop, order_id)
    assert end.status == "REFUNDED"
    assert end.ours is not None and end.ours.refunded_amount == end.ours.captured_amount == 2 * PRICE
    assert end.provider is not None and end.provider.authorization.refunded_amount == 2 * PRICE
    assert end.available == STOCK
    resolved = shop.dead_letter(order_id)
    assert resolved is not None and resolved.status == "RESOLVED"


def test_a_refund_over_a_ledger_restored_from_before_the_capture_refunds_the_capture(shop: Shop) -> None:
    """Our payments item restored from a backup taken between authorization and capture (the case the
    books check names): the refund saw nothing captured, refunded nothing, and the saga marked the
    order REFUNDED with the customer still charged (a helper's probe). It asks the provider first now."""
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    table, key = shop.aws.table("PaymentsTable"), {"order_id": {"S": order_id}}
    item = aws.dynamodb().get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
    restored = {**item, "status": {"S": "AUTHORIZED"}, "captured_amount": {"N": "0"}}
    restored.pop("capture_ref")
    aws.dynamodb().put_item(TableName=table, Item=restored)

    assert shop.cancel(order_id).json_body["status"] == "REFUNDING"
    assert shop.wait_refund(order_id) == "SUCCEEDED"

    end = books(shop, order_id)
    assert end.status == "REFUNDED"
    assert end.ours is not None and end.ours.refunded_amount == end.ours.captured_amount == 2 * PRICE
    assert end.provider is not None and end.provider.authorization.refunded_amount == 2 * PRICE
    assert end.provider_entries("refund") == 1
    assert end.available == STOCK


# ---------------------------------------------------------------------------- 6. timeouts
@pytest.mark.parametrize("logical_id", ["AuthorizePaymentFunction", "CapturePaymentFunction", "CompleteOrderFunction"])
def test_a_step_that_times_out_after_its_effect_is_retried_not_compensated(
    shop: Shop, local_aws: LocalAws, logical_id: str
) -> None:
    target = local_aws.function(logical_id)
    timed_out: list[str] = []

    def answer_lost_once(function_name: str, event: Any) -> None:
        if function_name == target and not timed_out:
            timed_out.append(function_name)
            raise lambda_runtime.lambda_timeout()

    lambda_runtime.faults.after_invoke = answer_lost_once
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    end = books(shop, order_id)
    assert timed_out == [target]
    assert end.status == "COMPLETED"
    assert end.ours is not None and end.ours.captured_amount == 2 * PRICE
    assert end.provider is not None and end.provider_entries("capture") == 1
    assert end.available == STOCK - 2


# ---------------------------------------------------------------------------- 5. obligations and the breaker
def test_a_capture_waits_out_an_open_breaker_and_completes(shop: Shop, local_aws: LocalAws) -> None:
    local_aws.set_runtime_parameter("payment-breaker-cooldown-seconds", "2")
    at_capture = PauseAt(local_aws.function("CapturePaymentFunction"))
    lambda_runtime.faults.before_invoke = at_capture
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
    at_capture.wait_reached()
    open_breaker()  # the provider-wide breaker opened while this order was half-way
    at_capture.released.set()

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    end = books(shop, order_id)
    assert end.status == "COMPLETED"
    assert end.ours is not None and end.ours.captured_amount == 2 * PRICE
    assert end.provider_entries("capture") == 1
    assert end.available == STOCK - 2
    assert payment_domain.payment_breaker().state().state == "CLOSED"  # its half-open probe closed it


def test_a_void_waits_out_an_open_breaker_and_releases_the_hold(shop: Shop, local_aws: LocalAws) -> None:
    local_aws.set_runtime_parameter("payment-breaker-cooldown-seconds", "2")
    authorized = PauseAt(
        local_aws.function("RecordProgressFunction"), when=lambda event: event.get("step") == "authorize_payment"
    )
    lambda_runtime.faults.before_invoke = authorized
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
    authorized.wait_reached()
    assert shop.cancel(order_id).status_code == 202
    open_breaker()
    authorized.released.set()

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    end = books(shop, order_id)
    assert (end.status, end.failure_reason) == ("CANCELLED", "CANCELLED_BY_CUSTOMER")
    assert end.ours is not None and end.ours.status == "VOIDED"
    assert end.provider is not None and end.provider.authorization.status == "VOIDED"
    assert end.available == STOCK
    assert payment_domain.payment_breaker().state().state == "CLOSED"


def test_a_new_authorization_fails_fast_on_an_open_breaker(shop: Shop) -> None:
    open_breaker()
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    end = books(shop, order_id)
    assert (end.status, end.failure_reason) == ("CANCELLED", "PAYMENT_UNAVAILABLE")
    assert end.provider is None  # never reached the provider
    assert end.available == STOCK


def _redriven_to_its_voided_cancellation(shop: Shop, order_id: str) -> None:
    """The order's OPEN letter resumes at the compensation; its redrive voids the authorization the stopped
    run made (never captured), returns the stock and cancels the order."""
    assert shop.wait_dead_letter(order_id, "OPEN").resume == "compensate"
    assert shop.redrive(order_id).status_code == 202
    shop.wait_dead_letter(order_id, "RESOLVED")
    settled = books(shop, order_id)
    assert (settled.status, settled.available) == ("CANCELLED", STOCK)
    assert settled.ours is not None and settled.ours.status == "VOIDED"
    assert (settled.provider_entries("capture"), settled.provider_entries("void")) == (0, 1)


def _stopped_at_its_authorization_unsettled(
    shop: Shop, faults: StepFaults, refused: Callable[[Any], bool] = lambda event: True
) -> str:
    """A checkout stopped while it authorized, its status event refused by the settle handler (``refused``
    sees each event): the order is left STOCK_RESERVED with its authorization recorded."""
    faults.fail("SettleStoppedExecutionFunction", when=refused)
    pause = faults.pause_at("AuthorizePaymentFunction")
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
    pause.wait_reached()
    shop.sfn.stop_execution(executionArn=shop.execution_arn("CheckoutStateMachine", order_id))
    pause.released.set()
    assert shop.wait_checkout(order_id) == "ABORTED"
    # The step that was under way when the run was stopped finishes (Lambda does not stop it): the
    # books count its authorization, which a redrive voids (else a test would race it).
    eventually(
        lambda: (payment := PaymentsRepository().get(order_id)) is not None and payment.status == "AUTHORIZED",
        "the authorization under way to be recorded",
    )
    eventually(lambda: faults.refused["SettleStoppedExecutionFunction"] > 0, "the settle handler to be refused")
    return order_id


def test_the_sweeper_settles_a_stopped_standard_saga_whose_status_event_was_never_handled(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """STANDARD executions are settled from their status-change event; when its handler kept failing,
    the orphan sweeper is what finds the order, and dead-letters it for the redrive that compensates."""
    order_id = _stopped_at_its_authorization_unsettled(shop, faults)
    assert shop.order(order_id).status == "STOCK_RESERVED" and shop.dead_letter(order_id) is None
    faults.heal()

    swept = sweep(local_aws, datetime.now(UTC) + timedelta(seconds=61))

    assert swept["settled"] == [order_id]
    assert shop.order(order_id).status == "NEEDS_ATTENTION"
    _redriven_to_its_voided_cancellation(shop, order_id)


def test_a_stop_event_delivered_again_flags_the_order_the_sweepers_takeover_could_not(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """The sweeper claims a stopped saga's order only to flag it; its flag's write fails (the order waits
    for the next sweep, under the sweeper's claim). The execution's status event, delivered again, still
    dead-letters the order: the sweeper's claim is no later run that settles it."""
    settle = local_aws.function("SettleStoppedExecutionFunction")
    events: list[Any] = []

    def refused_and_kept(event: Any) -> bool:
        events.append(event)
        return True

    order_id = _stopped_at_its_authorization_unsettled(shop, faults, refused=refused_and_kept)
    faults.heal()
    flag_lost = SdkFault(
        "PutItem",
        "ProvisionedThroughputExceededException",
        when=lambda request: (
            "OrdersTable" in str(request.get("TableName", "")) and request["Item"]["status"] == {"S": "NEEDS_ATTENTION"}
        ),
    )
    with inject(aws.dynamodb(), flag_lost):
        swept = sweep(local_aws, datetime.now(UTC) + timedelta(seconds=61))
    assert swept["settled"] == [] and flag_lost.injected == 1
    taken = shop.order(order_id)
    assert taken.status == "STOCK_RESERVED" and (taken.saga_claim or "").startswith(f"{recovery.ORPHAN_SWEEPER}:")

    answer = local_aws.client("lambda").invoke(FunctionName=settle, Payload=json.dumps(events[0]))

    assert json.loads(answer["Payload"].read())["action"] == "dead_lettered"
    assert shop.order(order_id).status == "NEEDS_ATTENTION"
    _redriven_to_its_voided_cancellation(shop, order_id)


@pytest.mark.parametrize("workflow_type", WORKFLOW_TYPES, indirect=True)
def test_a_redrive_that_stops_before_its_flag_step_has_its_letter_reopened_by_the_reconciliation(
    shop: Shop, local_aws: LocalAws, faults: StepFaults, workflow_type: str
) -> None:
    """A redrive whose own flag step fails past its retries ends FAILED with its letter REDRIVING. On
    STANDARD the status event reopens it (here its handler is down too, as if the event were lost);
    EXPRESS sends none. The hourly reconciliation reopens it once the run can no longer be going."""
    faults.fail("VoidPaymentFunction")
    order_id = shop.place_ok([("MUG-1", 2)], token="tok_chargeDeclined")["order_id"]
    checkout_stopped(shop, order_id)
    faults.fail("FlagOrderFunction")
    faults.fail("SettleStoppedExecutionFunction")

    redriven = shop.redrive(order_id)
    assert redriven.status_code == 202, redriven.body
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "FAILED"
    local_aws.deliver_events()
    stalled = shop.dead_letter(order_id)
    assert stalled is not None and stalled.status == "REDRIVING"
    faults.heal()

    report = reconciliation_job.run(datetime.now(UTC) + timedelta(minutes=7))

    assert [(d.order_id, d.kind, d.action) for d in report.discrepancies] == [
        (order_id, "redrive_stalled", "dead_lettered")
    ]
    letter = shop.wait_dead_letter(order_id, "OPEN")
    assert (letter.error, letter.redrive_count) == ("RedriveStopped", 1)
    assert shop.order(order_id).status == "NEEDS_ATTENTION"
    assert shop.redrive(order_id).json_body["redrive_count"] == 2
    shop.wait_dead_letter(order_id, "RESOLVED")
    end = books(shop, order_id)
    assert (end.status, end.failure_reason, end.available) == ("CANCELLED", "PAYMENT_DECLINED", STOCK)
    assert end.ours is not None and (end.ours.status, end.ours.captured_amount) == ("DECLINED", 0)
    assert end.provider is None  # the provider declined: it holds no authorization to capture or void


def _redrive_held_before_its_first_step(shop: Shop, local_aws: LocalAws, resume: str) -> tuple[str, str, PauseAt]:
    """An order NEEDS_ATTENTION whose letter resumes at ``resume`` (a declined checkout's compensation, or
    a refund that failed), its redrive held before its first step: the order, the redrive's machine, the hold."""
    if resume == "compensate":
        fail_functions(local_aws, "VoidPaymentFunction")
        order_id = shop.place_ok([("MUG-1", 2)], token="tok_chargeDeclined")["order_id"]
        checkout_stopped(shop, order_id)
        machine, first_step = "CheckoutStateMachine", "ReconcilePaymentFunction"
    else:
        order_id = _refund_failed(shop, local_aws)
        assert shop.wait_dead_letter(order_id, "OPEN").resume == "refund"
        machine, first_step = "RefundStateMachine", "ClaimOrderFunction"
    held = PauseAt(local_aws.function(first_step))
    lambda_runtime.faults.before_invoke = held
    assert shop.redrive(order_id).json_body["status"] == "REDRIVING"
    held.wait_reached()
    return order_id, machine, held


# A refund's letter on EXPRESS: its failed run sends no status event, so no fixture here opens one.
@pytest.mark.parametrize(
    ("workflow_type", "resume"),
    [("STANDARD", "compensate"), ("EXPRESS", "compensate"), ("STANDARD", "refund")],
    indirect=["workflow_type"],
)
def test_the_reconciliation_leaves_the_letter_of_a_redrive_still_running_as_it_is(
    shop: Shop, local_aws: LocalAws, workflow_type: str, resume: str
) -> None:
    """A redrive's letter is reopened only once its run can no longer be going: reopening it over a run that
    still goes lets an operator start a second redrive that takes the order from the first. On STANDARD Step
    Functions says it runs (asked of the redrive's own machine), whatever its age; on EXPRESS the longest an
    Express run can be going has not passed. A mutation run reopened it over the running redrive, asked the
    other machine, and dropped the Express margin, each unnoticed."""
    order_id, machine, held = _redrive_held_before_its_first_step(shop, local_aws, resume)
    letter = shop.dead_letter(order_id)
    assert letter is not None and letter.redrive_execution is not None and letter.redrive_started_at is not None
    started_at = zoned_instant(letter.redrive_started_at)
    assert started_at is not None and shop.order(order_id).status == "NEEDS_ATTENTION"
    longest_express_run = timedelta(seconds=recovery.EXPRESS_LIMIT_SECONDS + recovery.EXPRESS_SETTLE_MARGIN_SECONDS)

    reopened = recovery.reopen_stalled_redrives([letter], started_at + longest_express_run)

    assert reopened == []
    still = shop.dead_letter(order_id)
    assert still is not None and (still.status, still.redrive_count, still.error) == (
        "REDRIVING",
        letter.redrive_count,
        letter.error,
    )
    heal()
    held.released.set()
    assert shop.wait_execution(machine, letter.redrive_execution) == "SUCCEEDED"
    assert shop.wait_dead_letter(order_id, "RESOLVED").redrive_count == letter.redrive_count
    end = books(shop, order_id)
    assert end.status == ("CANCELLED" if resume == "compensate" else "REFUNDED") and end.available == STOCK


@pytest.mark.parametrize("workflow_type", WORKFLOW_TYPES, indirect=True)
def test_a_redrive_whose_start_failed_has_its_letter_reopened_once_no_start_can_be_on_its_way(
    shop: Shop, local_aws: LocalAws, workflow_type: str
) -> None:
    """The letter went REDRIVING and StartExecution failed: no run will settle it. STANDARD tells a run never
    started (no such execution) once a start can no longer be on its way (the orphan sweeper's bound);
    EXPRESS cannot describe a run by name, so it waits out the longest an Express run can be going. Reopened
    sooner, a start still on its way would run beside the operator's next redrive."""
    fail_functions(local_aws, "VoidPaymentFunction")
    order_id = shop.place_ok([("MUG-1", 2)], token="tok_chargeDeclined")["order_id"]
    checkout_stopped(shop, order_id)
    heal()
    with inject(aws.stepfunctions(), SdkFault("StartExecution", "ThrottlingException")) as throttled:
        refused = shop.redrive(order_id)
    assert refused.status_code == 503 and throttled.injected >= 1
    assert shop.execution_status("CheckoutStateMachine", f"{order_id}-redrive-1") is None
    letter = shop.dead_letter(order_id)
    assert letter is not None and letter.status == "REDRIVING" and letter.redrive_started_at is not None
    started_at = zoned_instant(letter.redrive_started_at)
    assert started_at is not None
    if workflow_type == "STANDARD":
        window = timedelta(seconds=recovery_settings().orphan_after_seconds)
    else:
        window = timedelta(seconds=recovery.EXPRESS_LIMIT_SECONDS + recovery.EXPRESS_SETTLE_MARGIN_SECONDS)

    assert recovery.reopen_stalled_redrives([letter], started_at + window) == []
    waiting = shop.dead_letter(order_id)
    assert waiting is not None and waiting.status == "REDRIVING"
    assert recovery.reopen_stalled_redrives([letter], started_at + window + timedelta(seconds=1)) == [letter]

    reopened = shop.dead_letter(order_id)
    assert reopened is not None and (reopened.status, reopened.error, reopened.redrive_count) == (
        "OPEN",
        "RedriveStopped",
        1,
    )
    assert shop.redrive(order_id).json_body["redrive_count"] == 2
    shop.wait_dead_letter(order_id, "RESOLVED")
    end = books(shop, order_id)
    assert (end.status, end.failure_reason, end.available) == ("CANCELLED", "PAYMENT_DECLINED", STOCK)


def test_lambda_service_errors_before_forward_steps_are_retried_and_change_nothing_twice(
    shop: Shop, local_aws: LocalAws
) -> None:
    """The Lambda service refusing an Invoke (Lambda.ServiceException, Lambda.TooManyRequestsException):
    the state machine's Retry runs the step again, and the books show each effect once."""
    refused = {
        local_aws.function("AuthorizePaymentFunction"): "Lambda.ServiceException",
        local_aws.function("CapturePaymentFunction"): "Lambda.TooManyRequestsException",
    }
    seen: list[str] = []

    def the_service_refuses_once(function_name: str, event: Any) -> None:
        error = refused.pop(function_name, None)
        if error is not None:
            seen.append(error)
            raise type(error, (Exception,), {})(f"{error} (injected)")

    lambda_runtime.faults.before_invoke = the_service_refuses_once
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert sorted(seen) == ["Lambda.ServiceException", "Lambda.TooManyRequestsException"]
    settled = books(shop, order_id)
    assert (settled.status, settled.available) == ("COMPLETED", STOCK - 2)
    assert (settled.provider_entries("capture"), settled.provider_entries("void")) == (1, 0)
    assert settled.ours is not None and (settled.ours.status, settled.ours.captured_amount) == ("CAPTURED", 2 * PRICE)


@pytest.mark.parametrize("call", ["authorize", "capture"])
def test_a_provider_answer_lost_after_its_effect_is_found_by_key_and_never_repeated(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """The provider did the work and its answer never arrived (a dropped connection): the retry asks
    with the same idempotency key and gets the first result; the provider's ledger has one entry."""
    original = getattr(SimulatorProvider, call)
    lost: list[str] = []

    def answer_lost_once(provider: SimulatorProvider, *args: Any, **kwargs: Any) -> Any:
        result = original(provider, *args, **kwargs)
        if not lost:
            lost.append(call)
            raise PaymentProviderError(f"{call}: the answer was lost after the call took effect (injected)")
        return result

    monkeypatch.setattr(SimulatorProvider, call, answer_lost_once)
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert lost == [call]
    settled = books(shop, order_id)
    assert (settled.status, settled.available) == ("COMPLETED", STOCK - 2)
    assert settled.provider is not None and settled.provider.authorization.status == "CAPTURED"
    assert (settled.provider_entries("capture"), settled.provider_entries("void")) == (1, 0)
    assert settled.ours is not None and (settled.ours.status, settled.ours.captured_amount) == ("CAPTURED", 2 * PRICE)


def test_an_order_no_saga_can_run_never_holds_up_the_orphans_behind_it(shop: Shop, local_aws: LocalAws) -> None:
    """An orphan without its payment method (edited behind the shop's back) cannot be started: it stopped
    the whole sweep, and every orphan behind it, for good."""
    with inject(aws.stepfunctions(), SdkFault("StartExecution", "ThrottlingException", times=2)):
        unrunnable, behind = (shop.place([("MUG-1", 1)], key=f"orphan-{n}").json_body["order_id"] for n in range(2))
    placed_ago(local_aws, unrunnable, 300)
    local_aws.client("dynamodb").update_item(
        TableName=local_aws.table("OrdersTable"),
        Key={"order_id": {"S": unrunnable}},
        UpdateExpression="REMOVE payment_token",
    )

    swept = recovery.resume_orphans(datetime.now(UTC) + timedelta(seconds=61))

    assert (swept.examined, swept.started, swept.settled) == (2, [behind], [])
    assert shop.wait_checkout(behind) == "SUCCEEDED"
    assert shop.order(unrunnable).status == "PENDING"  # an operator's to look at
