"""The sagas' claim (fencing token), in both workflow types: a duplicate execution and an execution
that was taken over stop without any effect and without compensating.

Express starts are at-least-once and their names are not unique: the emulator starts the same
order twice at once on demand (``moto_stepfunctions.express_copies``). A takeover is what an
operator's redrive or the refund saga does (a later epoch claims the order); here it happens just
before one step of a running execution, which must then stop at NotTheOwner, leaving the order,
the payments ledger, the provider's ledger and the stock as the new owner found them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.local import lambda_runtime, moto_stepfunctions
from shop import aws
from shop.config import recovery_settings
from shop.domain import payments as payment_domain
from shop.domain import reconciliation_job, recovery
from shop.errors import PaymentAlreadyCaptured
from shop.models.orders import SagaClaim
from shop.payments.simulator import SimulatorLedger
from shop.repositories import orders as order_repository
from shop.repositories.payments import PaymentsRepository
from tests.conftest import BOTH_WORKFLOW_TYPES, LocalAws
from tests.service.faults import Down, SdkFault, StepFaults, inject
from tests.service.orders_helpers import Shop, available, eventually, open_shop, seed_product
from tests.service.test_reconciliation import _set_status as set_status
from tests.service.test_recovery import sweep

PRICE, STOCK, QUANTITY = 1250, 10, 2
TOTAL = PRICE * QUANTITY
# The states a stopped execution must never enter after losing its claim.
COMPENSATIONS = frozenset({"VoidPayment", "ReleaseStock", "CancelOrder", "ReturnStock", "RefundPayment"})


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=PRICE, stock=STOCK)
    with open_shop(local_aws) as opened:
        yield opened


def provider_ledger(order_id: str) -> SimulatorLedger | None:
    payment = PaymentsRepository().get(order_id)
    if payment is None or payment.authorization_ref is None:
        return None
    return payment_domain.simulator().ledger(payment.authorization_ref)


def executions_of(shop: Shop, machine: str, name: str) -> list[dict[str, Any]]:
    pages = shop.sfn.get_paginator("list_executions").paginate(stateMachineArn=shop.aws.state_machine(machine))
    return [execution for page in pages for execution in page["executions"] if execution["name"] == name]


def states_entered(shop: Shop, execution_arn: str) -> list[str]:
    pages = shop.sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn)
    return [
        event["stateEnteredEventDetails"]["name"]
        for page in pages
        for event in page["events"]
        if "stateEnteredEventDetails" in event
    ]


# ---------------------------------------------------------------------------- duplicate starts
@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
def test_a_duplicate_express_start_of_an_order_stops_at_its_claim_and_the_order_completes_once(shop: Shop) -> None:
    moto_stepfunctions.express_copies = lambda machine, name: 2
    order_id = shop.place_ok([("MUG-1", QUANTITY)])["order_id"]

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    runs = executions_of(shop, "CheckoutStateMachine", order_id)
    assert len(runs) == 2 and len({run["executionArn"] for run in runs}) == 2
    paths = sorted((states_entered(shop, run["executionArn"]) for run in runs), key=len)
    assert paths[0] == ["ClaimOrder", "NotTheOwner"]  # the duplicate: nothing else ran
    assert paths[1][-1] == "Completed" and not COMPENSATIONS & set(paths[1])
    order = shop.order(order_id)
    owners = {order_repository.claim_token(SagaClaim(execution=run["executionArn"], epoch=1)) for run in runs}
    assert order.status == "COMPLETED" and order.saga_claim in owners
    ledger = provider_ledger(order_id)
    assert ledger is not None and len(ledger.of_kind("capture")) == 1 and not ledger.of_kind("void")
    assert available("MUG-1") == STOCK - QUANTITY


@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
def test_a_duplicate_of_a_compensating_checkout_and_of_a_refund_change_nothing_twice(shop: Shop) -> None:
    moto_stepfunctions.express_copies = lambda machine, name: 2
    declined = shop.place_ok([("MUG-1", QUANTITY)], token="tok_chargeDeclined")["order_id"]
    completed = shop.place_ok([("MUG-1", QUANTITY)])["order_id"]
    assert shop.wait_checkout(declined) == "SUCCEEDED"
    assert shop.wait_checkout(completed) == "SUCCEEDED"
    assert (shop.order(declined).status, shop.order(declined).failure_reason) == ("CANCELLED", "PAYMENT_DECLINED")

    assert shop.cancel(completed).status_code == 202
    assert shop.wait_refund(completed) == "SUCCEEDED"
    refunds = executions_of(shop, "RefundStateMachine", f"refund-{completed}")
    assert len(refunds) == 2
    assert sorted(len(states_entered(shop, run["executionArn"])) for run in refunds)[0] == 2  # claim, NotTheOwner
    assert shop.order(completed).status == "REFUNDED"
    ledger = provider_ledger(completed)
    assert ledger is not None and len(ledger.of_kind("refund")) == 1 and ledger.of_kind("refund")[0].amount == TOTAL
    assert available("MUG-1") == STOCK


# ---------------------------------------------------------------------------- a claim that cannot be written
@BOTH_WORKFLOW_TYPES
def test_a_claim_that_keeps_failing_ends_the_execution_before_any_effect_and_recovery_finishes_the_order(
    shop: Shop, local_aws: LocalAws, faults: StepFaults, workflow_type: str
) -> None:
    faults.fail("ClaimOrderFunction", Down)
    order_id = shop.place_ok([("MUG-1", QUANTITY)])["order_id"]

    assert shop.wait_checkout(order_id) == "FAILED"
    (run,) = executions_of(shop, "CheckoutStateMachine", order_id)
    assert states_entered(shop, run["executionArn"]) == ["ClaimOrder", "ClaimFailed"]
    assert shop.order(order_id).saga_claim is None
    assert PaymentsRepository().get(order_id) is None and available("MUG-1") == STOCK  # nothing ran
    faults.heal()
    if workflow_type == "STANDARD":
        # The FAILED status reaches SettleStoppedExecution: a dead letter an operator redrives.
        shop.wait_dead_letter(order_id, "OPEN")
        assert shop.redrive(order_id).status_code == 202
        shop.wait_dead_letter(order_id, "RESOLVED")
        assert shop.order(order_id).status == "CANCELLED"
    else:
        # Express sends no status event: the orphan sweeper finds the order never claimed and starts it.
        due = datetime.now(UTC) + timedelta(seconds=recovery_settings().orphan_after_seconds + 1)
        assert sweep(local_aws, due)["started"] == [order_id]
        shop.wait_status(order_id, "COMPLETED")
        assert available("MUG-1") == STOCK - QUANTITY
    assert shop.dead_letter(order_id) is None or workflow_type == "STANDARD"


@BOTH_WORKFLOW_TYPES
def test_a_refund_whose_claim_keeps_failing_ends_before_any_effect(shop: Shop, faults: StepFaults) -> None:
    order_id = shop.place_ok([("MUG-1", QUANTITY)])["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    faults.fail("ClaimOrderFunction", Down)

    assert shop.cancel(order_id).status_code == 202

    assert shop.wait_refund(order_id) == "FAILED"
    (run,) = executions_of(shop, "RefundStateMachine", f"refund-{order_id}")
    assert states_entered(shop, run["executionArn"]) == ["ClaimOrder", "ClaimFailed"]
    ledger = provider_ledger(order_id)
    assert ledger is not None and ledger.of_kind("refund") == []  # nothing refunded
    assert available("MUG-1") == STOCK - QUANTITY  # nor any stock returned


@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
def test_the_sweeper_dead_letters_an_express_saga_still_unsettled_after_its_continuation_window(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """An Express execution that ends without settling its order (stopped, or at its 5-minute limit)
    leaves the order claimed and in progress, and no event says so. The sweeper leaves it alone while
    an execution could still be running; within ExpressContinueForSeconds of the placement it
    continues the saga (below); past that it dead-letters the order for an operator, as
    SettleStoppedExecution does for a Standard one; the redrive (a later epoch) finishes it."""
    pause = faults.pause_at("AuthorizePaymentFunction")
    order_id = shop.place_ok([("MUG-1", QUANTITY)])["order_id"]
    pause.wait_reached()
    (run,) = executions_of(shop, "CheckoutStateMachine", order_id)
    shop.sfn.stop_execution(executionArn=run["executionArn"], error="States.Timeout", cause="the 5-minute limit")
    pause.released.set()
    assert shop.wait_checkout(order_id) == "ABORTED"
    assert shop.order(order_id).status == "STOCK_RESERVED" and shop.order(order_id).saga_epoch == 1

    orphan_after = recovery_settings().orphan_after_seconds
    early = datetime.now(UTC) + timedelta(seconds=orphan_after + 1)
    assert sweep(local_aws, early)["settled"] == []  # an execution may still be running
    assert shop.dead_letter(order_id) is None
    beyond = datetime.now(UTC) + timedelta(seconds=recovery_settings().express_continue_for_seconds + 1)
    swept = sweep(local_aws, beyond)
    assert (swept["started"], swept["settled"]) == ([], [order_id])
    assert shop.order(order_id).status == "NEEDS_ATTENTION"
    assert shop.redrive(order_id).status_code == 202
    shop.wait_dead_letter(order_id, "RESOLVED")
    order = shop.order(order_id)
    assert order.status == "CANCELLED" and order.saga_epoch == 3  # 2: the sweep's takeover to flag it
    assert available("MUG-1") == STOCK


@pytest.mark.parametrize("workflow_type", ["STANDARD"], indirect=True)
def test_a_sweep_that_finds_the_order_settled_at_its_takeover_leaves_it_alone(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """The sweep judged a stopped run's order in progress; just before its takeover claim, the stopped
    run's CompleteOrder, still under way, completes it. The claim still lands (a later epoch), but a
    settled order needs no attention: no dead letter (a review's probe: an OPEN "compensate" letter
    and the attention metric for a COMPLETED order)."""
    faults.fail("SettleStoppedExecutionFunction")  # its status event is not handled: the sweeper's
    pause = faults.pause_at("CompleteOrderFunction")
    order_id = shop.place_ok([("MUG-1", QUANTITY)])["order_id"]
    pause.wait_reached()
    _stop_at_the_time_limit(shop, "CheckoutStateMachine", order_id)
    assert shop.wait_checkout(order_id) == "ABORTED"

    def complete_just_before_the_takeover(request: Any) -> bool:
        claim = request.get("ExpressionAttributeValues", {}).get(":claim", {}).get("S", "")
        if claim.startswith(recovery.ORPHAN_SWEEPER) and not pause.released.is_set():
            pause.released.set()
            eventually(lambda: shop.order(order_id).status == "COMPLETED", "the late completion")
        return False  # never refuses the request: only runs the completion first

    with inject(aws.dynamodb(), SdkFault("UpdateItem", "Never", when=complete_just_before_the_takeover)):
        swept = sweep(local_aws, datetime.now(UTC) + timedelta(seconds=recovery_settings().orphan_after_seconds + 1))

    assert pause.released.is_set() and (swept["settled"], swept["started"]) == ([], [])
    order = shop.order(order_id)
    assert order.status == "COMPLETED" and not order.dead_lettered
    assert shop.dead_letter(order_id) is None


@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
def test_a_sweep_past_the_window_and_a_continuation_an_earlier_sweep_started_never_both_act(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """A sweep just inside the continuation window starts a continuation; before its run claims the
    order (its claim step retried, say), a sweep just past the window judges the same order. That
    sweep takes the order over to flag it, so the continuation stops at its claim. Before, the flag was
    unfenced: the continuation claimed the flagged order and, finding it NEEDS_ATTENTION, voided the
    authorization and cancelled a healthy order (found by a probe)."""
    pause = faults.pause_at("AuthorizePaymentFunction")
    order_id = shop.place_ok([("MUG-1", QUANTITY)])["order_id"]
    pause.wait_reached()
    _stop_at_the_time_limit(shop, "CheckoutStateMachine", order_id)
    pause.released.set()  # the authorization reaches the provider
    assert shop.wait_checkout(order_id) == "ABORTED"
    claim = faults.pause_at("ClaimOrderFunction")
    created = datetime.fromisoformat(shop.order(order_id).created_at.replace("Z", "+00:00"))
    window = recovery_settings().express_continue_for_seconds

    assert sweep(local_aws, created + timedelta(seconds=window - 5))["started"] == [order_id]
    claim.wait_reached()
    assert sweep(local_aws, created + timedelta(seconds=window + 5))["settled"] == [order_id]
    claim.released.set()

    continuation = f"{order_id}-continue-2"
    assert shop.wait_execution("CheckoutStateMachine", continuation) == "SUCCEEDED"
    (run,) = executions_of(shop, "CheckoutStateMachine", continuation)
    assert not COMPENSATIONS & set(states_entered(shop, run["executionArn"]))
    order = shop.order(order_id)
    assert (order.status, order.saga_epoch) == ("NEEDS_ATTENTION", 2)
    letter = shop.dead_letter(order_id)
    assert letter is not None and letter.status == "OPEN"
    ledger = provider_ledger(order_id)
    assert ledger is not None and ledger.authorization.status == "AUTHORIZED"  # not voided
    assert available("MUG-1") == STOCK - QUANTITY  # still held for the operator's redrive


@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
@pytest.mark.parametrize("stack_parameters", [{"ExpressContinueForSeconds": "0"}])
def test_with_no_continuation_window_a_stopped_express_saga_goes_to_an_operator(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """ExpressContinueForSeconds=0 (the template parameter reaches the sweeper): the run stopped in
    the authorization is dead-lettered as soon as no execution can still run, never continued."""
    pause = faults.pause_at("AuthorizePaymentFunction")
    order_id = shop.place_ok([("MUG-1", QUANTITY)])["order_id"]
    pause.wait_reached()
    _stop_at_the_time_limit(shop, "CheckoutStateMachine", order_id)
    pause.released.set()
    assert shop.wait_checkout(order_id) == "ABORTED"

    swept = sweep(local_aws, _past_the_express_limit())

    assert (swept["started"], swept["settled"]) == ([], [order_id])
    assert executions_of(shop, "CheckoutStateMachine", f"{order_id}-continue-2") == []
    order = shop.order(order_id)
    assert (order.status, order.saga_epoch) == ("NEEDS_ATTENTION", 2)  # the sweep took it over to flag it
    assert shop.dead_letter(order_id) is not None


def _stop_at_the_time_limit(shop: Shop, machine: str, name: str) -> None:
    (run,) = executions_of(shop, machine, name)
    shop.sfn.stop_execution(executionArn=run["executionArn"], error="States.Timeout", cause="the 5-minute limit")


def _past_the_express_limit() -> datetime:
    return datetime.now(UTC) + timedelta(
        seconds=recovery.EXPRESS_LIMIT_SECONDS + recovery.EXPRESS_SETTLE_MARGIN_SECONDS + 1
    )


@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
@pytest.mark.parametrize("stopped_in", ["AuthorizePaymentFunction", "CapturePaymentFunction"])
def test_an_express_checkout_stopped_at_its_time_limit_is_continued_and_charges_once(
    shop: Shop, local_aws: LocalAws, faults: StepFaults, stopped_in: str
) -> None:
    """A payment step waiting out an open breaker outlives the 5-minute run. The sweeper, once no
    execution can still run, starts a run at the next epoch instead of dead-lettering the order: it
    finds done what the stopped run did (here the stopped step itself went through after the stop)
    and completes the order, charged once, with no operator."""
    pause = faults.pause_at(stopped_in)
    order_id = shop.place_ok([("MUG-1", QUANTITY)])["order_id"]
    pause.wait_reached()
    _stop_at_the_time_limit(shop, "CheckoutStateMachine", order_id)
    pause.released.set()  # the stopped run's step still reaches the provider
    assert shop.wait_checkout(order_id) == "ABORTED"
    assert shop.order(order_id).status in ("STOCK_RESERVED", "PAYMENT_AUTHORIZED")

    swept = sweep(local_aws, _past_the_express_limit())

    assert (swept["started"], swept["settled"]) == ([order_id], [])
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-continue-2") == "SUCCEEDED"
    order = shop.order(order_id)
    assert (order.status, order.saga_epoch) == ("COMPLETED", 2)
    assert shop.dead_letter(order_id) is None
    ledger = provider_ledger(order_id)
    assert ledger is not None
    assert [operation.amount for operation in ledger.of_kind("capture")] == [TOTAL]
    assert available("MUG-1") == STOCK - QUANTITY


@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
@pytest.mark.parametrize(
    ("stopped_in", "end"),
    [("AuthorizePaymentFunction", ("CANCELLED", "VOIDED")), ("CapturePaymentFunction", ("REFUNDED", "REFUNDED"))],
)
def test_a_cancel_asked_while_an_express_checkout_was_stopped_is_honoured_by_its_continuation(
    shop: Shop, local_aws: LocalAws, faults: StepFaults, stopped_in: str, end: tuple[str, str]
) -> None:
    """The continuation runs from the start, so it passes the checkpoint before the payment with the
    stopped run's payment already made: that cancel voids the authorization, or refunds the capture.
    (Found by `make chaos`: it released the stock and cancelled, leaving the customer charged.)"""
    pause = faults.pause_at(stopped_in)
    order_id = shop.place_ok([("MUG-1", QUANTITY)])["order_id"]
    pause.wait_reached()
    _stop_at_the_time_limit(shop, "CheckoutStateMachine", order_id)
    pause.released.set()  # the authorization, or the capture, reaches the provider
    assert shop.wait_checkout(order_id) == "ABORTED"
    assert shop.cancel(order_id).status_code == 202

    assert sweep(local_aws, _past_the_express_limit())["started"] == [order_id]

    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-continue-2") == "SUCCEEDED"
    if end[0] == "REFUNDED":
        assert shop.wait_refund(order_id) == "SUCCEEDED"
    order = shop.order(order_id)
    payment = shop.payment(order_id)
    assert payment is not None
    assert (order.status, payment["status"]) == end
    assert order.failure_reason == ("CANCELLED_BY_CUSTOMER" if end[0] == "CANCELLED" else None)
    assert payment["refunded"]["amount"] == payment["captured"]["amount"]
    assert available("MUG-1") == STOCK


@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
def test_an_express_refund_stopped_at_its_time_limit_is_continued_and_refunds_once(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    order_id = shop.place_ok([("MUG-1", QUANTITY)])["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    pause = faults.pause_at("RefundPaymentFunction")
    assert shop.cancel(order_id).status_code == 202
    pause.wait_reached()
    _stop_at_the_time_limit(shop, "RefundStateMachine", f"refund-{order_id}")
    pause.released.set()
    assert shop.wait_refund(order_id) == "ABORTED"
    assert shop.order(order_id).status == "REFUNDING"

    assert sweep(local_aws, _past_the_express_limit())["started"] == [order_id]

    assert shop.wait_execution("RefundStateMachine", f"refund-{order_id}-continue-3") == "SUCCEEDED"
    assert shop.order(order_id).status == "REFUNDED"
    ledger = provider_ledger(order_id)
    assert ledger is not None
    assert [operation.amount for operation in ledger.of_kind("refund")] == [TOTAL]
    assert available("MUG-1") == STOCK


@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
def test_an_express_saga_the_sweeper_started_late_is_timed_from_its_claim_not_its_placement(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """The claim dates the order: before, it left ``updated_at`` at the placement, and an orphan placed
    five minutes before the sweeper started it was dead-lettered by the next sweep while it still ran."""
    with inject(aws.stepfunctions(), SdkFault("StartExecution", "ThrottlingException")):
        order_id = shop.place([("MUG-1", QUANTITY)], key="started-late").json_body["order_id"]
    placed = (datetime.now(UTC) - timedelta(seconds=recovery.EXPRESS_LIMIT_SECONDS)).isoformat()
    local_aws.client("dynamodb").update_item(
        TableName=local_aws.table("OrdersTable"),
        Key={"order_id": {"S": order_id}},
        UpdateExpression="SET created_at = :placed, updated_at = :placed",
        ExpressionAttributeValues={":placed": {"S": placed.replace("+00:00", "Z")}},
    )
    pause = faults.pause_at("ReserveStockFunction")
    now = datetime.now(UTC)
    assert sweep(local_aws, now)["started"] == [order_id]
    pause.wait_reached()  # claimed, and running

    still_running = sweep(local_aws, now + timedelta(seconds=recovery.EXPRESS_SETTLE_MARGIN_SECONDS + 40))
    assert (still_running["started"], still_running["settled"]) == ([], [])
    assert shop.dead_letter(order_id) is None
    pause.released.set()
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert shop.order(order_id).status == "COMPLETED" and available("MUG-1") == STOCK - QUANTITY


# ---------------------------------------------------------------------------- takeovers
class TakeOverBefore:
    """Before the first matching invocation of a step, another saga run takes the order over (a
    later epoch claims it), as an operator's redrive would; the running execution goes on."""

    def __init__(self, local_aws: LocalAws, logical_id: str, when: Callable[[Any], bool]) -> None:
        self.function_name = local_aws.function(logical_id)
        self.when = when
        self.taken = threading.Event()
        self.claim: SagaClaim | None = None
        # The books as the new owner found them: stock, our payments ledger, the provider's.
        self.found: tuple[Any, ...] | None = None

    def __call__(self, function_name: str, event: Any) -> None:
        if function_name != self.function_name or not self.when(event) or self.taken.is_set():
            return
        self.taken.set()
        order = order_repository.get(event["order_id"])
        assert order is not None and order.saga_epoch is not None
        self.claim = SagaClaim(
            execution=f"arn:aws:states:us-east-1:123456789012:execution:redrive:{order.order_id}",
            epoch=order.saga_epoch + 1,
        )
        order_repository.claim(order.order_id, self.claim)
        self.found = books(order.order_id)


