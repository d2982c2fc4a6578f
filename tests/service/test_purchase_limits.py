"""Fair sales: a product's purchase limit per customer, through the API, the checkout and refund sagas and the steps.

The counted units of a customer live in PurchaseCountsTable; each test reads them there, with the
stock, after the sagas have settled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local import lambda_runtime
from shop.domain import catalog, inventory, reconciliation_job
from shop.errors import InventoryContention
from shop.models.catalog import UpdateProductRequest
from shop.models.common import CheckoutLine
from tests.conftest import BOTH_WORKFLOW_TYPES, LocalAws
from tests.service.faults import StepFaults
from tests.service.orders_helpers import PauseAt, Shop, available, open_shop, seed_product, steps

PROBLEM = "urn:shop:problem:purchase-limit-exceeded"


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    with open_shop(local_aws) as opened:
        yield opened


def patch(shop: Shop, sku: str, body: Any) -> Any:
    raw = body if isinstance(body, str) else json.dumps(body)
    return shop.client.http.patch(f"/products/{sku}", headers=shop.headers("admin"), body=raw)


def limited_product(shop: Shop, sku: str, *, stock: int, limit: int) -> None:
    seed_product(sku, price=1000, stock=stock)
    response = patch(shop, sku, {"purchase_limit": limit})
    assert response.status_code == 200, response.body
    assert response.json_body["purchase_limit"] == limit


def counted(local_aws: LocalAws, customer: str, sku: str) -> int:
    item = (
        local_aws.client("dynamodb")
        .get_item(
            TableName=local_aws.table("PurchaseCountsTable"),
            Key={"customer_id": {"S": customer}, "sku": {"S": sku}},
            ConsistentRead=True,
        )
        .get("Item")
    )
    return int(item["units"]["N"]) if item else 0


def counter_items(local_aws: LocalAws) -> list[dict[str, Any]]:
    table = local_aws.table("PurchaseCountsTable")
    return list(local_aws.client("dynamodb").scan(TableName=table, ConsistentRead=True)["Items"])


def orders_of(shop: Shop, who: str = "alice") -> list[dict[str, Any]]:
    return list(shop.client.http.get("/orders", headers=shop.headers(who)).json_body["items"])


def completed(shop: Shop, items: list[tuple[str, int]], **kwargs: Any) -> dict[str, Any]:
    placed = shop.place_ok(items, **kwargs)
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    return shop.get(placed["order_id"], who=kwargs.get("who", "alice")).json_body


def assert_limit_problem(response: Any, *fields: str) -> None:
    assert response.status_code == 422, response.body
    assert response.headers["Content-Type"] == "application/problem+json"
    body = json.loads(response.body)
    assert (body["type"], body["status"]) == (PROBLEM, 422)
    assert [error["field"] for error in body["errors"]] == list(fields)


# ---------------------------------------------------------------------------- the API's check
def test_a_line_over_the_limit_by_itself_is_422_and_places_nothing(shop: Shop, local_aws: LocalAws) -> None:
    limited_product(shop, "DROP-1", stock=50, limit=2)
    seed_product("MUG-1", stock=10)

    response = shop.place([("MUG-1", 1), ("DROP-1", 3)])

    assert_limit_problem(response, "items.1.quantity")
    assert json.loads(response.body)["skus"] == ["DROP-1"]
    assert orders_of(shop) == []
    assert shop.executions("CheckoutStateMachine") == []
    assert (available("DROP-1"), available("MUG-1")) == (50, 10)
    assert counter_items(local_aws) == []


def test_fifty_lines_all_limited_are_too_many_for_one_reservation_422_and_nothing_placed(
    shop: Shop, local_aws: LocalAws
) -> None:
    """50 lines with a limit each need 102 transaction actions to be released (the reservation, 50
    returns, 50 counts and the saga's claim): DynamoDB's limit is 100. Placed, the order was cancelled
    INVENTORY_UNAVAILABLE after every retry."""
    skus = [f"LIM-{number:02d}" for number in range(50)]
    for sku in skus:
        seed_product(sku, stock=5)
        catalog.update_product(sku, UpdateProductRequest(purchase_limit=3))

    refused = shop.place([(sku, 1) for sku in skus])

    assert refused.status_code == 422, refused.body
    body = json.loads(refused.body)
    assert (body["type"], [error["field"] for error in body["errors"]]) == (
        "urn:shop:problem:too-many-limited-lines",
        ["items"],
    )
    assert "at most 48" in body["errors"][0]["message"]
    assert orders_of(shop) == [] and shop.executions("CheckoutStateMachine") == []
    assert counter_items(local_aws) == [] and {available(sku) for sku in skus} == {5}

    # 48 limited lines and two without a limit fit exactly: 1 + 50 + 48 + 1 = 100 actions.
    seed_product("FREE-1", stock=5)
    seed_product("FREE-2", stock=5)
    order = completed(shop, [(sku, 1) for sku in skus[:48]] + [("FREE-1", 1), ("FREE-2", 1)])
    assert (order["status"], order["failure_reason"]) == ("COMPLETED", None)
    assert {counted(local_aws, "alice", sku) for sku in skus[:48]} == {1}
    assert {available(sku) for sku in skus[:48]} == {4} and available("FREE-1") == available("FREE-2") == 4


def test_the_customers_counted_units_count_and_other_customers_are_not_affected(
    shop: Shop, local_aws: LocalAws
) -> None:
    limited_product(shop, "DROP-1", stock=50, limit=3)
    first = completed(shop, [("DROP-1", 2)])
    assert first["status"] == "COMPLETED"
    assert counted(local_aws, "alice", "DROP-1") == 2

    refused = shop.place([("DROP-1", 2)])

    assert_limit_problem(refused, "items.0.quantity")
    assert "hold 2" in json.loads(refused.body)["errors"][0]["message"]
    assert [order["order_id"] for order in orders_of(shop)] == [first["order_id"]]
    assert available("DROP-1") == 48
    assert completed(shop, [("DROP-1", 1)])["status"] == "COMPLETED"  # up to the limit exactly
    assert completed(shop, [("DROP-1", 3)], who="bob")["status"] == "COMPLETED"
    assert (counted(local_aws, "alice", "DROP-1"), counted(local_aws, "bob", "DROP-1")) == (3, 3)
    assert available("DROP-1") == 44


def test_a_limit_lowered_below_what_the_customer_holds_says_none_more_not_a_negative_number(
    shop: Shop, local_aws: LocalAws
) -> None:
    limited_product(shop, "DROP-1", stock=50, limit=3)
    assert completed(shop, [("DROP-1", 3)])["status"] == "COMPLETED"
    assert patch(shop, "DROP-1", {"purchase_limit": 1}).status_code == 200

    refused = shop.place([("DROP-1", 1)])

    assert_limit_problem(refused, "items.0.quantity")
    assert json.loads(refused.body)["errors"][0]["message"].endswith("hold 3, so at most 0 more")


def test_an_unlimited_order_writes_no_counter_and_stores_nothing_more(shop: Shop, local_aws: LocalAws) -> None:
    seed_product("MUG-1", stock=10)
    order = completed(shop, [("MUG-1", 2)])

    assert order["status"] == "COMPLETED"
    assert counter_items(local_aws) == []
    dynamodb = local_aws.client("dynamodb")
    stored_order = dynamodb.get_item(
        TableName=local_aws.table("OrdersTable"), Key={"order_id": {"S": order["order_id"]}}
    )["Item"]
    reservation = dynamodb.get_item(
        TableName=local_aws.table("ReservationsTable"), Key={"reservation_id": {"S": order["order_id"]}}
    )["Item"]
    assert "purchase_limits" not in stored_order
    assert "customer_id" not in reservation
    assert reservation["lines"] == {
        "L": [
            {
                "M": {
                    "sku": {"S": "MUG-1"},
                    "quantity": {"N": "2"},
                    "takes": {"L": [{"M": {"shard": {"N": "0"}, "quantity": {"N": "2"}}}]},
                }
            }
        ]
    }


def test_a_limit_set_later_applies_to_orders_placed_later(shop: Shop, local_aws: LocalAws) -> None:
    seed_product("DROP-1", stock=20)
    completed(shop, [("DROP-1", 2)])  # placed before the limit: counted nowhere
    assert patch(shop, "DROP-1", {"purchase_limit": 2}).status_code == 200

    assert completed(shop, [("DROP-1", 2)])["status"] == "COMPLETED"
    assert_limit_problem(shop.place([("DROP-1", 1)]), "items.0.quantity")
    cleared = patch(shop, "DROP-1", {"purchase_limit": None})
    assert cleared.status_code == 200 and cleared.json_body["purchase_limit"] is None
    assert completed(shop, [("DROP-1", 5)])["status"] == "COMPLETED"
    assert counted(local_aws, "alice", "DROP-1") == 2  # an unlimited order is not counted
    assert available("DROP-1") == 11


# ---------------------------------------------------------------------------- the saga
def test_a_race_only_the_saga_sees_cancels_the_later_order(shop: Shop, local_aws: LocalAws) -> None:
    """Both orders pass the API's check (nothing counted yet); the first to reserve wins."""
    limited_product(shop, "DROP-1", stock=10, limit=3)
    pause = PauseAt(local_aws.function("ReserveStockFunction"))
    lambda_runtime.faults.before_invoke = pause  # holds the first order's reservation only
    held = shop.place_ok([("DROP-1", 2)])
    pause.wait_reached()

    winner = completed(shop, [("DROP-1", 2)])
    pause.released.set()

    assert winner["status"] == "COMPLETED"
    assert shop.wait_checkout(held["order_id"]) == "SUCCEEDED"
    loser = shop.get(held["order_id"]).json_body
    assert (loser["status"], loser["failure_reason"]) == ("CANCELLED", "PURCHASE_LIMIT_EXCEEDED")
    assert loser["payment"] is None
    assert steps(loser)[-3:] == [
        ("reserve_stock", "FAILED"),
        ("release_stock", "SUCCEEDED"),
        ("cancel_order", "CANCELLED"),
    ]
    assert available("DROP-1") == 8
    assert counted(local_aws, "alice", "DROP-1") == 2


def test_a_cancelled_order_frees_its_units(shop: Shop, local_aws: LocalAws) -> None:
    limited_product(shop, "DROP-1", stock=10, limit=2)

    declined = completed(shop, [("DROP-1", 2)], token="tok_chargeDeclined")

    assert (declined["status"], declined["failure_reason"]) == ("CANCELLED", "PAYMENT_DECLINED")
    assert counted(local_aws, "alice", "DROP-1") == 0
    assert available("DROP-1") == 10
    assert completed(shop, [("DROP-1", 2)])["status"] == "COMPLETED"
    assert counted(local_aws, "alice", "DROP-1") == 2


def test_a_customers_cancel_frees_the_units(shop: Shop, local_aws: LocalAws) -> None:
    limited_product(shop, "DROP-1", stock=10, limit=2)
    pause = PauseAt(local_aws.function("RecordProgressFunction"), lambda event: event.get("step") == "reserve_stock")
    lambda_runtime.faults.before_invoke = pause
    placed = shop.place_ok([("DROP-1", 2)])
    pause.wait_reached()
    assert counted(local_aws, "alice", "DROP-1") == 2  # held while the order is in progress

    assert shop.cancel(placed["order_id"]).status_code == 202
    pause.released.set()

    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    order = shop.get(placed["order_id"]).json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "CANCELLED_BY_CUSTOMER")
    assert counted(local_aws, "alice", "DROP-1") == 0
    assert available("DROP-1") == 10


