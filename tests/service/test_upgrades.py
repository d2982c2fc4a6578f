"""Items an earlier version stored, upgraded by ``shop.repositories.upgrades`` (``make migrate``).

Each test stores an item as today's code does, rewrites it as the named earlier commit stored it,
shows what that costs the shop unupgraded (found by a helper's probe of old layouts), upgrades, and
checks that the shop reads it again as it should, and that a second run changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shop import aws
from shop.domain import inventory, recovery
from shop.models.common import CheckoutLine
from shop.repositories import upgrades
from tests.conftest import LocalAws
from tests.service.faults import SdkFault, inject
from tests.service.orders_helpers import Shop, available, open_shop, seed_product


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=10)
    with open_shop(local_aws) as opened:
        yield opened


def _item(local_aws: LocalAws, table: str, key: dict[str, Any]) -> dict[str, Any]:
    return dict(
        local_aws.client("dynamodb").get_item(TableName=local_aws.table(table), Key=key, ConsistentRead=True)["Item"]
    )


def _put(local_aws: LocalAws, table: str, item: dict[str, Any]) -> None:
    local_aws.client("dynamodb").put_item(TableName=local_aws.table(table), Item=item)


def _as_before_08ec6b3(local_aws: LocalAws, order_id: str) -> None:
    """OrdersInProgress was keyed on ``in_progress = "IN_PROGRESS"``, and there was no ``outcome``."""
    item = _item(local_aws, "OrdersTable", {"order_id": {"S": order_id}})
    if item.pop("in_progress_for", None) is not None:
        item["in_progress"] = {"S": "IN_PROGRESS"}
    item.pop("outcome", None)
    _put(local_aws, "OrdersTable", item)


def _listed(shop: Shop, status: str) -> list[str]:
    page = shop.client.http.get(f"/admin/orders?status={status}", headers=shop.headers("admin"))
    assert page.status_code == 200, page.body
    return [order["order_id"] for order in page.json_body["items"]]


def test_orders_get_the_index_keys_their_status_calls_for(shop: Shop, local_aws: LocalAws) -> None:
    with inject(aws.stepfunctions(), SdkFault("StartExecution", "ThrottlingException")):
        orphan = shop.place_ok([("MUG-1", 1)], key="old-orphan")["order_id"]
    completed, recent = (shop.place_ok([("MUG-1", 1)])["order_id"] for _ in range(2))
    for order_id in (completed, recent):
        assert shop.wait_checkout(order_id) == "SUCCEEDED"
    _as_before_08ec6b3(local_aws, orphan)
    _as_before_08ec6b3(local_aws, completed)
    sweep_at = datetime.now(UTC) + timedelta(seconds=61)
    # Unupgraded, the sweeper never starts the old orphan and the listing by outcome leaves out the old order.
    assert recovery.resume_orphans(sweep_at).examined == 0
    assert _listed(shop, "COMPLETED") == [recent]

    done = upgrades.upgrade_order_index_keys()

    assert (done.examined, done.changed, done.left) == (3, 2, None)
    assert "in_progress" not in _item(local_aws, "OrdersTable", {"order_id": {"S": orphan}})
    assert recovery.resume_orphans(sweep_at).started == [orphan]
    assert shop.wait_checkout(orphan) == "SUCCEEDED"
    assert shop.order(orphan).status == "COMPLETED"
    assert sorted(_listed(shop, "COMPLETED")) == sorted([orphan, completed, recent])
    again = upgrades.upgrade_order_index_keys()
    assert (again.examined, again.changed) == (3, 0)


def test_an_order_the_shop_moves_while_it_is_upgraded_gets_the_keys_of_where_it_moved(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys are decided from the order as read; a write that finds it changed reads it again."""
    order_id = shop.place_ok([("MUG-1", 1)])["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    _as_before_08ec6b3(local_aws, order_id)
    item = _item(local_aws, "OrdersTable", {"order_id": {"S": order_id}})
    # As read by the scan: still in progress (the keys it needs then: in_progress_for, no outcome).
    _put(local_aws, "OrdersTable", {**item, "status": {"S": "PAYMENT_AUTHORIZED"}, "in_progress": {"S": "IN_PROGRESS"}})
    rewrite = upgrades._order_rewrite

    def settled_meanwhile(*args: Any) -> bool:
        _put(local_aws, "OrdersTable", item | {"version": {"N": str(int(item["version"]["N"]) + 1)}})
        monkeypatch.setattr(upgrades, "_order_rewrite", rewrite)
        return rewrite(*args)

    monkeypatch.setattr(upgrades, "_order_rewrite", settled_meanwhile)
    assert upgrades.upgrade_order_index_keys().changed == 1

    stored = _item(local_aws, "OrdersTable", {"order_id": {"S": order_id}})
    assert stored["status"]["S"] == "COMPLETED"
    assert "in_progress_for" not in stored and stored["outcome"]["S"].startswith("COMPLETED#")
    assert _listed(shop, "COMPLETED") == [order_id]


def _release_expired(local_aws: LocalAws) -> dict[str, Any]:
    response = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function("ReleaseExpiredReservationsFunction"),
        Payload=json.dumps({"source": "aws.events", "detail-type": "Scheduled Event"}).encode(),
    )
    assert "FunctionError" not in response, response["Payload"].read()
    return dict(json.loads(response["Payload"].read()))


