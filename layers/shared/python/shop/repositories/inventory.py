"""Reservations and the stock they hold, in DynamoDB.

Stock lives in the SKU's counters (StockTable, ``shop.repositories.stock``); a reservation
(ReservationsTable) records what it took from which shard. Every change that moves stock writes
the reservation and the counters in ONE transaction, so stock and reservations cannot disagree
and nothing oversells. Only ``gather_stock`` writes counters alone: it moves units between one
SKU's shards and changes no total.

The sparse index HeldByExpiry is write-sharded: a holding reservation's ``held`` is
``HELD#<n>``, n derived from its id over ``HELD_SHARDS``, so a busy shop's holds (written once
when reserved, once when they stop holding) spread over that many index partitions.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from botocore.exceptions import ClientError

from shop.config import table_settings
from shop.errors import InventoryContention, StoredItemUnusable
from shop.models.inventory import Reservation, ReservationStatus, ShardTake
from shop.repositories import stock
from shop.repositories.dynamodb import call, error_code, is_condition_failure, marshal, unmarshal
from shop.repositories.purchases import count_update

HELD = "HELD"
HELD_BY_EXPIRY = "HeldByExpiry"
# Index partitions the holds spread over. Each order writes its index entry twice (reserved, then
# committed or released): at 5,000 orders/s that is 10,000 index writes/s, 625 per partition here,
# under DynamoDB's 1,000 WCU/s per partition with room for an uneven hash. Changing it strands
# the holds keyed on the old values: only ever with the sweeper reading both.
HELD_SHARDS = 16


_T = TypeVar("_T")


# What a cancelled action's code means for the shop: it held ("None"), its condition failed, another
# request wrote the item at that moment or DynamoDB throttled it (worth trying again), or else.
ReasonKind = Literal["held", "condition_failed", "contention", "other"]
_CONTENTION_CODES = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)


@dataclass(frozen=True)
class CancellationReason:
    """One entry of a cancelled transaction, in the order of its actions (``code``: DynamoDB's)."""

    code: str
    item: dict[str, Any] | None = None

    @property
    def kind(self) -> ReasonKind:
        if self.code in ("None", ""):
            return "held"
        if self.code == "ConditionalCheckFailed":
            return "condition_failed"
        return "contention" if self.code in _CONTENTION_CODES else "other"


class TransactionCancelled(Exception):
    """DynamoDB cancelled a transaction; ``reasons`` line up with the actions that were sent."""

    def __init__(self, reasons: list[CancellationReason]) -> None:
        super().__init__(", ".join(reason.code for reason in reasons))
        self.reasons = reasons


def _reasons(error: ClientError) -> list[CancellationReason]:
    return [
        CancellationReason(
            code=str(reason.get("Code", "None")),
            item=unmarshal(reason["Item"]) if reason.get("Item") else None,
        )
        for reason in error.response.get("CancellationReasons", [])
    ]


def _call(operation: str, **request: Any) -> Any:
    """One inventory request: a cancelled transaction is TransactionCancelled with its reasons. A
    transaction DynamoDB refuses as invalid is StoredItemUnusable: the shop's own requests are valid
    (the tests send each one), so the item is what is not (a counter whose units are not a number,
    written behind the shop's back). Any other request's ValidationException stays the bug it is."""
    try:
        return call(operation, busy=InventoryContention, **request)
    except ClientError as error:
        if error_code(error) == "TransactionCanceledException":
            raise TransactionCancelled(_reasons(error)) from error
        if operation == "transact_write_items" and error_code(error) == "ValidationException":
            raise StoredItemUnusable(f"{operation} refused: {error}") from error
        raise


def held_key(reservation_id: str) -> str:
    """The reservation's HeldByExpiry partition, the same for every write of it (CRC-32: stable
    across processes, unlike ``hash``)."""
    return f"{HELD}#{zlib.crc32(reservation_id.encode()) % HELD_SHARDS}"


def _reservation_item(reservation: Reservation) -> dict[str, Any]:
    # Unset fields (a line's purchase_limit, the customer of an unlimited reservation) are not
    # stored: an order without limited lines writes exactly what it did before limits existed.
    item = reservation.model_dump(mode="python", exclude_none=True)
    # The sparse index HeldByExpiry sees a reservation only while it holds stock.
    item["held"] = held_key(reservation.reservation_id) if reservation.status == "RESERVED" else None
    return marshal(item)


def to_reservation(item: Mapping[str, Any]) -> Reservation:
    """A reservation from an unmarshalled item (integral Decimals validate as ints)."""
    return Reservation.model_validate(item)


def get_reservation(reservation_id: str) -> Reservation | None:
    response = _call(
        "get_item",
        TableName=table_settings().reservations_table,
        Key={"reservation_id": {"S": reservation_id}},
        ConsistentRead=True,
    )
    item = response.get("Item")
    return to_reservation(unmarshal(item)) if item else None


def create_reservation(reservation: Reservation) -> None:
    """Write a RESERVED reservation and take its stock from the shards its lines name, all or nothing.

    Each of ``reservation.limited_lines`` also adds its units to the customer's purchase counter,
    on the condition that they stay within its limit (one more action per limited line, after ALL
    the stock actions). Raises TransactionCancelled: reason 0 is the reservation
    (ConditionalCheckFailed: it exists, with the stored item), then one reason per take, line by
    line (``take_skus``), then one reason per limited line (ConditionalCheckFailed: over the limit).
    """
    tables = table_settings()
    actions: list[dict[str, Any]] = [
        {
            "Put": {
                "TableName": tables.reservations_table,
                "Item": _reservation_item(reservation),
                "ConditionExpression": "attribute_not_exists(reservation_id)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
    ]
    actions += [
        stock.take(line.sku, take.shard, take.quantity) for line in reservation.lines for take in line.shard_takes()
    ]
    actions += _count_updates(reservation, take=True)
    _call("transact_write_items", TransactItems=actions)


def gather_stock(sku: str, sources: Sequence[ShardTake], target: int) -> bool:
    """Move the units ``sources`` name onto shard ``target`` of one SKU, all or nothing.

    The SKU's total does not change (as in a reshard, units only move between its counters), so no
    ledger entry explains it. False when the transaction was cancelled: a source no longer has its
    units (a sale took them since they were read), the target is gone (a reshard), or another
    writer held a counter; the caller reads the shards again.
    """
    moved = sum(source.quantity for source in sources)
    actions = [stock.take(sku, source.shard, source.quantity) for source in sources]
    actions.append(stock.give(sku, target, moved))
    try:
        _call("transact_write_items", TransactItems=actions)
    except TransactionCancelled:
        return False
    return True


def _count_updates(reservation: Reservation, *, take: bool) -> list[dict[str, Any]]:
    customer_id = reservation.customer_id
    if customer_id is None:
        return []
    return [count_update(customer_id, line, take=take) for line in reservation.limited_lines]


def take_skus(reservation: Reservation) -> list[str]:
    """The SKU of each stock action ``create_reservation`` sends, in order."""
    return [line.sku for line in reservation.lines for _ in line.shard_takes()]


@dataclass(frozen=True)
class CommitAttempt:
    """``committed``: this call moved the reservation RESERVED -> COMMITTED. Otherwise ``current``
    is the reservation as it stood (None if there is none)."""

    committed: bool
    current: Reservation | None


def commit_reservation(reservation_id: str, updated_at: str) -> CommitAttempt:
    """RESERVED -> COMMITTED in one conditional UpdateItem, no read first: when the condition fails
    DynamoDB answers with the item as it stood, which says why (committed already, released, gone).

    A committed reservation keeps no ``purge_at``: a refund may still return its stock.
    """
    try:
        response = call(
            "update_item",
            busy=InventoryContention,
            TableName=table_settings().reservations_table,
            Key={"reservation_id": {"S": reservation_id}},
            UpdateExpression="SET #status = :committed, updated_at = :updated_at REMOVE held",
            ConditionExpression="#status = :reserved",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":committed": {"S": "COMMITTED"},
                ":reserved": {"S": "RESERVED"},
                ":updated_at": {"S": updated_at},
            },
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except ClientError as error:
        if is_condition_failure(error):
            old = error.response.get("Item")
            return CommitAttempt(committed=False, current=to_reservation(unmarshal(old)) if old else None)
        raise
    return CommitAttempt(committed=True, current=to_reservation(unmarshal(response["Attributes"])))


def release_reservation(
    reservation: Reservation,
    *,
    expected: ReservationStatus,
    updated_at: str,
    purge_at: int,
    returns: Sequence[tuple[str, int, int]],
    frees_purchase_units: bool = True,
    fence: Mapping[str, Any] | None = None,
) -> None:
    """Mark the reservation RELEASED and return its stock, ``(sku, shard, quantity)`` each, all or nothing.

    The reservation's condition is the status the caller read, so two racing releases (or a
    release racing a commit) cannot both return the stock. With ``frees_purchase_units`` (the
    order ends CANCELLED) the limited lines' units stop counting in the same transaction, so
    exactly once too. Raises TransactionCancelled: reason 0 is the reservation
    (ConditionalCheckFailed: its status moved on), reason i the shard of ``returns[i - 1]``
    (ConditionalCheckFailed: that shard no longer exists), then one reason per freed limited line,
    then, with a ``fence`` (a condition on another item, e.g. the order's saga claim), its reason last.
    """
    tables = table_settings()
    actions: list[dict[str, Any]] = [
        {
            "Update": {
                "TableName": tables.reservations_table,
                "Key": {"reservation_id": {"S": reservation.reservation_id}},
                "UpdateExpression": (
                    "SET #status = :released, updated_at = :updated_at, purge_at = :purge_at REMOVE held"
                ),
                "ConditionExpression": "#status = :expected",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {
                    ":released": {"S": "RELEASED"},
                    ":expected": {"S": expected},
                    ":updated_at": {"S": updated_at},
                    ":purge_at": {"N": str(purge_at)},
                },
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
    ]
    actions += [stock.give(sku, shard, quantity) for sku, shard, quantity in returns]
    if frees_purchase_units:
        actions += _count_updates(reservation, take=False)
    if fence is not None:
        actions.append(dict(fence))
    _call("transact_write_items", TransactItems=actions)


def held_expired_ids(now: int) -> Iterator[str]:
    """Ids of reservations still holding stock whose hold expired at or before ``now``, oldest first.

    Every index shard is read (lazily, a page at a time, as far as the caller reads) and the shards'
    streams merged by expiry. The index is eventually consistent: callers re-read each reservation
    before acting on it.
    """
    streams = [_held_in(f"{HELD}#{number}", now) for number in range(HELD_SHARDS)]
    for _, reservation_id in heapq.merge(*streams):
        yield reservation_id


def _held_in(held: str, now: int) -> Iterator[tuple[int, str]]:
    """(expires_at, reservation id) of one index shard's expired holds, oldest first."""
    request: dict[str, Any] = {
        "TableName": table_settings().reservations_table,
        "IndexName": HELD_BY_EXPIRY,
        "KeyConditionExpression": "held = :held AND expires_at <= :now",
        "ExpressionAttributeValues": {":held": {"S": held}, ":now": {"N": str(now)}},
        "ProjectionExpression": "reservation_id, expires_at",
        "Limit": 100,
    }
    while True:
        page = _call("query", **request)
        for item in page.get("Items", []):
            yield int(item["expires_at"]["N"]), item["reservation_id"]["S"]
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
