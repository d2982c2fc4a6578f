"""Fair sales over real sockets against the local stack: an admin sets a purchase limit, customers meet it."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.http.conftest import RunningStack
from tests.http.test_checkout_http import available, create_product, place_order, wait_for_terminal


def set_limit(stack: RunningStack, sku: str, limit: object) -> requests.Response:
    return requests.patch(
        stack.url(f"/products/{sku}"), headers=stack.auth("admin"), json={"purchase_limit": limit}, timeout=10
    )


def test_a_customer_gets_up_to_the_limit_then_422_and_others_are_not_affected(stack: RunningStack) -> None:
    sku = create_product(stack, stock=20)
    assert set_limit(stack, sku, 0).status_code == 400
    changed = set_limit(stack, sku, 2)
    assert changed.status_code == 200, changed.text
    assert requests.get(stack.url(f"/products/{sku}"), timeout=10).json()["purchase_limit"] == 2

    first = place_order(stack, "alice", sku, "tok_visa", quantity=2)
    assert wait_for_terminal(stack, "alice", first.json()["order_id"])["status"] == "COMPLETED"
    refused = place_order(stack, "alice", sku, "tok_visa", quantity=1)

    assert refused.status_code == 422, refused.text
    assert refused.headers["Content-Type"] == "application/problem+json"
    problem = refused.json()
    assert (problem["type"], problem["status"], problem["skus"]) == (
        "urn:shop:problem:purchase-limit-exceeded",
        422,
        [sku],
    )
    assert [error["field"] for error in problem["errors"]] == ["items.0.quantity"]
    bobs = place_order(stack, "bob", sku, "tok_visa", quantity=2)
    assert wait_for_terminal(stack, "bob", bobs.json()["order_id"])["status"] == "COMPLETED"
    assert available(stack, sku) == 16


def test_a_hoarders_simultaneous_orders_never_hold_more_than_the_limit(stack: RunningStack) -> None:
    """Every order either is refused (422 over the limit, or 429 past five orders in progress), or ends CANCELLED
    over the limit, or counts: at most the limit counts."""
    sku = create_product(stack, stock=50)
    assert set_limit(stack, sku, 3).status_code == 200

    def order(_: int) -> requests.Response:
        return requests.post(
            stack.url("/orders"),
            headers={**stack.auth("alice"), "Idempotency-Key": str(uuid.uuid4())},
            json={"items": [{"sku": sku, "quantity": 1}], "payment": {"token": "tok_visa"}},
            timeout=30,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(order, range(8)))

    assert {response.status_code for response in responses} <= {202, 422, 429}
    placed = [response.json()["order_id"] for response in responses if response.status_code == 202]
    finals = [wait_for_terminal(stack, "alice", order_id) for order_id in placed]
    kept = [final for final in finals if final["status"] == "COMPLETED"]
    assert len(kept) == 3
    assert all(
        (final["status"], final["failure_reason"]) == ("CANCELLED", "PURCHASE_LIMIT_EXCEEDED")
        for final in finals
        if final["status"] != "COMPLETED"
    )
    assert available(stack, sku) == 47