def test_a_refunded_order_still_counts(shop: Shop, local_aws: LocalAws) -> None:
    limited_product(shop, "DROP-1", stock=10, limit=2)
    order = completed(shop, [("DROP-1", 2)])

    assert shop.cancel(order["order_id"]).status_code == 202
    assert shop.wait_refund(order["order_id"]) == "SUCCEEDED"

    assert shop.get(order["order_id"]).json_body["status"] == "REFUNDED"
    assert available("DROP-1") == 10  # the stock came back
    assert counted(local_aws, "alice", "DROP-1") == 2  # the units did not
    assert_limit_problem(shop.place([("DROP-1", 1)]), "items.0.quantity")


def test_an_order_refunded_before_it_ever_completed_frees_its_units(shop: Shop, local_aws: LocalAws) -> None:
    """Cancelled while its payment was being captured: the capture went through, so the order is refunded,
    but the customer never had the goods, so its units no longer count against the limit."""
    limited_product(shop, "DROP-1", stock=10, limit=2)
    pause = PauseAt(local_aws.function("CapturePaymentFunction"))
    lambda_runtime.faults.before_invoke = pause
    placed = shop.place_ok([("DROP-1", 2)])
    pause.wait_reached()
    assert shop.cancel(placed["order_id"]).json_body["status"] == "PAYMENT_AUTHORIZED"
    pause.released.set()
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    assert shop.wait_refund(placed["order_id"]) == "SUCCEEDED"

    order = shop.get(placed["order_id"]).json_body
    assert order["status"] == "REFUNDED" and ("complete_order", "COMPLETED") not in steps(order)
    assert order["payment"]["captured"] == order["payment"]["refunded"] == order["total"]
    assert available("DROP-1") == 10
    assert counted(local_aws, "alice", "DROP-1") == 0  # kept at 2, the customer could not buy again
    assert shop.wait_checkout(shop.place_ok([("DROP-1", 2)])["order_id"]) == "SUCCEEDED"


