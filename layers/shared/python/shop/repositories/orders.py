"""Orders in DynamoDB (OrdersTable) and the idempotency store of POST /orders (IdempotencyTable).

Every change to an order is conditional, so the saga's steps and a customer's cancel request can
never overwrite each other: a whole-item put conditional on the ``version`` the writer read
(``update``), or, for the saga's forward steps in the common case, one UpdateItem conditional on
the status the step expects (``advance``), which bumps ``version`` too and costs no read.
"""

from __future__ import annotations

import hashlib
import heapq
import zlib
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from botocore.exceptions import ClientError

from shop import aws
from shop.config import table_settings
from shop.errors import OrderContention, OrderNotFound, SagaClaimLost
from shop.models.base import iso_now
from shop.models.orders import (
    CHECKOUT_OVER,
    SAGA_IN_PROGRESS,
    TERMINAL,
    Failure,
    HistoryEntry,
    Order,
    OrderFilter,
    OrderStatus,
    SagaClaim,
)
from shop.repositories.dynamodb import (
    batch_get,
    call,
    call_if,
    every_item,
    is_condition_failure,
    listable,
    marshal,
    serialize,
    unmarshal_plain,
)

ORDERS_BY_CUSTOMER = "OrdersByCustomer"
# Sparse, keyed ``in_progress_for`` (the customer) while a saga still has to move the order on.
ORDERS_IN_PROGRESS = "OrdersInProgress"
# Sparse, keyed ``outcome`` ("<terminal status>#<shard>") once the order has settled.
ORDERS_BY_OUTCOME = "OrdersByOutcome"
# Each terminal status is spread over this many index partitions: a flash sale settles thousands of
# orders a second with one status (CANCELLED, sold out), more than the 1,000 write units a second
# one partition takes. 16 keep each under ~320 at 5,000 orders a second; a listing reads all 16.
OUTCOME_SHARDS = 16
# A cancel request and the saga rarely collide more than once; more means something is wrong.
MAX_WRITE_ATTEMPTS = 8


class VersionConflict(Exception):
    """The order changed (or vanished) since it was read; read it again and retry."""


# A history entry is stored as one string, "step|status|at": as a map it spent most of its bytes on
# attribute names, and the order item outgrew the 1 KB that one write unit covers.
_HISTORY_SEPARATOR = "|"


def _stored_entry(entry: HistoryEntry) -> str:
    return _HISTORY_SEPARATOR.join((entry.step, entry.status, entry.at))


def _read_entry(stored: Any) -> Any:
    if isinstance(stored, str):  # maps are read too (items written before the compact form)
        step, status, at = stored.split(_HISTORY_SEPARATOR)
        return {"step": step, "status": status, "at": at}
    return stored


def _order_item(order: Order) -> dict[str, Any]:
    item = order.model_dump(mode="json")
    item["history"] = [_stored_entry(entry) for entry in order.history]
    item["created_key"] = order.created_key
    # The sparse indexes' keys: exactly one of them is present on every order.
    item["in_progress_for"] = order.customer_id if order.status in SAGA_IN_PROGRESS else None
    item["outcome"] = outcome_key(order.status, order.order_id) if order.status in TERMINAL else None
    return marshal(item)


def outcome_key(status: OrderStatus, order_id: str) -> str:
    """The order's OrdersByOutcome partition: its status and a shard fixed by its id (CRC-32, stable
    across processes)."""
    return f"{status}#{zlib.crc32(order_id.encode()) % OUTCOME_SHARDS}"


def to_order(item: Mapping[str, Any]) -> Order:
    plain = unmarshal_plain(item)
    plain["history"] = [_read_entry(entry) for entry in plain.get("history", [])]
    return Order.model_validate(plain)


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


def claim_token(claim: SagaClaim) -> str:
    """What the order stores of a claim: ``<state machine name>:<digest of the execution id>``.

    An execution id is a 100-170 character ARN; stored whole, it took the order item past the 1 KB
    that one write unit covers. The digest keeps executions apart (a duplicate of the same name has
    another id) and the machine's name says which saga holds the order (``sagas.claimed_by``).
    """
    fields = claim.execution.split(":")
    machine = fields[6] if len(fields) > 6 else ""
    return f"{machine}:{hashlib.sha256(claim.execution.encode()).hexdigest()[:20]}"


