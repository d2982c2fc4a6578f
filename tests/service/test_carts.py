"""Carts through the real API and the real checkout saga (moto, in-process handlers).

Anonymous and customer carts, merge at sign-in, expiry, the version-guarded writes under a real
race, an order placed from the cart and the cart emptied only when that order COMPLETES.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from shop.domain import carts as cart_domain
from shop.models.carts import CART_LIFETIME_SECONDS
from shop.repositories import carts as cart_repository
from tests.conftest import LocalAws, forge_signature
from tests.service.faults import StepFaults
from tests.service.orders_helpers import HoldEvery, PauseAt, Shop, deactivate, open_shop, seed_product

TOKEN = "X-Cart-Token"


# A cart's clock in these tests, where its versions are compared: a new cart starts at FIRST.
NOW = 1_800_000_000
FIRST = cart_domain.first_version(NOW)


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=100)
    seed_product("TEE-1", price=1999, stock=100)
    seed_product("CAP-1", price=500, stock=1)
    with open_shop(local_aws) as opened:
        yield opened


# ---------------------------------------------------------------------------- helpers
def put(shop: Shop, sku: str, quantity: Any, *, who: str | None = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if who is not None:
        headers["Authorization"] = f"Bearer {shop.token(who)}"
    if token is not None:
        headers[TOKEN] = token
    return shop.client.http.put(f"/cart/items/{sku}", headers=headers, body=json.dumps({"quantity": quantity}))


def get(shop: Shop, *, who: str | None = None, token: str | None = None) -> Any:
    headers = {}
    if who is not None:
        headers["Authorization"] = f"Bearer {shop.token(who)}"
    if token is not None:
        headers[TOKEN] = token
    return shop.client.http.get("/cart", headers=headers)


def merge(shop: Shop, who: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {shop.token(who)}"}
    if token is not None:
        headers[TOKEN] = token
    return shop.client.http.post("/cart/merge", headers=headers)


def lines(body: dict[str, Any]) -> list[tuple[str, int]]:
    return [(item["sku"], item["quantity"]) for item in body["items"]]


def openapi_document(shop: Shop) -> dict[str, Any]:
    document: dict[str, Any] = shop.client.http.get("/openapi.json").json_body
    return document


def stored_carts(shop: Shop) -> list[dict[str, Any]]:
    dynamodb = shop.aws.client("dynamodb")
    return list(dynamodb.scan(TableName=shop.aws.table("CartsTable"), ConsistentRead=True)["Items"])


def order_from_cart(shop: Shop, *, who: str = "alice", token: str = "tok_visa", key: str | None = None) -> Any:
    return shop.place([], who=who, key=key, body={"cart": True, "payment": {"token": token}})


# ---------------------------------------------------------------------------- anonymous carts
def test_an_anonymous_shopper_gets_a_cart_and_its_token_on_the_first_put(shop: Shop) -> None:
    first = put(shop, "MUG-1", 2)

    assert first.status_code == 200, first.body
    token = first.headers[TOKEN]
    assert lines(first.json_body) == [("MUG-1", 2)]
    item = first.json_body["items"][0]
    assert item == {
        "sku": "MUG-1",
        "name": "Product MUG-1",
        "quantity": 2,
        "unit_price": {"amount": 1250, "currency": "USD"},
        "line_total": {"amount": 2500, "currency": "USD"},
        "available": True,
    }
    assert first.json_body["total"] == {"amount": 2500, "currency": "USD"}
    assert first.json_body["expires_at"].endswith("Z")

    again = put(shop, "TEE-1", 1, token=token)
    assert TOKEN not in again.headers  # the cart exists: no new token
    assert lines(get(shop, token=token).json_body) == [("MUG-1", 2), ("TEE-1", 1)]
    # Anyone without the token sees no cart; a second shopper's first PUT starts another one.
    assert get(shop).json_body == {"items": [], "total": {"amount": 0, "currency": "USD"}, "expires_at": None}
    other = put(shop, "TEE-1", 3)
    assert other.headers[TOKEN] != token and lines(other.json_body) == [("TEE-1", 3)]


def test_quantity_zero_removes_a_line_and_delete_empties_the_cart(shop: Shop) -> None:
    token = put(shop, "MUG-1", 2).headers[TOKEN]
    put(shop, "TEE-1", 1, token=token)

    removed = put(shop, "MUG-1", 0, token=token)
    assert lines(removed.json_body) == [("TEE-1", 1)]

    deleted = shop.client.http.delete("/cart", headers={TOKEN: token})
    assert (deleted.status_code, deleted.body) == (204, b"")
    assert get(shop, token=token).json_body["items"] == []
    assert shop.client.http.delete("/cart", headers={TOKEN: token}).status_code == 204  # none left: fine


def test_prices_and_availability_are_the_catalogs_current_ones(shop: Shop, local_aws: LocalAws) -> None:
    token = put(shop, "MUG-1", 2).headers[TOKEN]
    put(shop, "CAP-1", 2, token=token)  # 1 in stock

    shown = get(shop, token=token).json_body
    assert [item["available"] for item in shown["items"]] == [True, False]

    admin = shop.headers("admin")
    shop.client.http.patch("/products/MUG-1", headers=admin, body=json.dumps({"price": {"amount": 1500}}))
    deactivate("TEE-1")
    put(shop, "CAP-1", 1, token=token)
    shown = get(shop, token=token).json_body
    assert [(item["sku"], item["unit_price"]["amount"], item["available"]) for item in shown["items"]] == [
        ("MUG-1", 1500, True),
        ("CAP-1", 500, True),
    ]
    assert shown["total"]["amount"] == 2 * 1500 + 500


def test_a_cart_priced_past_what_an_order_may_total_is_shown_and_can_be_lowered_not_raised(
    shop: Shop, local_aws: LocalAws
) -> None:
    from shop.models.money import MAX_AMOUNT

    put(shop, "MUG-1", 3, who="alice")
    admin = shop.headers("admin")
    raised = shop.client.http.patch(
        "/products/MUG-1", headers=admin, body=json.dumps({"price": {"amount": MAX_AMOUNT}})
    )
    assert raised.status_code == 200, raised.body

    # GET /cart is 200 whatever the prices did since: the cart shows what its lines cost now.
    shown = get(shop, who="alice")
    assert shown.status_code == 200, shown.body
    assert (shown.json_body["items"][0]["line_total"]["amount"], shown.json_body["total"]["amount"]) == (
        3 * MAX_AMOUNT,
        3 * MAX_AMOUNT,
    )
    # Ordering it, or adding to it, is what is refused; nothing changes.
    for refused in (order_from_cart(shop), put(shop, "MUG-1", 4, who="alice")):
        assert (refused.status_code, refused.json_body["type"]) == (422, "urn:shop:problem:order-total-too-large")
    assert shop.executions("CheckoutStateMachine") == []
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 3)]

    lowered = put(shop, "MUG-1", 1, who="alice")
    assert (lowered.status_code, lowered.json_body["total"]["amount"]) == (200, MAX_AMOUNT)
    assert order_from_cart(shop).status_code == 202


def test_a_line_lowered_while_the_cart_is_still_past_what_an_order_may_total_is_taken(shop: Shop) -> None:
    """Less always may: a line lowered but still past the maximum is written (the shopper lowers step by step)."""
    from shop.models.money import MAX_AMOUNT

    put(shop, "MUG-1", 3, who="alice")
    price = {"price": {"amount": MAX_AMOUNT}}
    assert (
        shop.client.http.patch("/products/MUG-1", headers=shop.headers("admin"), body=json.dumps(price)).status_code
        == 200
    )

    lowered = put(shop, "MUG-1", 2, who="alice")

    assert (lowered.status_code, lowered.json_body["total"]["amount"]) == (200, 2 * MAX_AMOUNT), lowered.body
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 2)]


def test_a_merge_that_would_take_the_cart_past_what_an_order_may_total_is_refused(shop: Shop) -> None:
    from shop.models.money import MAX_AMOUNT

    admin = shop.headers("admin")
    price = {"price": {"amount": MAX_AMOUNT // 2 + 1}}
    assert shop.client.http.patch("/products/MUG-1", headers=admin, body=json.dumps(price)).status_code == 200
    put(shop, "MUG-1", 1, who="alice")
    token = put(shop, "MUG-1", 1).headers[TOKEN]
    assert put(shop, "MUG-1", 2, who="alice").status_code == 422  # as raising the line by hand is
    before = stored_carts(shop)

    refused = merge(shop, "alice", token)

    assert (refused.status_code, refused.json_body["type"]) == (422, "urn:shop:problem:order-total-too-large")
    assert stored_carts(shop) == before  # neither cart changed: lower a line, then merge again
    assert put(shop, "MUG-1", 0, who="alice").status_code == 200
    assert lines(merge(shop, "alice", token).json_body) == [("MUG-1", 1)]
    # GET /cart never refuses (the document says no 422 for it), whatever the prices did.
    assert "422" not in openapi_document(shop)["paths"]["/cart"]["get"]["responses"]


def test_a_merge_that_adds_nothing_to_a_cart_priced_past_the_maximum_still_empties_the_anonymous_cart(
    shop: Shop,
) -> None:
    """Only what a merge adds is judged against what an order may total: a merge whose lines are capped
    away (the customer's line at 100 already) changes nothing of a cart priced past it since, and is 200."""
    from shop.models.money import MAX_AMOUNT

    put(shop, "MUG-1", 100, who="alice")
    token = put(shop, "MUG-1", 1).headers[TOKEN]
    price = {"price": {"amount": MAX_AMOUNT}}
    assert (
        shop.client.http.patch("/products/MUG-1", headers=shop.headers("admin"), body=json.dumps(price)).status_code
        == 200
    )

    merged = merge(shop, "alice", token)

    assert merged.status_code == 200, merged.body
    assert lines(merged.json_body) == [("MUG-1", 100)]
    assert lines(get(shop, token=token).json_body) == []


# ---------------------------------------------------------------------------- customer carts and merge
def test_a_customers_cart_follows_the_identity(shop: Shop) -> None:
    put(shop, "MUG-1", 1, who="alice")

    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 1)]
    assert get(shop, who="bob").json_body["items"] == []
    assert TOKEN not in put(shop, "TEE-1", 1, who="alice").headers