def test_a_replay_after_the_idempotency_record_expired_answers_the_order_not_422(
    shop: Shop, local_aws: LocalAws
) -> None:
    limited_product(shop, "DROP-1", stock=10, limit=2)
    order = completed(shop, [("DROP-1", 2)], key="drop-key")
    dynamodb = local_aws.client("dynamodb")
    table = local_aws.table("IdempotencyTable")
    for item in dynamodb.scan(TableName=table)["Items"]:  # what TTL does after 24 hours
        dynamodb.delete_item(TableName=table, Key={"id": item["id"]})

    replay = shop.place([("DROP-1", 2)], key="drop-key")

    assert replay.status_code == 202, replay.body
    assert replay.json_body["order_id"] == order["order_id"]
    assert_limit_problem(shop.place([("DROP-1", 2)], key="another-key"), "items.0.quantity")
    assert counted(local_aws, "alice", "DROP-1") == 2
    assert len(orders_of(shop)) == 1


# ---------------------------------------------------------------------------- the steps, delivered twice
def _invoke(local_aws: LocalAws, logical_id: str, event: dict[str, Any]) -> dict[str, Any]:
    response = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function(logical_id), Payload=json.dumps(event).encode()
    )
    return json.loads(response["Payload"].read())


def test_duplicate_reserve_and_release_deliveries_change_the_counters_once(local_aws: LocalAws) -> None:
    seed_product("DROP-1", stock=10)
    seed_product("MUG-1", stock=10)
    reserve = {
        "order_id": "order-1",
        "customer_id": "carol",
        "lines": [{"sku": "DROP-1", "quantity": 2, "purchase_limit": 3}, {"sku": "MUG-1", "quantity": 1}],
    }

    first, second = (
        _invoke(local_aws, "ReserveStockFunction", reserve),
        _invoke(local_aws, "ReserveStockFunction", reserve),
    )

    assert first["status"] == second["status"] == "RESERVED"
    assert (counted(local_aws, "carol", "DROP-1"), counted(local_aws, "carol", "MUG-1")) == (2, 0)
    assert (available("DROP-1"), available("MUG-1")) == (8, 9)
    over = {**reserve, "order_id": "order-2", "lines": [{"sku": "DROP-1", "quantity": 2, "purchase_limit": 3}]}
    assert _invoke(local_aws, "ReserveStockFunction", over)["errorType"] == "PurchaseLimitExceeded"
    assert (counted(local_aws, "carol", "DROP-1"), available("DROP-1")) == (2, 8)  # the refusal changed nothing

    release = {"order_id": "order-1"}
    for _ in range(2):
        assert _invoke(local_aws, "ReleaseReservationFunction", release)["status"] == "RELEASED"

    assert counted(local_aws, "carol", "DROP-1") == 0
    assert (available("DROP-1"), available("MUG-1")) == (10, 10)