def ensure_claimed(order_id: str, claim: SagaClaim) -> None:
    """SagaClaimLost unless ``claim`` still owns the order's saga (a consistent read). A step whose
    effect lies outside the order (a void at the provider, a release of stock) checks it first: an
    execution taken over stops there instead of undoing what the new owner does."""
    order = get(order_id)
    if order is None:
        raise OrderNotFound(f"order {order_id} does not exist")
    _check_claim(order, claim)


def ensure_claimed_compensating(order_id: str, claim: SagaClaim, failure: Failure | None) -> None:
    """A compensation's fence: SagaClaimLost (or OrderNotFound) unless ``claim`` owns the order's saga.
    With the checkout's ``failure``, the check is the write that records why it compensates
    (``compensating``, conditioned on the claim); written again by a step delivered twice, it changes
    nothing that matters. Without one (the refund saga's release), it is ``ensure_claimed``'s read."""
    if failure is None:
        ensure_claimed(order_id, claim)
        return
    recorded = call_if(
        "update_item",
        busy=OrderContention,
        TableName=table_settings().orders_table,
        Key={"order_id": {"S": order_id}},
        UpdateExpression="SET compensating = :failure, updated_at = :now ADD version :one",
        ConditionExpression="saga_claim = :claim",
        ExpressionAttributeValues={
            ":failure": serialize(failure.model_dump(mode="json")),
            ":claim": {"S": claim_token(claim)},
            ":now": {"S": iso_now()},
            ":one": {"N": "1"},
        },
    )
    if recorded is None:
        ensure_claimed(order_id, claim)  # who holds it, for the error
        raise OrderContention(f"order {order_id}: its claim changed while the compensation was recorded; retry")


def still_claimed(order_id: str, claim: SagaClaim) -> dict[str, Any]:
    """A transaction's condition that ``claim`` still owns the order's saga: a step that checked
    with ``ensure_claimed`` and then writes elsewhere puts it in its transaction, so a takeover
    landing between the check and the write cancels the write instead of slipping past."""
    return {
        "ConditionCheck": {
            "TableName": table_settings().orders_table,
            "Key": {"order_id": {"S": order_id}},
            "ConditionExpression": "saga_claim = :claim",
            "ExpressionAttributeValues": {":claim": {"S": claim_token(claim)}},
        }
    }


def unchanged_since(order_id: str, version: int) -> dict[str, Any]:
    """A transaction's condition that the order is still at ``version``: a write decided from an
    order read earlier (the books check's) lands only if nothing has moved the order since."""
    return {
        "ConditionCheck": {
            "TableName": table_settings().orders_table,
            "Key": {"order_id": {"S": order_id}},
            "ConditionExpression": "#version = :version",
            "ExpressionAttributeNames": {"#version": "version"},
            "ExpressionAttributeValues": {":version": {"N": str(version)}},
        }
    }


def _check_claim(order: Order, claim: SagaClaim | None) -> None:
    if claim is not None and order.saga_claim != claim_token(claim):
        raise SagaClaimLost(
            f"order {order.order_id} is owned by another execution of its saga (epoch {order.saga_epoch})"
        )