def test_merge_sums_caps_empties_the_anonymous_cart_and_repeating_it_changes_nothing(shop: Shop) -> None:
    put(shop, "MUG-1", 60, who="alice")
    token = put(shop, "MUG-1", 70).headers[TOKEN]
    put(shop, "TEE-1", 2, token=token)
    anonymous_before = cart_repository.get(cart_domain.anonymous_cart_id(token))
    assert anonymous_before is not None

    merged = merge(shop, "alice", token)

    assert merged.status_code == 200, merged.body
    assert lines(merged.json_body) == [("MUG-1", 100), ("TEE-1", 2)]
    assert get(shop, token=token).json_body["items"] == []
    # Written empty at its next version, not deleted (see the stale tab below); TTL purges it when it expires.
    anonymous = cart_repository.get(cart_domain.anonymous_cart_id(token))
    assert anonymous is not None
    assert (anonymous.lines, anonymous.version, anonymous.expires_at) == (
        [],
        anonymous_before.version + 1,
        anonymous_before.expires_at,
    )
    before = stored_carts(shop)
    again = merge(shop, "alice", token)
    assert (again.status_code, again.json_body) == (200, merged.json_body)
    assert stored_carts(shop) == before  # not even the version moved


def test_a_stale_tab_cannot_bring_a_merged_anonymous_cart_back(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tab 1 reads the anonymous cart to add a line; before it writes, the shopper signs in (merge) and
    tab 2 adds a line with the same token. The merge wrote the anonymous cart empty at its next version,
    so tab 2 continues it and tab 1's write from its read before the merge is refused: tab 1 reads again
    and adds to what tab 2 wrote. A deleted cart would have restarted at version 1, where tab 1's write
    landed: tab 2's line lost and the merged mugs back, for a second merge to add again."""
    monkeypatch.setattr(cart_domain, "_now", lambda: NOW)
    token = put(shop, "MUG-1", 2).headers[TOKEN]  # a new cart: its version is its clock's
    real_put = cart_repository.put
    interleaved: list[str] = []

    def signed_in_and_tab_two_first(cart: Any, *, expected_version: int | None, **kwargs: Any) -> None:
        if not interleaved:
            interleaved.append("merge and tab 2")
            monkeypatch.setattr(cart_repository, "put", real_put)
            assert merge(shop, "alice", token).status_code == 200
            assert put(shop, "CAP-1", 1, token=token).status_code == 200
            monkeypatch.setattr(cart_repository, "put", signed_in_and_tab_two_first)
        interleaved.append(f"write at version {expected_version}")
        real_put(cart, expected_version=expected_version, **kwargs)

    monkeypatch.setattr(cart_repository, "put", signed_in_and_tab_two_first)
    tab_one = put(shop, "TEE-1", 1, token=token)
    monkeypatch.setattr(cart_repository, "put", real_put)

    assert tab_one.status_code == 200, tab_one.body
    # The merge emptied the first version into the next, tab 2 wrote the third; tab 1's write from the first
    # lost, its second landed.
    assert interleaved == ["merge and tab 2", f"write at version {FIRST}", f"write at version {FIRST + 2}"]
    assert lines(get(shop, token=token).json_body) == [("CAP-1", 1), ("TEE-1", 1)]
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 2)]
    # Signing in again adds what came after the first merge, and the mugs once.
    assert lines(merge(shop, "alice", token).json_body) == [("MUG-1", 2), ("CAP-1", 1), ("TEE-1", 1)]