def test_the_refund_release_keeps_the_units_and_the_sweeper_frees_them(local_aws: LocalAws) -> None:
    seed_product("DROP-1", stock=10)
    lines = [CheckoutLine(sku="DROP-1", quantity=1, purchase_limit=5)]
    inventory.reserve("sold", lines, customer_id="carol")
    inventory.commit("sold")
    for _ in range(2):
        kept = _invoke(local_aws, "ReleaseReservationFunction", {"order_id": "sold", "frees_purchase_units": False})
        assert kept["status"] == "RELEASED"
    assert (counted(local_aws, "carol", "DROP-1"), available("DROP-1")) == (1, 10)

    held = inventory.reserve("held", lines, customer_id="carol", now=1_000)
    assert counted(local_aws, "carol", "DROP-1") == 2
    assert inventory.release_expired(int(held.expires_at or 0) + 1).released == 1
    assert inventory.release_expired(int(held.expires_at or 0) + 1).released == 0
    assert (counted(local_aws, "carol", "DROP-1"), available("DROP-1")) == (1, 10)


# ---------------------------------------------------------------------------- the admin's PATCH
@pytest.mark.parametrize(
    "body",
    [
        '{"purchase_limit": 0}',
        '{"purchase_limit": 101}',
        '{"purchase_limit": -1}',
        '{"purchase_limit": "2"}',
        '{"purchase_limit": 2.5}',
        '{"purchase_limit": true}',
        '{"purchase_limit": [2]}',
        '{"purchase_limit": 2, "purchase_limit": 3}',
        '{"purchase_limit": 2, "name": null}',
    ],
)
def test_bad_purchase_limits_are_400_and_change_nothing(shop: Shop, local_aws: LocalAws, body: str) -> None:
    limited_product(shop, "DROP-1", stock=5, limit=4)
    before = local_aws.client("dynamodb").get_item(
        TableName=local_aws.table("ProductsTable"), Key={"sku": {"S": "DROP-1"}}, ConsistentRead=True
    )["Item"]

    response = patch(shop, "DROP-1", body)

    assert response.status_code == 400, response.body
    assert response.headers["Content-Type"] == "application/problem+json"
    after = local_aws.client("dynamodb").get_item(
        TableName=local_aws.table("ProductsTable"), Key={"sku": {"S": "DROP-1"}}, ConsistentRead=True
    )["Item"]
    assert after == before