def update(
    order_id: str, change: Callable[[Order], Order | None], *, claim: SagaClaim | None = None
) -> tuple[Order, bool]:
    """Apply ``change`` (a pure transition) to the stored order with optimistic locking.

    Returns the order as it now stands and whether it changed. The saga's steps and a racing
    cancel request serialize on ``version``: each re-reads and re-decides after losing a race.
    With a ``claim``, raises SagaClaimLost unless that execution owns the order's saga (a claim
    bumps ``version``, so one taken between the read and the write fails the write too).
    """
    for _ in range(MAX_WRITE_ATTEMPTS):
        order = get(order_id)
        if order is None:
            raise OrderNotFound(f"order {order_id} does not exist")
        _check_claim(order, claim)
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
    claim: SagaClaim | None = None,
) -> Order | None:
    """One UpdateItem: ``from_status`` -> ``to_status`` with ``entries`` appended, if the order is in
    ``from_status`` (and no cancel was asked, if ``unless_cancel_requested``; and ``claim`` still
    owns the saga, if given). The order as it now stands, or None when the condition does not hold
    (the caller then reads and decides)."""
    condition = "#status = :from"
    if unless_cancel_requested:
        condition += " AND (attribute_not_exists(cancel_requested) OR cancel_requested = :false)"
    if claim is not None:
        condition += " AND saga_claim = :claim"
    update = "SET #status = :to, history = list_append(history, :entries), updated_at = :now"
    removals = []
    # Only the write that settles the order (or reopens it) touches the sparse indexes' keys.
    if to_status in TERMINAL:
        update += ", outcome = :outcome"
        removals.append("in_progress_for")
    if to_status in CHECKOUT_OVER:
        removals.append("payment_token")
    elif from_status not in SAGA_IN_PROGRESS:
        update += ", in_progress_for = customer_id"
        removals.append("outcome")
    update += " ADD version :one"
    if clears_failure:
        removals.append("failure_reason")
    if removals:
        update += " REMOVE " + ", ".join(removals)
    values: dict[str, Any] = {
        ":from": {"S": from_status},
        ":to": {"S": to_status},
        ":entries": serialize([_stored_entry(entry) for entry in entries]),
        ":now": {"S": now},
        ":one": {"N": "1"},
    }
    if to_status in TERMINAL:
        values[":outcome"] = {"S": outcome_key(to_status, order_id)}
    if unless_cancel_requested:
        values[":false"] = {"BOOL": False}
    if claim is not None:
        values[":claim"] = {"S": claim_token(claim)}
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


def claim(order_id: str, token: SagaClaim) -> Order:
    """Make ``token`` the owner of the order's saga, and return the order as it now stands.

    One conditional UpdateItem: taken when no execution has claimed the order yet, or only one of an
    earlier epoch has (an explicit takeover), or ``token`` itself has (a step delivered twice).
    Raises SagaClaimLost when another execution holds the same or a later epoch, OrderNotFound when
    there is no order. ``version`` is bumped: a read-then-write that read the old owner fails.
    ``updated_at`` is set: the orphan sweeper times a claimed Express saga from it (an execution
    started long after the placement may run its full 5 minutes from its claim).
    """
    response = call_if(
        "update_item",
        busy=OrderContention,
        TableName=table_settings().orders_table,
        Key={"order_id": {"S": order_id}},
        UpdateExpression="SET saga_claim = :claim, saga_epoch = :epoch, updated_at = :now ADD version :one",
        ConditionExpression=(
            "attribute_exists(order_id) AND (attribute_not_exists(saga_epoch) OR saga_epoch < :epoch"
            " OR (saga_epoch = :epoch AND saga_claim = :claim))"
        ),
        ExpressionAttributeValues={
            ":claim": {"S": claim_token(token)},
            ":epoch": {"N": str(token.epoch)},
            ":now": {"S": iso_now()},
            ":one": {"N": "1"},
        },
        ReturnValues="ALL_NEW",
    )
    if response is None:  # the rare path: read who holds it, for the error
        owner = get(order_id)
        if owner is None:
            raise OrderNotFound(f"order {order_id} does not exist")
        raise SagaClaimLost(
            f"order {order_id} is owned by another execution (epoch {owner.saga_epoch}; this one is {token.epoch})"
        )
    return to_order(response["Attributes"])


def _get_many(order_ids: list[str]) -> dict[str, Order]:
    """The orders with these ids (strongly consistent), by id, for a listing; ids with no order, or with an
    item that is not an Order, are left out."""
    keys = [{"order_id": {"S": order_id}} for order_id in dict.fromkeys(order_ids)]
    items = batch_get(table_settings().orders_table, keys, busy=OrderContention)
    return {order.order_id: order for order in listable(items, to_order, key="order_id")}


def _in_listed_order(keys: list[Mapping[str, Any]]) -> list[Order]:
    """The orders an index page named, in the page's order (BatchGetItem answers in any order)."""
    order_ids = [key["order_id"]["S"] for key in keys]
    found = _get_many(order_ids)
    return [found[order_id] for order_id in order_ids if order_id in found]