def test_merge_needs_a_customer_and_a_valid_cart_token(shop: Shop) -> None:
    token = put(shop, "MUG-1", 1).headers[TOKEN]

    assert shop.client.http.post("/cart/merge", headers={TOKEN: token}).status_code == 401
    missing = merge(shop, "alice", None)
    assert missing.status_code == 400 and missing.json_body["errors"][0]["field"] == TOKEN
    tampered = merge(shop, "alice", forge_signature(token))
    assert tampered.status_code == 400 and tampered.headers["Content-Type"] == "application/problem+json"
    assert lines(get(shop, token=token).json_body) == [("MUG-1", 1)]  # nothing moved
    assert get(shop, who="alice").json_body["items"] == []


# ---------------------------------------------------------------------------- expiry
def test_a_cart_past_its_expiry_reads_empty_before_ttl_deletes_it(shop: Shop, local_aws: LocalAws) -> None:
    token = put(shop, "MUG-1", 2).headers[TOKEN]
    (item,) = stored_carts(shop)
    assert local_aws.client("dynamodb").describe_time_to_live(TableName=local_aws.table("CartsTable"))[
        "TimeToLiveDescription"
    ] == {"AttributeName": "expires_at", "TimeToLiveStatus": "ENABLED"}
    # TTL deletes lazily (up to days later): the item is still there, its expiry passed.
    local_aws.client("dynamodb").update_item(
        TableName=local_aws.table("CartsTable"),
        Key={"cart_id": item["cart_id"]},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": "1000"}},
    )

    assert get(shop, token=token).json_body["items"] == []
    # A change starts from the empty cart, not from the expired lines.
    assert lines(put(shop, "TEE-1", 1, token=token).json_body) == [("TEE-1", 1)]


def test_every_change_moves_the_expiry_seven_days_past_it(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cart_domain, "_now", lambda: 1_800_000_000)
    token = put(shop, "MUG-1", 1).headers[TOKEN]
    assert get(shop, token=token).json_body["expires_at"] == "2027-01-22T08:00:00Z"

    monkeypatch.setattr(cart_domain, "_now", lambda: 1_800_000_000 + 3600)
    assert put(shop, "MUG-1", 2, token=token).json_body["expires_at"] == "2027-01-22T09:00:00Z"
    (item,) = stored_carts(shop)
    assert item["expires_at"] == {"N": str(1_800_000_000 + 3600 + 7 * 24 * 3600)}


