"""Hot products: a SKU's stock over several counters, through the API, the saga and the reserve step.

``available`` is always the sum of the shards; no order takes more than the total; resharding
neither loses nor creates units, also while orders are being reserved.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from infra.local import lambda_runtime
from infra.local.template import API_HANDLER
from shop import aws
from shop.domain import catalog, inventory
from shop.errors import (
    InventoryContention,
    OutOfStock,
    PurchaseLimitExceeded,
    StockWouldExceedMaximum,
    StockWouldGoNegative,
    TransientError,
)
from shop.models.catalog import MAX_STOCK, StockAdjustmentRequest, UpdateProductRequest
from shop.models.common import CheckoutLine
from shop.models.inventory import ShardTake
from shop.repositories import event_records, stock
from shop.repositories import inventory as inventory_repository
from tests.conftest import LocalAws
from tests.service.faults import SdkFault, inject
from tests.service.orders_helpers import Shop, open_shop, seed_product


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    with open_shop(local_aws) as opened:
        yield opened


def counters(sku: str) -> dict[int, int]:
    return {number: shard.available for number, shard in stock.shards(sku).items()}


def patch(shop: Shop, sku: str, body: Any) -> Any:
    return shop.client.http.request(
        "PATCH", f"/products/{sku}", headers=shop.headers("admin"), body=json.dumps(body).encode()
    )


def stored(shop: Shop) -> dict[str, Any]:
    dynamodb = shop.aws.client("dynamodb")
    return {
        logical_id: sorted(
            json.dumps(item, sort_keys=True) for item in dynamodb.scan(TableName=shop.aws.table(logical_id))["Items"]
        )
        for logical_id in ("ProductsTable", "StockTable", "StockLedgerTable")
    }


def test_patch_stock_shards_spreads_the_stock_and_every_read_shows_the_sum(shop: Shop) -> None:
    seed_product("HOT-1", stock=10)

    patched = patch(shop, "HOT-1", {"stock_shards": 4})

    assert patched.status_code == 200, patched.body
    assert (patched.json_body["stock_shards"], patched.json_body["available"]) == (4, 10)
    assert counters("HOT-1") == {0: 3, 1: 3, 2: 2, 3: 2}
    admin = shop.headers("admin")
    read = shop.client.http.get("/products/HOT-1").json_body
    listed = shop.client.http.get("/products").json_body["items"]
    by_category = shop.client.http.get("/products?category=test").json_body["items"]
    levels = shop.client.http.get("/admin/stock", headers=admin).json_body["items"]
    adjusted = shop.client.http.post(
        "/products/HOT-1/stock-adjustments", headers=admin, body=json.dumps({"delta": 5, "reason": "restock"}).encode()
    ).json_body
    assert [read["available"], listed[0]["available"], by_category[0]["available"], levels[0]["available"]] == [10] * 4
    assert adjusted["available"] == 15 and sum(counters("HOT-1").values()) == 15
    # The restock filled the emptiest shards first.
    assert counters("HOT-1") == {0: 4, 1: 4, 2: 4, 3: 3}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"stock_shards": 0}, 400),
        ({"stock_shards": 51}, 400),
        ({"stock_shards": "4"}, 400),
        ({"stock_shards": 2.5}, 400),
        ({"stock_shards": True}, 400),
        ({"stock_shards": None}, 400),
        ({"stock_shards": 4, "available": 99}, 400),
    ],
    ids=["zero", "above-50", "string", "fraction", "boolean", "null", "with-an-unknown-field"],
)
def test_a_bad_stock_shards_is_a_clean_4xx_and_changes_nothing(shop: Shop, body: Any, status: int) -> None:
    seed_product("HOT-1", stock=10)
    before = stored(shop)

    response = patch(shop, "HOT-1", body)

    assert response.status_code == status, response.body
    assert response.headers["Content-Type"] == "application/problem+json"
    assert stored(shop) == before


def test_resharding_an_unknown_sku_is_404_and_creates_no_counter(shop: Shop) -> None:
    before = stored(shop)
    assert patch(shop, "NOPE", {"stock_shards": 3}).status_code == 404
    assert stored(shop) == before


def test_a_flash_sale_through_the_saga_sells_exactly_the_units(shop: Shop) -> None:
    seed_product("HOT-1", stock=5)
    assert patch(shop, "HOT-1", {"stock_shards": 3}).status_code == 200

    placed = [shop.place_ok([("HOT-1", 1)], who=f"buyer-{n}")["order_id"] for n in range(8)]
    for order_id in placed:
        shop.wait_checkout(order_id)

    outcomes = Counter((order.status, order.failure_reason) for order in (shop.order(order_id) for order_id in placed))
    assert outcomes == {("COMPLETED", None): 5, ("CANCELLED", "OUT_OF_STOCK"): 3}
    assert counters("HOT-1") == {0: 0, 1: 0, 2: 0}
    # The order recorded the shard count, so each reservation picked a shard without reading the product.
    assert {shop.order(order_id).stock_shards["HOT-1"] for order_id in placed} == {3}


def test_a_multi_line_order_across_shards_is_all_or_nothing(shop: Shop) -> None:
    seed_product("HOT-1", stock=4)
    seed_product("COLD-1", stock=1)
    catalog.update_product("HOT-1", UpdateProductRequest(stock_shards=4))

    order_id = shop.place_ok([("HOT-1", 3), ("COLD-1", 2)])["order_id"]
    shop.wait_checkout(order_id)

    assert (shop.order(order_id).status, shop.order(order_id).failure_reason) == ("CANCELLED", "OUT_OF_STOCK")
    assert counters("HOT-1") == {0: 1, 1: 1, 2: 1, 3: 1} and counters("COLD-1") == {0: 1}

    order_id = shop.place_ok([("HOT-1", 3), ("COLD-1", 1)])["order_id"]
    shop.wait_checkout(order_id)
    assert shop.order(order_id).status == "COMPLETED"
    assert sum(counters("HOT-1").values()) == 1 and counters("COLD-1") == {0: 0}


def test_an_order_taking_from_every_shard_is_gathered_and_completes(shop: Shop) -> None:
    """100 units over 50 shards is 2 a shard: an order of 100 takes from all 50. Two such lines and the
    reservation are 101 actions, one more than a transaction holds; every retry was cancelled
    INVENTORY_UNAVAILABLE while the stock was there."""
    for sku in ("HOT-1", "HOT-2"):
        seed_product(sku, stock=100)
        assert patch(shop, sku, {"stock_shards": 50}).status_code == 200
        assert set(counters(sku).values()) == {2}

    order_id = shop.place_ok([("HOT-1", 100), ("HOT-2", 100)])["order_id"]
    shop.wait_checkout(order_id)

    assert (shop.order(order_id).status, shop.order(order_id).failure_reason) == ("COMPLETED", None)
    assert counters("HOT-1") == counters("HOT-2") == dict.fromkeys(range(50), 0)
    read = [shop.client.http.get(f"/products/{sku}").json_body["available"] for sku in ("HOT-1", "HOT-2")]
    assert read == [0, 0]


def test_a_gather_refused_by_a_concurrent_sale_reads_the_shards_again(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_product("HOT-1", stock=100)
    seed_product("HOT-2", stock=100)
    for sku in ("HOT-1", "HOT-2"):
        catalog.update_product(sku, UpdateProductRequest(stock_shards=50))
    lines = [CheckoutLine(sku=sku, quantity=100, stock_shards=50) for sku in ("HOT-1", "HOT-2")]
    real_gather = inventory_repository.gather_stock
    sold: list[str] = []

    def a_sale_lands_first(sku: str, sources: Any, target: int) -> bool:
        if not sold:  # another buyer takes a unit of a source shard between the read and the gather
            sold.append(sku)
            shop.aws.client("dynamodb").transact_write_items(TransactItems=[stock.take(sku, sources[0].shard, 1)])
        return real_gather(sku, sources, target)

    monkeypatch.setattr(inventory_repository, "gather_stock", a_sale_lands_first)

    with pytest.raises(OutOfStock) as short:
        inventory.reserve("o-gather", lines)

    # 99 units left of the SKU the sale took from: the order is short of it, and nothing else moved.
    assert short.value.short_skus == sold
    assert sum(counters(sold[0]).values()) == 99
    other = "HOT-2" if sold == ["HOT-1"] else "HOT-1"
    assert counters(other) == dict.fromkeys(range(50), 2)
    assert inventory_repository.get_reservation("o-gather") is None


def _reserve(number: int, shards: int) -> str:
    line = [CheckoutLine(sku="HOT-1", quantity=1, stock_shards=shards)]
    while True:
        try:
            inventory.reserve(f"r{number}", line)
        except OutOfStock:
            return "out"
        except InventoryContention:
            continue  # the saga's Retry does this
        return "reserved"


def test_concurrent_sharded_reservations_never_oversell(shop: Shop) -> None:
    seed_product("HOT-1", stock=15)
    catalog.update_product("HOT-1", UpdateProductRequest(stock_shards=5))

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = Counter(pool.map(lambda number: _reserve(number, 5), range(40)))

    assert outcomes == {"reserved": 15, "out": 25}
    assert counters("HOT-1") == dict.fromkeys(range(5), 0)


def test_resharding_up_and_down_while_orders_reserve_keeps_the_total(shop: Shop) -> None:
    seed_product("HOT-1", stock=60)
    done = threading.Event()
    reshards: list[int] = []

    def keep_resharding() -> None:
        for shards in [7, 2, 11, 1, 5, 3] * 5:
            if done.is_set():
                return
            try:
                catalog.update_product("HOT-1", UpdateProductRequest(stock_shards=shards))
            except TransientError:
                continue  # a sale kept moving a counter: the admin would retry
            reshards.append(shards)

    resharder = threading.Thread(target=keep_resharding)
    resharder.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = Counter(pool.map(lambda number: _reserve(number, 7), range(40)))
    finally:
        done.set()
        resharder.join()

    assert outcomes == {"reserved": 40}
    assert reshards, "no reshard got through"
    product = catalog.get_product("HOT-1")
    assert product.available == 20 == sum(counters("HOT-1").values())
    assert set(counters("HOT-1")) == set(range(product.stock_shards))
    # Every reservation gives its units back, to shards that exist now.
    for number in range(40):
        inventory.release(f"r{number}")
    assert catalog.get_product("HOT-1").available == 60 and min(counters("HOT-1").values()) >= 0


def _reshard_between_the_adjustments_reads(monkeypatch: pytest.MonkeyPatch, sku: str, shards: int) -> None:
    """An admin's reshard lands after the adjustment read the product and before it reads the counters."""
    read_counters = catalog.repository.stock_shards

    def counters_after_a_reshard(of: str) -> Any:
        monkeypatch.setattr(catalog.repository, "stock_shards", read_counters)
        catalog.update_product(sku, UpdateProductRequest(stock_shards=shards))
        return read_counters(of)

    monkeypatch.setattr(catalog.repository, "stock_shards", counters_after_a_reshard)


