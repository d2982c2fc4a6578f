"""A SKU's stock on hand in StockTable: one counter item per shard, key (``sku``, ``shard``).

Shards ``0 .. stock_shards - 1`` (the product item's ``stock_shards``) exist while the product
does; shard 0 always. Every write bumps the counter's ``version``, so a writer that read the
shards (a reshard, the reconciliation's snapshot) sees any change since. The builders here make
the actions that the inventory and catalog repositories put into their own transactions, so stock
never moves without the reservation or the ledger entry that explains it.

A counter item the shop cannot read (written behind its back) holds nothing for it: the reads
leave it out and log it, as a sale's conditional take never draws from it, and the reconciliation
reports it (``all_shards``). It stops no read, no sale, no stream publisher and no sweep of expired
holds (a release to it is refused whole: ``StoredItemUnusable``, left for an operator).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shop.config import table_settings
from shop.errors import TransientError
from shop.models.inventory import total_available
from shop.repositories.dynamodb import batch_get, call, listable, read_each


@dataclass(frozen=True)
class Shard:
    """One stock counter as read."""

    shard: int
    available: int
    version: int


def _key(sku: str, shard: int) -> dict[str, Any]:
    return {"sku": {"S": sku}, "shard": {"N": str(shard)}}


def _to_shard(item: Mapping[str, Any]) -> tuple[str, Shard]:
    return item["sku"]["S"], Shard(
        shard=int(item["shard"]["N"]),
        available=int(item["available"]["N"]),
        version=int(item.get("version", {"N": "0"})["N"]),
    )


# ---------------------------------------------------------------------------- actions
def take(sku: str, shard: int, quantity: int) -> dict[str, Any]:
    """Take ``quantity`` units from one shard, if it exists and has them."""
    return {
        "Update": {
            "TableName": table_settings().stock_table,
            "Key": _key(sku, shard),
            "UpdateExpression": "SET #available = #available - :quantity ADD #version :one",
            "ConditionExpression": "attribute_exists(#sku) AND #available >= :quantity",
            "ExpressionAttributeNames": {"#available": "available", "#version": "version", "#sku": "sku"},
            "ExpressionAttributeValues": {":quantity": {"N": str(quantity)}, ":one": {"N": "1"}},
        }
    }


def give(sku: str, shard: int, quantity: int) -> dict[str, Any]:
    """Return ``quantity`` units to one shard, if it exists (a reshard may have removed it)."""
    return {
        "Update": {
            "TableName": table_settings().stock_table,
            "Key": _key(sku, shard),
            "UpdateExpression": "SET #available = #available + :quantity ADD #version :one",
            "ConditionExpression": "attribute_exists(#sku)",
            "ExpressionAttributeNames": {"#available": "available", "#version": "version", "#sku": "sku"},
            "ExpressionAttributeValues": {":quantity": {"N": str(quantity)}, ":one": {"N": "1"}},
        }
    }


def create(sku: str, shard: int, available: int) -> dict[str, Any]:
    """A new shard holding ``available`` units; fails if it exists."""
    return {
        "Put": {
            "TableName": table_settings().stock_table,
            "Item": {**_key(sku, shard), "available": {"N": str(available)}, "version": {"N": "1"}},
            "ConditionExpression": "attribute_not_exists(#sku)",
            "ExpressionAttributeNames": {"#sku": "sku"},
        }
    }


def replace(sku: str, current: Shard, available: int) -> dict[str, Any]:
    """Set a shard to ``available`` if it is still as read (its version)."""
    return {
        "Update": {
            "TableName": table_settings().stock_table,
            "Key": _key(sku, current.shard),
            "UpdateExpression": "SET #available = :available ADD #version :one",
            "ConditionExpression": "#version = :version",
            "ExpressionAttributeNames": {"#available": "available", "#version": "version"},
            "ExpressionAttributeValues": {
                ":available": {"N": str(available)},
                ":version": {"N": str(current.version)},
                ":one": {"N": "1"},
            },
        }
    }


def unchanged(sku: str, current: Shard) -> dict[str, Any]:
    """Only a condition: the shard is still as read (its version)."""
    return {
        "ConditionCheck": {
            "TableName": table_settings().stock_table,
            "Key": _key(sku, current.shard),
            "ConditionExpression": "#version = :version",
            "ExpressionAttributeNames": {"#version": "version"},
            "ExpressionAttributeValues": {":version": {"N": str(current.version)}},
        }
    }


def remove(sku: str, current: Shard) -> dict[str, Any]:
    """Delete a shard if it is still as read (its units having moved to others in the same transaction)."""
    return {
        "Delete": {
            "TableName": table_settings().stock_table,
            "Key": _key(sku, current.shard),
            "ConditionExpression": "#version = :version",
            "ExpressionAttributeNames": {"#version": "version"},
            "ExpressionAttributeValues": {":version": {"N": str(current.version)}},
        }
    }


# ---------------------------------------------------------------------------- reads
def shards(sku: str, *, busy: type[TransientError] = TransientError) -> dict[int, Shard]:
    """Every shard of a SKU as it stands (strongly consistent), by shard number; empty if none."""
    found: dict[int, Shard] = {}
    request: dict[str, Any] = {
        "TableName": table_settings().stock_table,
        "KeyConditionExpression": "#sku = :sku",
        "ExpressionAttributeNames": {"#sku": "sku"},
        "ExpressionAttributeValues": {":sku": {"S": sku}},
        "ConsistentRead": True,
    }
    while True:
        page = call("query", busy=busy, **request)
        for _, shard in listable(page.get("Items", []), _to_shard, key="sku"):
            found[shard.shard] = shard
        if "LastEvaluatedKey" not in page:
            return found
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def reread_shards(
    sku: str, first: Mapping[int, Shard], *, busy: type[TransientError] = TransientError
) -> list[dict[int, Shard]]:
    """The SKU's shards read again after ``first``: until a read agrees with the one before it, counter
    by counter and version by version (no write came between: the counters of one moment), or
    ``_REREADS`` reads. A Query is read-committed per item against a transaction, so a reshard or
    another order's gather committing during one shows part of the units it moves (or counts them
    twice); a one-counter take or release hides none, but does change the next read. A refusal holds
    only if every read refuses (on a busy SKU the reads may never agree)."""
    reads: list[dict[int, Shard]] = []
    previous: Mapping[int, Shard] = first
    for _ in range(_REREADS):
        current = shards(sku, busy=busy)
        reads.append(current)
        if current == previous:
            break
        previous = current
    return reads


_REREADS = 4


def totals(shard_counts: Mapping[str, int], *, consistent: bool) -> dict[str, int]:
    """``available`` of each SKU: the sum of its shards ``0 .. count - 1``, read in BatchGetItem
    requests of up to 100 keys. A SKU without any shard item has 0."""
    keys = [(sku, shard) for sku, count in shard_counts.items() for shard in range(count)]
    units: dict[str, dict[int, int]] = {sku: {} for sku in shard_counts}
    items = batch_get(
        table_settings().stock_table,
        [_key(sku, shard) for sku, shard in keys],
        busy=TransientError,
        consistent=consistent,
        ProjectionExpression="#sku, #shard, #available",
        ExpressionAttributeNames={"#sku": "sku", "#shard": "shard", "#available": "available"},
    )
    for sku, shard in listable(items, _to_shard, key="sku"):
        units[sku][shard.shard] = shard.available
    return {sku: total_available(by_shard) for sku, by_shard in units.items()}


def all_shards(
    items: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, dict[int, Shard]], list[tuple[Mapping[str, Any], Exception]]]:
    """Scanned StockTable items, by SKU and shard (the reconciliation's snapshot), and the items
    that are no counter the shop can read, with why."""
    found: dict[str, dict[int, Shard]] = {}
    readable, refused = read_each(items, _to_shard)
    for sku, shard in readable:
        found.setdefault(sku, {})[shard.shard] = shard
    return found, refused


def sku_of_stream_record(raw_record: Mapping[str, Any]) -> str:
    """The SKU of a StockTable stream record (its keys, in DynamoDB's typed format); ValueError when
    the record names none (an item written behind the shop's back)."""
    keys = (raw_record.get("dynamodb") or {}).get("Keys") or {}
    sku = keys.get("sku", {}).get("S") if isinstance(keys.get("sku"), dict) else None
    if not isinstance(sku, str) or not sku:
        raise ValueError(f"the record's sku key is {keys.get('sku')!r}")
    return sku