def test_a_hold_keyed_before_the_index_was_sharded_expires_again(shop: Shop, local_aws: LocalAws) -> None:
    """Before 4ae6216 a holding reservation's HeldByExpiry key was the bare "HELD"."""
    ttl = int(local_aws.stack.function_environments["ReleaseExpiredReservationsFunction"]["RESERVATION_TTL_SECONDS"])
    inventory.reserve("old-hold", [CheckoutLine(sku="MUG-1", quantity=2)], now=int(time.time()) - ttl - 60)
    inventory.reserve("new-hold", [CheckoutLine(sku="MUG-1", quantity=1)])
    item = _item(local_aws, "ReservationsTable", {"reservation_id": {"S": "old-hold"}})
    _put(local_aws, "ReservationsTable", item | {"held": {"S": "HELD"}})
    assert _release_expired(local_aws) == {"released": 0}  # unupgraded, its stock stays held for good
    assert available("MUG-1") == 7

    done = upgrades.upgrade_held_keys()

    assert (done.examined, done.changed) == (1, 1)
    assert _release_expired(local_aws) == {"released": 1}
    assert available("MUG-1") == 9  # the new hold still holds its unit
    assert (upgrades.upgrade_held_keys().examined, upgrades.upgrade_held_keys().changed) == (0, 0)


def test_a_product_whose_stock_was_on_its_item_sells_it_again(shop: Shop, local_aws: LocalAws) -> None:
    """Before 4ae6216 a product's stock was ``available`` on the product item, with no StockTable counter."""
    seed_product("OLD-1", price=500, stock=7)
    item = _item(local_aws, "ProductsTable", {"sku": {"S": "OLD-1"}})
    item.pop("stock_shards", None)
    _put(local_aws, "ProductsTable", item | {"available": {"N": "7"}})
    local_aws.client("dynamodb").delete_item(
        TableName=local_aws.table("StockTable"), Key={"sku": {"S": "OLD-1"}, "shard": {"N": "0"}}
    )
    assert shop.client.http.get("/products/OLD-1").json_body["available"] == 0  # unupgraded: nothing to sell

    done = upgrades.upgrade_product_stock()

    assert (done.examined, done.changed, done.left) == (1, 1, None)
    assert "available" not in _item(local_aws, "ProductsTable", {"sku": {"S": "OLD-1"}})
    assert shop.client.http.get("/products/OLD-1").json_body["available"] == 7
    order_id = shop.place_ok([("OLD-1", 2)])["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert shop.order(order_id).status == "COMPLETED" and available("OLD-1") == 5
    assert (upgrades.upgrade_product_stock().examined, upgrades.upgrade_product_stock().changed) == (0, 0)


def test_a_product_with_stock_both_on_its_item_and_in_a_counter_is_left_for_an_operator(
    shop: Shop, local_aws: LocalAws
) -> None:
    """Which of the two is right cannot be told from the items: neither is changed, and the run says so."""
    item = _item(local_aws, "ProductsTable", {"sku": {"S": "MUG-1"}})
    _put(local_aws, "ProductsTable", item | {"available": {"N": "3"}})

    done = upgrades.upgrade_product_stock()

    assert (done.examined, done.changed, done.left) == (1, 0, ["MUG-1"])
    assert _item(local_aws, "ProductsTable", {"sku": {"S": "MUG-1"}})["available"] == {"N": "3"}
    assert available("MUG-1") == 10
