"""The inventory Lambda functions, deployed from the template and invoked through Lambda.

Results and errors come back exactly as Step Functions sees them: a JSON result, or an error
payload whose ``errorType`` is the exception class name the saga's Retry/Catch match.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from botocore.stub import Stubber

from infra.local import lambda_runtime
from shop import aws
from shop.config import inventory_settings
from shop.domain import catalog, inventory
from shop.errors import InventoryContention, OutOfStock, StockTransactionRefused
from shop.models.catalog import UpdateProductRequest
from shop.models.common import CheckoutLine
from shop.repositories import inventory as inventory_repository
from shop.repositories import stock
from shop.repositories.inventory import held_key
from tests.conftest import SCHEDULED_EVENT, LocalAws, seed_product
from tests.service.test_hot_products import _FirstPick

RESERVE = "ReserveStockFunction"
COMMIT = "CommitReservationFunction"
RELEASE = "ReleaseReservationFunction"
SWEEP = "ReleaseExpiredReservationsFunction"


def invoke(local_aws: LocalAws, function: str, event: Any) -> tuple[bool, dict[str, Any]]:
    """(failed, payload) of a synchronous invocation."""
    response = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function(function), Payload=json.dumps(event).encode()
    )
    return "FunctionError" in response, json.loads(response["Payload"].read())


def ok(local_aws: LocalAws, function: str, event: Any) -> dict[str, Any]:
    failed, payload = invoke(local_aws, function, event)
    assert not failed, payload
    return payload


def error_type(local_aws: LocalAws, function: str, event: Any) -> str:
    failed, payload = invoke(local_aws, function, event)
    assert failed, payload
    return str(payload["errorType"])


def put_product(local_aws: LocalAws, sku: str, available: int) -> None:
    seed_product(sku, stock=available, price=500)


def available(local_aws: LocalAws, sku: str) -> int:
    """The sum of the SKU's stock shards, as stored."""
    items = local_aws.client("dynamodb").query(
        TableName=local_aws.table("StockTable"),
        KeyConditionExpression="sku = :sku",
        ExpressionAttributeValues={":sku": {"S": sku}},
        ConsistentRead=True,
    )["Items"]
    return sum(int(item["available"]["N"]) for item in items)


def reservations(local_aws: LocalAws) -> dict[str, dict[str, Any]]:
    items = local_aws.client("dynamodb").scan(TableName=local_aws.table("ReservationsTable"), ConsistentRead=True)
    return {item["reservation_id"]["S"]: item for item in items["Items"]}


def reserve_event(order_id: str = "order-1", **quantities: int) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in (quantities or {"A": 2}).items()],
    }


@pytest.fixture
def stocked(local_aws: LocalAws) -> LocalAws:
    put_product(local_aws, "A", 5)
    put_product(local_aws, "B", 1)
    return local_aws


def test_reserve_commit_and_release_through_lambda(stocked: LocalAws) -> None:
    event = {**reserve_event(A=2, B=1), "execution_name": "exec-1"}

    reserved = ok(stocked, RESERVE, event)
    assert set(reserved) == {"reservation_id", "order_id", "status", "lines", "expires_at"}
    assert reserved["status"] == "RESERVED"
    # The step answers (sku, quantity); the shards each line took stay on the stored reservation.
    assert reserved["lines"] == [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}]
    assert isinstance(reserved["expires_at"], int) and reserved["expires_at"] > time.time()
    assert (available(stocked, "A"), available(stocked, "B")) == (3, 0)

    step = {"order_id": "order-1", "execution_name": "exec-1"}
    committed = ok(stocked, COMMIT, step)
    assert committed == {**reserved, "status": "COMMITTED"}

    # The refund saga returns sold stock through the same function.
    released = ok(stocked, RELEASE, step)
    assert released == {**reserved, "status": "RELEASED"}
    assert (available(stocked, "A"), available(stocked, "B")) == (5, 1)


def test_out_of_stock_is_a_named_error_and_changes_nothing(stocked: LocalAws) -> None:
    assert error_type(stocked, RESERVE, reserve_event(A=1, B=2)) == "OutOfStock"

    assert (available(stocked, "A"), available(stocked, "B")) == (5, 1)
    assert reservations(stocked) == {}


def test_reserving_an_id_again_with_other_lines_is_a_conflict(stocked: LocalAws) -> None:
    ok(stocked, RESERVE, reserve_event(A=2))
    before = reservations(stocked)

    assert error_type(stocked, RESERVE, reserve_event(A=3)) == "ReservationConflict"

    assert reservations(stocked) == before
    assert available(stocked, "A") == 3


