"""The operators' console and the admin routes it needs: GET /ops, GET /admin/orders (filters, bad
input, paging) and GET /admin/stock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import LocalAws
from tests.service.orders_helpers import Shop, deactivate, open_shop, seed_product

PROBLEM = "application/problem+json"


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=100)
    with open_shop(local_aws) as opened:
        yield opened


@pytest.fixture
def placed(shop: Shop) -> dict[str, dict[str, Any]]:
    """Three settled orders, placed one after the other: alice's completed and declined ones, bob's completed one."""
    orders: dict[str, dict[str, Any]] = {}
    for name, who, token in (
        ("alice_ok", "alice", "tok_visa"),
        ("alice_declined", "alice", "tok_chargeDeclined"),
        ("bob_ok", "bob", "tok_visa"),
    ):
        order_id = shop.place_ok([("MUG-1", 1)], who=who, token=token)["order_id"]
        shop.wait_checkout(order_id)
        orders[name] = shop.get(order_id, who="admin").json_body
    return orders


def _admin_get(shop: Shop, path: str, **query: str) -> Any:
    return shop.client.http.get(_with_query(path, query), headers=shop.headers("admin"))


def _with_query(path: str, query: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return f"{path}?{urlencode(query)}" if query else path


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.body
    return [order["order_id"] for order in response.json_body["items"]]


def _all_pages(shop: Shop, **query: str) -> tuple[list[str], int]:
    ids: list[str] = []
    pages = 0
    token: str | None = None
    while True:
        page = _admin_get(shop, "/admin/orders", **query, **({"next_token": token} if token else {}))
        ids += _ids(page)
        pages += 1
        token = page.json_body["next_token"]
        if token is None:
            return ids, pages


# ---------------------------------------------------------------------------- filters
def test_admin_orders_filter_by_status_reason_customer_and_time(shop: Shop, placed: dict[str, Any]) -> None:
    alice_ok, alice_declined, bob_ok = (placed[name] for name in ("alice_ok", "alice_declined", "bob_ok"))
    assert (alice_ok["status"], alice_declined["status"], bob_ok["status"]) == ("COMPLETED", "CANCELLED", "COMPLETED")

    assert sorted(_ids(_admin_get(shop, "/admin/orders"))) == sorted(o["order_id"] for o in placed.values())
    # An index query: newest first.
    assert _ids(_admin_get(shop, "/admin/orders", status="COMPLETED")) == [bob_ok["order_id"], alice_ok["order_id"]]
    assert _ids(_admin_get(shop, "/admin/orders", status="CANCELLED", reason="PAYMENT_DECLINED")) == [
        alice_declined["order_id"]
    ]
    assert _ids(_admin_get(shop, "/admin/orders", reason="PAYMENT_DECLINED")) == [alice_declined["order_id"]]
    assert _ids(_admin_get(shop, "/admin/orders", status="REFUNDED")) == []
    alice = alice_ok["customer_id"]
    assert _ids(_admin_get(shop, "/admin/orders", customer=alice)) == [
        alice_declined["order_id"],
        alice_ok["order_id"],
    ]
    assert _ids(_admin_get(shop, "/admin/orders", customer=alice, status="COMPLETED")) == [alice_ok["order_id"]]
    assert _ids(_admin_get(shop, "/admin/orders", customer=bob_ok["customer_id"], reason="PAYMENT_DECLINED")) == []

    # since/until bound the creation time, inclusively, on every path (status index, customer index, scan).
    middle = alice_declined["created_at"]
    assert _ids(_admin_get(shop, "/admin/orders", since=middle, until=middle)) == [alice_declined["order_id"]]
    assert _ids(_admin_get(shop, "/admin/orders", customer=alice, since=middle)) == [alice_declined["order_id"]]
    assert _ids(_admin_get(shop, "/admin/orders", status="COMPLETED", until=middle)) == [alice_ok["order_id"]]
    assert _ids(_admin_get(shop, "/admin/orders", status="COMPLETED", since=bob_ok["created_at"])) == [
        bob_ok["order_id"]
    ]
    # Years before 1000 still sort before later ones (the bounds are zero-padded).
    wide = {"since": "0999-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z"}
    assert _ids(_admin_get(shop, "/admin/orders", status="COMPLETED", **wide)) == [
        bob_ok["order_id"],
        alice_ok["order_id"],
    ]
    # Any offset names the same instant as its UTC form.
    assert bob_ok["created_at"].endswith("Z")
    shifted = bob_ok["created_at"][:-1] + "+00:00"
    assert _ids(_admin_get(shop, "/admin/orders", since=shifted)) == [bob_ok["order_id"]]
    listed = _admin_get(shop, "/admin/orders", customer=alice, status="CANCELLED").json_body["items"][0]
    assert listed["failure_reason"] == "PAYMENT_DECLINED" and listed["history"] == alice_declined["history"]


@pytest.mark.parametrize("finer", ["1", "0001"])  # a datetime keeps 6 digits: the 7th counts too
def test_bounds_finer_than_a_millisecond_never_widen_the_range(shop: Shop, placed: dict[str, Any], finer: str) -> None:
    """Stored times have milliseconds: an inclusive ``since`` within a stored millisecond rounds up,
    ``until`` rounds down, and two bounds are compared as given."""
    alice_declined, bob_ok = placed["alice_declined"], placed["bob_ok"]
    middle = alice_declined["created_at"]
    assert middle.endswith("Z") and len(middle.rsplit(".", 1)[1]) == 4  # milliseconds and the Z
    just_after, later_still = middle[:-1] + finer + "Z", middle[:-1] + finer[:-1] + "2Z"
    just_before = middle[:-1] + "9Z"
    for query in ({}, {"status": "CANCELLED"}, {"customer": alice_declined["customer_id"]}):
        listed = _ids(_admin_get(shop, "/admin/orders", since=just_after, **query))
        assert alice_declined["order_id"] not in listed, query  # created before `since`
        assert (
            _ids(_admin_get(shop, "/admin/orders", until=just_before, **query)).count(alice_declined["order_id"]) == 1
        )
    assert _ids(_admin_get(shop, "/admin/orders", since=just_after)) == [bob_ok["order_id"]]

    for since, until in ((just_before, just_after), (later_still, just_after)):
        refused = _admin_get(shop, "/admin/orders", since=since, until=until)
        assert (refused.status_code, refused.headers["Content-Type"]) == (400, PROBLEM), (since, until)
    # One instant inside a stored millisecond: a valid range that holds no stored time (DynamoDB
    # refuses a BETWEEN whose bounds are reversed, so it is never asked).
    for query in ({}, {"status": "CANCELLED"}, {"customer": alice_declined["customer_id"]}):
        assert _ids(_admin_get(shop, "/admin/orders", since=just_after, until=just_after, **query)) == [], query


# ---------------------------------------------------------------------------- bad input
def test_an_order_item_no_version_of_the_shop_wrote_is_left_out_of_every_listing(
    shop: Shop, local_aws: LocalAws, placed: dict[str, Any]
) -> None:
    # Written behind the shop's back into every index a listing reads: its image is not an Order.
    local_aws.client("dynamodb").put_item(
        TableName=local_aws.table("OrdersTable"),
        Item={
            "order_id": {"S": "hand-written"},
            "status": {"S": "SHIPPED"},
            "customer_id": {"S": "alice"},
            "created_key": {"S": "2999-01-01T00:00:00Z#hand-written"},
            "created_at": {"S": "2999-01-01T00:00:00Z"},
            "outcome": {"S": "COMPLETED#0"},
            "in_progress_for": {"S": "alice"},
        },
    )
    alice_ok, alice_declined, bob_ok = (placed[name]["order_id"] for name in ("alice_ok", "alice_declined", "bob_ok"))

    assert sorted(_all_pages(shop)[0]) == sorted([alice_ok, alice_declined, bob_ok])  # the table's scan
    assert _ids(_admin_get(shop, "/admin/orders", customer="alice")) == [alice_declined, alice_ok]
    assert _ids(_admin_get(shop, "/admin/orders", status="COMPLETED")) == [bob_ok, alice_ok]
    assert _ids(_admin_get(shop, "/admin/orders", status="PENDING")) == []  # OrdersInProgress
    assert _ids(shop.client.http.get("/orders", headers=shop.headers("alice"))) == [alice_declined, alice_ok]
    # Read on its own, it is the server's fault, not the caller's.
    answer = shop.get("hand-written", who="admin")
    assert answer.status_code == 500 and answer.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("route", "partition", "sort_key"),
    [
        ("/admin/dead-letters", "DEAD_LETTER", "ORDER#hand-written"),
        ("/admin/unreadable-records", "UNREADABLE_RECORD", "hand-written"),
        ("/admin/stock-discrepancies", "STOCK_DISCREPANCY", "SKU#HAND-WRITTEN"),
    ],
)
def test_an_operations_item_no_version_of_the_shop_wrote_is_left_out_of_its_listing(
    shop: Shop, local_aws: LocalAws, route: str, partition: str, sort_key: str
) -> None:
    # The operators' own records share OperationsTable; one they cannot read must not take the listing down.
    local_aws.client("dynamodb").put_item(
        TableName=local_aws.table("OperationsTable"),
        Item={"pk": {"S": partition}, "sk": {"S": sort_key}, "status": {"S": "OPEN"}},
    )
    response = _admin_get(shop, route)
    assert response.status_code == 200, response.body
    assert response.json_body["items"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "LOST"}, "status"),
        ({"reason": "BAD_LUCK"}, "reason"),
        ({"customer": ""}, "customer"),
        ({"customer": "a b"}, "customer"),
        ({"since": "yesterday"}, "since"),
        ({"until": "0.5"}, "until"),  # seconds since 1970 are not RFC 3339
        ({"since": "2026-01-01"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),  # no offset: which instant is meant is unknown
        ({"until": "0001-01-01T00:00:00+01:00"}, "until"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "query"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"sort": "asc"}, "sort"),
        ({"next_token": "forged"}, "next_token"),
    ],
)
def test_admin_orders_bad_query_is_a_400_problem_naming_the_field(
    shop: Shop, query: dict[str, str], field: str
) -> None:
    response = _admin_get(shop, "/admin/orders", **query)
    assert response.status_code == 400, response.body
    assert response.headers["Content-Type"] == PROBLEM
    assert field in {issue["field"] for issue in response.json_body["errors"]}


def test_admin_orders_is_for_admins_only(shop: Shop) -> None:
    assert shop.client.http.get("/admin/orders").status_code == 401
    forbidden = shop.client.http.get("/admin/orders", headers=shop.headers("alice"))
    assert forbidden.status_code == 403 and forbidden.headers["Content-Type"] == PROBLEM


# ---------------------------------------------------------------------------- paging
@pytest.mark.parametrize("query", [{}, {"status": "COMPLETED"}, {"customer": "alice"}])
def test_admin_orders_pages_follow_next_token_to_every_order_once(
    shop: Shop, placed: dict[str, Any], query: dict[str, str]
) -> None:
    if "customer" in query:
        query = {"customer": placed["alice_ok"]["customer_id"]}
    expected = [
        order["order_id"]
        for order in sorted(placed.values(), key=lambda order: order["created_at"], reverse=True)
        if order["status"] == query.get("status", order["status"])
        and order["customer_id"] == query.get("customer", order["customer_id"])
    ]

    ids, pages = _all_pages(shop, limit="1", **query)

    assert sorted(ids) == sorted(expected) and len(set(ids)) == len(ids)
    assert pages >= len(expected)
    if query:  # an index: newest first across pages too
        assert ids == expected


def test_a_next_token_only_continues_the_query_it_was_issued_for(shop: Shop, placed: dict[str, Any]) -> None:
    first = _admin_get(shop, "/admin/orders", status="COMPLETED", limit="1")
    token = first.json_body["next_token"]
    assert token is not None

    other_filter = _admin_get(shop, "/admin/orders", status="CANCELLED", limit="1", next_token=token)
    other_listing = shop.client.http.get(f"/orders?next_token={token}", headers=shop.headers("alice"))

    assert other_filter.status_code == other_listing.status_code == 400
    assert other_filter.json_body["errors"][0]["field"] == "next_token"


# ---------------------------------------------------------------------------- stock levels
def test_admin_stock_lists_every_product_with_low_stock_flagged(shop: Shop) -> None:
    seed_product("LOW-1", stock=2)
    seed_product("GONE-1", stock=0)
    deactivate("GONE-1")

    ids, levels = [], {}
    token: str | None = None
    while True:
        page = _admin_get(shop, "/admin/stock", limit="2", **({"next_token": token} if token else {}))
        assert page.status_code == 200, page.body
        threshold = page.json_body["low_stock_threshold"]
        for level in page.json_body["items"]:
            ids.append(level["sku"])
            levels[level["sku"]] = level
        token = page.json_body["next_token"]
        if token is None:
            break

    assert sorted(ids) == ["GONE-1", "LOW-1", "MUG-1"]
    assert 2 <= threshold < 100
    assert (levels["LOW-1"]["available"], levels["LOW-1"]["low_stock"], levels["LOW-1"]["active"]) == (2, True, True)
    assert (levels["GONE-1"]["low_stock"], levels["GONE-1"]["active"]) == (True, False)
    assert (levels["MUG-1"]["available"], levels["MUG-1"]["low_stock"]) == (100, False)
    assert shop.client.http.get("/admin/stock", headers=shop.headers("alice")).status_code == 403
    assert _admin_get(shop, "/admin/stock", next_token="forged").status_code == 400


def test_admin_stock_flags_a_product_at_the_threshold_itself_as_low(shop: Shop) -> None:
    """Low is at or below the threshold, as StockLow is announced."""
    threshold = _admin_get(shop, "/admin/stock").json_body["low_stock_threshold"]
    seed_product("EDGE-1", stock=threshold)
    seed_product("EDGE-2", stock=threshold + 1)

    page = _admin_get(shop, "/admin/stock", limit="100")

    assert page.status_code == 200, page.body
    levels = {level["sku"]: level["low_stock"] for level in page.json_body["items"]}
    assert (levels["EDGE-1"], levels["EDGE-2"]) == (True, False)


# ---------------------------------------------------------------------------- the page
def test_ops_serves_the_console_page_with_a_strict_policy_and_no_data(shop: Shop) -> None:
    response = shop.client.http.get("/ops")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy and "unsafe" not in policy
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    page = response.body.decode() if isinstance(response.body, bytes) else response.body
    assert "{{script}}" not in page and "admin/orders" in page and 'id="timeline"' in page
    assert shop.client.http.get("/ops?token=x").status_code == 400  # never a token in the query string
    document = json.loads(shop.client.http.get("/openapi.json").body)
    assert {"/ops", "/admin/orders", "/admin/stock"} <= set(document["paths"])
    assert "security" not in document["paths"]["/ops"]["get"]
    assert document["paths"]["/admin/orders"]["get"]["security"] == [{"bearerAuth": []}]