# ---------------------------------------------------------------------------- two tabs
def test_two_tabs_editing_one_cart_never_lose_an_update(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tab 1 reads the cart, tab 2 reads it and writes first: tab 1's conditional write fails, it reads
    again and applies its change to what tab 2 wrote."""
    monkeypatch.setattr(cart_domain, "_now", lambda: NOW)
    put(shop, "MUG-1", 1, who="alice")
    real_put = cart_repository.put
    interleaved: list[str] = []

    def tab_two_writes_first(cart: Any, *, expected_version: int | None, **kwargs: Any) -> None:
        if not interleaved:
            interleaved.append("tab 2")
            put(shop, "TEE-1", 5, who="alice")  # the whole of tab 2's request, between tab 1's read and write
        interleaved.append(f"write at version {expected_version}")
        real_put(cart, expected_version=expected_version, **kwargs)

    monkeypatch.setattr(cart_repository, "put", tab_two_writes_first)
    tab_one = put(shop, "MUG-1", 3, who="alice")

    assert tab_one.status_code == 200, tab_one.body
    # Tab 2 wrote at the first version; tab 1's first write (also from it) lost, its second went in at the next.
    assert interleaved == [
        "tab 2",
        f"write at version {FIRST}",
        f"write at version {FIRST}",
        f"write at version {FIRST + 1}",
    ]
    assert lines(tab_one.json_body) == [("MUG-1", 3), ("TEE-1", 5)]
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 3), ("TEE-1", 5)]


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("sku", "body", "status"),
    [
        ("NOPE-1", {"quantity": 1}, 422),  # unknown SKU
        ("NOPE-1", {"quantity": 0}, 422),
        ("MUG-1", {"quantity": 101}, 400),
        ("MUG-1", {"quantity": -1}, 400),
        ("MUG-1", {"quantity": 1.5}, 400),
        ("MUG-1", {"quantity": "1"}, 400),
        ("MUG-1", {"quantity": None}, 400),
        ("MUG-1", {}, 400),
        ("MUG-1", {"quantity": 1, "price": 1}, 400),
        ("bad sku!", {"quantity": 1}, 400),
    ],
)
def test_a_bad_cart_change_is_a_clean_4xx_and_changes_nothing(
    shop: Shop, sku: str, body: dict[str, Any], status: int
) -> None:
    token = put(shop, "MUG-1", 1).headers[TOKEN]
    before = stored_carts(shop)

    for headers in ({TOKEN: token}, {}, {"Authorization": f"Bearer {shop.token('alice')}"}):
        response = shop.client.http.put(
            f"/cart/items/{sku}", headers={"Content-Type": "application/json", **headers}, body=json.dumps(body)
        )
        assert response.status_code == status, (headers, response.body)
        assert response.headers["Content-Type"] == "application/problem+json"
        assert TOKEN not in response.headers

    assert stored_carts(shop) == before


def test_an_inactive_product_cannot_be_added_but_its_line_can_be_removed(shop: Shop) -> None:
    token = put(shop, "TEE-1", 2).headers[TOKEN]
    deactivate("TEE-1")
    before = stored_carts(shop)

    refused = put(shop, "TEE-1", 3, token=token)
    assert (refused.status_code, refused.json_body["type"]) == (422, "urn:shop:problem:product-unavailable")
    assert stored_carts(shop) == before
    assert get(shop, token=token).json_body["items"][0]["available"] is False
    assert put(shop, "TEE-1", 0, token=token).json_body["items"] == []


def test_a_fifty_first_line_is_422_and_changes_nothing(shop: Shop, local_aws: LocalAws) -> None:
    for index in range(50):
        seed_product(f"BULK-{index}", price=1, stock=10)
    for index in range(50):
        assert put(shop, f"BULK-{index}", 1, who="alice").status_code == 200
    before = stored_carts(shop)

    refused = put(shop, "MUG-1", 1, who="alice")

    assert (refused.status_code, refused.json_body["type"]) == (422, "urn:shop:problem:cart-full")
    assert stored_carts(shop) == before


@pytest.mark.parametrize("token", ["not-a-token", "abc.def", "x" * 513, "bad token"])
def test_a_tampered_or_malformed_cart_token_is_400_on_every_route(shop: Shop, token: str) -> None:
    real = put(shop, "MUG-1", 1).headers[TOKEN]
    before = stored_carts(shop)

    answers = [
        shop.client.http.get("/cart", headers={TOKEN: token}),
        put(shop, "MUG-1", 2, token=token),
        shop.client.http.delete("/cart", headers={TOKEN: token}),
        merge(shop, "alice", token),
    ]

    assert [answer.status_code for answer in answers] == [400, 400, 400, 400]
    assert all(answer.headers["Content-Type"] == "application/problem+json" for answer in answers)
    assert stored_carts(shop) == before
    assert lines(get(shop, token=real).json_body) == [("MUG-1", 1)]


def test_a_cart_request_with_an_invalid_bearer_token_is_401(shop: Shop) -> None:
    response = shop.client.http.get("/cart", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


# ---------------------------------------------------------------------------- cart -> order
def test_an_order_from_the_cart_snapshots_its_lines_and_the_cart_empties_when_it_completes(shop: Shop) -> None:
    put(shop, "MUG-1", 2, who="alice")
    put(shop, "TEE-1", 1, who="alice")

    placed = order_from_cart(shop)

    assert placed.status_code == 202, placed.body
    order = placed.json_body
    assert [(line["sku"], line["quantity"]) for line in order["items"]] == [("MUG-1", 2), ("TEE-1", 1)]
    assert order["total"]["amount"] == 2 * 1250 + 1999
    assert shop.wait_checkout(order["order_id"]) == "SUCCEEDED"
    assert shop.order(order["order_id"]).status == "COMPLETED"
    assert get(shop, who="alice").json_body["items"] == []


@contextmanager
def placed_from_cart_before_completion(shop: Shop, local_aws: LocalAws) -> Iterator[str]:
    """Alice's order from her cart, its saga held just before ``complete_order`` while the block
    runs; the order id. The saga completes after the block."""
    from infra.local import lambda_runtime
    from tests.service.orders_helpers import PauseAt

    held = PauseAt(local_aws.function("CompleteOrderFunction"))
    lambda_runtime.faults.before_invoke = held
    try:
        placed = order_from_cart(shop)
        assert placed.status_code == 202, placed.body
        held.wait_reached()
        yield str(placed.json_body["order_id"])
    finally:
        held.released.set()
        lambda_runtime.faults.before_invoke = None


def test_lines_added_after_placing_stay_when_the_order_completes(shop: Shop, local_aws: LocalAws) -> None:
    put(shop, "MUG-1", 2, who="alice")
    with placed_from_cart_before_completion(shop, local_aws) as order_id:
        # While the saga is about to complete: one more mug, and a new line.
        put(shop, "MUG-1", 3, who="alice")
        put(shop, "TEE-1", 1, who="alice")

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 1), ("TEE-1", 1)]


def test_units_added_after_placing_stay_when_the_line_was_lowered_first(shop: Shop, local_aws: LocalAws) -> None:
    """Of 3 mugs in the cart at completion, 1 was there when the order of 2 read it: one taken out, two
    added since. The cart knew only the version that added the line, and took 2 (a helper's probe)."""
    put(shop, "MUG-1", 2, who="alice")
    with placed_from_cart_before_completion(shop, local_aws) as order_id:
        put(shop, "MUG-1", 1, who="alice")
        put(shop, "MUG-1", 3, who="alice")

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 2)]


