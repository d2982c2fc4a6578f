"""The checkout saga end to end: the API starts it, moto runs the ASL, the real handlers do the steps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local import lambda_runtime
from shop.errors import InventoryContention
from tests.conftest import BOTH_WORKFLOW_TYPES, LocalAws
from tests.service.orders_helpers import Shop, available, open_shop, seed_product, steps

# Every saga path of this module runs in both workflow types (template parameter WorkflowType).
pytestmark = BOTH_WORKFLOW_TYPES


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    with open_shop(local_aws) as opened:
        yield opened


@pytest.fixture
def invocations(local_aws: LocalAws) -> Counter[str]:
    """How often each function (by logical id) was invoked."""
    names = {name: logical_id for logical_id, name in local_aws.stack.function_names.items()}
    counts: Counter[str] = Counter()

    def count(function_name: str, event: Any) -> None:
        counts[names.get(function_name, function_name)] += 1

    lambda_runtime.faults.before_invoke = count
    return counts


def test_happy_path_completes_with_exact_capture_and_committed_stock(shop: Shop) -> None:
    seed_product("MUG-1", price=1250, stock=10)
    seed_product("TEE-1", price=1999, stock=5)

    placed = shop.place_ok([("MUG-1", 2), ("TEE-1", 1)])

    assert placed["status"] == "PENDING"
    assert placed["total"] == {"amount": 2 * 1250 + 1999, "currency": "USD"}
    assert placed["items"][0]["line_total"] == {"amount": 2500, "currency": "USD"}
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert order["status"] == "COMPLETED"
    assert order["failure_reason"] is None
    assert order["payment"]["status"] == "CAPTURED"
    assert order["payment"]["captured"] == order["total"]
    assert available("MUG-1") == 8 and available("TEE-1") == 4
    assert steps(order) == [
        ("order_placed", "PENDING"),
        ("reserve_stock", "SUCCEEDED"),
        ("authorize_payment", "SUCCEEDED"),
        ("commit_reservation", "SUCCEEDED"),
        ("capture_payment", "SUCCEEDED"),
        ("complete_order", "COMPLETED"),
    ]


def test_one_line_out_of_stock_cancels_without_touching_payment_or_stock(shop: Shop, invocations: Counter[str]) -> None:
    seed_product("MUG-1", price=1250, stock=10)
    seed_product("RARE-1", price=9900, stock=1)

    placed = shop.place_ok([("MUG-1", 3), ("RARE-1", 2)])

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "OUT_OF_STOCK")
    assert order["payment"] is None
    assert available("MUG-1") == 10 and available("RARE-1") == 1
    assert invocations["ReserveStockFunction"] == 1  # a business error is not retried
    assert invocations["AuthorizePaymentFunction"] == 0
    assert ("reserve_stock", "FAILED") in steps(order)
    assert steps(order)[-1] == ("cancel_order", "CANCELLED")


def test_declined_payment_cancels_and_returns_the_stock(shop: Shop, invocations: Counter[str]) -> None:
    seed_product("MUG-1", price=1250, stock=10)

    placed = shop.place_ok([("MUG-1", 4)], token="tok_chargeDeclined")

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "PAYMENT_DECLINED")
    assert order["payment"]["captured"]["amount"] == 0
    assert available("MUG-1") == 10
    assert invocations["AuthorizePaymentFunction"] == 1
    assert invocations["CapturePaymentFunction"] == 0
    assert steps(order)[-4:] == [
        ("authorize_payment", "FAILED"),
        ("void_payment", "SUCCEEDED"),
        ("release_stock", "SUCCEEDED"),
        ("cancel_order", "CANCELLED"),
    ]


def test_transient_failure_then_approval_completes(shop: Shop, invocations: Counter[str]) -> None:
    seed_product("MUG-1", price=1250, stock=10)

    placed = shop.place_ok([("MUG-1", 1)], token="tok_flaky")

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert order["status"] == "COMPLETED"
    assert order["payment"]["captured"] == {"amount": 1250, "currency": "USD"}
    assert invocations["AuthorizePaymentFunction"] == 2
    assert available("MUG-1") == 9


def test_retries_exhausted_cancel_as_payment_unavailable(shop: Shop, invocations: Counter[str]) -> None:
    seed_product("MUG-1", price=1250, stock=10)

    placed = shop.place_ok([("MUG-1", 2)], token="tok_processingError")

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "PAYMENT_UNAVAILABLE")
    assert order["payment"]["captured"]["amount"] == 0
    assert invocations["AuthorizePaymentFunction"] == 4  # the first attempt and 3 retries
    assert available("MUG-1") == 10


def test_transient_inventory_contention_is_retried(shop: Shop, local_aws: LocalAws) -> None:
    seed_product("MUG-1", price=1250, stock=10)
    reserve = local_aws.function("ReserveStockFunction")
    failures: list[Any] = []

    def contend_once(function_name: str, event: Any) -> None:
        if function_name == reserve and not failures:
            failures.append(event)
            raise InventoryContention("simulated TransactionConflict")

    lambda_runtime.faults.before_invoke = contend_once

    placed = shop.place_ok([("MUG-1", 1)])

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    assert shop.order(placed["order_id"]).status == "COMPLETED"
    assert len(failures) == 1
    assert available("MUG-1") == 9


def test_inventory_still_busy_after_the_retries_cancels_without_claiming_the_stock_is_gone(
    shop: Shop, local_aws: LocalAws
) -> None:
    seed_product("MUG-1", price=1250, stock=10)
    reserve = local_aws.function("ReserveStockFunction")
    attempts: list[Any] = []

    def always_contended(function_name: str, event: Any) -> None:
        if function_name == reserve:
            attempts.append(event)
            raise InventoryContention("simulated TransactionConflict")

    lambda_runtime.faults.before_invoke = always_contended

    placed = shop.place_ok([("MUG-1", 1)])

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "INVENTORY_UNAVAILABLE")
    assert len(attempts) == 5  # the first attempt and the 4 retries of ReserveStock
    assert available("MUG-1") == 10
    assert order["payment"] is None  # never charged: the saga never reached the payment


def test_every_step_gets_the_order_id_and_execution_name(shop: Shop, local_aws: LocalAws) -> None:
    seed_product("MUG-1", price=1250, stock=10)
    events: list[Any] = []
    lambda_runtime.faults.before_invoke = lambda name, event: events.append(event)

    placed = shop.place_ok([("MUG-1", 1)], token="tok_chargeDeclined")

    shop.wait_checkout(placed["order_id"])
    assert events
    assert all(event["order_id"] == placed["order_id"] for event in events)
    assert all(event["execution_name"] == placed["order_id"] for event in events)
