"""What the event publishers and consumers keep in DynamoDB.

- StockLow markers, OperationsTable ``pk = "stock-low#{sku}"``, ``sk = "marker"``: ``low`` while the
  SKU is at or below the threshold, ``fall`` the number of its falls so far (the event id),
  ``claimed_by`` the stream record that claimed the current fall, ``available`` and ``fell_at``
  what the stock was when it did (the event says that, however late its put succeeds),
  ``published`` once its event is on the bus, ``lowest`` the lowest level read during the fall
  ``lowest_fall`` (the fall it belongs to: a marker a previous version claimed has an older one). A
  fall is claimed by ONE conditional write, so it is announced once however many stream records
  (several shards, redeliveries) see the SKU low. A SKU whose fall never went as low as the threshold
  now in force (the operators lowered it) is no longer low by that fall: its next fall to the new
  threshold is claimed as a new one.
- Low-stock alerts for operators, OperationsTable ``pk = "alert#stock-low"``, ``sk = {event id}``.
- The notification outbox, NotificationsTable keyed by ``event_id``: the e-mails to send.

Every consumer write is conditional on the event id being new: a redelivered event changes nothing
but the ``duplicates_ignored`` count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shop.config import event_settings, table_settings
from shop.errors import TransientError
from shop.models.events import EmailNotification, LowStockAlert
from shop.repositories.dynamodb import call, call_if, every_item, is_condition_failure, marshal, unmarshal_plain

LOW_STOCK_ALERTS = "alert#stock-low"
# How long the outbox keeps a queued e-mail (NotificationsTable's TTL, ``purge_at``).
NOTIFICATION_RETENTION_SECONDS = 30 * 24 * 3600


@dataclass(frozen=True)
class FallClaim:
    """A fall of the SKU's stock that a record claimed: its number, whether it was announced, and
    the stock when it was claimed (None on a marker written before the shop kept it)."""

    fall: int
    published: bool
    available: int | None = None
    fell_at: str | None = None


def _claim_of(item: dict[str, Any]) -> FallClaim:
    return FallClaim(
        fall=int(item["fall"]["N"]),
        published=bool(item.get("published", {}).get("BOOL")),
        available=int(item["available"]["N"]) if "available" in item else None,
        fell_at=item["fell_at"]["S"] if "fell_at" in item else None,
    )


def _marker_key(sku: str) -> dict[str, Any]:
    return {"pk": {"S": f"stock-low#{sku}"}, "sk": {"S": "marker"}}


def claim_fall(sku: str, claimant: str, *, available: int, threshold: int, at: str) -> FallClaim | None:
    """Mark the SKU low and claim its next fall for ``claimant`` (a stream record's sequence
    number), the stock being ``available`` at ``at`` and the low-stock threshold in force ``threshold``.
    None when the SKU was already low (by ``threshold``) and another record claimed that fall."""
    claimed = call_if(
        "update_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=_marker_key(sku),
        UpdateExpression=(
            "SET low = :true, claimed_by = :claimant, published = :false, available = :available, "
            "lowest = :available, lowest_fall = if_not_exists(fall, :zero) + :one, fell_at = :at ADD fall :one"
        ),
        # Or the last fall, announced, never went as low as the threshold in force (lowered since): that
        # fall is not low any more, so this is a new one. ``lowest`` is the lowest level since the fall
        # (``available``, its announced level, on a marker written before): judged by the announced
        # level, a rise after the threshold was lowered below it was announced as a fall. A fall not
        # announced yet stays its claimant's.
        ConditionExpression=(
            "attribute_not_exists(low) OR low = :false OR (published = :true AND ("
            f"(lowest_fall = fall AND lowest > :threshold) OR ({_NOT_THIS_FALLS_LOWEST} AND available > :threshold)))"
        ),
        ExpressionAttributeValues={
            ":true": {"BOOL": True},
            ":false": {"BOOL": False},
            ":claimant": {"S": claimant},
            ":available": {"N": str(available)},
            ":threshold": {"N": str(threshold)},
            ":at": {"S": at},
            ":zero": {"N": "0"},
            ":one": {"N": "1"},
        },
        ReturnValues="ALL_NEW",
    )
    if claimed is not None:
        return _claim_of(claimed["Attributes"])
    current = call(
        "get_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=_marker_key(sku),
        ConsistentRead=True,
    ).get("Item")
    if current is None:
        return None
    if current.get("low", {}).get("BOOL"):
        _lower_the_low_water_mark(sku, int(current["fall"]["N"]), available, read_at=at)
    if current.get("claimed_by", {}).get("S") != claimant:
        return None
    # This record claimed the fall before (a redelivery): announce it unless that already happened.
    return _claim_of(current)


# The marker's ``lowest`` is not its current fall's (a previous version claimed that fall): its
# announced level ``available`` is the lowest known.
_NOT_THIS_FALLS_LOWEST = "(attribute_not_exists(lowest_fall) OR lowest_fall <> fall)"


def _lower_the_low_water_mark(sku: str, fall: int, available: int, *, read_at: str) -> None:
    """The SKU, low since ``fall``, stood at ``available`` when read at ``read_at``: keep it as the
    fall's lowest level when lower. A reading older than the fall's claim belongs to an earlier fall
    (re-armed and claimed again since it was read) and changes nothing."""
    call_if(
        "update_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=_marker_key(sku),
        UpdateExpression="SET lowest = :available, lowest_fall = :fall",
        ConditionExpression=(
            "low = :true AND fall = :fall AND fell_at <= :read_at AND ((lowest_fall = fall AND lowest > :available)"
            f" OR ({_NOT_THIS_FALLS_LOWEST} AND available > :available))"
        ),
        ExpressionAttributeValues={
            ":true": {"BOOL": True},
            ":fall": {"N": str(fall)},
            ":available": {"N": str(available)},
            ":read_at": {"S": read_at},
        },
    )


def mark_published(sku: str, fall: int, *, rearm: bool = False) -> None:
    """The fall's event is on the bus. ``rearm``: the stock has risen above the threshold since the
    fall (its put was retried after a restock), so the next fall is announced too."""
    call_if(
        "update_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=_marker_key(sku),
        UpdateExpression="SET published = :true, low = :false" if rearm else "SET published = :true",
        ConditionExpression="fall = :fall",
        ExpressionAttributeValues={":true": {"BOOL": True}, ":fall": {"N": str(fall)}}
        | ({":false": {"BOOL": False}} if rearm else {}),
    )


@dataclass(frozen=True)
class Rearm:
    """What ``rearm`` did: the fall it re-armed (None when nothing was), or the claimant's own fall still
    to be announced (``pending``)."""

    rearmed_fall: int | None = None
    pending: FallClaim | None = None


def rearm(sku: str, claimant: str) -> Rearm:
    """The SKU is above the threshold again: its next fall is announced (no write unless it was low).

    Only an announced fall is re-armed: a fall whose event is not on the bus yet (its put failed
    and its record is being retried) must not vanish because the stock rose meanwhile. When that
    fall is ``claimant``'s own, it is ``pending``, for the caller to announce first and then re-arm
    (``mark_published(rearm=True)``).
    """
    try:
        response = call(
            "update_item",
            busy=TransientError,
            TableName=table_settings().operations_table,
            Key=_marker_key(sku),
            UpdateExpression="SET low = :false",
            ConditionExpression="low = :true AND published = :true",
            ExpressionAttributeValues={":true": {"BOOL": True}, ":false": {"BOOL": False}},
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except ClientError as error:
        if not is_condition_failure(error):
            raise
        old = error.response.get("Item") or {}
        unannounced = old.get("low", {}).get("BOOL") and not old.get("published", {}).get("BOOL")
        if unannounced and old.get("claimed_by", {}).get("S") == claimant:
            return Rearm(pending=_claim_of(old))
        return Rearm()
    return Rearm(rearmed_fall=int(response["Attributes"]["fall"]["N"]))


def undo_rearm(sku: str, fall: int) -> bool:
    """Mark the SKU low again with the fall ``rearm`` re-armed, unless a later fall was claimed since:
    the rise was not real (a torn read), and the fall stands, announced once. Whether it was undone."""
    undone = call_if(
        "update_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=_marker_key(sku),
        UpdateExpression="SET low = :true",
        ConditionExpression="low = :false AND fall = :fall",
        ExpressionAttributeValues={":true": {"BOOL": True}, ":false": {"BOOL": False}, ":fall": {"N": str(fall)}},
    )
    return undone is not None


def _insert_or_count_duplicate(table: str, key: dict[str, Any], item: dict[str, Any], key_attribute: str) -> bool:
    """Put ``item`` if its key is new (True); else count the duplicate on the stored item (False)."""
    inserted = call_if(
        "put_item",
        busy=TransientError,
        TableName=table,
        Item=marshal(item),
        ConditionExpression="attribute_not_exists(#key)",
        ExpressionAttributeNames={"#key": key_attribute},
    )
    if inserted is not None:
        return True
    call(
        "update_item",
        busy=TransientError,
        TableName=table,
        Key=key,
        UpdateExpression="ADD duplicates_ignored :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    return False


def add_notification(notification: EmailNotification) -> bool:
    """Queue the e-mail once per event id; True when this call queued it."""
    item = {**notification.model_dump(mode="json"), "purge_at": int(time.time()) + NOTIFICATION_RETENTION_SECONDS}
    return _insert_or_count_duplicate(
        event_settings().notifications_table, {"event_id": {"S": notification.event_id}}, item, "event_id"
    )


def add_low_stock_alert(alert: LowStockAlert) -> bool:
    """Record the alert once per event id; True when this call recorded it."""
    item = {"pk": LOW_STOCK_ALERTS, "sk": alert.event_id, **alert.model_dump(mode="json")}
    return _insert_or_count_duplicate(
        table_settings().operations_table,
        {"pk": {"S": LOW_STOCK_ALERTS}, "sk": {"S": alert.event_id}},
        item,
        "sk",
    )


def low_stock_alerts() -> list[LowStockAlert]:
    request: dict[str, Any] = {
        "TableName": table_settings().operations_table,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": LOW_STOCK_ALERTS}},
    }
    items = every_item("query", busy=TransientError, **request)
    return [LowStockAlert.model_validate(unmarshal_plain(item)) for item in items]