def test_two_orders_placed_at_one_cart_version_take_its_units_once(shop: Shop, local_aws: LocalAws) -> None:
    """Both orders read the cart with 2 mugs; one more was added before either completed. Each
    completion took 2 from the 3, and the mug added since went too (a helper's probe)."""
    from infra.local import lambda_runtime

    put(shop, "MUG-1", 2, who="alice")
    held = HoldEvery(local_aws.function("CompleteOrderFunction"))
    lambda_runtime.faults.before_invoke = held
    try:
        placed = [order_from_cart(shop, key=f"cart-order-{number}") for number in (1, 2)]
        assert [response.status_code for response in placed] == [202, 202]
        held.wait_arrived(2)
        put(shop, "MUG-1", 3, who="alice")
    finally:
        held.released.set()
        lambda_runtime.faults.before_invoke = None

    for response in placed:
        assert shop.wait_checkout(response.json_body["order_id"]) == "SUCCEEDED"
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 1)]


def test_lines_added_after_the_cart_was_emptied_stay_when_an_earlier_order_completes(
    shop: Shop, local_aws: LocalAws
) -> None:
    """Placed from the cart, then the cart emptied (DELETE) and the same SKU added again: what is in
    the cart now came after the order, so its completion removes nothing."""
    put(shop, "MUG-1", 2, who="alice")
    with placed_from_cart_before_completion(shop, local_aws) as order_id:
        emptied = shop.client.http.delete("/cart", headers={"Authorization": f"Bearer {shop.token('alice')}"})
        assert emptied.status_code == 204
        put(shop, "MUG-1", 2, who="alice")

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 2)]


def test_a_line_removed_and_added_again_after_placing_stays_when_the_order_completes(
    shop: Shop, local_aws: LocalAws
) -> None:
    """Removing a line (quantity 0) and adding it again is a new line, as after emptying the whole cart:
    the completion takes the order's quantities only from lines the cart held when the order read it."""
    put(shop, "MUG-1", 2, who="alice")
    put(shop, "TEE-1", 1, who="alice")
    with placed_from_cart_before_completion(shop, local_aws) as order_id:
        assert lines(put(shop, "MUG-1", 0, who="alice").json_body) == [("TEE-1", 1)]
        put(shop, "MUG-1", 2, who="alice")

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert shop.order(order_id).status == "COMPLETED"
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 2)]  # the ordered tee went, the new mugs stay


def test_lines_added_after_the_cart_was_emptied_while_its_order_was_placed_stay(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The placement reads the cart; the shopper empties it before the order is stored (and stamped
    ``created_at``) and adds the same SKU again afterwards. Those mugs are not the order's: whatever the
    clocks of the two requests said, the cart's versions say they came after the read."""
    from shop.domain import orders as order_domain

    put(shop, "MUG-1", 2, who="alice")
    real_read = cart_domain.lines_for_checkout

    def read_then_emptied(customer_id: str) -> cart_domain.CartForCheckout:
        read = real_read(customer_id)
        emptied = shop.client.http.delete("/cart", headers={"Authorization": f"Bearer {shop.token('alice')}"})
        assert emptied.status_code == 204
        return read

    monkeypatch.setattr(order_domain.carts, "lines_for_checkout", read_then_emptied)
    with placed_from_cart_before_completion(shop, local_aws) as order_id:
        monkeypatch.setattr(order_domain.carts, "lines_for_checkout", real_read)
        assert [(line.sku, line.quantity) for line in shop.order(order_id).items] == [("MUG-1", 2)]
        assert get(shop, who="alice").json_body["items"] == []
        put(shop, "MUG-1", 2, who="alice")

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert shop.order(order_id).status == "COMPLETED"
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 2)]