def list_for_customer(
    customer_id: str, *, limit: int, start_key: Mapping[str, Any] | None
) -> tuple[list[Order], dict[str, Any] | None]:
    """One page of the customer's orders, newest first, and the key to continue after (None on the last page).

    Keys are in the low-level client's shape, as ``shop.pagination`` signs them. One extra key is read so
    the last page says so: a page that ended exactly at ``limit`` handed out a token leading to an empty page.
    """
    request: dict[str, Any] = {
        "TableName": table_settings().orders_table,
        "IndexName": ORDERS_BY_CUSTOMER,
        "KeyConditionExpression": "customer_id = :customer",
        "ExpressionAttributeValues": {":customer": {"S": customer_id}},
        "ScanIndexForward": False,
        "Limit": limit + 1,
    }
    if start_key:
        request["ExclusiveStartKey"] = dict(start_key)
    response = call("query", busy=OrderContention, **request)
    keys = response.get("Items", [])
    if len(keys) > limit:
        keys = keys[:limit]
        # A KEYS_ONLY item is exactly the index's continuation key: the table's key and the index's.
        return _in_listed_order(keys), dict(keys[-1])
    # Fewer than asked but a key: DynamoDB stopped at its 1 MB page size, so continue from there.
    return _in_listed_order(keys), response.get("LastEvaluatedKey")


def _matches(order: Order, found: OrderFilter) -> bool:
    return (
        (found.status is None or order.status == found.status)
        and (found.reason is None or order.failure_reason == found.reason)
        and (found.customer is None or order.customer_id == found.customer)
        and (found.since is None or order.created_at >= found.since)
        and (found.until is None or order.created_at <= found.until)
    )


def _created_key_range(found: OrderFilter) -> tuple[str, dict[str, Any]]:
    """The ``created_key`` condition for ``since``/``until`` (created_key is "<created_at>#<order_id>":
    "$" sorts right after "#", so ``until`` is inclusive)."""
    values: dict[str, Any] = {}
    if found.since is not None:
        values[":since"] = {"S": found.since}
    if found.until is not None:
        values[":until_key"] = {"S": found.until + "$"}
    if found.since is not None and found.until is not None:
        return " AND created_key BETWEEN :since AND :until_key", values
    if found.since is not None:
        return " AND created_key >= :since", values
    if found.until is not None:
        return " AND created_key <= :until_key", values
    return "", values


def list_filtered(
    found: OrderFilter, *, limit: int, start_key: Mapping[str, Any] | None
) -> tuple[list[Order], dict[str, Any] | None]:
    """One page of every customer's orders narrowed by ``found``, and DynamoDB's key to continue from.

    The page's keys come from the narrowest source: a customer's orders (OrdersByCustomer) are a
    Query, newest first; a settled status is one Query per OrdersByOutcome shard, merged newest
    first (``_list_settled``); an open status is a Scan of
    OrdersInProgress, which holds only the open orders; nothing else is a Scan of the table (in
    no order), the only way to see every order. The orders are then read and the remaining
    criteria applied, so a page may hold fewer than ``limit`` orders while a ``next_token`` follows.
    """
    table = table_settings().orders_table
    if found.customer is None and found.status is not None and found.status in TERMINAL:
        return _list_settled(found, found.status, limit=limit, start_key=start_key)
    request: dict[str, Any] = {"TableName": table, "Limit": limit}
    if found.customer is not None:
        request["IndexName"] = ORDERS_BY_CUSTOMER
        created, created_values = _created_key_range(found)
        request["KeyConditionExpression"] = "customer_id = :key" + created
        request["ExpressionAttributeValues"] = {":key": {"S": found.customer}} | created_values
        request["ScanIndexForward"] = False
        operation = "query"
    elif found.status is not None:
        request["IndexName"] = ORDERS_IN_PROGRESS
        operation = "scan"
    else:
        # The table itself: a page's items are the orders.
        operation = "scan"
    if start_key:
        request["ExclusiveStartKey"] = dict(start_key)
    response = call(operation, busy=OrderContention, **request)
    items = response.get("Items", [])
    orders = listable(items, to_order, key="order_id") if "IndexName" not in request else _in_listed_order(items)
    orders = [order for order in orders if _matches(order, found)]
    if operation == "scan":
        orders.sort(key=lambda order: order.created_key, reverse=True)
    return orders, response.get("LastEvaluatedKey")


# The position a merged listing of OrdersByOutcome continues from: no shard's LastEvaluatedKey
# alone says where the others stood, the last created_key listed does (it is unique).
_LISTED_BEFORE = "created_key_before"


