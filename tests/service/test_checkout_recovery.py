"""Failures the checkout saga must survive: a compensation that keeps failing (dead letter and an
operator's redrive) and every step delivered twice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from infra.local import lambda_runtime
from tests.conftest import BOTH_WORKFLOW_TYPES, LocalAws
from tests.service.orders_helpers import Shop, available, open_shop, seed_product, steps


class ServiceUnavailable(Exception):
    """Stands for a compensation step's dependency being down (any error the step does not expect)."""


# Every saga path of this module runs in both workflow types (template parameter WorkflowType).
pytestmark = BOTH_WORKFLOW_TYPES


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=10)
    seed_product("TEE-1", price=1999, stock=5)
    with open_shop(local_aws) as opened:
        yield opened


def _fail(local_aws: LocalAws, logical_id: str) -> list[Any]:
    """Make every invocation of one function fail; returns the events it refused."""
    target = local_aws.function(logical_id)
    refused: list[Any] = []

    def fail(function_name: str, event: Any) -> None:
        if function_name == target:
            refused.append(event)
            raise ServiceUnavailable(f"{logical_id} is down")

    lambda_runtime.faults.before_invoke = fail
    return refused


def test_failed_void_dead_letters_the_order_and_a_redrive_finishes_it(shop: Shop, local_aws: LocalAws) -> None:
    refused = _fail(local_aws, "VoidPaymentFunction")
    placed = shop.place_ok([("MUG-1", 2)], token="tok_chargeDeclined")
    order_id = placed["order_id"]

    assert shop.wait_checkout(order_id) == "FAILED"
    stuck = shop.get(order_id).json_body
    assert stuck["status"] == "NEEDS_ATTENTION"
    assert len(refused) == 3  # the first attempt and two retries
    assert available("MUG-1") == 8  # the release never ran: an operator must finish it
    assert ("void_payment", "FAILED") in steps(stuck)
    listed = shop.client.http.get("/admin/dead-letters", headers=shop.headers("admin"))
    assert listed.status_code == 200
    [letter] = listed.json_body["items"]
    assert letter["order_id"] == order_id
    assert (letter["status"], letter["resume"], letter["failed_step"]) == ("OPEN", "compensate", "void_payment")
    assert letter["error"] == "ServiceUnavailable"
    assert letter["failure"]["reason"] == "PAYMENT_DECLINED"

    lambda_runtime.faults.before_invoke = None
    redriven = shop.redrive(order_id)

    assert redriven.status_code == 202
    assert redriven.json_body["status"] == "REDRIVING"
    assert redriven.json_body["redrive_count"] == 1
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"
    order = shop.get(order_id).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "PAYMENT_DECLINED")
    assert order["payment"]["captured"]["amount"] == 0
    assert available("MUG-1") == 10
    resolved = shop.dead_letter(order_id)
    assert resolved is not None and resolved.status == "RESOLVED"
    again = shop.redrive(order_id)
    assert again.status_code == 202
    assert again.json_body["status"] == "RESOLVED"
    assert len(shop.executions("CheckoutStateMachine")) == 2
    assert available("MUG-1") == 10


def test_a_redrive_that_fails_again_reopens_the_dead_letter(shop: Shop, local_aws: LocalAws) -> None:
    _fail(local_aws, "ReleaseReservationFunction")
    placed = shop.place_ok([("MUG-1", 1)], token="tok_processingError")
    order_id = placed["order_id"]
    assert shop.wait_checkout(order_id) == "FAILED"

    assert shop.redrive(order_id).status_code == 202
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "FAILED"
    letter = shop.dead_letter(order_id)
    assert letter is not None
    assert (letter.status, letter.redrive_count, letter.failed_step) == ("OPEN", 1, "release_stock")
    assert shop.order(order_id).status == "NEEDS_ATTENTION"

    lambda_runtime.faults.before_invoke = None
    assert shop.redrive(order_id).json_body["redrive_count"] == 2
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-2") == "SUCCEEDED"
    order = shop.order(order_id)
    assert (order.status, order.failure_reason) == ("CANCELLED", "PAYMENT_UNAVAILABLE")
    assert available("MUG-1") == 10


def test_a_failed_completion_is_redriven_to_completed_not_compensated(shop: Shop, local_aws: LocalAws) -> None:
    _fail(local_aws, "CompleteOrderFunction")
    placed = shop.place_ok([("MUG-1", 2)])
    order_id = placed["order_id"]

    assert shop.wait_checkout(order_id) == "FAILED"
    stuck = shop.get(order_id).json_body
    assert stuck["status"] == "NEEDS_ATTENTION"
    assert stuck["payment"]["captured"] == stuck["total"]  # captured: compensating would break the invariants
    letter = shop.dead_letter(order_id)
    assert letter is not None and (letter.resume, letter.failed_step) == ("complete", "complete_order")

    lambda_runtime.faults.before_invoke = None
    assert shop.redrive(order_id).status_code == 202

    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"
    order = shop.get(order_id).json_body
    assert order["status"] == "COMPLETED"
    assert order["payment"]["captured"] == order["total"]
    assert available("MUG-1") == 8
    resolved = shop.dead_letter(order_id)
    assert resolved is not None and resolved.status == "RESOLVED"