def test_an_order_and_a_cart_stored_before_cart_versions_complete_as_they_did(shop: Shop, local_aws: LocalAws) -> None:
    """An order without ``cart_version`` and a cart without ``added_in_version`` (stored by the code before
    them): the completion still removes the ordered quantities, and nothing after the cart was emptied."""
    put(shop, "MUG-1", 3, who="alice")
    with placed_from_cart_before_completion(shop, local_aws) as order_id:
        dynamodb = local_aws.client("dynamodb")
        dynamodb.update_item(
            TableName=local_aws.table("OrdersTable"),
            Key={"order_id": {"S": order_id}},
            UpdateExpression="REMOVE cart_version",
        )
        dynamodb.update_item(
            TableName=local_aws.table("CartsTable"),
            Key={"cart_id": {"S": "customer#alice"}},
            UpdateExpression="REMOVE added_in_version",
        )
        assert shop.order(order_id).cart_version is None
        put(shop, "TEE-1", 1, who="alice")  # a new line: recorded from now on

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert lines(get(shop, who="alice").json_body) == [("TEE-1", 1)]

    with placed_from_cart_before_completion(shop, local_aws) as order_id:
        local_aws.client("dynamodb").update_item(
            TableName=local_aws.table("OrdersTable"),
            Key={"order_id": {"S": order_id}},
            UpdateExpression="REMOVE cart_version",
        )
        shop.client.http.delete("/cart", headers={"Authorization": f"Bearer {shop.token('alice')}"})
        put(shop, "TEE-1", 1, who="alice")

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert lines(get(shop, who="alice").json_body) == [("TEE-1", 1)]  # emptied after its created_at: kept


def test_a_merge_cancelled_for_another_reason_than_a_changed_cart_is_contention_not_a_conflict(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a failed condition means a cart changed since it was read (CartVersionConflict: read again and
    retry); a transaction cancelled for anything else (another transaction on an item) is the carts being busy."""
    from botocore.exceptions import ClientError

    from shop.errors import CartContention
    from shop.models.carts import StoredCart

    def cancelled(operation: str, **request: Any) -> Any:
        reasons = [{"Code": "None"}, {"Code": "TransactionConflict"}]
        raise ClientError(
            {"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"}, "CancellationReasons": reasons},
            "TransactWriteItems",
        )

    monkeypatch.setattr(cart_repository, "call", cancelled)
    mine = StoredCart(cart_id="customer#alice", version=2, updated_at="x", expires_at=NOW)
    anonymous = StoredCart(cart_id="anonymous#a", version=4, updated_at="x", expires_at=NOW)

    with pytest.raises(CartContention):
        cart_repository.merge(mine, expected_version=1, emptied=anonymous, emptied_expected_version=3)


def test_a_tab_that_read_the_cart_before_it_was_emptied_cannot_overwrite_the_new_one(shop: Shop) -> None:
    """Emptying keeps the item and moves its version on: a write based on the old read is refused,
    even when the cart was started afresh meanwhile."""
    put(shop, "MUG-1", 1, who="alice")
    stale = cart_repository.get(cart_domain.customer_cart_id("alice"))
    assert stale is not None
    assert (
        shop.client.http.delete("/cart", headers={"Authorization": f"Bearer {shop.token('alice')}"}).status_code == 204
    )
    put(shop, "TEE-1", 1, who="alice")

    with pytest.raises(cart_repository.CartVersionConflict):
        cart_repository.put(stale.model_copy(update={"version": stale.version + 1}), expected_version=stale.version)
    assert lines(get(shop, who="alice").json_body) == [("TEE-1", 1)]


def test_a_cart_that_cannot_be_written_leaves_the_order_completed(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order and its books are settled before the cart is touched: a cart that stays
    unwritable keeps its lines, and the order still completes (never flagged for attention)."""
    from shop.errors import OrderContention

    def unwritable(order: Any) -> None:
        raise OrderContention("the carts table is throttling")

    monkeypatch.setattr(cart_domain, "remove_ordered_lines", unwritable)
    put(shop, "MUG-1", 2, who="alice")
    placed = order_from_cart(shop)

    assert shop.wait_checkout(placed.json_body["order_id"]) == "SUCCEEDED"
    assert shop.order(placed.json_body["order_id"]).status == "COMPLETED"
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 2)]


def test_a_cart_item_that_is_not_a_cart_leaves_the_order_completed(shop: Shop, local_aws: LocalAws) -> None:
    """The cart became unreadable (an item written behind the shop's back) while its order ran: the
    order completes as any other (no dead letter, never flagged), and the item is left as it was for
    an operator; reading that cart is a 500 problem, not a crash."""
    from infra.local import lambda_runtime

    put(shop, "MUG-1", 2, who="alice")
    placed = order_from_cart(shop)
    assert placed.status_code == 202, placed.body
    dynamodb = local_aws.client("dynamodb")
    key = {"cart_id": {"S": "customer#alice"}}
    table = local_aws.table("CartsTable")

    def break_the_cart(function_name: str, event: Any) -> None:
        if function_name == local_aws.function("CompleteOrderFunction"):
            dynamodb.update_item(
                TableName=table,
                Key=key,
                UpdateExpression="SET #lines = :text",
                ExpressionAttributeNames={"#lines": "lines"},
                ExpressionAttributeValues={":text": {"S": "not a list of lines"}},
            )

    lambda_runtime.faults.before_invoke = break_the_cart
    try:
        assert shop.wait_checkout(placed.json_body["order_id"]) == "SUCCEEDED"
    finally:
        lambda_runtime.faults.before_invoke = None

    order = shop.order(placed.json_body["order_id"])
    assert order.status == "COMPLETED"
    payment = shop.payment(order.order_id)
    assert payment is not None
    assert (payment["status"], payment["captured"]["amount"]) == ("CAPTURED", order.total.amount)
    assert shop.dead_letter(order.order_id) is None
    assert dynamodb.get_item(TableName=table, Key=key)["Item"]["lines"] == {"S": "not a list of lines"}
    unreadable = get(shop, who="alice")
    assert unreadable.status_code == 500
    assert unreadable.json_body["type"].endswith("stored-item-unusable")