def _list_settled(
    found: OrderFilter, status: OrderStatus, *, limit: int, start_key: Mapping[str, Any] | None
) -> tuple[list[Order], dict[str, Any] | None]:
    """One page of the orders settled in ``status``, newest first, across every OrdersByOutcome shard.

    Each shard is queried for at most ``limit`` keys newer-first below the page's start; the merged
    newest ``limit`` are the page, and the last of them is where the next page starts. Orders
    written before the index was sharded (``outcome`` = the bare status) are one more partition.
    """
    before = start_key.get(_LISTED_BEFORE, {}).get("S") if start_key else None
    created, values = _created_key_range(found)
    if before is not None:
        # The page's start bounds the range from above (exclusive: it was listed already).
        lower = (
            " AND created_key BETWEEN :since AND :before" if found.since is not None else " AND created_key < :before"
        )
        if found.until is not None and found.until + "$" < before:
            before = found.until + "$"
        created = lower
        values = {key: value for key, value in values.items() if key != ":until_key"} | {":before": {"S": before}}
    partitions = [f"{status}#{shard}" for shard in range(OUTCOME_SHARDS)] + [status]
    listed: list[tuple[str, str]] = []
    more = False
    for partition in partitions:
        request: dict[str, Any] = {
            "TableName": table_settings().orders_table,
            "IndexName": ORDERS_BY_OUTCOME,
            "KeyConditionExpression": "outcome = :key" + created,
            "ExpressionAttributeValues": {":key": {"S": partition}} | values,
            "ScanIndexForward": False,
            "Limit": limit,
        }
        response = call("query", busy=OrderContention, **request)
        keys = [(item["created_key"]["S"], item["order_id"]["S"]) for item in response.get("Items", [])]
        listed.extend(key for key in keys if before is None or key[0] < before)
        more = more or "LastEvaluatedKey" in response
    page = heapq.nlargest(limit, listed)
    more = more or len(listed) > len(page)
    found_orders = _get_many([order_id for _, order_id in page])
    orders = [found_orders[order_id] for _, order_id in page if order_id in found_orders]
    orders = [order for order in orders if _matches(order, found)]
    next_key = {_LISTED_BEFORE: {"S": page[-1][0]}} if more and page else None
    return orders, next_key


def _in_progress(operation: str, **request: Any) -> Iterator[dict[str, Any]]:
    """Every key of OrdersInProgress a Query or a Scan of it answers."""
    return every_item(
        operation,
        busy=OrderContention,
        TableName=table_settings().orders_table,
        IndexName=ORDERS_IN_PROGRESS,
        **request,
    )


def in_progress_since(created_before: str, *, limit: int) -> list[str]:
    """Ids of orders still in progress that were placed before ``created_before``, oldest first.

    A Scan of OrdersInProgress, which holds only the open orders (keys only).
    """
    items = _in_progress(
        "scan", FilterExpression="created_at < :before", ExpressionAttributeValues={":before": {"S": created_before}}
    )
    found = sorted((item["created_at"]["S"], item["order_id"]["S"]) for item in items)
    return [order_id for _, order_id in found[:limit]]


def open_order_ids(customer_id: str) -> list[str]:
    """Ids of the customer's orders a saga still has to move on (OrdersInProgress: one Query of
    keys, eventually consistent as every index is)."""
    items = _in_progress(
        "query",
        KeyConditionExpression="in_progress_for = :customer",
        ExpressionAttributeValues={":customer": {"S": customer_id}},
    )
    return [item["order_id"]["S"] for item in items]


def idempotency_store() -> DynamoDBPersistenceLayer:
    """Powertools' persistence layer on IdempotencyTable (key ``id``, TTL ``expiration``).

    Built on first use, not at import; rebuilt when the table or the cached client changes
    (tests deploy a fresh emulator per test).
    """
    return _idempotency_store(table_settings().idempotency_table, aws.dynamodb())


@lru_cache(maxsize=4)
def _idempotency_store(table_name: str, client: Any) -> DynamoDBPersistenceLayer:
    return DynamoDBPersistenceLayer(table_name=table_name, key_attr="id", expiry_attr="expiration", boto3_client=client)