BAD_RESERVE_EVENTS: dict[str, Any] = {
    "empty": {},
    "no-lines": {"order_id": "order-1", "lines": []},
    "unknown-field": {**reserve_event(), "unexpected": True},
    "zero": {**reserve_event(), "lines": [{"sku": "A", "quantity": 0}]},
    "too-many": {**reserve_event(), "lines": [{"sku": "A", "quantity": 101}]},
    "string-quantity": {**reserve_event(), "lines": [{"sku": "A", "quantity": "2"}]},
    "float-quantity": {**reserve_event(), "lines": [{"sku": "A", "quantity": 1.5}]},
    "duplicate-sku": {**reserve_event(), "lines": [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 1}]},
    "bad-sku": {**reserve_event(), "lines": [{"sku": "not a sku!", "quantity": 1}]},
    "empty-id": {**reserve_event(), "order_id": ""},
    "reservation-id": {**reserve_event(), "reservation_id": "order-1"},  # the order id is the reservation id
    "null-order": {**reserve_event(), "order_id": None},
    "not-an-object": [1, 2, 3],
}

BAD_STEP_EVENTS: dict[str, Any] = {
    "empty": {},
    "int-id": {"order_id": 7},
    "unknown-field": {"order_id": "order-1", "extra": 1},
}


def test_bad_events_are_field_errors_and_change_nothing(stocked: LocalAws, subtests: pytest.Subtests) -> None:
    # One deployed stack for all cases: each must leave the same state behind.
    ok(stocked, RESERVE, reserve_event("held", A=2))
    before = reservations(stocked)
    cases = [(RESERVE, name, event) for name, event in BAD_RESERVE_EVENTS.items()]
    cases += [(function, name, event) for function in (COMMIT, RELEASE) for name, event in BAD_STEP_EVENTS.items()]
    for function, name, event in cases:
        with subtests.test(function=function, case=name):
            assert error_type(stocked, function, event) == "FieldError"
            assert reservations(stocked) == before
            assert (available(stocked, "A"), available(stocked, "B")) == (3, 1)


def test_commit_errors_are_named_for_the_saga(stocked: LocalAws) -> None:
    assert error_type(stocked, COMMIT, {"order_id": "missing"}) == "ReservationNotFound"

    ok(stocked, RESERVE, reserve_event(A=2))
    ok(stocked, RELEASE, {"order_id": "order-1"})
    assert error_type(stocked, COMMIT, {"order_id": "order-1"}) == "ReservationExpired"
    assert available(stocked, "A") == 5


def test_releasing_a_missing_reservation_succeeds_and_creates_nothing(stocked: LocalAws) -> None:
    result = ok(stocked, RELEASE, {"order_id": "order-9"})

    assert result == {
        "reservation_id": "order-9",
        "order_id": None,
        "status": "NOT_FOUND",
        "lines": [],
        "expires_at": None,
    }
    assert reservations(stocked) == {}


def test_every_step_delivered_twice_changes_stock_once(stocked: LocalAws) -> None:
    lambda_runtime.faults.duplicate_deliveries.update(stocked.function(name) for name in (RESERVE, COMMIT, RELEASE))

    reserved = ok(stocked, RESERVE, reserve_event(A=2))
    assert available(stocked, "A") == 3
    assert ok(stocked, RESERVE, reserve_event(A=2)) == reserved
    assert available(stocked, "A") == 3

    assert ok(stocked, COMMIT, {"order_id": "order-1"})["status"] == "COMMITTED"
    assert available(stocked, "A") == 3

    assert ok(stocked, RELEASE, {"order_id": "order-1"})["status"] == "RELEASED"
    assert ok(stocked, RELEASE, {"order_id": "order-1"})["status"] == "RELEASED"
    assert available(stocked, "A") == 5
    assert len(reservations(stocked)) == 1


def test_the_scheduled_sweeper_returns_expired_holds(stocked: LocalAws) -> None:
    ttl = int(stocked.stack.function_environments[SWEEP]["RESERVATION_TTL_SECONDS"])
    past = int(time.time()) - ttl - 60
    inventory.reserve("expired", [CheckoutLine(sku="A", quantity=2)], now=past)
    ok(stocked, RESERVE, reserve_event("current", A=1))
    assert available(stocked, "A") == 2

    assert ok(stocked, SWEEP, SCHEDULED_EVENT) == {"released": 1}
    assert ok(stocked, SWEEP, SCHEDULED_EVENT) == {"released": 0}

    assert available(stocked, "A") == 4
    stored = reservations(stocked)
    assert stored["expired"]["status"] == {"S": "RELEASED"}
    assert stored["current"]["status"] == {"S": "RESERVED"}
    assert error_type(stocked, COMMIT, {"order_id": "expired"}) == "ReservationExpired"