def books(order_id: str) -> tuple[Any, ...]:
    return available("MUG-1"), PaymentsRepository().get(order_id), provider_ledger(order_id)


def _every(event: Any) -> bool:
    return True


# (step's function, which invocation, how the saga gets there, where the execution is)
TAKEOVERS: list[tuple[str, str, Callable[[Any], bool], str]] = [
    ("reserved", "RecordProgressFunction", lambda e: e.get("step") == "reserve_stock", "checkout"),
    ("authorized", "RecordProgressFunction", lambda e: e.get("step") == "authorize_payment", "checkout"),
    ("complete", "CompleteOrderFunction", _every, "checkout"),
    ("void", "VoidPaymentFunction", _every, "declined"),
    ("release", "ReleaseReservationFunction", _every, "declined"),
    ("cancel", "CancelOrderFunction", _every, "declined"),
    ("flag-compensation", "FlagOrderFunction", _every, "cancel-fails"),
    ("flag-completion", "FlagOrderFunction", _every, "complete-fails"),
    ("refund-captured", "StartRefundFunction", _every, "void-finds-capture"),
    ("start-refund", "StartRefundFunction", _every, "cancel-during-capture"),
    ("return-stock", "ReleaseReservationFunction", _every, "refund"),
    ("mark-refunded", "MarkRefundedFunction", _every, "refund"),
    ("flag-refund", "FlagOrderFunction", _every, "refund-fails"),
]