def test_a_decrease_racing_a_reshard_is_judged_on_the_whole_stock(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_product("HOT-ADJ-1", stock=10)
    _reshard_between_the_adjustments_reads(monkeypatch, "HOT-ADJ-1", 4)
    # Judged on shard 0's share alone, -8 was refused as going below 0 with 10 units there.
    result = catalog.adjust_stock("HOT-ADJ-1", StockAdjustmentRequest(delta=-8, reason="count"), actor="root")

    assert result.available == 2 == catalog.get_product("HOT-ADJ-1").available == sum(counters("HOT-ADJ-1").values())
    assert result.stock_shards == 4 and [entry.available for entry in catalog.stock_ledger("HOT-ADJ-1")] == [2]


def test_an_increase_racing_a_reshard_cannot_pass_the_maximum(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_product("HOT-ADJ-2", stock=MAX_STOCK - 4)
    _reshard_between_the_adjustments_reads(monkeypatch, "HOT-ADJ-2", 4)
    # Judged on shard 0's share alone, the increase passed and the stock went past MAX_STOCK.
    with pytest.raises(StockWouldExceedMaximum):
        catalog.adjust_stock("HOT-ADJ-2", StockAdjustmentRequest(delta=MAX_STOCK // 2, reason="restock"), actor="root")

    assert catalog.get_product("HOT-ADJ-2").available == MAX_STOCK - 4 == sum(counters("HOT-ADJ-2").values())
    assert catalog.stock_ledger("HOT-ADJ-2") == []


# ---------------------------------------------------------------------------- reads a commit cuts through
def _commits_during_the_next_counter_query(monkeypatch: pytest.MonkeyPatch, sku: str, commit: Any) -> list[int]:
    """The next Query of ``sku``'s counters reads shard 0, then ``commit`` runs, then it reads on:
    DynamoDB's Query is read-committed per item against a transaction, never a snapshot of the set
    (moto answers it at once, so the interleaving is staged)."""
    real_call = stock.call
    happened: list[int] = []

    def torn_query(operation: str, **request: Any) -> Any:
        values = request.get("ExpressionAttributeValues", {})
        if operation != "query" or happened or values.get(":sku") != {"S": sku}:
            return real_call(operation, **request)
        happened.append(1)
        before = real_call(operation, **request)
        commit()
        after = real_call(operation, **request)
        items = [item for item in before["Items"] if item["shard"]["N"] == "0"]
        items += [item for item in after["Items"] if item["shard"]["N"] != "0"]
        return {**after, "Items": items, "Count": len(items)}

    monkeypatch.setattr(stock, "call", torn_query)
    return happened


def _reshard_to(sku: str, shards: int) -> Any:
    def reshard() -> None:
        with lambda_runtime.invoking(API_HANDLER):  # the admin's call, whatever it interrupts
            catalog.update_product(sku, UpdateProductRequest(stock_shards=shards))

    return reshard


def _another_buyers_gather(sku: str, shards: int) -> Any:
    """Another order's gather: shards 1..N-1 move 2 units each onto shard 0, the total unchanged."""
    takes = [ShardTake(shard=number, quantity=2) for number in range(1, shards)]
    return lambda: inventory_repository.gather_stock(sku, takes, 0)


@pytest.mark.parametrize("during", ["reshard", "gather"])
def test_a_decrease_is_never_refused_on_a_read_a_commit_cut_through(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, during: str
) -> None:
    """A reshard 4 -> 1 (or another order's gather) commits while the adjustment reads the counters:
    the read shows shard 0 before and the rest after, a part of the units. Before, that part was
    judged: 409 StockWouldGoNegative with the whole stock there. A refusal now holds only if every read
    after it refuses too. Found by a helper's probe."""
    seed_product("HOT-TORN-1", stock=100)
    shards = 4 if during == "reshard" else 50
    catalog.update_product("HOT-TORN-1", UpdateProductRequest(stock_shards=shards))
    commit = _reshard_to("HOT-TORN-1", 1) if during == "reshard" else _another_buyers_gather("HOT-TORN-1", shards)
    happened = _commits_during_the_next_counter_query(monkeypatch, "HOT-TORN-1", commit)

    result = catalog.adjust_stock("HOT-TORN-1", StockAdjustmentRequest(delta=-60, reason="recount"), actor="root")

    assert happened
    assert result.available == 40 == sum(counters("HOT-TORN-1").values())


@pytest.mark.parametrize("during", ["reshard", "gather"])
def test_an_order_is_never_out_of_stock_on_a_read_a_commit_cut_through(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, during: str
) -> None:
    """The reservation's picked shard is short, so it reads the counters to plan, and a commit cuts
    through that read. Before, the part it saw was short and the order was cancelled OUT_OF_STOCK,
    for good, with the units there."""
    seed_product("HOT-TORN-2", stock=100)
    shards = 4 if during == "reshard" else 50
    catalog.update_product("HOT-TORN-2", UpdateProductRequest(stock_shards=shards))
    commit = _reshard_to("HOT-TORN-2", 1) if during == "reshard" else _another_buyers_gather("HOT-TORN-2", shards)
    happened = _commits_during_the_next_counter_query(monkeypatch, "HOT-TORN-2", commit)
    wanted = 30 if during == "reshard" else 3  # more than the picked shard holds, less than the part read

    line = CheckoutLine(sku="HOT-TORN-2", quantity=wanted, stock_shards=shards)
    result = inventory.reserve("o-torn", [line], rng=_FirstPick(2))

    assert happened
    assert result.status == "RESERVED"
    assert sum(counters("HOT-TORN-2").values()) == 100 - wanted


@pytest.mark.parametrize("during", ["reshard", "gather"])
def test_the_stock_publisher_announces_no_fall_on_a_read_a_commit_cut_through(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch, during: str
) -> None:
    """The stock publisher judges a SKU's fall on a read of its counters, and a commit cuts through that
    read. Before, the part it saw was at or below the threshold (5): a StockLow and an operator's alert
    for a SKU whose stock never fell. A fall now holds only if every read after it says so too (a
    helper's probe)."""
    seed_product("HOT-TORN-3", stock=16 if during == "reshard" else 101)
    shards = 4 if during == "reshard" else 50
    catalog.update_product("HOT-TORN-3", UpdateProductRequest(stock_shards=shards))
    local_aws.deliver_events()
    # A change of stock the publisher judges: 15 (or 100) units, far above the threshold.
    catalog.adjust_stock("HOT-TORN-3", StockAdjustmentRequest(delta=-1, reason="recount"), actor="root")
    gather = _another_buyers_gather("HOT-TORN-3", shards)

    def in_the_reserve_step() -> None:  # the publisher's read is inside its own invocation
        with lambda_runtime.invoking("ReserveStockFunction"):
            gather()

    commit = _reshard_to("HOT-TORN-3", 1) if during == "reshard" else in_the_reserve_step
    happened = _commits_during_the_next_counter_query(monkeypatch, "HOT-TORN-3", commit)

    while local_aws.deliver_events():
        pass

    assert happened
    assert sum(counters("HOT-TORN-3").values()) == (15 if during == "reshard" else 100)
    assert [alert for alert in event_records.low_stock_alerts() if alert.sku == "HOT-TORN-3"] == []


def test_a_read_a_reshard_cut_through_above_the_threshold_does_not_announce_one_fall_twice(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other direction: a reshard 1 -> 4 committing through the publisher's read counts the moved units
    twice (4 + 3 = 7 > 5). Before, that re-armed the SKU, and the next record claimed the same fall again:
    two StockLows for a stock that never rose (the diff's reviewer). A re-arm now rests on every read."""
    seed_product("HOT-TORN-4", stock=10)
    local_aws.deliver_events()
    catalog.adjust_stock("HOT-TORN-4", StockAdjustmentRequest(delta=-5, reason="count"), actor="root")  # a fall
    while local_aws.deliver_events():
        pass
    assert len([alert for alert in event_records.low_stock_alerts() if alert.sku == "HOT-TORN-4"]) == 1
    catalog.adjust_stock("HOT-TORN-4", StockAdjustmentRequest(delta=-1, reason="count"), actor="root")  # 4
    happened = _commits_during_the_next_counter_query(monkeypatch, "HOT-TORN-4", _reshard_to("HOT-TORN-4", 4))

    while local_aws.deliver_events():
        pass
    monkeypatch.undo()
    catalog.adjust_stock("HOT-TORN-4", StockAdjustmentRequest(delta=-1, reason="count"), actor="root")  # 3
    while local_aws.deliver_events():
        pass

    assert happened
    assert sum(counters("HOT-TORN-4").values()) == 3  # never above the threshold since the fall
    assert len([alert for alert in event_records.low_stock_alerts() if alert.sku == "HOT-TORN-4"]) == 1


def _another_buyer_takes_one_after_every_query(monkeypatch: pytest.MonkeyPatch, sku: str) -> list[int]:
    """A busy SKU: after each Query of its counters, another order's one-unit take commits (a
    one-item write: it never tears a read, but no two reads agree)."""
    real_call = stock.call
    taken: list[int] = []

    def query_then_a_sale(operation: str, **request: Any) -> Any:
        answer = real_call(operation, **request)
        if operation == "query" and request.get("ExpressionAttributeValues", {}).get(":sku") == {"S": sku}:
            with_units = [item for item in answer["Items"] if int(item["available"]["N"]) > 0]
            if with_units:
                take = stock.take(sku, int(with_units[0]["shard"]["N"]), 1)
                aws.dynamodb().transact_write_items(TransactItems=[take])
                taken.append(1)
        return answer

    monkeypatch.setattr(stock, "call", query_then_a_sale)
    return taken


def test_a_real_shortage_on_a_busy_sku_is_still_refused_at_once(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read after a short one was short too: OUT_OF_STOCK and 409, as before the reads were
    checked. The first version of the check wanted two reads to agree, which a busy SKU's reads never
    do: a real shortage became contention (INVENTORY_UNAVAILABLE in the end, a 503 for the admin; the
    diff's reviewer)."""
    seed_product("HOT-SHORT-1", stock=20)
    catalog.update_product("HOT-SHORT-1", UpdateProductRequest(stock_shards=4))
    taken = _another_buyer_takes_one_after_every_query(monkeypatch, "HOT-SHORT-1")

    with pytest.raises(OutOfStock):  # never more than 20 units there
        inventory.reserve("o-short", [CheckoutLine(sku="HOT-SHORT-1", quantity=30, stock_shards=4)])
    with pytest.raises(StockWouldGoNegative):
        catalog.adjust_stock("HOT-SHORT-1", StockAdjustmentRequest(delta=-30, reason="recount"), actor="root")
    assert len(taken) > 2


def _another_admin_adjusts_first(monkeypatch: pytest.MonkeyPatch, sku: str, delta: int) -> list[int]:
    """Bob's whole adjustment of ``delta`` lands between the next adjustment's read and its write; the
    deltas of the writes that adjustment then tries, in order."""
    record = catalog.repository.record_stock_adjustment
    deltas: list[int] = []

    def bob_first(entry: Any, **rest: Any) -> None:
        deltas.append(entry.delta)
        if len(deltas) == 1:
            monkeypatch.setattr(catalog.repository, "record_stock_adjustment", record)
            catalog.adjust_stock(sku, StockAdjustmentRequest(delta=delta, reason="bob's"), actor="bob")
            monkeypatch.setattr(catalog.repository, "record_stock_adjustment", bob_first)
        record(entry, **rest)

    monkeypatch.setattr(catalog.repository, "record_stock_adjustment", bob_first)
    return deltas


def test_two_racing_increases_cannot_pass_the_maximum(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another admin's restock lands between this one's read and its write: each judged the maximum on
    the same total, and both went in (1.2 x 10^9 units, the ledger saying 600M twice; a helper's probe).
    The write is conditioned on the product's version, so this one decides again on the new total."""
    seed_product("HOT-ADJ-4", stock=0)
    deltas = _another_admin_adjusts_first(monkeypatch, "HOT-ADJ-4", 600_000_000)
    with pytest.raises(StockWouldExceedMaximum):
        catalog.adjust_stock("HOT-ADJ-4", StockAdjustmentRequest(delta=600_000_000, reason="alice"), actor="alice")

    assert deltas == [600_000_000]  # refused at its write, then on the new total before writing
    assert catalog.get_product("HOT-ADJ-4").available == 600_000_000 == sum(counters("HOT-ADJ-4").values())
    assert [(entry.actor, entry.available) for entry in catalog.stock_ledger("HOT-ADJ-4")] == [("bob", 600_000_000)]


def test_racing_decreases_each_write_the_total_they_leave(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger's ``available`` is the total an adjustment left: two racing ones each wrote the total
    computed from the same read, and the ledger said 30 where 25 were left."""
    seed_product("HOT-ADJ-5", stock=40)
    _another_admin_adjusts_first(monkeypatch, "HOT-ADJ-5", -5)
    result = catalog.adjust_stock("HOT-ADJ-5", StockAdjustmentRequest(delta=-10, reason="recount"), actor="alice")

    assert result.available == 25 == sum(counters("HOT-ADJ-5").values())
    assert [(entry.actor, entry.available) for entry in catalog.stock_ledger("HOT-ADJ-5")] == [
        ("bob", 35),
        ("alice", 25),
    ]


def test_racing_adjustments_of_an_item_written_before_versions_each_write_the_total_they_leave(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item of the shop's first versions has no ``version`` (it reads as 0): the write is conditioned on
    the attribute's absence, which another admin's adjustment in between (it adds one) ends. Without that
    condition both went in from the same read, and the ledger said 30 where 25 were left."""
    seed_product("HOT-ADJ-6", stock=40)
    shop.aws.client("dynamodb").update_item(
        TableName=shop.aws.table("ProductsTable"), Key={"sku": {"S": "HOT-ADJ-6"}}, UpdateExpression="REMOVE version"
    )
    deltas = _another_admin_adjusts_first(monkeypatch, "HOT-ADJ-6", -5)
    result = catalog.adjust_stock("HOT-ADJ-6", StockAdjustmentRequest(delta=-10, reason="recount"), actor="alice")

    assert deltas == [-10, -10]  # refused at its write, then written from the new total
    assert result.available == 25 == sum(counters("HOT-ADJ-6").values())
    assert [(entry.actor, entry.available) for entry in catalog.stock_ledger("HOT-ADJ-6")] == [
        ("bob", 35),
        ("alice", 25),
    ]


def test_an_adjustment_planned_on_shards_a_reshard_replaced_is_not_written(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write itself is conditioned on the shard count its plan was made for."""
    seed_product("HOT-ADJ-3", stock=40)
    catalog.update_product("HOT-ADJ-3", UpdateProductRequest(stock_shards=4))
    record = catalog.repository.record_stock_adjustment
    planned_on: list[int] = []

    def reshard_first(entry: Any, *, stock_shards: int, **rest: Any) -> None:
        planned_on.append(stock_shards)
        if len(planned_on) == 1:
            catalog.update_product("HOT-ADJ-3", UpdateProductRequest(stock_shards=1))
        record(entry, stock_shards=stock_shards, **rest)

    monkeypatch.setattr(catalog.repository, "record_stock_adjustment", reshard_first)
    result = catalog.adjust_stock("HOT-ADJ-3", StockAdjustmentRequest(delta=5, reason="restock"), actor="root")

    assert planned_on == [4, 1]  # refused on the old shards, planned again on the new
    assert result.available == 45 == sum(counters("HOT-ADJ-3").values()) and set(counters("HOT-ADJ-3")) == {0}


class _FirstPick(random.Random):
    """A random source whose every shard pick is the given shard."""

    def __init__(self, shard: int) -> None:
        super().__init__(0)
        self.shard = shard

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return self.shard


class _Picks(random.Random):
    """A random source whose shard picks are the given ones, in turn."""

    def __init__(self, *shards: int) -> None:
        super().__init__(0)
        self.shards = list(shards)

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return self.shards.pop(0)


def test_a_line_on_one_shard_tries_a_freshly_picked_shard_after_a_conflict(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spreading buyers over shards is the point: after a TransactionConflict on its shard, a line retries
    on a shard picked afresh, not the contended one (a mutation run kept the shard and every test passed)."""
    seed_product("HOT-FRESH", stock=40)
    catalog.update_product("HOT-FRESH", UpdateProductRequest(stock_shards=4))
    real_create = inventory_repository.create_reservation
    tried: list[list[int]] = []

    def conflict_once(reservation: Any) -> None:
        tried.append([take.shard for line in reservation.lines for take in line.takes])
        if len(tried) == 1:
            reason = inventory_repository.CancellationReason
            raise inventory_repository.TransactionCancelled([reason("None"), reason("TransactionConflict")])
        real_create(reservation)

    monkeypatch.setattr(inventory_repository, "create_reservation", conflict_once)
    monkeypatch.setattr(inventory.time, "sleep", lambda seconds: None)
    line = CheckoutLine(sku="HOT-FRESH", quantity=1, stock_shards=4)

    assert inventory.reserve("o-fresh", [line], rng=_Picks(0, 1)).status == "RESERVED"

    assert tried == [[0], [1]]
    assert counters("HOT-FRESH")[1] == 9


def test_a_reshard_planned_before_two_others_undid_each_other_is_planned_again(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 -> 2 -> 3 shards between a reshard's reads and its write: every counter it read looks as read
    (the one deleted and created again is back at version 1), so only the product's version tells."""
    seed_product("HOT-ABA", stock=3)
    catalog.update_product("HOT-ABA", UpdateProductRequest(stock_shards=3))
    read_counters = catalog.repository.stock_shards
    plans: list[dict[int, int]] = []

    def others_act_after_the_read(sku: str) -> Any:
        read = read_counters(sku)
        plans.append({number: shard.available for number, shard in read.items()})
        if len(plans) == 1:
            # A buyer takes shard 2's unit; another admin reshards to 2 and back to 3.
            inventory.reserve("o-aba", [CheckoutLine(sku=sku, quantity=1, stock_shards=3)], rng=_FirstPick(2))
            catalog.update_product(sku, UpdateProductRequest(stock_shards=2))
            catalog.update_product(sku, UpdateProductRequest(stock_shards=3))
        return read

    monkeypatch.setattr(catalog.repository, "stock_shards", others_act_after_the_read)
    catalog.update_product("HOT-ABA", UpdateProductRequest(stock_shards=2))

    # The stale plan (written, it brought the sold unit back: 3 on the counters and 1 held) was refused,
    # and the PATCH planned again on what the counters hold now.
    assert plans[0] == {0: 1, 1: 1, 2: 1}
    assert sum(counters("HOT-ABA").values()) == 2 == catalog.get_product("HOT-ABA").available
    assert set(counters("HOT-ABA")) == {0, 1}
    reservation = inventory_repository.get_reservation("o-aba")
    assert reservation is not None and reservation.status == "RESERVED"


def counted_units(shop: Shop, customer: str, sku: str) -> int:
    item = (
        shop.aws.client("dynamodb")
        .get_item(
            TableName=shop.aws.table("PurchaseCountsTable"),
            Key={"customer_id": {"S": customer}, "sku": {"S": sku}},
            ConsistentRead=True,
        )
        .get("Item")
    )
    return int(item["units"]["N"]) if item else 0


def test_a_limited_sku_on_several_shards_counts_units_and_frees_them_with_its_shards(shop: Shop) -> None:
    """Both snapshots travel with the order: the shard count and the purchase limit."""
    seed_product("HOT-1", stock=8)
    assert patch(shop, "HOT-1", {"stock_shards": 4, "purchase_limit": 3}).status_code == 200
    stored_order = shop.place_ok([("HOT-1", 2)], token="tok_chargeDeclined")["order_id"]
    assert (shop.order(stored_order).stock_shards, shop.order(stored_order).purchase_limits) == (
        {"HOT-1": 4},
        {"HOT-1": 3},
    )

    # Declined: the release returns the units to their shards and frees the counted units.
    shop.wait_checkout(stored_order)
    assert (shop.order(stored_order).status, shop.order(stored_order).failure_reason) == (
        "CANCELLED",
        "PAYMENT_DECLINED",
    )
    assert counters("HOT-1") == {0: 2, 1: 2, 2: 2, 3: 2} and counted_units(shop, "alice", "HOT-1") == 0

    sold = shop.place_ok([("HOT-1", 3)])["order_id"]
    shop.wait_checkout(sold)
    assert shop.order(sold).status == "COMPLETED"
    # No shard had 3: the line took from several, and counted 3 units once.
    assert sum(counters("HOT-1").values()) == 5 and counted_units(shop, "alice", "HOT-1") == 3


def test_a_short_shard_and_a_refused_purchase_counter_are_told_apart(shop: Shop) -> None:
    seed_product("HOT-1", stock=6)
    catalog.update_product("HOT-1", UpdateProductRequest(stock_shards=3))  # 2 + 2 + 2
    lines = [CheckoutLine(sku="HOT-1", quantity=3, stock_shards=3, purchase_limit=4)]

    # 3 units are on no single shard: the fallback takes from two, with the counter after both takes.
    inventory.reserve("r1", lines, customer_id="carol")
    assert sum(counters("HOT-1").values()) == 3 and counted_units(shop, "carol", "HOT-1") == 3

    # Stock for 3 more is there, but carol may hold only 1 more: the counter refuses, nothing moves.
    with pytest.raises(PurchaseLimitExceeded):
        inventory.reserve("r2", lines, customer_id="carol")
    assert sum(counters("HOT-1").values()) == 3 and counted_units(shop, "carol", "HOT-1") == 3

    # Another customer is short of stock, not of limit.
    with pytest.raises(OutOfStock):
        inventory.reserve("r3", [lines[0].model_copy(update={"quantity": 4})], customer_id="dave")
    assert counted_units(shop, "dave", "HOT-1") == 0

    inventory.release("r1")
    assert counters("HOT-1") == {0: 2, 1: 2, 2: 2} and counted_units(shop, "carol", "HOT-1") == 0


@pytest.mark.parametrize(
    ("request_path", "body"),
    [
        ("/products/MUG-1/stock-adjustments", {"delta": 5, "reason": "restock during the sale"}),
        ("/products/MUG-1", {"stock_shards": 4}),
    ],
    ids=["restock", "reshard"],
)
def test_an_admin_write_that_meets_a_sale_on_the_same_counter_is_decided_again_not_refused(
    shop: Shop, request_path: str, body: dict[str, Any]
) -> None:
    """A restock's transaction and a buyer's reservation writing one stock counter at the same moment:
    DynamoDB cancels one with TransactionConflict. The operator got 503 at once; the write is now read
    and decided again, as after a failed condition (moto never conflicts, so the conflict is injected)."""
    seed_product("MUG-1", price=1250, stock=50)
    conflict = SdkFault("TransactWriteItems", "TransactionCanceledException", times=1, reasons=("TransactionConflict",))
    method = shop.client.http.post if request_path.endswith("adjustments") else shop.client.http.patch
    with inject(aws.dynamodb(), conflict):
        response = method(
            request_path, headers={**shop.headers("admin"), "Content-Type": "application/json"}, body=json.dumps(body)
        )
    assert conflict.injected == 1
    assert response.status_code == 200, response.body
    assert catalog.get_product("MUG-1").available == (55 if "delta" in body else 50)


def test_a_new_product_whose_write_meets_another_is_a_503_to_retry_not_a_409(shop: Shop) -> None:
    """A conflict is no proof that the SKU exists: the create answers 503 with Retry-After, writes nothing."""
    conflict = SdkFault("TransactWriteItems", "TransactionCanceledException", times=1, reasons=("TransactionConflict",))
    body = {
        "sku": "NEW-1",
        "name": "New",
        "category": "kitchen",
        "price": {"amount": 100, "currency": "USD"},
        "stock": 3,
    }
    with inject(aws.dynamodb(), conflict):
        response = shop.client.http.post(
            "/products", headers={**shop.headers("admin"), "Content-Type": "application/json"}, body=json.dumps(body)
        )
    assert (response.status_code, "Retry-After" in response.headers) == (503, True)
    assert shop.client.http.get("/products/NEW-1").status_code == 404