def test_an_expired_hold_the_sweeper_cannot_read_never_holds_up_the_others(stocked: LocalAws) -> None:
    ttl = int(stocked.stack.function_environments[SWEEP]["RESERVATION_TTL_SECONDS"])
    past = int(time.time()) - ttl - 60
    # Written by a version this one cannot read (or by hand): expired before the real hold, so read first.
    unreadable = "from-a-newer-version"
    stocked.client("dynamodb").put_item(
        TableName=stocked.table("ReservationsTable"),
        Item={
            "reservation_id": {"S": unreadable},
            "status": {"S": "RESERVED"},
            "held": {"S": held_key(unreadable)},
            "expires_at": {"N": str(past - 1)},
            "lines": {"S": "two of A"},
        },
    )
    inventory.reserve("expired", [CheckoutLine(sku="A", quantity=2)], now=past)
    assert available(stocked, "A") == 3

    assert ok(stocked, SWEEP, SCHEDULED_EVENT) == {"released": 1}

    assert available(stocked, "A") == 5
    stored = reservations(stocked)
    assert stored["expired"]["status"] == {"S": "RELEASED"}
    assert stored[unreadable]["status"] == {"S": "RESERVED"}  # left as it is, for an operator


def test_a_stock_counter_the_shop_cannot_write_never_holds_up_the_other_expired_holds(stocked: LocalAws) -> None:
    ttl = int(stocked.stack.function_environments[SWEEP]["RESERVATION_TTL_SECONDS"])
    past = int(time.time()) - ttl - 60
    put_product(stocked, "P", 5)
    inventory.reserve("older", [CheckoutLine(sku="P", quantity=1)], now=past - 10)
    inventory.reserve("expired", [CheckoutLine(sku="A", quantity=2)], now=past)
    # P's counter rewritten behind the shop's back, its units as text: returning units to it fails.
    stocked.client("dynamodb").put_item(
        TableName=stocked.table("StockTable"),
        Item={"sku": {"S": "P"}, "shard": {"N": "0"}, "available": {"S": "four"}, "version": {"N": "9"}},
    )

    # Before, the sweep failed on the older hold, first in every run, and no hold behind it was released.
    assert ok(stocked, SWEEP, SCHEDULED_EVENT) == {"released": 1}

    assert available(stocked, "A") == 5
    stored = reservations(stocked)
    assert stored["expired"]["status"] == {"S": "RELEASED"}
    assert stored["older"]["status"] == {"S": "RESERVED"}  # left as it is, for an operator


def test_the_sweeper_is_scheduled_by_the_template(local_aws: LocalAws) -> None:
    schedules = {schedule.function_name: schedule for schedule in local_aws.stack.schedules}
    assert schedules[local_aws.function(SWEEP)].every_seconds == 60


def _stock_read(local_aws: LocalAws, sku: str, *, emptied: bool = False) -> dict[str, Any]:
    """The Query answer the final read of a SKU's shards gets, as the emulator gives it (``emptied``:
    every shard at 0, as after the last units went to the buyers that won the races)."""
    answer = local_aws.client("dynamodb").query(
        TableName=local_aws.table("StockTable"),
        KeyConditionExpression="sku = :sku",
        ExpressionAttributeValues={":sku": {"S": sku}},
        ConsistentRead=True,
    )
    items = [{**item, "available": {"N": "0"}} if emptied else item for item in answer["Items"]]
    return {"Items": items, "Count": len(items), "ScannedCount": len(items)}


def _conflict_every_round(stub: Stubber, reason: str) -> None:
    for _ in range(inventory._RESERVE_ROUNDS):
        stub.add_client_error(
            "transact_write_items",
            service_error_code="TransactionCanceledException",
            service_message="Transaction cancelled",
            http_status_code=400,
            modeled_fields={"CancellationReasons": [{"Code": "None"}, {"Code": reason}]},
        )


@pytest.mark.parametrize("reason", ["TransactionConflict", "ThrottlingError"])
def test_a_transaction_conflict_is_retryable_contention(stocked: LocalAws, reason: str) -> None:
    """Tried again within the step (each round a fresh shard pick), then left to the saga's Retry
    once a last read shows the stock is still there."""
    # Emulators serialize transactions, so DynamoDB's conflict answer is stubbed here.
    client = aws.dynamodb()
    stock_read = _stock_read(stocked, "A")
    with Stubber(client) as stub:
        _conflict_every_round(stub, reason)
        stub.add_response("query", stock_read)
        with pytest.raises(InventoryContention):
            inventory.reserve("order-1", [CheckoutLine(sku="A", quantity=1)])
        stub.assert_no_pending_responses()  # every round was tried, then the stock read
    assert reservations(stocked) == {}
    assert available(stocked, "A") == 5


