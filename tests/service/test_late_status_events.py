"""A STANDARD execution's late or repeated status-change event leaves the order alone while a later
saga run holds it (the refund the checkout handed over to, the customer's refund). Before, the event
flagged the order NEEDS_ATTENTION with an OPEN letter under the running refund (the books ended right,
but operators were paged and a Redrive would have taken the order from the refund). Found by a
helper's probe; the orphan sweeper had been fixed for the same case earlier."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from infra.local import lambda_runtime, moto_stepfunctions
from tests.conftest import LocalAws
from tests.service.faults import StepFaults
from tests.service.orders_helpers import Shop, available, eventually, open_shop, seed_product

PRICE, STOCK, QTY = 1250, 10, 2


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=PRICE, stock=STOCK)
    with open_shop(local_aws) as opened:
        yield opened


class Gate:
    """Holds the first invocation of one function until opened; records that it arrived and ended."""

    def __init__(self, function_name: str, matches: Callable[[Any], bool] = lambda event: True) -> None:
        self.function_name = function_name
        self.matches = matches
        self.arrived = threading.Event()
        self.open = threading.Event()
        self.done = threading.Event()
        self._event: Any = None

    def before(self, function_name: str, event: Any) -> None:
        if function_name == self.function_name and not self.arrived.is_set() and self.matches(event):
            self._event = event
            self.arrived.set()
            assert self.open.wait(60)

    def after(self, function_name: str, event: Any) -> None:
        if event is self._event:
            self.done.set()


def assert_left_to_the_refund_then_refunded(shop: Shop, order_id: str, refunding: Gate, *, letter: str | None) -> None:
    """While the refund is held at its refund step: still REFUNDING, the letter as it was. Then the
    refund goes on and settles the order: REFUNDED, its units back."""
    try:
        order, found = shop.order(order_id), shop.dead_letter(order_id)
        assert (order.status, found and found.status) == ("REFUNDING", letter), (
            f"the running refund's order was flagged: {order.status}, letter {found and found.status}"
            f" ({found and found.resume}, {found and found.failed_step})"
        )
    finally:
        refunding.open.set()
    assert shop.wait_refund(order_id) == "SUCCEEDED"
    eventually(lambda: shop.order(order_id).status == "REFUNDED", "the refund to settle the order")
    assert available("MUG-1") == STOCK


def install(*gates: Gate) -> None:
    def before(function_name: str, event: Any) -> None:
        for gate in gates:
            gate.before(function_name, event)

    def after(function_name: str, event: Any) -> None:
        for gate in gates:
            gate.after(function_name, event)

    lambda_runtime.faults.before_invoke = before
    lambda_runtime.faults.after_invoke = after


@pytest.mark.parametrize("workflow_type", ["STANDARD"], indirect=True)
def test_a_checkout_stopped_after_its_refund_hand_over_leaves_the_running_refund_alone(
    shop: Shop, local_aws: LocalAws
) -> None:
    """The customer cancels during the capture; the checkout's CompleteOrder turns it into a refund and
    StartRefund starts refund-<id>. The checkout is stopped (an operator's abort) while StartRefund runs:
    the hand-over goes through, the refund saga runs, and the checkout's ABORTED event arrives."""
    capture = Gate(local_aws.function("CapturePaymentFunction"))
    hand_over = Gate(local_aws.function("StartRefundFunction"))
    settle = Gate(local_aws.function("SettleStoppedExecutionFunction"))
    refunding = Gate(local_aws.function("RefundPaymentFunction"))
    install(capture, hand_over, settle, refunding)
    order_id = shop.place_ok([("MUG-1", QTY)])["order_id"]
    assert capture.arrived.wait(60)
    assert shop.cancel(order_id).status_code == 202
    capture.open.set()
    assert hand_over.arrived.wait(60)

    assert moto_stepfunctions.stop_running(order_id, error="", cause="") == 1  # the checkout: ABORTED
    hand_over.open.set()  # the step under way finishes: REFUNDING, refund-<id> started
    assert hand_over.done.wait(60)
    assert refunding.arrived.wait(60)  # the refund saga runs (claimed, at its refund step)
    assert settle.arrived.wait(60)
    settle.open.set()  # the checkout's ABORTED event reaches SettleStoppedExecution (asynchronous)
    local_aws.deliver_events()

    assert_left_to_the_refund_then_refunded(shop, order_id, refunding, letter=None)


@pytest.mark.parametrize("workflow_type", ["STANDARD"], indirect=True)
def test_a_late_status_event_of_a_checkout_leaves_the_customers_running_refund_alone(
    shop: Shop, local_aws: LocalAws
) -> None:
    """The checkout is stopped while its CompleteOrder runs; the step completes the order. The ABORTED
    event's delivery is late (SettleStoppedExecution throttled, EventBridge retrying), and meanwhile the
    customer cancels the COMPLETED order: refund-<id> runs. Then the event is handled."""
    complete = Gate(local_aws.function("CompleteOrderFunction"))
    settle = Gate(local_aws.function("SettleStoppedExecutionFunction"))
    refunding = Gate(local_aws.function("RefundPaymentFunction"))
    install(complete, settle, refunding)
    order_id = shop.place_ok([("MUG-1", QTY)])["order_id"]
    assert complete.arrived.wait(60)
    assert moto_stepfunctions.stop_running(order_id, error="", cause="") == 1
    complete.open.set()
    assert complete.done.wait(60)
    assert settle.arrived.wait(60)  # the event's delivery is held
    assert shop.order(order_id).status == "COMPLETED"

    assert shop.cancel(order_id).json_body["status"] == "REFUNDING"
    assert refunding.arrived.wait(60)
    settle.open.set()
    local_aws.deliver_events()

    assert_left_to_the_refund_then_refunded(shop, order_id, refunding, letter=None)


@pytest.mark.parametrize("workflow_type", ["STANDARD"], indirect=True)
def test_a_duplicate_status_event_after_the_redrive_leaves_the_customers_running_refund_alone(
    shop: Shop, local_aws: LocalAws
) -> None:
    """The checkout is stopped at its capture; its ABORTED event dead-letters the order and the operator's
    redrive completes it (captured). The customer then cancels: refund-<id> runs. EventBridge delivers
    the checkout's event a second time (at-least-once)."""
    capture = Gate(local_aws.function("CapturePaymentFunction"))
    refunding = Gate(local_aws.function("RefundPaymentFunction"))
    events: list[Any] = []
    settle_name = local_aws.function("SettleStoppedExecutionFunction")

    def before(function_name: str, event: Any) -> None:
        if function_name == settle_name:
            events.append(event)
        capture.before(function_name, event)
        refunding.before(function_name, event)

    lambda_runtime.faults.before_invoke = before
    lambda_runtime.faults.after_invoke = lambda name, event: capture.after(name, event)
    order_id = shop.place_ok([("MUG-1", QTY)])["order_id"]
    assert capture.arrived.wait(60)
    assert moto_stepfunctions.stop_running(order_id, error="", cause="") == 1
    capture.open.set()  # the capture under way reaches the provider
    assert capture.done.wait(60)
    local_aws.deliver_events()
    shop.wait_dead_letter(order_id, "OPEN")
    assert shop.redrive(order_id).status_code == 202
    shop.wait_dead_letter(order_id, "RESOLVED")
    assert shop.order(order_id).status == "COMPLETED"
    assert shop.cancel(order_id).json_body["status"] == "REFUNDING"
    assert refunding.arrived.wait(60)

    [event] = events
    local_aws.client("lambda").invoke(FunctionName=settle_name, Payload=json.dumps(event))  # delivered again

    assert_left_to_the_refund_then_refunded(shop, order_id, refunding, letter="RESOLVED")


@pytest.mark.parametrize("workflow_type", ["STANDARD"], indirect=True)
def test_a_redrive_stopped_after_its_refund_hand_over_leaves_the_running_refund_and_its_letter_alone(
    shop: Shop, local_aws: LocalAws
) -> None:
    """The checkout is stopped at its capture with a cancel asked: dead-lettered. The operator's redrive
    completes the order into REFUNDING and hands it over to refund-<id>, and is stopped while it does.
    Its ABORTED event used to reopen the letter (REDRIVING -> OPEN) before anything looked at who held
    the order: an OPEN letter under the running refund (the diff's reviewer)."""
    capture = Gate(local_aws.function("CapturePaymentFunction"))
    hand_over = Gate(local_aws.function("StartRefundFunction"))
    redrive_settled = Gate(
        local_aws.function("SettleStoppedExecutionFunction"), lambda event: "-redrive-" in str(event)
    )
    refunding = Gate(local_aws.function("RefundPaymentFunction"))
    install(capture, hand_over, redrive_settled, refunding)
    order_id = shop.place_ok([("MUG-1", QTY)])["order_id"]
    assert capture.arrived.wait(60)
    assert shop.cancel(order_id).status_code == 202
    assert moto_stepfunctions.stop_running(order_id, error="", cause="") == 1
    capture.open.set()
    assert capture.done.wait(60)
    local_aws.deliver_events()
    shop.wait_dead_letter(order_id, "OPEN")

    assert shop.redrive(order_id).status_code == 202
    assert hand_over.arrived.wait(60)
    assert moto_stepfunctions.stop_running(f"{order_id}-redrive-1", error="", cause="") == 1
    hand_over.open.set()
    assert hand_over.done.wait(60)
    assert refunding.arrived.wait(60)  # refund-<id> holds the order
    assert redrive_settled.arrived.wait(60)
    redrive_settled.open.set()
    local_aws.deliver_events()
    assert redrive_settled.done.wait(60)

    assert_left_to_the_refund_then_refunded(shop, order_id, refunding, letter="REDRIVING")
    letter = shop.dead_letter(order_id)
    assert letter is not None and letter.status == "RESOLVED"


@pytest.mark.parametrize("workflow_type", ["STANDARD"], indirect=True)
def test_a_same_epoch_rival_that_failed_at_its_claim_leaves_the_running_refund_alone(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """The customer's refund (refund-<id>, epoch 2) is at its refund step when a second run of the refund
    saga for the same epoch (started from a read before the first one's claim, as ``start_refund_saga``
    describes) fails at its claim: it never owned the order, and its FAILED event must leave the running
    refund alone. Before, only a later epoch was recognised: the order was flagged NEEDS_ATTENTION with
    an OPEN letter under the running refund (a helper's mutation probe)."""
    order_id = shop.place_ok([("MUG-1", QTY)])["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    rival = f"refund-{order_id}-redrive-1"
    faults.fail("ClaimOrderFunction", when=lambda event: event.get("execution_name") == rival)
    refunding = faults.pause_at("RefundPaymentFunction")
    assert shop.cancel(order_id).json_body["status"] == "REFUNDING"
    refunding.wait_reached()  # refund-<id> claimed the order at epoch 2 and is at its refund step
    held = shop.order(order_id)
    assert held.saga_epoch == 2

    # A second run of the refund saga for the same epoch (started from a read before the claim),
    # whose claim step fails: it never owned the order, and ends FAILED.
    shop.sfn.start_execution(
        stateMachineArn=shop.aws.state_machine("RefundStateMachine"),
        name=rival,
        input=json.dumps({"order_id": order_id, "epoch": 2, "frees_purchase_units": False}),
    )
    assert shop.wait_execution("RefundStateMachine", rival) == "FAILED"
    local_aws.deliver_events()

    try:
        order, letter = shop.order(order_id), shop.dead_letter(order_id)
        assert (order.status, letter and letter.status) == ("REFUNDING", None), (
            f"the running refund's order was flagged: {order.status}, letter {letter and letter.status}"
        )
    finally:
        refunding.released.set()
    assert shop.wait_refund(order_id) == "SUCCEEDED"
    eventually(lambda: shop.order(order_id).status == "REFUNDED", "the refund to settle the order")
    assert available("MUG-1") == STOCK
