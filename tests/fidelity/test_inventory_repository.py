"""Inventory against a real DynamoDB engine and against moto: the same tests on both.

What the inventory relies on is checked here at the storage level: conditional writes inside
transactions, CancellationReasons (with ReturnValuesOnConditionCheckFailure items), the sparse
HeldByExpiry index and the TTL attribute.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from shop import aws
from shop.config import inventory_settings
from shop.domain import inventory
from shop.errors import (
    InventoryContention,
    OutOfStock,
    ReservationConflict,
    ReservationExpired,
    ReservationNotFound,
    SagaClaimLost,
    StoredItemUnusable,
)
from shop.models.common import CheckoutLine
from shop.models.inventory import ShardTake
from shop.models.money import Money
from shop.models.orders import Failure, HistoryEntry, Order, OrderLine, SagaClaim
from shop.repositories import inventory as repository
from shop.repositories import orders, stock
from tests.fidelity.conftest import Backend

NOW = 1_900_000_000
DAY = 24 * 3600


def lines(**quantities: int) -> list[CheckoutLine]:
    return [CheckoutLine(sku=sku, quantity=quantity) for sku, quantity in quantities.items()]


def retrying(operation: Callable[[], object], deadline_seconds: float = 30.0) -> object:
    """Retry InventoryContention as the saga's Retry does (real DynamoDB may report conflicts)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            return operation()
        except InventoryContention:
            if time.monotonic() > deadline:
                raise


def test_reserve_takes_stock_and_records_a_held_reservation(backend: Backend) -> None:
    backend.put_product("A", 5)
    backend.put_product("B", 3)

    result = inventory.reserve("order-1", lines(A=2, B=3), now=NOW)

    assert result.model_dump(mode="json") == {
        "reservation_id": "order-1",
        "order_id": "order-1",
        "status": "RESERVED",
        "lines": [
            {"sku": "A", "quantity": 2},
            {"sku": "B", "quantity": 3},
        ],
        "expires_at": NOW + inventory_settings().reservation_ttl_seconds,
    }
    assert (backend.available("A"), backend.available("B")) == (3, 0)
    item = backend.reservation_item("order-1")
    assert item is not None
    assert item["status"] == {"S": "RESERVED"}
    assert item["held"] == {"S": repository.held_key("order-1")}
    assert item["expires_at"] == {"N": str(NOW + inventory_settings().reservation_ttl_seconds)}
    assert "purge_at" not in item
    # A sale writes the SKU's stock counter, never the product item (nor its catalog indexes).
    product = backend.product("A")
    assert product is not None and product["version"] == {"N": "1"}


def test_short_on_one_sku_changes_nothing_and_names_it(backend: Backend) -> None:
    backend.put_product("A", 5)
    backend.put_product("B", 1)

    with pytest.raises(OutOfStock) as raised:
        inventory.reserve("order-1", lines(A=2, B=2), now=NOW)

    assert raised.value.extensions["short_skus"] == ["B"]
    assert (backend.available("A"), backend.available("B")) == (5, 1)
    assert backend.reservation_count() == 0


def test_every_short_or_unknown_sku_is_reported(backend: Backend) -> None:
    backend.put_product("A", 5)
    backend.put_product("B", 0)
    backend.put_product("C", 1)

    with pytest.raises(OutOfStock) as raised:
        inventory.reserve("order-1", lines(A=1, B=1, C=2, GHOST=1), now=NOW)

    assert raised.value.short_skus == ["B", "C", "GHOST"]
    assert [backend.available(sku) for sku in "ABC"] == [5, 0, 1]
    assert backend.product("GHOST") is None
    assert backend.reservation_count() == 0


def test_retried_reserve_answers_with_the_stored_reservation(backend: Backend) -> None:
    backend.put_product("A", 2)
    backend.put_product("B", 1)
    first = inventory.reserve("order-1", lines(A=2, B=1), now=NOW)

    # Same lines in another order, later: the stock is gone, yet it is the same request.
    again = inventory.reserve("order-1", lines(B=1, A=2), now=NOW + 60)

    assert again == first
    assert (backend.available("A"), backend.available("B")) == (0, 0)
    assert backend.reservation_count() == 1