def test_only_an_admin_sets_a_limit_and_the_product_shows_it(shop: Shop) -> None:
    seed_product("DROP-1", stock=5)
    forbidden = shop.client.http.patch(
        "/products/DROP-1", headers=shop.headers("alice"), body=json.dumps({"purchase_limit": 1})
    )
    assert forbidden.status_code == 403
    assert shop.client.http.get("/products/DROP-1").json_body["purchase_limit"] is None

    assert patch(shop, "DROP-1", {"purchase_limit": 1}).status_code == 200

    assert shop.client.http.get("/products/DROP-1").json_body["purchase_limit"] == 1
    listed = shop.client.http.get("/products").json_body["items"]
    assert [(p["sku"], p["purchase_limit"]) for p in listed] == [("DROP-1", 1)]
    assert patch(shop, "MISSING", {"purchase_limit": 1}).status_code == 404


def test_a_replay_of_a_placed_order_is_answered_after_a_limit_made_its_lines_too_many(
    shop: Shop, local_aws: LocalAws
) -> None:
    """48 limited lines and two free: placed. A limit set on the 49th since, and the idempotency record
    gone, the client's replay must get its order, not the 422 a new order of those lines gets."""
    skus = [f"LIM-{number:02d}" for number in range(50)]
    for sku in skus:
        seed_product(sku, stock=5)
    for sku in skus[:48]:
        catalog.update_product(sku, UpdateProductRequest(purchase_limit=3))
    placed = shop.place_ok([(sku, 1) for sku in skus], key="big-order")
    catalog.update_product(skus[48], UpdateProductRequest(purchase_limit=3))
    dynamodb = local_aws.client("dynamodb")
    table = local_aws.table("IdempotencyTable")
    for item in dynamodb.scan(TableName=table)["Items"]:
        dynamodb.delete_item(TableName=table, Key={"id": item["id"]})

    replay = shop.place([(sku, 1) for sku in skus], key="big-order")

    assert replay.status_code == 202, replay.body
    assert replay.json_body["order_id"] == placed["order_id"]
    assert len(orders_of(shop)) == 1
    shop.wait_checkout(placed["order_id"])


