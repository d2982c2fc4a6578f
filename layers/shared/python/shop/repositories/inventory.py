"""Reservations and the stock they hold, in DynamoDB.

Stock lives on the product item (ProductsTable, ``available``); a reservation (ReservationsTable)
records what it took. Every change that moves stock writes the reservation and the products in
ONE transaction, so stock and reservations cannot disagree and nothing oversells.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from shop.config import table_settings
from shop.errors import InventoryContention
from shop.models.inventory import Reservation, ReservationStatus, StoredLine
from shop.repositories.dynamodb import call, error_code, is_condition_failure, marshal, unmarshal
from shop.repositories.purchases import count_update

HELD = "HELD"
HELD_BY_EXPIRY = "HeldByExpiry"


_T = TypeVar("_T")


@dataclass(frozen=True)
class CancellationReason:
    """One entry of a cancelled transaction, in the order of its actions."""

    code: str
    item: dict[str, Any] | None = None


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
    """One inventory request: a cancelled transaction is TransactionCancelled with its reasons."""
    try:
        return call(operation, busy=InventoryContention, **request)
    except ClientError as error:
        if error_code(error) == "TransactionCanceledException":
            raise TransactionCancelled(_reasons(error)) from error
        raise


def _reservation_item(reservation: Reservation) -> dict[str, Any]:
    # Unset fields (a line's purchase_limit, the customer of an unlimited reservation) are not
    # stored: an order without limited lines writes exactly what it did before limits existed.
    item = reservation.model_dump(mode="python", exclude_none=True)
    # The sparse index HeldByExpiry sees a reservation only while it holds stock.
    item["held"] = HELD if reservation.status == "RESERVED" else None
    return marshal(item)


def to_reservation(item: Mapping[str, Any]) -> Reservation:
    """A reservation from an unmarshalled item (integral Decimals validate as ints)."""
    return Reservation.model_validate(item)


def _stock_update(products_table: str, line: StoredLine, *, take: bool) -> dict[str, Any]:
    """Move one line's quantity out of (take) or back into a product's ``available``.

    ``version`` is bumped so any optimistic-locking writer of the product sees the change.
    """
    if take:
        expression = "SET #available = #available - :quantity ADD #version :one"
        condition = "attribute_exists(#sku) AND #available >= :quantity"
    else:
        expression = "SET #available = #available + :quantity ADD #version :one"
        condition = "attribute_exists(#sku)"
    return {
        "Update": {
            "TableName": products_table,
            "Key": {"sku": {"S": line.sku}},
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#available": "available", "#version": "version", "#sku": "sku"},
            "ExpressionAttributeValues": {":quantity": {"N": str(line.quantity)}, ":one": {"N": "1"}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


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
    """Write a RESERVED reservation and take its stock, all or nothing.

    Each of ``reservation.limited_lines`` also adds its units to the customer's purchase counter,
    on the condition that they stay within its limit (one more action per limited line, after the
    stock actions). Raises TransactionCancelled: reason 0 is the reservation (ConditionalCheckFailed:
    it exists, with the stored item), reason i the stock of ``reservation.lines[i - 1]``, then one
    reason per limited line (ConditionalCheckFailed: over the limit).
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
    actions += [_stock_update(tables.products_table, line, take=True) for line in reservation.lines]
    actions += _count_updates(reservation, take=True)
    _call("transact_write_items", TransactItems=actions)


def _count_updates(reservation: Reservation, *, take: bool) -> list[dict[str, Any]]:
    customer_id = reservation.customer_id
    if customer_id is None:
        return []
    return [count_update(customer_id, line, take=take) for line in reservation.limited_lines]


def commit_reservation(reservation_id: str, updated_at: str) -> Reservation | None:
    """RESERVED -> COMMITTED; None when the reservation is no longer RESERVED (or gone).

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
        )
    except ClientError as error:
        if is_condition_failure(error):
            return None
        raise
    return to_reservation(unmarshal(response["Attributes"]))


def release_reservation(
    reservation: Reservation,
    *,
    expected: ReservationStatus,
    updated_at: str,
    purge_at: int,
    frees_purchase_units: bool = True,
) -> None:
    """Mark the reservation RELEASED and return every line's stock, all or nothing.

    The reservation's condition is the status the caller read, so two racing releases (or a
    release racing a commit) cannot both return the stock. With ``frees_purchase_units`` (the
    order ends CANCELLED) the limited lines' units stop counting in the same transaction, so
    exactly once too. Raises TransactionCancelled: reason 0 is the reservation
    (ConditionalCheckFailed: its status moved on), reason i the product of
    ``reservation.lines[i - 1]``, then one reason per freed limited line.
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
    actions += [_stock_update(tables.products_table, line, take=False) for line in reservation.lines]
    if frees_purchase_units:
        actions += _count_updates(reservation, take=False)
    _call("transact_write_items", TransactItems=actions)


def held_expired_ids(now: int, limit: int) -> Iterator[str]:
    """Ids of reservations still holding stock whose hold expired at or before ``now``, oldest first.

    The index is eventually consistent: callers re-read each reservation before acting on it.
    """
    request: dict[str, Any] = {
        "TableName": table_settings().reservations_table,
        "IndexName": HELD_BY_EXPIRY,
        "KeyConditionExpression": "held = :held AND expires_at <= :now",
        "ExpressionAttributeValues": {":held": {"S": HELD}, ":now": {"N": str(now)}},
        "ProjectionExpression": "reservation_id",
        "Limit": min(limit, 100),
    }
    yielded = 0
    while yielded < limit:
        page = _call("query", **request)
        for item in page.get("Items", []):
            yield item["reservation_id"]["S"]
            yielded += 1
            if yielded >= limit:
                return
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