def test_the_same_id_with_other_lines_is_a_conflict(backend: Backend) -> None:
    backend.put_product("A", 5)
    inventory.reserve("order-1", lines(A=2), now=NOW)
    stored = backend.reservation_item("order-1")

    with pytest.raises(ReservationConflict):
        inventory.reserve("order-1", lines(A=3), now=NOW)

    assert backend.available("A") == 3
    assert backend.reservation_item("order-1") == stored


def test_a_failed_put_returns_the_stored_reservation_in_its_cancellation_reason(backend: Backend) -> None:
    backend.put_product("A", 5)
    inventory.reserve("order-1", lines(A=2), now=NOW)
    duplicate = repository.get_reservation("order-1")
    assert duplicate is not None

    with pytest.raises(repository.TransactionCancelled) as raised:
        repository.create_reservation(duplicate)

    reasons = raised.value.reasons
    assert [reason.code for reason in reasons] == ["ConditionalCheckFailed", "None"]
    assert reasons[0].item is not None
    assert repository.to_reservation(reasons[0].item) == duplicate
    assert backend.available("A") == 3


def test_commit_sells_the_stock_once(backend: Backend) -> None:
    backend.put_product("A", 5)
    inventory.reserve("order-1", lines(A=2), now=NOW)

    committed = inventory.commit("order-1")
    again = inventory.commit("order-1")

    assert committed.status == again.status == "COMMITTED"
    assert again == committed
    assert backend.available("A") == 3
    item = backend.reservation_item("order-1")
    assert item is not None
    assert item["status"] == {"S": "COMMITTED"}
    # Off the sweeper's index, and never purged: a refund may still return this stock.
    assert "held" not in item
    assert "purge_at" not in item


def test_commit_of_a_released_or_missing_reservation_fails_and_changes_nothing(backend: Backend) -> None:
    backend.put_product("A", 5)
    inventory.reserve("order-1", lines(A=2), now=NOW)
    inventory.release("order-1", now=NOW)
    released = backend.reservation_item("order-1")

    with pytest.raises(ReservationExpired):
        inventory.commit("order-1")
    with pytest.raises(ReservationNotFound):
        inventory.commit("order-2")

    assert backend.reservation_item("order-1") == released
    assert backend.reservation_item("order-2") is None
    assert backend.available("A") == 5


def test_release_returns_the_stock_once(backend: Backend) -> None:
    backend.put_product("A", 5)
    backend.put_product("B", 4)
    inventory.reserve("order-1", lines(A=2, B=4), now=NOW)

    released = inventory.release("order-1", now=NOW + 10)
    item_after_first = backend.reservation_item("order-1")
    again = inventory.release("order-1", now=NOW + 20)

    assert released.status == again.status == "RELEASED"
    assert (backend.available("A"), backend.available("B")) == (5, 4)
    assert backend.reservation_item("order-1") == item_after_first
    assert item_after_first is not None
    assert "held" not in item_after_first
    # purge_at is DynamoDB TTL's attribute: a Number of epoch seconds, set once final.
    assert item_after_first["purge_at"] == {"N": str(NOW + 10 + 30 * DAY)}


def test_a_release_to_a_counter_the_shop_did_not_write_is_refused_whole(backend: Backend) -> None:
    """A counter whose units are text (written behind the shop's back): DynamoDB refuses the write
    (moto at the request, AWS's engine by a cancellation reason), and the release changes nothing."""
    backend.put_product("A", 5)
    inventory.reserve("order-1", lines(A=2), now=NOW)
    counter = {"sku": {"S": "A"}, "shard": {"N": "0"}, "available": {"S": "three"}, "version": {"N": "9"}}
    backend.client.put_item(TableName=backend.table("StockTable"), Item=counter)

    with pytest.raises(StoredItemUnusable):
        inventory.release("order-1", now=NOW + 10)

    assert backend.reservation_item("order-1")["status"] == {"S": "RESERVED"}  # type: ignore[index]


