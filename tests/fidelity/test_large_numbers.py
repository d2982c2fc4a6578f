"""Items holding a number DynamoDB answers in more than 38 digits: still read, or reported unreadable.

DynamoDB stores ``1E+40`` (one significant digit) and answers it in plain digits (41 of them); boto3's
reader refuses that (``decimal.Rounded``, boto/boto3#2500), an error none of the unreadable-item
catches named: the catalog listing answered 500, the books check and the stock publisher crashed, and
a cart could not be cleared. moto answers the number as it was written, so only DynamoDB Local shows
it (a helper's probe). ``shop.repositories.dynamodb`` reads numbers as they are answered.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from shop import signing
from shop.domain import catalog, events
from shop.errors import RecordUnreadable, StoredItemUnusable
from shop.models.catalog import ProductListQuery
from shop.repositories import audit
from shop.repositories import carts as cart_repository
from shop.repositories.dynamodb import unmarshal
from tests.fidelity.conftest import Backend
from tests.fidelity.test_orders_repository import stored_order

LARGE = {"N": "1E+40"}  # one significant digit: DynamoDB accepts it


def _bad_product(backend: Backend, sku: str) -> None:
    backend.client.put_item(
        TableName=backend.table("ProductsTable"),
        Item={
            "sku": {"S": sku},
            "name": {"S": sku},
            "category": {"S": "test"},
            "price_amount": LARGE,
            "price_currency": {"S": "USD"},
            "active": {"BOOL": True},
            "listing": {"S": "ACTIVE"},
            "listing_category": {"S": "test"},
            "created_at": {"S": "t"},
            "updated_at": {"S": "t"},
        },
    )


def test_a_large_number_reads_as_the_number_it_is(backend: Backend) -> None:
    backend.client.put_item(TableName=backend.table("CartsTable"), Item={"cart_id": {"S": "x"}, "n": LARGE})
    answered = backend.client.get_item(TableName=backend.table("CartsTable"), Key={"cart_id": {"S": "x"}})["Item"]
    assert unmarshal(answered)["n"] == Decimal("1E+40")  # DynamoDB Local answers 41 digits, moto "1E+40"


def test_the_listing_leaves_out_a_product_item_with_a_large_number(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signing, "pagination_key", lambda: "fidelity-tier-signing-key")
    backend.put_product("GOOD-1", 5)
    _bad_product(backend, "GOOD-2X")
    backend.put_product("GOOD-3", 5)
    page = catalog.list_products(ProductListQuery())
    assert [product.sku for product in page.items] == ["GOOD-1", "GOOD-3"]


def test_the_books_check_reports_an_order_item_with_a_large_number(backend: Backend) -> None:
    stored_order("o-good", "PENDING")
    bad = stored_order("o-bad", "PENDING")
    item = backend.client.get_item(TableName=backend.table("OrdersTable"), Key={"order_id": {"S": bad.order_id}})[
        "Item"
    ]
    item["payment_token"] = LARGE  # a number where the model wants text: unreadable on both engines
    backend.client.put_item(TableName=backend.table("OrdersTable"), Item=item)
    audited = audit.orders()
    assert [order.order_id for order in audited.records] == ["o-good"]
    assert [item.key["order_id"] for item in audited.unreadable] == ["o-bad"]


def test_the_stock_publisher_sets_aside_a_product_item_with_a_large_number(backend: Backend) -> None:
    _bad_product(backend, "BAD")
    with pytest.raises(RecordUnreadable):
        events._product_to_judge("BAD", threshold=5)


def test_a_cart_item_with_a_large_number_is_unusable_not_a_crash(backend: Backend) -> None:
    backend.client.put_item(
        TableName=backend.table("CartsTable"),
        Item={
            "cart_id": {"S": "customer#c"},
            "version": {"N": "3"},
            "lines": {"L": []},
            "expires_at": {"N": "4000000000"},
            "updated_at": LARGE,
        },  # a number where the model wants text
    )
    with pytest.raises(StoredItemUnusable):  # DELETE /cart then empties it
        cart_repository.get("customer#c")