def test_redrive_needs_an_admin_and_a_dead_letter(shop: Shop) -> None:
    customer = shop.client.http.post("/admin/dead-letters/x/redrive", headers=shop.headers("alice"))
    anonymous = shop.client.http.post("/admin/dead-letters/x/redrive")
    missing = shop.redrive("no-such-order")

    assert customer.status_code == 403
    assert anonymous.status_code == 401
    assert missing.status_code == 404
    assert shop.client.http.get("/admin/dead-letters", headers=shop.headers("alice")).status_code == 403
    assert shop.client.http.get("/admin/dead-letters", headers=shop.headers("admin")).json_body == {
        "items": [],
        "next_token": None,
    }


def test_operators_see_the_payment_circuit_breaker(shop: Shop) -> None:
    breakers = shop.client.http.get("/admin/circuit-breakers", headers=shop.headers("admin"))

    assert breakers.status_code == 200
    [breaker] = breakers.json_body["items"]
    assert (breaker["state"], breaker["failures_in_window"]) == ("CLOSED", 0)
    assert shop.client.http.get("/admin/circuit-breakers", headers=shop.headers("alice")).status_code == 403


@pytest.mark.parametrize(
    ("token", "status", "reason"),
    [("tok_visa", "COMPLETED", None), ("tok_chargeDeclined", "CANCELLED", "PAYMENT_DECLINED")],
)
def test_every_step_delivered_twice_ends_in_the_same_state(
    shop: Shop, local_aws: LocalAws, token: str, status: str, reason: str | None
) -> None:
    lambda_runtime.faults.duplicate_deliveries.update(local_aws.stack.function_names.values())

    placed = shop.place_ok([("MUG-1", 2), ("TEE-1", 1)], token=token)

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"]) == (status, reason)
    history = steps(order)
    assert len(history) == len(set(history))
    if status == "COMPLETED":
        assert order["payment"]["captured"] == order["total"]
        assert (available("MUG-1"), available("TEE-1")) == (8, 4)
    else:
        assert order["payment"]["captured"]["amount"] == 0
        assert (available("MUG-1"), available("TEE-1")) == (10, 5)


def test_refund_with_every_step_delivered_twice_refunds_once(shop: Shop, local_aws: LocalAws) -> None:
    lambda_runtime.faults.duplicate_deliveries.update(local_aws.stack.function_names.values())
    placed = shop.place_ok([("MUG-1", 2)])
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"

    assert shop.cancel(placed["order_id"]).status_code == 202

    assert shop.wait_refund(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert order["status"] == "REFUNDED"
    assert order["payment"]["refunded"] == order["payment"]["captured"] == order["total"]
    assert available("MUG-1") == 10


def _stored_token(local_aws: LocalAws, order_id: str) -> str | None:
    item = local_aws.client("dynamodb").get_item(
        TableName=local_aws.table("OrdersTable"), Key={"order_id": {"S": order_id}}, ConsistentRead=True
    )["Item"]
    return item["payment_token"]["S"] if "payment_token" in item else None


def test_an_order_keeps_its_payment_token_until_its_checkout_is_over(shop: Shop, local_aws: LocalAws) -> None:
    """The token stayed on every order for good, though nothing charges it once the checkout is over (a
    refund refunds the capture). It is kept while a run may still check out (the orphan sweeper's start,
    an Express continuation, a flagged order's redrive) and dropped by the write that ends the checkout."""
    completing = local_aws.function("CompleteOrderFunction")
    seen_at_completion: list[str | None] = []

    def look(function_name: str, event: Any) -> None:
        if function_name == completing:
            seen_at_completion.append(_stored_token(local_aws, event["order_id"]))

    lambda_runtime.faults.before_invoke = look
    completed = shop.place_ok([("MUG-1", 1)])["order_id"]
    declined = shop.place_ok([("MUG-1", 1)], token="tok_chargeDeclined")["order_id"]
    for order_id in (completed, declined):
        assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert seen_at_completion == ["tok_visa"]
    assert (shop.order(completed).status, shop.order(declined).status) == ("COMPLETED", "CANCELLED")
    assert _stored_token(local_aws, completed) is None and _stored_token(local_aws, declined) is None

    _fail(local_aws, "CompleteOrderFunction")
    flagged = shop.place_ok([("MUG-1", 1)])["order_id"]
    assert shop.wait_checkout(flagged) == "FAILED"
    assert shop.order(flagged).status == "NEEDS_ATTENTION"
    assert _stored_token(local_aws, flagged) == "tok_visa"
    lambda_runtime.faults.before_invoke = None
    assert shop.redrive(flagged).status_code == 202
    assert shop.wait_execution("CheckoutStateMachine", f"{flagged}-redrive-1") == "SUCCEEDED"
    assert shop.order(flagged).status == "COMPLETED" and _stored_token(local_aws, flagged) is None

    assert shop.cancel(completed).status_code == 202
    assert shop.wait_refund(completed) == "SUCCEEDED"
    assert shop.order(completed).status == "REFUNDED" and _stored_token(local_aws, completed) is None
