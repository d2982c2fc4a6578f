"""The refund saga: a completed order cancelled by its customer is refunded in full, its stock
returned, exactly once; a refund that keeps failing is dead-lettered and redriven."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local import lambda_runtime
from tests.conftest import BOTH_WORKFLOW_TYPES, LocalAws
from tests.service.orders_helpers import PauseAt, Shop, available, open_shop, seed_product, steps


class ProviderOutage(Exception):
    pass


# Every saga path of this module runs in both workflow types (template parameter WorkflowType).
pytestmark = BOTH_WORKFLOW_TYPES


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=10)
    with open_shop(local_aws) as opened:
        yield opened


def _completed(shop: Shop, quantity: int = 3) -> str:
    placed = shop.place_ok([("MUG-1", quantity)])
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    assert shop.order(placed["order_id"]).status == "COMPLETED"
    return str(placed["order_id"])


def test_refund_returns_money_and_stock_and_records_each_step(shop: Shop) -> None:
    order_id = _completed(shop)
    assert available("MUG-1") == 7

    shop.cancel(order_id)

    assert shop.wait_refund(order_id) == "SUCCEEDED"
    order = shop.get(order_id).json_body
    assert order["status"] == "REFUNDED"
    assert order["payment"]["status"] == "REFUNDED"
    assert order["payment"]["refunded"] == {"amount": 3 * 1250, "currency": "USD"}
    assert available("MUG-1") == 10
    assert steps(order)[-4:] == [
        ("cancel_requested", "REQUESTED"),
        ("refund_payment", "SUCCEEDED"),
        ("return_stock", "SUCCEEDED"),
        ("refund_order", "REFUNDED"),
    ]


@pytest.mark.parametrize("running", ["RefundPaymentFunction", "MarkRefundedFunction"])
def test_cancelling_again_while_the_refund_runs_changes_nothing(shop: Shop, local_aws: LocalAws, running: str) -> None:
    order_id = _completed(shop, quantity=2)
    pause = PauseAt(local_aws.function(running))
    lambda_runtime.faults.before_invoke = pause
    try:
        assert shop.cancel(order_id).json_body["status"] == "REFUNDING"
        pause.wait_reached()  # the refund saga holds the order and is at that step
        before = shop.order(order_id)
        again = shop.cancel(order_id)
        assert (again.status_code, again.json_body["status"]) == (202, "REFUNDING")
        # Before, an EXPRESS refund was started again with the next epoch and took the order over.
        assert shop.order(order_id) == before
    finally:
        pause.released.set()

    assert shop.wait_refund(order_id) == "SUCCEEDED"
    assert len(shop.executions("RefundStateMachine")) == 1
    order = shop.get(order_id).json_body
    assert (order["status"], order["payment"]["refunded"]) == ("REFUNDED", order["total"])
    assert available("MUG-1") == 10 and shop.order(order_id).saga_epoch == before.saga_epoch


def test_failed_refund_is_dead_lettered_and_redriven(shop: Shop, local_aws: LocalAws) -> None:
    order_id = _completed(shop)
    refund = local_aws.function("RefundPaymentFunction")

    def outage(function_name: str, event: Any) -> None:
        if function_name == refund:
            raise ProviderOutage("the refund endpoint is down")

    lambda_runtime.faults.before_invoke = outage
    shop.cancel(order_id)

    assert shop.wait_refund(order_id) == "FAILED"
    stuck = shop.get(order_id, who="admin").json_body
    assert stuck["status"] == "NEEDS_ATTENTION"
    assert stuck["payment"]["refunded"]["amount"] == 0
    letter = shop.dead_letter(order_id)
    assert letter is not None
    assert (letter.status, letter.resume, letter.failed_step) == ("OPEN", "refund", "refund_payment")
    assert shop.cancel(order_id).json_body["status"] == "NEEDS_ATTENTION"  # only an operator moves it on

    lambda_runtime.faults.before_invoke = None
    assert shop.redrive(order_id).status_code == 202

    assert shop.wait_execution("RefundStateMachine", f"refund-{order_id}-redrive-1") == "SUCCEEDED"
    order = shop.get(order_id).json_body
    assert order["status"] == "REFUNDED"
    assert order["payment"]["refunded"] == order["total"]
    assert available("MUG-1") == 10
    resolved = shop.dead_letter(order_id)
    assert resolved is not None and resolved.status == "RESOLVED"


def test_the_saga_duration_of_a_refund_is_its_own_run_not_the_orders_age(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """SagaDuration was measured from the order's placement: a refund asked long after (or a
    redrive) published the order's whole age, and the dashboard's p99 of saga duration meant nothing."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    order_id = _completed(shop)
    local_aws.client("dynamodb").update_item(
        TableName=local_aws.table("OrdersTable"),
        Key={"order_id": {"S": order_id}},
        UpdateExpression="SET created_at = :long_ago",
        ExpressionAttributeValues={":long_ago": {"S": "2000-01-01T00:00:00.000Z"}},
    )
    capfd.readouterr()
    assert shop.cancel(order_id).status_code == 202
    assert shop.wait_refund(order_id) == "SUCCEEDED"
    shop.wait_status(order_id, "REFUNDED")

    printed = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    [refunded] = [line for line in printed if "OrdersRefunded" in line]
    assert refunded["SagaDuration"] and all(0 <= seconds < 24 * 3600 for seconds in refunded["SagaDuration"])