@pytest.mark.parametrize(
    ("broken", "value", "emptied_at"),
    [
        ("lines", {"S": "not a list of lines"}, str(FIRST + 2)),
        # No number to go on: the clock's version, as a new cart's.
        ("version", {"S": "seven"}, str(FIRST)),
        ("version", {"N": "2.5"}, "3"),
        # Below zero (written behind the shop's back): the next version is never below 1.
        ("version", {"N": "-2.5"}, "1"),
    ],
    ids=["lines", "version-not-a-number", "version-not-an-integer", "version-negative"],
)
def test_delete_cart_empties_a_cart_that_cannot_be_read(
    shop: Shop,
    local_aws: LocalAws,
    monkeypatch: pytest.MonkeyPatch,
    broken: str,
    value: dict[str, str],
    emptied_at: str,
) -> None:
    """Every other cart route answers 500 on a cart item the shop cannot read; DELETE /cart is the
    shopper's way out: an empty cart at the next version (a tab's write from an older read is refused),
    and the cart works again."""
    monkeypatch.setattr(cart_domain, "_now", lambda: NOW)
    put(shop, "MUG-1", 2, who="alice")
    put(shop, "MUG-1", 3, who="alice")  # the second version
    dynamodb = local_aws.client("dynamodb")
    table, key = local_aws.table("CartsTable"), {"cart_id": {"S": "customer#alice"}}
    dynamodb.update_item(
        TableName=table,
        Key=key,
        UpdateExpression="SET #broken = :value",
        ExpressionAttributeNames={"#broken": broken},
        ExpressionAttributeValues={":value": value},
    )
    unreadable = get(shop, who="alice")
    assert unreadable.status_code == 500
    assert "DELETE /cart" in unreadable.json_body["detail"]

    emptied = shop.client.http.delete("/cart", headers={"Authorization": f"Bearer {shop.token('alice')}"})

    assert emptied.status_code == 204, emptied.body
    item = dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
    assert item["version"] == {"N": emptied_at}
    assert "cleared_at" in item
    assert lines(get(shop, who="alice").json_body) == []
    assert put(shop, "CAP-1", 1, who="alice").status_code == 200
    assert lines(get(shop, who="alice").json_body) == [("CAP-1", 1)]


def test_a_late_completion_after_the_cart_was_purged_leaves_the_new_carts_lines(
    shop: Shop, faults: StepFaults, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order's completion fails and waits for an operator; meanwhile the cart expires and TTL purges
    it, and the shopper starts a new one with the same mugs. The redriven completion must leave the new
    cart alone. A purged cart restarted at version 1, the order's cart version: the completion took the
    mugs out of the new cart (a helper's probe)."""
    monkeypatch.setattr(cart_domain, "_now", lambda: NOW)
    put(shop, "MUG-1", 2, who="alice")
    faults.fail("CompleteOrderFunction")
    order_id = order_from_cart(shop).json_body["order_id"]
    assert shop.wait_checkout(order_id) == "FAILED"
    shop.wait_status(order_id, "NEEDS_ATTENTION")
    assert shop.order(order_id).cart_version == FIRST

    # A week without a change: the cart expires, and TTL deletes it some time after.
    monkeypatch.setattr(cart_domain, "_now", lambda: NOW + CART_LIFETIME_SECONDS + 3600)
    dynamodb = local_aws.client("dynamodb")
    dynamodb.delete_item(TableName=local_aws.table("CartsTable"), Key={"cart_id": {"S": "customer#alice"}})
    put(shop, "MUG-1", 2, who="alice")
    put(shop, "TEE-1", 1, who="alice")

    faults.heal()
    assert shop.redrive(order_id).status_code == 202
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"
    shop.wait_status(order_id, "COMPLETED")

    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 2), ("TEE-1", 1)]


def test_a_declined_card_leaves_the_cart_as_it_was(shop: Shop) -> None:
    put(shop, "MUG-1", 2, who="alice")
    before = get(shop, who="alice").json_body

    placed = order_from_cart(shop, token="tok_chargeDeclined")

    assert placed.status_code == 202, placed.body
    assert shop.wait_checkout(placed.json_body["order_id"]) == "SUCCEEDED"
    assert shop.order(placed.json_body["order_id"]).failure_reason == "PAYMENT_DECLINED"
    assert get(shop, who="alice").json_body == before


def cart_lines(shop: Shop, who: str = "alice") -> list[tuple[str, int]]:
    return lines(get(shop, who=who).json_body)


def test_a_stock_out_leaves_the_cart_as_it_was(shop: Shop) -> None:
    put(shop, "CAP-1", 1, who="alice")
    put(shop, "MUG-1", 1, who="alice")
    before = cart_lines(shop)
    bob = shop.place_ok([("CAP-1", 1)], who="bob")  # the last cap goes to bob first
    assert shop.wait_checkout(bob["order_id"]) == "SUCCEEDED"

    placed = order_from_cart(shop)

    assert placed.status_code == 202, placed.body
    assert shop.wait_checkout(placed.json_body["order_id"]) == "SUCCEEDED"
    assert shop.order(placed.json_body["order_id"]).failure_reason == "OUT_OF_STOCK"
    assert cart_lines(shop) == before