# ---------------------------------------------------------------------------- ends reached by failures
@BOTH_WORKFLOW_TYPES
@pytest.mark.parametrize("error", [InventoryContention, None], ids=["contention", "down"])
def test_a_commit_that_keeps_failing_releases_voids_and_frees_the_units(
    shop: Shop, faults: StepFaults, local_aws: LocalAws, error: type[Exception] | None
) -> None:
    """CommitReservation fails through every retry (busy inventory, or the function down): the saga
    voids the authorization, releases the hold and cancels INVENTORY_UNAVAILABLE; the stock and the
    customer's purchase units are back."""
    limited_product(shop, "DROP-1", stock=10, limit=3)
    if error is None:
        faults.fail("CommitReservationFunction")
    else:
        faults.fail("CommitReservationFunction", error)

    order_id = shop.place_ok([("DROP-1", 2)])["order_id"]

    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    order = shop.get(order_id, who="admin").json_body
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "INVENTORY_UNAVAILABLE")
    assert (order["payment"]["status"], order["payment"]["captured"]["amount"]) == ("VOIDED", 0)
    assert available("DROP-1") == 10
    assert counted(local_aws, "alice", "DROP-1") == 0


@pytest.mark.parametrize("customer_cancels", [False, True], ids=["redriven-completes", "cancelled-then-redriven"])
def test_a_redriven_order_counts_its_units_as_its_end_says(
    shop: Shop, faults: StepFaults, local_aws: LocalAws, customer_cancels: bool
) -> None:
    """The completion fails after the capture (NEEDS_ATTENTION, units counted). Redriven, the order
    completes and keeps them; cancelled by the customer first, the redrive hands it to its refund,
    and an order refunded before it ever completed gives them back. The books check agrees."""
    limited_product(shop, "DROP-1", stock=10, limit=2)
    faults.fail("CompleteOrderFunction")
    order_id = shop.place_ok([("DROP-1", 2)])["order_id"]
    assert shop.wait_checkout(order_id) == "FAILED"
    shop.wait_status(order_id, "NEEDS_ATTENTION")
    assert counted(local_aws, "alice", "DROP-1") == 2
    if customer_cancels:
        assert shop.cancel(order_id).json_body["cancel_requested"] is True
    faults.heal()

    assert shop.redrive(order_id).status_code == 202
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"

    if customer_cancels:
        assert shop.wait_refund(order_id) == "SUCCEEDED"
        shop.wait_status(order_id, "REFUNDED")
        assert (counted(local_aws, "alice", "DROP-1"), available("DROP-1")) == (0, 10)
    else:
        shop.wait_status(order_id, "COMPLETED")
        assert (counted(local_aws, "alice", "DROP-1"), available("DROP-1")) == (2, 8)
    assert reconciliation_job.run(quiescent=True).discrepancies == []
    letter = shop.dead_letter(order_id)
    assert letter is not None and letter.status == "RESOLVED"