def _claimed_order(order_id: str, execution: str) -> SagaClaim:
    """An order whose checkout saga ``execution`` (epoch 1) has claimed; its claim."""
    price = Money(amount=500, currency="USD")
    orders.create(
        Order(
            order_id=order_id,
            customer_id="cust-1",
            status="PAYMENT_AUTHORIZED",
            items=[
                OrderLine(
                    sku="A", name="A", quantity=2, unit_price=price, line_total=Money(amount=1000, currency="USD")
                )
            ],
            total=Money(amount=1000, currency="USD"),
            history=[HistoryEntry(step="place_order", status="PENDING", at="2026-11-30T00:59:59.000Z")],
            payment_token="tok_visa",
            idempotency_key="key-1",
            created_at="2026-11-30T00:59:59.000Z",
            updated_at="2026-11-30T00:59:59.000Z",
        )
    )
    claim = SagaClaim(execution=execution, epoch=1)
    orders.claim(order_id, claim)
    return claim


def _claimed_then_taken_over_after_the_next_check(patch: pytest.MonkeyPatch) -> tuple[SagaClaim, SagaClaim]:
    """order-1 claimed by its checkout (the stale claim), and taken over by a redrive (the takeover) right
    after the next ownership check passes: between a step's check and its write."""
    stale = _claimed_order("order-1", "arn:aws:states:us-east-1:123456789012:execution:checkout:order-1")
    takeover = SagaClaim(
        execution="arn:aws:states:us-east-1:123456789012:execution:checkout:order-1-redrive-2", epoch=2
    )
    checked = orders.ensure_claimed

    def check_then_lose_the_claim(order_id: str, claim: SagaClaim) -> None:
        checked(order_id, claim)
        orders.claim(order_id, takeover)

    patch.setattr(orders, "ensure_claimed", check_then_lose_the_claim)
    return stale, takeover


def test_a_takeover_after_a_releases_check_refuses_its_transaction(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saga's release checks its claim and then writes: a takeover landing in between (an
    operator's redrive, the sweeper's dead letter) must cancel the write, as the claim is the
    transaction's condition, not only the earlier read."""
    backend.put_product("A", 5)
    inventory.reserve("order-1", lines(A=2), now=NOW)
    stale, takeover = _claimed_then_taken_over_after_the_next_check(monkeypatch)
    with pytest.raises(SagaClaimLost):
        inventory.release("order-1", now=NOW + 10, claim=stale)
    monkeypatch.undo()

    assert backend.available("A") == 3
    stored = backend.reservation_item("order-1")
    assert stored is not None and stored["status"] == {"S": "RESERVED"}
    assert inventory.release("order-1", now=NOW + 20, claim=takeover).status == "RELEASED"
    assert backend.available("A") == 5


_FIFTY = [f"S{number:02d}" for number in range(50)]


def _placed_before_the_claims_condition() -> list[CheckoutLine]:
    """50 lines, 49 with a purchase limit: an order placement accepted before the release carried its
    claim's condition (1 + 50 + 49 = 100 actions, the most a transaction holds)."""
    return [
        CheckoutLine(sku=sku, quantity=1, purchase_limit=3 if number < 49 else None)
        for number, sku in enumerate(_FIFTY)
    ]


def test_an_order_placed_before_the_claims_condition_is_reserved_and_released(backend: Backend) -> None:
    """Its reservation takes 100 actions and its release would take 101 with the condition: it is
    reserved as before and released without it, on the step's check alone (a review's probe: the
    reserve failed every retry and the release was refused as too large)."""
    for sku in _FIFTY:
        backend.put_product(sku, 5)
    lines = _placed_before_the_claims_condition()
    assert inventory.reserve("order-1", lines, customer_id="cust-1", now=NOW).status == ("RESERVED")
    claim = _claimed_order("order-1", "arn:aws:states:us-east-1:123456789012:execution:checkout:order-1")

    assert inventory.release("order-1", now=NOW + 10, claim=claim).status == "RELEASED"
    assert {backend.available(sku) for sku in _FIFTY} == {5}