def test_a_cancellation_no_write_expects_is_a_named_error_and_changes_nothing(stocked: LocalAws) -> None:
    """Its class name is the error the execution history shows and the saga's catch-all compensates."""
    client = aws.dynamodb()
    with Stubber(client) as stub:
        stub.add_client_error(
            "transact_write_items",
            service_error_code="TransactionCanceledException",
            service_message="Transaction cancelled",
            http_status_code=400,
            modeled_fields={"CancellationReasons": [{"Code": "None"}, {"Code": "ValidationError"}]},
        )
        with pytest.raises(StockTransactionRefused, match="ValidationError"):
            inventory.reserve("order-1", [CheckoutLine(sku="A", quantity=1)])
    assert reservations(stocked) == {}
    assert available(stocked, "A") == 5


def test_a_buyer_losing_every_race_while_the_stock_runs_out_is_told_out_of_stock(stocked: LocalAws) -> None:
    """Not "try again" (INVENTORY_UNAVAILABLE in the end): the last read finds the SKU short."""
    client = aws.dynamodb()
    stock_read = _stock_read(stocked, "A", emptied=True)
    with Stubber(client) as stub:
        _conflict_every_round(stub, "TransactionConflict")
        stub.add_response("query", stock_read)
        stub.add_response("query", stock_read)  # a refusal is judged on two reads that agree
        with pytest.raises(OutOfStock) as raised:
            inventory.reserve("order-1", [CheckoutLine(sku="A", quantity=1)])
        stub.assert_no_pending_responses()
    assert raised.value.short_skus == ["A"]
    assert reservations(stocked) == {}
    assert available(stocked, "A") == 5


# ---------------------------------------------------------------------------- pinned by mutation testing
# Each case below failed on a one-line change to the code it covers that every other test let through (a
# helper's hand mutation run): the boundary or clause it pins is behaviour, not an accident.
def test_losing_every_race_with_exactly_the_units_there_is_contention_not_out_of_stock(
    stocked: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    def conflict(reservation: Any) -> None:
        raise inventory_repository.TransactionCancelled(
            [
                inventory_repository.CancellationReason("None"),
                inventory_repository.CancellationReason("TransactionConflict"),
            ]
        )

    monkeypatch.setattr(inventory_repository, "create_reservation", conflict)
    monkeypatch.setattr(inventory.time, "sleep", lambda seconds: None)
    with pytest.raises(InventoryContention):  # "sold out" would be a lie: the 5 units are there
        inventory.reserve("order-1", [CheckoutLine(sku="A", quantity=5)])
    assert available(stocked, "A") == 5


def test_a_hold_expiring_exactly_now_is_released(stocked: LocalAws) -> None:
    inventory.reserve("order-1", [CheckoutLine(sku="A", quantity=1)], now=0)
    assert inventory.release_expired(inventory_settings().reservation_ttl_seconds).released == 1
    assert available(stocked, "A") == 5


def test_the_sweep_deals_with_at_most_its_limit(stocked: LocalAws) -> None:
    for number in range(3):
        inventory.reserve(f"order-{number}", [CheckoutLine(sku="A", quantity=1)], now=0)
    assert inventory.release_expired(10**9, limit=2).released == 2
    assert available(stocked, "A") == 4


def test_a_committed_hold_leaves_the_expiry_index(stocked: LocalAws) -> None:
    # Left in HeldByExpiry, a committed hold would be read again by every sweep for good, each time using up
    # the sweep's limit, and the index would only grow.
    inventory.reserve("order-1", [CheckoutLine(sku="A", quantity=1)], now=0)
    inventory.commit("order-1")
    assert "order-1" not in list(inventory_repository.held_expired_ids(10**10))


def test_a_release_after_a_reshard_returns_the_units_to_a_shard_that_exists(stocked: LocalAws) -> None:
    # Only a threaded, racy test covered this: it caught the change one run in three.
    catalog.update_product("A", UpdateProductRequest(stock_shards=4))
    line = CheckoutLine(sku="A", quantity=1, stock_shards=4)
    reserved = inventory.reserve("order-1", [line], rng=_FirstPick(3))
    assert reserved.status == "RESERVED"
    catalog.update_product("A", UpdateProductRequest(stock_shards=1))

    inventory.release("order-1")

    shards = {number: shard.available for number, shard in stock.shards("A").items()}
    assert shards == {0: 5}