@BOTH_WORKFLOW_TYPES
@pytest.mark.parametrize(("case", "logical_id", "when", "path"), TAKEOVERS, ids=[takeover[0] for takeover in TAKEOVERS])
def test_an_execution_taken_over_before_a_step_stops_there_and_compensates_nothing(
    shop: Shop, local_aws: LocalAws, faults: StepFaults, case: str, logical_id: str, when: Any, path: str
) -> None:
    token = "tok_chargeDeclined" if path in ("declined", "cancel-fails") else "tok_visa"
    if path == "cancel-fails":
        faults.fail("CancelOrderFunction", Down)
    elif path == "complete-fails":
        faults.fail("CompleteOrderFunction", Down)
    elif path == "void-finds-capture":
        token = "tok_chargeDeclined"
        faults.fail("VoidPaymentFunction", PaymentAlreadyCaptured)
    elif path == "refund-fails":
        faults.fail("MarkRefundedFunction", Down)
    takeover = TakeOverBefore(local_aws, logical_id, when)
    pause = faults.pause_at("CapturePaymentFunction") if path == "cancel-during-capture" else None
    before_step = faults._before  # the faults' hook first (a failing step), then the takeover

    def hook(function_name: str, event: Any) -> None:
        takeover(function_name, event)
        before_step(function_name, event)

    lambda_runtime.faults.before_invoke = hook
    order_id = shop.place_ok([("MUG-1", QUANTITY)], token=token)["order_id"]
    machine, name = "CheckoutStateMachine", order_id
    if pause is not None:
        pause.wait_reached()
        assert shop.cancel(order_id).status_code == 202
        pause.released.set()
    if path.startswith("refund"):
        assert shop.wait_checkout(order_id) == "SUCCEEDED"
        assert shop.cancel(order_id).status_code == 202
        machine, name = "RefundStateMachine", f"refund-{order_id}"

    assert shop.wait_execution(machine, name) == "SUCCEEDED"
    assert takeover.taken.is_set(), case
    (run,) = executions_of(shop, machine, name)
    entered = states_entered(shop, run["executionArn"])
    # Straight from the step that found the order taken over to the end: nothing compensated.
    assert entered[-1] == "NotTheOwner", entered
    # The order is as the new owner found it: claimed by it, not moved on by the stopped execution.
    order = shop.order(order_id)
    assert takeover.claim is not None and order.saga_claim == order_repository.claim_token(takeover.claim)
    assert order.saga_epoch == takeover.claim.epoch
    assert order.status not in {"COMPLETED", "CANCELLED", "REFUNDED", "NEEDS_ATTENTION"}
    assert shop.dead_letter(order_id) is None
    assert books(order_id) == takeover.found  # the stopped execution moved nothing after the takeover


