"""Bounds on amounts and stock through the API: what overflows the Money type or the stock bound is a
4xx problem+json that stores nothing, never a 500.

Unit prices and quantities are bounded per field; line totals and the order total are computed
from the catalog and checked before anything is stored (422 ``order-total-too-large``). A stock
adjustment that would take ``available`` above ``MAX_STOCK`` is 409 and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shop.models.catalog import MAX_STOCK
from shop.models.money import MAX_AMOUNT
from tests.conftest import LocalAws
from tests.service.orders_helpers import Shop, available, open_shop, seed_product

PROBLEM = "application/problem+json"


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("TOP-1", price=MAX_AMOUNT, stock=10)
    seed_product("HALF-1", price=MAX_AMOUNT // 2 + 1, stock=10)
    seed_product("MUG-1", price=1250, stock=10)
    with open_shop(local_aws) as opened:
        yield opened


def _scan(shop: Shop, logical_id: str) -> list[dict[str, Any]]:
    dynamodb = shop.aws.client("dynamodb")
    items = dynamodb.scan(TableName=shop.aws.table(logical_id), ConsistentRead=True)["Items"]
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


def _stored(shop: Shop) -> dict[str, list[dict[str, Any]]]:
    """Everything an order placement or a stock adjustment could have written."""
    return {table: _scan(shop, table) for table in ("OrdersTable", "ProductsTable", "StockTable", "StockLedgerTable")}


def _assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.body
    assert response.headers["Content-Type"] == PROBLEM
    body: dict[str, Any] = response.json_body
    assert body["status"] == status
    assert body["type"].endswith(slug)
    return body


def _adjust(shop: Shop, body: Any) -> Any:
    return shop.client.http.post(
        "/products/MUG-1/stock-adjustments", headers=shop.headers("admin"), body=json.dumps(body)
    )


# ---------------------------------------------------------------------------- order totals
def test_a_product_at_the_maximum_price_ordered_twice_is_422_and_stores_nothing(shop: Shop) -> None:
    before = _stored(shop)

    response = shop.place([("TOP-1", 2)], key="too-large")

    body = _assert_problem(response, 422, "order-total-too-large")
    assert [error["field"] for error in body["errors"]] == ["items.0.quantity"]
    assert _stored(shop) == before  # no order, stock unchanged
    assert available("TOP-1") == 10
    assert shop.executions("CheckoutStateMachine") == []

    # The failed request left no idempotency record in the way: the same key with a valid body works.
    accepted = shop.place_ok([("TOP-1", 1)], key="too-large")
    assert accepted["total"] == {"amount": MAX_AMOUNT, "currency": "USD"}  # the maximum itself is allowed
    shop.wait_checkout(accepted["order_id"])


def test_an_order_whose_lines_together_exceed_the_maximum_is_422_and_stores_nothing(shop: Shop) -> None:
    before = _stored(shop)

    response = shop.place([("HALF-1", 1), ("MUG-1", 1), ("TOP-1", 1)])

    body = _assert_problem(response, 422, "order-total-too-large")
    assert [error["field"] for error in body["errors"]] == ["items"]
    assert _stored(shop) == before
    assert shop.executions("CheckoutStateMachine") == []


def test_every_line_over_the_maximum_is_named(shop: Shop) -> None:
    response = shop.place([("MUG-1", 1), ("TOP-1", 100), ("HALF-1", 2)])

    body = _assert_problem(response, 422, "order-total-too-large")
    assert [error["field"] for error in body["errors"]] == ["items.1.quantity", "items.2.quantity"]


def test_a_quantity_beyond_its_bound_is_400(shop: Shop) -> None:
    before = _stored(shop)
    for quantity in (101, 2**64, 10**30):
        response = shop.place([("MUG-1", quantity)])
        body = _assert_problem(response, 400, "validation-error")
        assert [error["field"] for error in body["errors"]] == ["items.0.quantity"]
    assert _stored(shop) == before


# ---------------------------------------------------------------------------- stock
def test_a_huge_stock_adjustment_is_4xx_and_changes_nothing(shop: Shop) -> None:
    before = _stored(shop)

    beyond_the_field = _adjust(shop, {"delta": 10**30, "reason": "typo"})
    _assert_problem(beyond_the_field, 400, "validation-error")
    # Within the field's bound, but the resulting stock would exceed the maximum.
    beyond_the_stock = _adjust(shop, {"delta": MAX_STOCK, "reason": "typo"})
    body = _assert_problem(beyond_the_stock, 409, "stock-limit-exceeded")
    assert [error["field"] for error in body["errors"]] == ["delta"]

    assert _stored(shop) == before
    assert available("MUG-1") == 10

    # Up to the maximum itself is fine.
    up_to = _adjust(shop, {"delta": MAX_STOCK - 10, "reason": "delivery"})
    assert up_to.status_code == 200, up_to.body
    assert up_to.json_body["available"] == MAX_STOCK


def test_repeated_adjustments_cannot_push_stock_past_the_maximum(shop: Shop) -> None:
    assert _adjust(shop, {"delta": MAX_STOCK - 10, "reason": "delivery"}).status_code == 200
    before = _stored(shop)

    _assert_problem(_adjust(shop, {"delta": 1, "reason": "one more"}), 409, "stock-limit-exceeded")

    assert _stored(shop) == before
    down = _adjust(shop, {"delta": -MAX_STOCK, "reason": "write-off"})
    assert down.status_code == 200, down.body
    assert down.json_body["available"] == 0


def test_stock_above_the_maximum_can_still_be_brought_down(shop: Shop) -> None:
    """Released reservations may return units past MAX_STOCK (the maximum bounds only increases): a
    decrease that leaves it above the maximum still is taken, never refused as exceeding it."""
    assert _adjust(shop, {"delta": MAX_STOCK - 10, "reason": "delivery"}).status_code == 200
    shop.aws.client("dynamodb").update_item(
        TableName=shop.aws.table("StockTable"),
        Key={"sku": {"S": "MUG-1"}, "shard": {"N": "0"}},
        UpdateExpression="ADD available :returned",
        ExpressionAttributeValues={":returned": {"N": "5"}},
    )

    down = _adjust(shop, {"delta": -1, "reason": "breakage"})

    assert down.status_code == 200, down.body
    assert down.json_body["available"] == MAX_STOCK + 4 == available("MUG-1")


@pytest.mark.parametrize(
    ("amount", "stock"),
    [
        (str(MAX_AMOUNT + 1), "1"),
        ("1", str(MAX_STOCK + 1)),
        ("1e400", "1"),
        ("1", "-1"),
        ("9" * 5000, "1"),
        ("1", "9" * 5000),
    ],
)
def test_product_numbers_beyond_their_bounds_are_400_and_store_nothing(shop: Shop, amount: str, stock: str) -> None:
    before = _stored(shop)
    raw = f'{{"sku": "NEW-1", "name": "n", "category": "c", "price": {{"amount": {amount}}}, "stock": {stock}}}'
    response = shop.client.http.post("/products", headers=shop.headers("admin"), body=raw)
    assert response.status_code == 400, response.body
    assert response.headers["Content-Type"] == PROBLEM
    assert _stored(shop) == before


# ---------------------------------------------------------------------------- the contract
def test_the_openapi_document_states_the_bounds(shop: Shop) -> None:
    document = shop.client.http.get("/openapi.json").json_body
    schemas = document["components"]["schemas"]

    assert schemas["Money"]["properties"]["amount"]["maximum"] == MAX_AMOUNT
    assert schemas["OrderItemRequest"]["properties"]["quantity"]["maximum"] == 100
    assert schemas["CreateProductRequest"]["properties"]["stock"]["maximum"] == MAX_STOCK
    delta = schemas["StockAdjustmentRequest"]["properties"]["delta"]
    assert (delta["minimum"], delta["maximum"]) == (-MAX_STOCK, MAX_STOCK)
    # What no single schema can say: the computed totals and the resulting stock.
    description = document["info"]["description"]
    for statement in (str(MAX_AMOUNT), "order-total-too-large", str(MAX_STOCK), "stock-limit-exceeded"):
        assert statement in description
    assert "422" in document["paths"]["/orders"]["post"]["responses"]
    assert "409" in document["paths"]["/products/{sku}/stock-adjustments"]["post"]["responses"]
