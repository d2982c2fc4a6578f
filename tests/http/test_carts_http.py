"""Carts over real sockets against the local stack: every row of the contract's Carts table.

Each test acts as a customer of its own (a token signed by the stack's dev identity provider), so
carts never mix with the demo customers' or the fuzzer's.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import requests

from tests.conftest import forge_signature
from tests.http.conftest import RunningStack
from tests.http.test_checkout_http import create_product, wait_for_terminal

TOKEN = "X-Cart-Token"
PROBLEM = "application/problem+json"


def customer() -> str:
    return f"cart-{secrets.token_hex(4)}"


def put(
    stack: RunningStack, sku: str, quantity: Any, *, who: str | None = None, token: str | None = None
) -> requests.Response:
    headers = stack.auth(who) if who is not None else {}
    if token is not None:
        headers[TOKEN] = token
    return requests.put(stack.url(f"/cart/items/{sku}"), headers=headers, json={"quantity": quantity}, timeout=10)


def get(stack: RunningStack, *, who: str | None = None, token: str | None = None) -> requests.Response:
    headers = stack.auth(who) if who is not None else {}
    if token is not None:
        headers[TOKEN] = token
    return requests.get(stack.url("/cart"), headers=headers, timeout=10)


def lines(body: dict[str, Any]) -> list[tuple[str, int]]:
    return [(item["sku"], item["quantity"]) for item in body["items"]]


def order_from_cart(stack: RunningStack, who: str, token: str = "tok_visa") -> requests.Response:
    return requests.post(
        stack.url("/orders"),
        headers={**stack.auth(who), "Idempotency-Key": str(uuid.uuid4())},
        json={"cart": True, "payment": {"token": token}},
        timeout=30,
    )


def carts_table(stack: RunningStack) -> str:
    names = stack.aws("dynamodb").list_tables()["TableNames"]
    (name,) = [name for name in names if "CartsTable" in name]
    return str(name)


def test_get_put_and_delete_an_anonymous_cart(stack: RunningStack) -> None:
    sku = create_product(stack, stock=10, price=700)

    empty = get(stack)
    assert (empty.status_code, empty.json()) == (
        200,
        {"items": [], "total": {"amount": 0, "currency": "USD"}, "expires_at": None},
    )

    first = put(stack, sku, 3)
    assert first.status_code == 200, first.text
    token = first.headers[TOKEN]
    assert first.json()["items"] == [
        {
            "sku": sku,
            "name": f"Test {sku}",
            "quantity": 3,
            "unit_price": {"amount": 700, "currency": "USD"},
            "line_total": {"amount": 2100, "currency": "USD"},
            "available": True,
        }
    ]
    assert lines(get(stack, token=token).json()) == [(sku, 3)]
    assert TOKEN not in put(stack, sku, 4, token=token).headers

    deleted = requests.delete(stack.url("/cart"), headers={TOKEN: token}, timeout=10)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert get(stack, token=token).json()["items"] == []


def test_the_cart_token_header_crosses_the_gateway_and_a_tampered_one_is_400(stack: RunningStack) -> None:
    sku = create_product(stack, stock=10)
    token = put(stack, sku, 1).headers[TOKEN]
    tampered = forge_signature(token)

    for response in (
        get(stack, token=tampered),
        put(stack, sku, 5, token=tampered),
        requests.delete(stack.url("/cart"), headers={TOKEN: tampered}, timeout=10),
        requests.post(stack.url("/cart/merge"), headers={**stack.auth(customer()), TOKEN: tampered}, timeout=10),
    ):
        assert response.status_code == 400, response.text
        assert response.headers["Content-Type"] == PROBLEM
        assert response.json()["errors"][0]["field"] == TOKEN
    assert lines(get(stack, token=token).json()) == [(sku, 1)]


def test_bad_cart_changes_are_clean_4xx_and_change_nothing(stack: RunningStack) -> None:
    sku = create_product(stack, stock=10)
    who = customer()
    put(stack, sku, 2, who=who)
    before = get(stack, who=who).json()

    unknown = put(stack, "NO-SUCH-SKU", 1, who=who)
    assert (unknown.status_code, unknown.json()["type"]) == (422, "urn:shop:problem:product-unavailable")
    for quantity in (101, -1, 1.5, "2", None):
        assert put(stack, sku, quantity, who=who).status_code == 400, quantity
    malformed = requests.put(
        stack.url(f"/cart/items/{sku}"),
        headers={**stack.auth(who), "Content-Type": "application/json"},
        data=b"{quantity: 1",
        timeout=10,
    )
    assert (malformed.status_code, malformed.headers["Content-Type"]) == (400, PROBLEM)
    wrong_type = requests.put(
        stack.url(f"/cart/items/{sku}"),
        headers={**stack.auth(who), "Content-Type": "text/plain"},
        data=b"1",
        timeout=10,
    )
    assert wrong_type.status_code == 415
    assert requests.get(stack.url("/cart"), headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    assert get(stack, who=who).json() == before


def test_a_customers_cart_and_merge_at_sign_in(stack: RunningStack) -> None:
    mug, tee = create_product(stack, stock=500), create_product(stack, stock=500)
    who = customer()
    put(stack, mug, 60, who=who)
    token = put(stack, mug, 70).headers[TOKEN]
    put(stack, tee, 2, token=token)

    merged = requests.post(stack.url("/cart/merge"), headers={**stack.auth(who), TOKEN: token}, timeout=10)

    assert merged.status_code == 200, merged.text
    assert lines(merged.json()) == [(mug, 100), (tee, 2)]
    assert get(stack, token=token).json()["items"] == []
    again = requests.post(stack.url("/cart/merge"), headers={**stack.auth(who), TOKEN: token}, timeout=10)
    assert (again.status_code, again.json()) == (200, merged.json())
    assert requests.post(stack.url("/cart/merge"), headers={TOKEN: token}, timeout=10).status_code == 401
    assert requests.post(stack.url("/cart/merge"), headers=stack.auth(who), timeout=10).status_code == 400


def test_an_expired_cart_reads_empty(stack: RunningStack) -> None:
    sku = create_product(stack, stock=10)
    token = put(stack, sku, 1).headers[TOKEN]
    dynamodb = stack.aws("dynamodb")
    table = carts_table(stack)
    (item,) = [
        item
        for item in dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
        if any(line["M"]["sku"]["S"] == sku for line in item["lines"]["L"])  # emptied carts stay, with no lines
    ]
    dynamodb.update_item(
        TableName=table,
        Key={"cart_id": item["cart_id"]},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": "1000"}},
    )

    assert get(stack, token=token).json()["items"] == []


def test_an_order_from_the_cart_empties_it_only_when_it_completes(stack: RunningStack) -> None:
    sku = create_product(stack, stock=10, price=1250)
    who = customer()
    put(stack, sku, 2, who=who)

    declined = order_from_cart(stack, who, token="tok_chargeDeclined")
    assert declined.status_code == 202, declined.text
    assert wait_for_terminal(stack, who, declined.json()["order_id"])["failure_reason"] == "PAYMENT_DECLINED"
    assert lines(get(stack, who=who).json()) == [(sku, 2)]

    placed = order_from_cart(stack, who)
    assert placed.status_code == 202, placed.text
    assert [(line["sku"], line["quantity"]) for line in placed.json()["items"]] == [(sku, 2)]
    assert placed.json()["total"] == {"amount": 2500, "currency": "USD"}
    assert wait_for_terminal(stack, who, placed.json()["order_id"])["status"] == "COMPLETED"
    assert get(stack, who=who).json()["items"] == []

    empty = order_from_cart(stack, who)
    assert (empty.status_code, empty.headers["Content-Type"]) == (422, PROBLEM)
    assert empty.json()["type"] == "urn:shop:problem:cart-empty"