# ---------------------------------------------------------------------------- a redrive asked again
@BOTH_WORKFLOW_TYPES
def test_a_redrive_asked_again_while_it_runs_starts_nothing_and_keeps_its_claim(shop: Shop, faults: StepFaults) -> None:
    """An operator's second click (or a client retrying the POST) while the redrive runs. Before, each
    ask started the epoch after the order's current one: on EXPRESS, whose names are not unique, a
    second run took the order over from the running redrive (or from the refund it handed over to)."""
    faults.fail("VoidPaymentFunction", Down)
    order_id = shop.place_ok([("MUG-1", QUANTITY)], token="tok_chargeDeclined")["order_id"]
    shop.wait_checkout(order_id)
    shop.wait_dead_letter(order_id, "OPEN")
    faults.heal()
    pause = faults.pause_at("ReleaseReservationFunction")

    first = shop.redrive(order_id)
    pause.wait_reached()  # the redrive has claimed the order and voided; it is about to release
    again = shop.redrive(order_id)
    name = f"{order_id}-redrive-1"
    started = executions_of(shop, "CheckoutStateMachine", name)
    pause.released.set()

    assert first.status_code == again.status_code == 202
    assert again.json_body["status"] == "REDRIVING" and again.json_body["redrive_execution"] == name
    assert len(started) == 1
    assert shop.wait_execution("CheckoutStateMachine", name) == "SUCCEEDED"
    assert "NotTheOwner" not in states_entered(shop, started[0]["executionArn"])
    order = shop.order(order_id)
    assert (order.status, order.failure_reason, order.saga_epoch) == ("CANCELLED", "PAYMENT_DECLINED", 2)
    letter = shop.dead_letter(order_id)
    assert letter is not None and (letter.status, letter.redrive_count, letter.redrive_epoch) == ("RESOLVED", 1, 2)
    assert available("MUG-1") == STOCK
    assert len(executions_of(shop, "CheckoutStateMachine", name)) == 1


