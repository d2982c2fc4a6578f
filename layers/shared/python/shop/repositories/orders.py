"""Orders in DynamoDB (OrdersTable) and the idempotency store of POST /orders (IdempotencyTable).

Every change to an order is conditional, so the saga's steps and a customer's cancel request can
never overwrite each other: a whole-item put conditional on the ``version`` the writer read
(``update``), or, for the saga's forward steps in the common case, one UpdateItem conditional on
the status the step expects (``advance``), which bumps ``version`` too and costs no read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from botocore.exceptions import ClientError

from shop import aws
from shop.config import table_settings
from shop.errors import OrderContention, OrderNotFound
from shop.models.orders import SAGA_IN_PROGRESS, HistoryEntry, Order, OrderFilter, OrderStatus
from shop.repositories.dynamodb import call, call_if, is_condition_failure, marshal, serialize, unmarshal

ORDERS_BY_CUSTOMER = "OrdersByCustomer"
ORDERS_IN_PROGRESS = "OrdersInProgress"
ORDERS_BY_STATUS = "OrdersByStatus"
# The one value of the sparse OrdersInProgress index's key; absent on every other order.
IN_PROGRESS = "IN_PROGRESS"
# A cancel request and the saga rarely collide more than once; more means something is wrong.
MAX_WRITE_ATTEMPTS = 8


class VersionConflict(Exception):
    """The order changed (or vanished) since it was read; read it again and retry."""


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; the models (Money is strict) want ints."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _unmarshal_plain(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _plain(value) for key, value in unmarshal(item).items()}


def _order_item(order: Order) -> dict[str, Any]:
    item = order.model_dump(mode="json")
    item["created_key"] = order.created_key
    item["in_progress"] = IN_PROGRESS if order.status in SAGA_IN_PROGRESS else None
    return marshal(item)


def to_order(item: Mapping[str, Any]) -> Order:
    return Order.model_validate(_unmarshal_plain(item))


def get(order_id: str) -> Order | None:
    response = call(
        "get_item",
        busy=OrderContention,
        TableName=table_settings().orders_table,
        Key={"order_id": {"S": order_id}},
        ConsistentRead=True,
    )
    item = response.get("Item")
    return to_order(item) if item else None


def create(order: Order) -> Order:
    """Store a new order; if one with this id exists already, return the stored one unchanged."""
    try:
        call(
            "put_item",
            busy=OrderContention,
            TableName=table_settings().orders_table,
            Item=_order_item(order),
            ConditionExpression="attribute_not_exists(order_id)",
        )
    except ClientError as error:
        if not is_condition_failure(error):
            raise
        existing = get(order.order_id)
        if existing is None:  # deleted in between: nothing deletes orders, so this is a bug
            raise
        return existing
    return order


def save(order: Order, *, expected_version: int) -> None:
    """Replace the order if it still has ``expected_version``; else raise VersionConflict."""
    try:
        call(
            "put_item",
            busy=OrderContention,
            TableName=table_settings().orders_table,
            Item=_order_item(order),
            ConditionExpression="#version = :expected",
            ExpressionAttributeNames={"#version": "version"},
            ExpressionAttributeValues={":expected": {"N": str(expected_version)}},
        )
    except ClientError as error:
        if is_condition_failure(error):
            raise VersionConflict(order.order_id) from error
        raise


def update(order_id: str, change: Callable[[Order], Order | None]) -> tuple[Order, bool]:
    """Apply ``change`` (a pure transition) to the stored order with optimistic locking.

    Returns the order as it now stands and whether it changed. The saga's steps and a racing
    cancel request serialize on ``version``: each re-reads and re-decides after losing a race.
    """
    for _ in range(MAX_WRITE_ATTEMPTS):
        order = get(order_id)
        if order is None:
            raise OrderNotFound(f"order {order_id} does not exist")
        updated = change(order)
        if updated is None:
            return order, False
        updated = updated.model_copy(update={"version": order.version + 1})
        try:
            save(updated, expected_version=order.version)
        except VersionConflict:
            continue
        return updated, True
    raise OrderContention(f"order {order_id} kept changing; retry")


def advance(
    order_id: str,
    *,
    from_status: OrderStatus,
    to_status: OrderStatus,
    entries: list[HistoryEntry],
    now: str,
    unless_cancel_requested: bool = False,
    clears_failure: bool = False,
) -> Order | None:
    """One UpdateItem: ``from_status`` -> ``to_status`` with ``entries`` appended, if the order is in
    ``from_status`` (and no cancel was asked, if ``unless_cancel_requested``). The order as it now
    stands, or None when the condition does not hold (the caller then reads and decides)."""
    condition = "#status = :from"
    if unless_cancel_requested:
        condition += " AND (attribute_not_exists(cancel_requested) OR cancel_requested = :false)"
    update = "SET #status = :to, history = list_append(history, :entries), updated_at = :now ADD version :one"
    removals = [] if to_status in SAGA_IN_PROGRESS else ["in_progress"]
    if clears_failure:
        removals.append("failure_reason")
    if removals:
        update += " REMOVE " + ", ".join(removals)
    values: dict[str, Any] = {
        ":from": {"S": from_status},
        ":to": {"S": to_status},
        ":entries": serialize([entry.model_dump(mode="json") for entry in entries]),
        ":now": {"S": now},
        ":one": {"N": "1"},
    }
    if unless_cancel_requested:
        values[":false"] = {"BOOL": False}
    response = call_if(
        "update_item",
        busy=OrderContention,
        TableName=table_settings().orders_table,
        Key={"order_id": {"S": order_id}},
        UpdateExpression=update,
        ConditionExpression=condition,
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues=values,
        ReturnValues="ALL_NEW",
    )
    return to_order(response["Attributes"]) if response is not None else None


def list_for_customer(
    customer_id: str, *, limit: int, start_key: Mapping[str, Any] | None
) -> tuple[list[Order], dict[str, Any] | None]:
    """One page of the customer's orders, newest first, and DynamoDB's key to continue from.

    Keys are in the low-level client's shape, as ``shop.pagination`` signs them.
    """
    request: dict[str, Any] = {
        "TableName": table_settings().orders_table,
        "IndexName": ORDERS_BY_CUSTOMER,
        "KeyConditionExpression": "customer_id = :customer",
        "ExpressionAttributeValues": {":customer": {"S": customer_id}},
        "ScanIndexForward": False,
        "Limit": limit,
    }
    if start_key:
        request["ExclusiveStartKey"] = dict(start_key)
    response = call("query", busy=OrderContention, **request)
    orders = [to_order(item) for item in response.get("Items", [])]
    return orders, response.get("LastEvaluatedKey")


def list_filtered(
    found: OrderFilter, *, limit: int, start_key: Mapping[str, Any] | None
) -> tuple[list[Order], dict[str, Any] | None]:
    """One page of every customer's orders narrowed by ``found``, and DynamoDB's key to continue from.

    A customer or a status is a Query of its index (newest first); neither is a Scan (in no order),
    the only way to see every order. The other criteria are filters, so a page may hold fewer than
    ``limit`` orders while a ``next_token`` still follows.
    """
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    filters: list[str] = []
    request: dict[str, Any] = {"TableName": table_settings().orders_table, "Limit": limit}
    if found.customer is not None or found.status is not None:
        if found.customer is not None:
            request["IndexName"], key = ORDERS_BY_CUSTOMER, "customer_id = :customer"
            values[":customer"] = {"S": found.customer}
        else:
            request["IndexName"], key = ORDERS_BY_STATUS, "#status = :status"
        request["ScanIndexForward"] = False
        # created_key is "<created_at>#<order_id>": "$" sorts right after "#", so `until` is inclusive.
        if found.since is not None and found.until is not None:
            key += " AND created_key BETWEEN :since AND :until_key"
        elif found.since is not None:
            key += " AND created_key >= :since"
        elif found.until is not None:
            key += " AND created_key <= :until_key"
        request["KeyConditionExpression"] = key
        if found.until is not None:
            values[":until_key"] = {"S": found.until + "$"}
    else:
        if found.until is not None:
            filters.append("created_at <= :until")
            values[":until"] = {"S": found.until}
    if found.since is not None:
        values[":since"] = {"S": found.since}
        if "KeyConditionExpression" not in request:
            filters.append("created_at >= :since")
    if found.status is not None:
        names["#status"] = "status"
        values[":status"] = {"S": found.status}
        if found.customer is not None or "KeyConditionExpression" not in request:
            filters.append("#status = :status")
    if found.reason is not None:
        filters.append("failure_reason = :reason")
        values[":reason"] = {"S": found.reason}
    if filters:
        request["FilterExpression"] = " AND ".join(filters)
    if names:
        request["ExpressionAttributeNames"] = names
    if values:
        request["ExpressionAttributeValues"] = values
    if start_key:
        request["ExclusiveStartKey"] = dict(start_key)
    operation = "query" if "KeyConditionExpression" in request else "scan"
    response = call(operation, busy=OrderContention, **request)
    orders = [to_order(item) for item in response.get("Items", [])]
    if operation == "scan":
        orders.sort(key=lambda order: order.created_key, reverse=True)
    return orders, response.get("LastEvaluatedKey")


def in_progress_since(created_before: str, *, limit: int) -> list[str]:
    """Ids of orders still in progress that were placed before ``created_before``, oldest first."""
    ids: list[str] = []
    request: dict[str, Any] = {
        "TableName": table_settings().orders_table,
        "IndexName": ORDERS_IN_PROGRESS,
        "KeyConditionExpression": "in_progress = :open AND created_at < :before",
        "ExpressionAttributeValues": {":open": {"S": IN_PROGRESS}, ":before": {"S": created_before}},
        "Limit": limit,
    }
    while len(ids) < limit:
        response = call("query", busy=OrderContention, **request)
        ids.extend(item["order_id"]["S"] for item in response.get("Items", []))
        if "LastEvaluatedKey" not in response:
            break
        request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
    return ids[:limit]


def idempotency_store() -> DynamoDBPersistenceLayer:
    """Powertools' persistence layer on IdempotencyTable (key ``id``, TTL ``expiration``).

    Built on first use, not at import; rebuilt when the table or the cached client changes
    (tests deploy a fresh emulator per test).
    """
    return _idempotency_store(table_settings().idempotency_table, aws.dynamodb())


@lru_cache(maxsize=4)
def _idempotency_store(table_name: str, client: Any) -> DynamoDBPersistenceLayer:
    return DynamoDBPersistenceLayer(table_name=table_name, key_attr="id", expiry_attr="expiration", boto3_client=client)