def test_the_largest_order_placement_accepts_is_released_only_while_its_claim_owns_the_order(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 lines, 48 with a purchase limit: its release with the claim's condition is 1 + 50 + 48 + 1 =
    100 actions, the most a transaction holds, so the condition is sent, and a takeover after the step's
    check refuses the release (a mutation run sent no condition at exactly 100 and every test passed)."""
    for sku in _FIFTY:
        backend.put_product(sku, 5)
    largest = [
        CheckoutLine(sku=sku, quantity=1, purchase_limit=3 if number < 48 else None)
        for number, sku in enumerate(_FIFTY)
    ]
    assert inventory.fits_one_transaction(len(largest), 48)
    assert inventory.reserve("order-1", largest, customer_id="cust-1", now=NOW).status == "RESERVED"
    with monkeypatch.context() as patched:
        stale, takeover = _claimed_then_taken_over_after_the_next_check(patched)
        with pytest.raises(SagaClaimLost):
            inventory.release("order-1", now=NOW + 10, claim=stale)

    assert {backend.available(sku) for sku in _FIFTY} == {4}
    stored = backend.reservation_item("order-1")
    assert stored is not None and stored["status"] == {"S": "RESERVED"}
    assert inventory.release("order-1", now=NOW + 20, claim=takeover).status == "RELEASED"
    assert {backend.available(sku) for sku in _FIFTY} == {5}


def test_release_of_a_committed_reservation_returns_the_sold_stock(backend: Backend) -> None:
    backend.put_product("A", 5)
    inventory.reserve("order-1", lines(A=2), now=NOW)
    inventory.commit("order-1")

    result = inventory.release("order-1", now=NOW)
    inventory.release("order-1", now=NOW)

    assert result.status == "RELEASED"
    assert backend.available("A") == 5


def test_release_of_a_missing_reservation_is_a_no_op(backend: Backend) -> None:
    result = inventory.release("never-reserved", now=NOW)

    assert result.model_dump(mode="json") == {
        "reservation_id": "never-reserved",
        "order_id": None,
        "status": "NOT_FOUND",
        "lines": [],
        "expires_at": None,
    }
    assert backend.reservation_count() == 0


def test_a_stale_release_loses_to_a_commit(backend: Backend) -> None:
    backend.put_product("A", 5)
    inventory.reserve("order-1", lines(A=2), now=NOW)
    read_before_commit = repository.get_reservation("order-1")
    assert read_before_commit is not None
    inventory.commit("order-1")

    with pytest.raises(repository.TransactionCancelled) as raised:
        repository.release_reservation(
            read_before_commit, expected="RESERVED", updated_at="now", purge_at=NOW, returns=[("A", 0, 2)]
        )

    reasons = raised.value.reasons
    assert [reason.code for reason in reasons] == ["ConditionalCheckFailed", "None"]
    assert reasons[0].item is not None and reasons[0].item["status"] == "COMMITTED"
    assert backend.available("A") == 3


def test_sweeper_releases_only_expired_holds(backend: Backend) -> None:
    ttl = inventory_settings().reservation_ttl_seconds
    backend.put_product("A", 10)
    inventory.reserve("expired", lines(A=1), now=NOW - ttl - 1)
    inventory.reserve("expires-now", lines(A=1), now=NOW - ttl)
    inventory.reserve("committed", lines(A=1), now=NOW - ttl - 1)
    inventory.commit("committed")
    inventory.reserve("released", lines(A=1), now=NOW - ttl - 1)
    inventory.release("released", now=NOW)
    inventory.reserve("fresh", lines(A=1), now=NOW - ttl + 1)
    assert backend.available("A") == 6

    assert inventory.release_expired(NOW).released == 2
    assert inventory.release_expired(NOW).released == 0

    assert backend.available("A") == 8
    statuses = {rid: repository.get_reservation(rid) for rid in ("expired", "expires-now", "committed", "fresh")}
    assert {rid: r.status for rid, r in statuses.items() if r} == {
        "expired": "RELEASED",
        "expires-now": "RELEASED",
        "committed": "COMMITTED",
        "fresh": "RESERVED",
    }


def test_sweeper_pages_through_the_index_within_its_limit(backend: Backend) -> None:
    backend.put_product("A", 10)
    for number in range(3):
        inventory.reserve(f"r{number}", lines(A=1), now=NOW - DAY)

    assert inventory.release_expired(NOW, limit=2).released == 2
    assert inventory.release_expired(NOW, limit=2).released == 1
    assert backend.available("A") == 10


def test_ttl_is_enabled_on_purge_at(backend: Backend) -> None:
    description = backend.client.describe_time_to_live(TableName=backend.table("ReservationsTable"))
    assert description["TimeToLiveDescription"] == {"TimeToLiveStatus": "ENABLED", "AttributeName": "purge_at"}


# ---------------------------------------------------------------------------- concurrency
def test_fifty_concurrent_reservations_of_ten_units_never_oversell(backend: Backend) -> None:
    backend.put_product("HOT", 10)
    aws.dynamodb()  # one shared client, as in a warm Lambda, instead of 50 built at once

    def reserve(number: int) -> str:
        try:
            retrying(lambda: inventory.reserve(f"order-{number}", lines(HOT=1), now=NOW))
        except OutOfStock as error:
            assert error.short_skus == ["HOT"]
            return "out-of-stock"
        return "reserved"

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = Counter(pool.map(reserve, range(50)))

    assert outcomes == Counter({"reserved": 10, "out-of-stock": 40})
    assert backend.available("HOT") == 0
    assert backend.reservation_count() == 10


def test_concurrent_releases_return_the_stock_once(backend: Backend) -> None:
    backend.put_product("A", 5)
    inventory.reserve("order-1", lines(A=3), now=NOW)
    aws.dynamodb()
    start = threading.Barrier(10)

    def release(_: int) -> str:
        start.wait()
        return str(retrying(lambda: inventory.release("order-1", now=NOW).status))

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = set(pool.map(release, range(10)))

    assert statuses == {"RELEASED"}
    assert backend.available("A") == 5


def test_a_commit_racing_the_sweeper_leaves_stock_consistent(backend: Backend) -> None:
    backend.put_product("A", 100)
    aws.dynamodb()
    rounds = 10
    for number in range(rounds):
        inventory.reserve(f"order-{number}", lines(A=1), now=NOW - DAY)

    def commit(number: int) -> str:
        try:
            return str(retrying(lambda: inventory.commit(f"order-{number}").status))
        except ReservationExpired:
            return "RELEASED"

    with ThreadPoolExecutor(max_workers=2) as pool:
        commits = pool.submit(lambda: [commit(number) for number in range(rounds)])
        sweep = pool.submit(lambda: retrying(lambda: inventory.release_expired(NOW)))
        outcomes, swept = commits.result(), sweep.result()

    # Whoever won each race, stock matches the final states exactly.
    final = [repository.get_reservation(f"order-{number}") for number in range(rounds)]
    assert [r.status if r else None for r in final] == outcomes
    assert outcomes.count("RELEASED") == getattr(swept, "released", None)
    assert backend.available("A") == 100 - outcomes.count("COMMITTED")


# ---------------------------------------------------------------------------- sharded stock
def reshard(sku: str, shards: int) -> None:
    from shop.domain import catalog
    from shop.models.catalog import UpdateProductRequest

    catalog.update_product(sku, UpdateProductRequest(stock_shards=shards))


def sharded(sku: str, quantity: int, shards: int) -> list[CheckoutLine]:
    return [CheckoutLine(sku=sku, quantity=quantity, stock_shards=shards)]


@pytest.mark.parametrize("action", ["replace", "unchanged", "remove"])
def test_a_counter_write_planned_from_a_stale_read_is_refused(backend: Backend, action: str) -> None:
    """A reshard's counter actions hold only on the version they read: a sale between the read and the
    transaction cancels it, so the reshard never writes back units the sale took. A mutation run turned
    ``replace``'s ``#version = :version`` into ``>=`` and every test passed (the sale's units came back)."""
    backend.put_product("A", 10)
    reshard("A", 2)
    read = stock.shards("A")
    inventory.reserve("sale", sharded("A", 1, 2), now=NOW)
    after_sale = backend.shards("A")
    assert sum(after_sale.values()) == 9
    sold_from = next(number for number in read if after_sale[number] != read[number].available)
    planned = {
        "replace": stock.replace("A", read[sold_from], 5),
        "unchanged": stock.unchanged("A", read[sold_from]),
        "remove": stock.remove("A", read[sold_from]),
    }[action]

    with pytest.raises(ClientError) as refused:
        aws.dynamodb().transact_write_items(TransactItems=[planned])

    assert refused.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert backend.shards("A") == after_sale


def test_a_shard_is_created_only_where_there_is_none(backend: Backend) -> None:
    """A reshard up (or a new product) plans its new shards from a read that found none; a shard written
    since (a concurrent reshard) cancels the transaction instead of being overwritten with units the
    plan counted elsewhere. A mutation run dropped ``attribute_not_exists(#sku)`` and every test passed."""
    backend.put_product("A", 10)
    reshard("A", 2)
    before = backend.shards("A")

    with pytest.raises(ClientError) as refused:
        aws.dynamodb().transact_write_items(TransactItems=[stock.create("A", 1, 7)])

    assert refused.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert backend.shards("A") == before


def test_resharding_spreads_the_units_and_keeps_the_total(backend: Backend) -> None:
    backend.put_product("A", 10)

    reshard("A", 4)
    assert backend.shards("A") == {0: 3, 1: 3, 2: 2, 3: 2}
    reshard("A", 3)
    assert backend.shards("A") == {0: 4, 1: 3, 2: 3}
    reshard("A", 1)
    assert backend.shards("A") == {0: 10}


def test_a_sharded_reservation_takes_one_shard_and_records_it(backend: Backend) -> None:
    backend.put_product("A", 8)
    reshard("A", 4)

    inventory.reserve("order-1", sharded("A", 2, 4), now=NOW)

    stored = repository.get_reservation("order-1")
    assert stored is not None and len(stored.lines[0].takes) == 1
    taken_from = stored.lines[0].takes[0].shard
    assert backend.shards("A") == {shard: 0 if shard == taken_from else 2 for shard in range(4)}


def test_a_short_shard_falls_back_across_shards_and_never_oversells(backend: Backend) -> None:
    backend.put_product("A", 7)
    reshard("A", 4)  # 2, 2, 2, 1

    # 5 units: no shard alone has them, three together do.
    inventory.reserve("big", sharded("A", 5, 4), now=NOW)
    stored = repository.get_reservation("big")
    assert stored is not None and sum(take.quantity for take in stored.lines[0].takes) == 5
    assert backend.available("A") == 2

    with pytest.raises(OutOfStock):
        inventory.reserve("too-many", sharded("A", 3, 4), now=NOW)
    assert backend.available("A") == 2 and repository.get_reservation("too-many") is None

    inventory.release("big", now=NOW)
    assert backend.available("A") == 7 and min(backend.shards("A").values()) >= 0


def test_a_release_after_a_reshard_down_returns_the_units_to_shard_zero(backend: Backend) -> None:
    backend.put_product("A", 40)
    reshard("A", 8)
    inventory.reserve("order-1", [CheckoutLine(sku="A", quantity=5, stock_shards=8)], now=NOW)
    stored = repository.get_reservation("order-1")
    assert stored is not None
    # Whichever shard it came from, it no longer exists after this (shard 0 always does).
    reshard("A", 1)
    assert backend.shards("A") == {0: 35}

    inventory.release("order-1", now=NOW)

    assert backend.shards("A") == {0: 40}


def test_a_stale_shard_count_still_reserves_from_the_shards_that_exist(backend: Backend) -> None:
    backend.put_product("A", 6)
    reshard("A", 2)

    # The order recorded 40 shards; most of them do not exist: the fallback finds the two.
    for number in range(3):
        inventory.reserve(f"r{number}", sharded("A", 2, 40), now=NOW)

    assert backend.available("A") == 0
    with pytest.raises(OutOfStock):
        inventory.reserve("r3", sharded("A", 1, 40), now=NOW)


def test_a_multi_line_order_across_shards_is_all_or_nothing(backend: Backend) -> None:
    backend.put_product("A", 4)
    backend.put_product("B", 1)
    reshard("A", 4)

    with pytest.raises(OutOfStock) as raised:
        inventory.reserve("order-1", [*sharded("A", 3, 4), *sharded("B", 2, 1)], now=NOW)

    assert raised.value.extensions["short_skus"] == ["B"]
    assert backend.shards("A") == {0: 1, 1: 1, 2: 1, 3: 1} and backend.available("B") == 1
    assert repository.get_reservation("order-1") is None


def test_a_gather_moves_units_onto_one_shard_and_keeps_the_total(backend: Backend) -> None:
    backend.put_product("A", 10)
    reshard("A", 4)  # 3, 3, 2, 2

    assert repository.gather_stock("A", [ShardTake(shard=0, quantity=3), ShardTake(shard=3, quantity=1)], 2)
    assert backend.shards("A") == {0: 0, 1: 3, 2: 6, 3: 1}

    # A source without the units it names: refused whole, nothing moved.
    assert not repository.gather_stock("A", [ShardTake(shard=1, quantity=3), ShardTake(shard=0, quantity=1)], 2)
    assert backend.shards("A") == {0: 0, 1: 3, 2: 6, 3: 1}


def test_an_order_over_every_shard_of_two_skus_is_gathered_into_one_transaction(backend: Backend) -> None:
    """2 units on each of 50 shards: two lines of 100 are 101 actions, beyond what a transaction holds."""
    for sku in ("A", "B"):
        backend.put_product(sku, 100)
        reshard(sku, 50)

    retrying(lambda: inventory.reserve("order-1", [*sharded("A", 100, 50), *sharded("B", 100, 50)], now=NOW))

    assert backend.available("A") == backend.available("B") == 0
    stored = repository.get_reservation("order-1")
    assert stored is not None and sum(take.quantity for line in stored.lines for take in line.takes) == 200
    inventory.release("order-1", now=NOW)
    assert backend.available("A") == backend.available("B") == 100


def test_holds_spread_over_the_index_shards_and_the_sweeper_reads_them_all(backend: Backend) -> None:
    backend.put_product("A", 40)
    ids = [f"hold-{number}" for number in range(40)]
    for offset, reservation_id in enumerate(ids):
        inventory.reserve(reservation_id, lines(A=1), now=NOW - DAY + offset)
    keys = {repository.held_key(reservation_id) for reservation_id in ids}
    assert len(keys) > 4 and all(key.startswith("HELD#") for key in keys)

    # Oldest first across the shards: the limit takes the earliest expiries.
    assert list(itertools.islice(repository.held_expired_ids(NOW), 5)) == ids[:5]
    assert inventory.release_expired(NOW).released == 40
    assert backend.available("A") == 40


def test_concurrent_sharded_reservations_never_oversell(backend: Backend) -> None:
    backend.put_product("A", 12)
    reshard("A", 4)

    def attempt(number: int) -> str:
        try:
            retrying(lambda: inventory.reserve(f"r{number}", sharded("A", 1, 4), now=NOW))
        except OutOfStock:
            return "out"
        return "reserved"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = Counter(pool.map(attempt, range(30)))

    assert outcomes == {"reserved": 12, "out": 18}
    assert backend.shards("A") == {0: 0, 1: 0, 2: 0, 3: 0}


def test_a_release_records_why_the_checkout_compensates_only_while_its_claim_owns_the_order(backend: Backend) -> None:
    """The first compensation records ``compensating`` on the order in a write conditioned on the claim,
    which also stands for the claim check: a stale run stops (SagaClaimLost) and writes nothing; the
    owner's failure (a map holding a null step) reads back as it was written, on both engines."""
    backend.put_product("A", 5)
    inventory.reserve("order-1", lines(A=2), now=NOW)
    stale = _claimed_order("order-1", "arn:aws:states:us-east-1:123456789012:execution:checkout:order-1")
    owner = SagaClaim(execution="arn:aws:states:us-east-1:123456789012:execution:checkout:order-1-continue-2", epoch=2)
    orders.claim("order-1", owner)
    failure = Failure(reason="CANCELLED_BY_CUSTOMER", step=None, compensations=["release_stock"])

    with pytest.raises(SagaClaimLost):
        inventory.release("order-1", now=NOW + 10, claim=stale, failure=failure)
    before = orders.get("order-1")
    assert before is not None and before.compensating is None and backend.available("A") == 3

    assert inventory.release("order-1", now=NOW + 20, claim=owner, failure=failure).status == "RELEASED"
    after = orders.get("order-1")
    assert after is not None and after.compensating == failure and after.version == before.version + 1
    assert backend.available("A") == 5


def test_a_hold_whose_purchase_counter_is_out_of_step_does_not_use_up_the_sweeps_limit(backend: Backend) -> None:
    """Left for an operator (the books check reports the counter), not counted: a mutation run counted it
    against the limit and every test passed, and then the hold behind it was never released."""
    backend.put_product("A", 5)
    limited = CheckoutLine(sku="A", quantity=2, purchase_limit=3)
    inventory.reserve("out-of-step", [limited], customer_id="c", now=NOW - DAY)
    backend.client.update_item(  # a hand edit: the counter no longer holds the reservation's units
        TableName=backend.table("PurchaseCountsTable"),
        Key={"customer_id": {"S": "c"}, "sku": {"S": "A"}},
        UpdateExpression="SET #units = :none",
        ExpressionAttributeNames={"#units": "units"},
        ExpressionAttributeValues={":none": {"N": "0"}},
    )
    inventory.reserve("real", lines(A=1), now=NOW - DAY + 60)

    assert inventory.release_expired(NOW, limit=1).released == 1

    left, released = repository.get_reservation("out-of-step"), repository.get_reservation("real")
    assert left is not None and left.status == "RESERVED"
    assert released is not None and released.status == "RELEASED"


def test_holds_left_for_an_operator_do_not_use_up_the_sweeps_limit(backend: Backend) -> None:
    """Expired holds the sweep cannot release (items it cannot read) stay first in the index. The limit
    counted every id read, so once there were as many of them as the limit, no hold behind them was
    ever released (a helper's probe, with 500). The limit now counts the holds the run dealt with."""
    backend.put_product("A", 5)
    for number in range(4):
        reservation_id = f"newer-version-{number}"
        backend.client.put_item(
            TableName=backend.table("ReservationsTable"),
            Item={
                "reservation_id": {"S": reservation_id},
                "status": {"S": "RESERVED"},
                "held": {"S": repository.held_key(reservation_id)},
                "expires_at": {"N": str(NOW - DAY)},
                "lines": {"S": "two of A"},
            },
        )
    inventory.reserve("real", lines(A=2), now=NOW - DAY + 60)

    assert inventory.release_expired(NOW, limit=4, examine=4).released == 0  # reading stops at its bound
    assert inventory.release_expired(NOW, limit=4).released == 1
    released = repository.get_reservation("real")
    assert released is not None and released.status == "RELEASED"
    assert backend.available("A") == 5
