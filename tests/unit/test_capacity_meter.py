"""The capacity meter `make bench` reads: requests and reported units, per request kind and table."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from infra.local.capacity import CapacityMeter, KeySchema


def _metered(meter: CapacityMeter, operation: str, params: dict[str, Any], consumed: Any) -> None:
    context: dict[str, Any] = {}
    meter._ask_for_capacity(params, context)
    assert params["ReturnConsumedCapacity"] == "INDEXES"
    meter._record({"ConsumedCapacity": consumed}, SimpleNamespace(name=operation), context)


def test_units_are_summed_per_direction_and_per_request_kind_and_table() -> None:
    meter = CapacityMeter(enabled=True)
    _metered(meter, "UpdateItem", {"TableName": "Orders"}, {"CapacityUnits": 4.0})
    _metered(meter, "UpdateItem", {"TableName": "Orders"}, {"CapacityUnits": 5.0})
    transaction = {"TransactItems": [{"Update": {"TableName": "Stock"}}, {"Put": {"TableName": "Holds"}}]}
    _metered(meter, "TransactWriteItems", transaction, [{"CapacityUnits": 6.0}, {"CapacityUnits": 4.0}])
    _metered(meter, "GetItem", {"TableName": "Orders"}, {"CapacityUnits": 0.5})
    indexed = {
        "TableName": "Orders",
        "CapacityUnits": 3.0,
        "Table": {"CapacityUnits": 1.0},
        "GlobalSecondaryIndexes": {"ByCustomer": {"CapacityUnits": 1.0}, "Open": {"CapacityUnits": 1.0}},
    }
    _metered(meter, "PutItem", {"TableName": "Orders"}, indexed)

    assert (meter.write_units, meter.read_units) == (22.0, 0.5)
    # Where a request's units went: the table and each index it wrote.
    assert meter.units_by_target["PutItem Orders"] == {"Orders": 1.0, "Orders/ByCustomer": 1.0, "Orders/Open": 1.0}
    assert dict(meter.requests_by_table) == {
        "UpdateItem Orders": 2,
        "TransactWriteItems Holds+Stock": 1,
        "GetItem Orders": 1,
        "PutItem Orders": 1,
    }
    assert dict(meter.units_by_table) == {
        "UpdateItem Orders": 9.0,
        "TransactWriteItems Holds+Stock": 10.0,
        "GetItem Orders": 0.5,
        "PutItem Orders": 3.0,
    }
    meter.reset()
    assert not meter.units_by_table and not meter.requests_by_table and not meter.units_by_target
    assert meter.write_units == 0.0


def _write(meter: CapacityMeter, operation: str, params: dict[str, Any]) -> None:
    context: dict[str, Any] = {}
    meter._ask_for_capacity(params, context, model=SimpleNamespace(name=operation))
    meter._record({}, SimpleNamespace(name=operation), context)


def test_write_units_are_counted_per_item_key_and_index_partition() -> None:
    meter = CapacityMeter(
        enabled=True,
        schemas={
            "Stock": KeySchema(keys=("sku", "shard")),
            "Holds": KeySchema(keys=("id",), indexes={"ByExpiry": "held"}),
        },
    )
    take = {
        "Update": {
            "TableName": "Stock",
            "Key": {"sku": {"S": "A"}, "shard": {"N": "3"}},
            "UpdateExpression": "SET #a = #a - :q",
            "ExpressionAttributeNames": {"#a": "available"},
        }
    }
    hold = {"Put": {"TableName": "Holds", "Item": {"id": {"S": "h1"}, "held": {"S": "HELD#2"}}}}
    _write(meter, "TransactWriteItems", {"TransactItems": [hold, take]})
    # A failed attempt is charged too (the meter counts what was sent).
    _write(meter, "UpdateItem", {"TableName": "Stock", **take["Update"]})
    # The hold leaves the index: its old partition is written once more.
    _write(
        meter,
        "UpdateItem",
        {"TableName": "Holds", "Key": {"id": {"S": "h1"}}, "UpdateExpression": "SET s = :s REMOVE held"},
    )
    _write(meter, "GetItem", {"TableName": "Stock", "Key": {"sku": {"S": "A"}, "shard": {"N": "3"}}})

    assert dict(meter.units_by_key) == {
        "Stock sku=A shard=3": 3,
        "Holds id=h1": 3,
        "Holds/ByExpiry HELD#2": 2,
    }
    assert sum(meter.units_by_key_second.values()) == 8
    meter.reset()
    assert not meter.units_by_key and not meter.units_by_key_second


def test_an_update_that_sets_a_sparse_index_key_writes_that_partition() -> None:
    meter = CapacityMeter(enabled=True, schemas={"Orders": KeySchema(keys=("id",), indexes={"ByOutcome": "outcome"})})
    for order in ("o1", "o2"):
        _write(meter, "PutItem", {"TableName": "Orders", "Item": {"id": {"S": order}, "status": {"S": "PENDING"}}})
        _write(
            meter,
            "UpdateItem",
            {
                "TableName": "Orders",
                "Key": {"id": {"S": order}},
                "UpdateExpression": "SET #s = :to, outcome = :to, #v = #v + :one",
                "ExpressionAttributeNames": {"#s": "status", "#v": "version"},
                "ExpressionAttributeValues": {":to": {"S": "CANCELLED"}, ":one": {"N": "1"}},
            },
        )
    # Not an assignment of a value: the entry it would write is unknown, so none is counted.
    _write(
        meter,
        "UpdateItem",
        {
            "TableName": "Orders",
            "Key": {"id": {"S": "o3"}},
            "UpdateExpression": "SET outcome = if_not_exists(outcome, :to)",
            "ExpressionAttributeValues": {":to": {"S": "REFUNDED"}},
        },
    )

    assert meter.units_by_key["Orders/ByOutcome CANCELLED"] == 2
    assert "Orders/ByOutcome REFUNDED" not in meter.units_by_key


def test_a_transaction_is_billed_two_units_per_item_however_its_units_were_reported() -> None:
    """DynamoDB Local reports a transaction's write units per table (2.0 for one small item and 2.0
    for three in one table); AWS bills 2 units per item of up to 1 KB. Larger reports stand."""
    meter = CapacityMeter(enabled=True)
    takes = [{"Update": {"TableName": "Stock"}} for _ in range(3)]
    transaction = {"TransactItems": [{"Put": {"TableName": "Holds"}}, *takes]}
    reported = [
        {
            "TableName": "Holds",
            "CapacityUnits": 6.0,
            "Table": {"CapacityUnits": 4.0},
            "GlobalSecondaryIndexes": {"ByExpiry": {"CapacityUnits": 2.0}},
        },
        {"TableName": "Stock", "CapacityUnits": 2.0, "Table": {"CapacityUnits": 2.0}},
    ]
    _metered(meter, "TransactWriteItems", transaction, reported)

    assert meter.units_by_target["TransactWriteItems Holds+Stock"] == {
        "Holds": 4.0,  # a 2 KB item: reported as billed
        "Holds/ByExpiry": 2.0,
        "Stock": 6.0,  # three items, 2 units each
    }
    assert meter.write_units == 12.0
    assert meter.units_by_table["TransactWriteItems Holds+Stock"] == 12.0