# Where the race's order is held while the sweeper looks at it: the step (its function) and which call.
SWEPT_WHILE: dict[str, tuple[str, Callable[[Any, str, int], bool]]] = {
    # the refund run has claimed the order and is refunding
    "refunding": ("RefundPaymentFunction", lambda event, order_id, epoch: True),
    # the redrive has claimed it and is on its way to the hand-over (refund-<id> has ended, lost)
    "handing-over": ("CompleteOrderFunction", lambda event, order_id, epoch: "redrive" in event["execution_name"]),
    # the refund run the hand-over started has not claimed it yet
    "before-the-refund-claims": (
        "ClaimOrderFunction",
        lambda event, order_id, epoch: (
            event["execution_name"].startswith(f"refund-{order_id}") and event["claim"]["epoch"] == epoch + 2
        ),
    ),
}


@BOTH_WORKFLOW_TYPES
@pytest.mark.parametrize("swept_while", list(SWEPT_WHILE))
def test_a_cancel_racing_an_operators_redrive_of_a_completed_order_is_still_refunded(
    shop: Shop, local_aws: LocalAws, workflow_type: str, swept_while: str
) -> None:
    """An operator redrives a COMPLETED order's reconciliation letter while its customer cancels it.
    The redrive read the order COMPLETED (no 409) and the cancel read it before the redrive's run
    claimed it, so both runs take the next epoch; the redrive claims first and refund-<id> stops at
    its claim. The redrive then finds the order REFUNDING and hands it to its refund saga, whose name
    a STANDARD execution has used: a continuation of the refund saga refunds it. (Found by a probe:
    the order stayed REFUNDING with the customer charged, then the sweeper dead-lettered it.) A sweep
    at any moment of it, with or without its listing of the running sagas, leaves the order alone
    (a review's probes: on STANDARD it dead-lettered the order while the redrive was on its way to
    the hand-over, or while the refund run it started had not claimed it yet)."""
    placed = shop.place_ok([("MUG-1", QUANTITY)])
    order_id = placed["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    set_status(local_aws, "ReservationsTable", {"reservation_id": order_id}, "RESERVED")  # its commit lost
    reconciliation_job.run(quiescent=True)
    letter = shop.dead_letter(order_id)
    assert letter is not None and (letter.status, letter.resume) == ("OPEN", "complete")
    epoch = shop.order(order_id).saga_epoch or 0
    claim_order = local_aws.function("ClaimOrderFunction")
    held = {
        f"{order_id}-redrive-1": (threading.Event(), threading.Event()),
        f"refund-{order_id}": (threading.Event(), threading.Event()),
    }
    logical_id, when = SWEPT_WHILE[swept_while]
    paused_step, paused, go_on = local_aws.function(logical_id), threading.Event(), threading.Event()

    def hold(function_name: str, event: Any) -> None:
        if function_name == paused_step and not paused.is_set() and when(event, order_id, epoch):
            paused.set()
            go_on.wait(30)
        elif function_name == claim_order and event.get("execution_name") in held:
            reached, go = held[event["execution_name"]]
            reached.set()
            go.wait(30)

    lambda_runtime.faults.before_invoke = hold
    try:
        assert shop.redrive(order_id).status_code == 202
        assert held[f"{order_id}-redrive-1"][0].wait(30)
        assert shop.cancel(order_id).json_body["status"] == "REFUNDING"
        assert held[f"refund-{order_id}"][0].wait(30)
        held[f"{order_id}-redrive-1"][1].set()  # the redrive's run claims the order first
        # (its hand-over may already have taken the order on to the next epoch)
        eventually(lambda: (shop.order(order_id).saga_epoch or 0) > epoch, "the redrive's claim")
        held[f"refund-{order_id}"][1].set()
        assert paused.wait(30)
        if workflow_type == "STANDARD":  # (an EXPRESS name is not unique: a held run may have it too)
            assert shop.wait_refund(order_id) == "SUCCEEDED"  # refund-<id> ended at its lost claim
        later = datetime.now(UTC) + timedelta(seconds=recovery_settings().orphan_after_seconds + 1)
        assert sweep(local_aws, later)["settled"] == []
        with inject(aws.stepfunctions(), SdkFault("ListExecutions", "ServiceUnavailable")):
            assert sweep(local_aws, later)["settled"] == []
        assert shop.order(order_id).status == "REFUNDING"
        go_on.set()
        assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"
    finally:
        go_on.set()
        lambda_runtime.faults.before_invoke = None

    order = shop.wait_status(order_id, "REFUNDED", "NEEDS_ATTENTION")
    payment = shop.payment(order_id)
    assert payment is not None
    assert (order.status, payment["status"]) == ("REFUNDED", "REFUNDED")
    assert payment["refunded"]["amount"] == payment["captured"]["amount"] == TOTAL
    ledger = provider_ledger(order_id)
    assert ledger is not None and [operation.amount for operation in ledger.of_kind("refund")] == [TOTAL]
    assert available("MUG-1") == STOCK
    # Every refund run of this order has ended before the letter is read: the one that refunded it (a
    # continuation, under its own name) resolves the letter just after it writes REFUNDED. On EXPRESS
    # the run that lost its claim retries it for a second or two; none goes on into the next test.
    eventually(
        lambda: all(
            run["status"] != "RUNNING"
            for run in shop.executions("RefundStateMachine")
            if run["name"].startswith(f"refund-{order_id}")
        ),
        "every refund run to end",
    )
    letter = shop.dead_letter(order_id)
    assert letter is not None and letter.status == "RESOLVED"