@pytest.mark.parametrize(
    "step", ["RecordProgressFunction", "CapturePaymentFunction"], ids=["before-payment", "during-capture"]
)
def test_a_cancellation_leaves_the_cart_as_it_was(shop: Shop, local_aws: LocalAws, step: str) -> None:
    """Cancelled before the payment (CANCELLED), or while the capture runs (the capture is refunded:
    REFUNDED): either way the order never completed, so its lines stay in the cart."""
    from infra.local import lambda_runtime

    put(shop, "MUG-1", 2, who="alice")
    before = cart_lines(shop)
    pause = PauseAt(local_aws.function(step))
    lambda_runtime.faults.before_invoke = pause
    placed = order_from_cart(shop)
    assert placed.status_code == 202, placed.body
    order_id = placed.json_body["order_id"]
    pause.wait_reached()

    assert shop.cancel(order_id).status_code == 202
    pause.released.set()

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    if step == "CapturePaymentFunction":
        assert shop.wait_refund(order_id) == "SUCCEEDED"
    assert shop.order(order_id).status == ("REFUNDED" if step == "CapturePaymentFunction" else "CANCELLED")
    assert cart_lines(shop) == before


def test_the_completion_step_delivered_twice_removes_the_lines_once(shop: Shop) -> None:
    put(shop, "MUG-1", 2, who="alice")
    placed = order_from_cart(shop).json_body
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    put(shop, "MUG-1", 2, who="alice")  # the shopper wants two more

    # The completion step runs again (an at-least-once delivery, a redrive): nothing more is removed.
    order = shop.order(placed["order_id"])
    cart_domain.remove_ordered_lines(order)
    from shop.domain import order_saga
    from shop.models.orders import CompleteOrder

    order_saga.complete_order(CompleteOrder(order_id=placed["order_id"]))

    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 2)]
    assert order.cart_id == "customer#alice"  # the dev tokens' subject is the user name


def test_an_order_from_a_cart_with_a_line_no_longer_for_sale_is_422_and_places_nothing(shop: Shop) -> None:
    put(shop, "MUG-1", 1, who="alice")
    put(shop, "TEE-1", 1, who="alice")
    deactivate("TEE-1")

    refused = order_from_cart(shop)

    assert (refused.status_code, refused.json_body["type"]) == (422, "urn:shop:problem:product-unavailable")
    assert shop.executions("CheckoutStateMachine") == []
    dynamodb = shop.aws.client("dynamodb")
    assert dynamodb.scan(TableName=shop.aws.table("OrdersTable"), Select="COUNT")["Count"] == 0
    assert lines(get(shop, who="alice").json_body) == [("MUG-1", 1), ("TEE-1", 1)]  # the cart as it was


def test_an_order_from_an_empty_cart_is_422_and_places_nothing(shop: Shop) -> None:
    empty = order_from_cart(shop)

    assert (empty.status_code, empty.json_body["type"]) == (422, "urn:shop:problem:cart-empty")
    assert shop.executions("CheckoutStateMachine") == []
    dynamodb = shop.aws.client("dynamodb")
    assert dynamodb.scan(TableName=shop.aws.table("OrdersTable"), Select="COUNT")["Count"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"cart": False, "payment": {"token": "tok_visa"}},
        {"cart": "true", "payment": {"token": "tok_visa"}},
        # A Literal[True] compares by equality: 1 and 1.0 placed an order from the cart (a helper's probe).
        {"cart": 1, "payment": {"token": "tok_visa"}},
        {"cart": 1.0, "payment": {"token": "tok_visa"}},
        {"cart": None, "payment": {"token": "tok_visa"}},
        {"cart": True, "items": [{"sku": "MUG-1", "quantity": 1}], "payment": {"token": "tok_visa"}},
        {"payment": {"token": "tok_visa"}},
        {"cart": True},
    ],
)
def test_a_bad_cart_order_body_is_400_and_places_nothing(shop: Shop, body: dict[str, Any]) -> None:
    put(shop, "MUG-1", 1, who="alice")
    before = stored_carts(shop)

    response = shop.place([], body=body)

    assert response.status_code == 400, response.body
    assert response.headers["Content-Type"] == "application/problem+json"
    assert shop.executions("CheckoutStateMachine") == []
    assert stored_carts(shop) == before


def test_replaying_a_cart_order_answers_the_same_order_even_after_the_cart_emptied(shop: Shop) -> None:
    put(shop, "MUG-1", 1, who="alice")
    first = order_from_cart(shop, key="cart-key-1")
    assert shop.wait_checkout(first.json_body["order_id"]) == "SUCCEEDED"
    assert get(shop, who="alice").json_body["items"] == []

    replay = order_from_cart(shop, key="cart-key-1")

    assert (replay.status_code, replay.json_body["order_id"]) == (202, first.json_body["order_id"])
    assert len(shop.executions("CheckoutStateMachine")) == 1
    # With the idempotency record gone (expired), the stored order still answers it.
    shop.aws.client("dynamodb").delete_item(
        TableName=shop.aws.table("IdempotencyTable"),
        Key={"id": next(iter(_idempotency_ids(shop)))},
    )
    late = order_from_cart(shop, key="cart-key-1")
    assert (late.status_code, late.json_body["order_id"]) == (202, first.json_body["order_id"])


def _idempotency_ids(shop: Shop) -> list[dict[str, str]]:
    items = shop.aws.client("dynamodb").scan(TableName=shop.aws.table("IdempotencyTable"))["Items"]
    return [item["id"] for item in items]
