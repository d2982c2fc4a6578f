"""Items an earlier version of the shop stored, brought to the layout today's code reads.

A deployed stack keeps its tables across deploys, and a few changes of the shop moved data without
rewriting what was already stored. Read as they are, those items drop out of what finds them:

- **Orders' sparse index keys** (since 08ec6b3): OrdersInProgress is keyed on ``in_progress_for``
  (before: ``in_progress = "IN_PROGRESS"``, and nothing at all before that) and OrdersByOutcome on
  ``outcome`` (``<status>#<shard>``; before dc9b0b9 the bare status, before 08ec6b3 nothing). An old
  order in progress is invisible to the orphan sweeper and the in-flight limit; an old settled one
  to the operators' listing by outcome.
- **Held reservations' expiry key** (since 4ae6216): HeldByExpiry is keyed ``HELD#<n>`` (before:
  ``HELD``); the expiry sweeper reads the shards only, so an old hold would keep its stock for good.
- **Products' stock** (since 4ae6216): StockTable counters, where it was the product item's
  ``available``; an old product without a counter shows, and sells, nothing.

Each function scans one table and changes only the items still in an old layout, each with a
conditional write on what it read (an item the shop changed meanwhile is read again and decided
anew), so it can run while the shop serves and run again at any time: a second run changes nothing.
``infra/migrate.py`` runs them against a deployed stack (``make migrate``; ``make deploy`` runs it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shop.config import table_settings
from shop.errors import InventoryContention, OrderContention, TransientError
from shop.models.orders import SAGA_IN_PROGRESS, TERMINAL
from shop.repositories import stock
from shop.repositories.dynamodb import call, call_if, error_code, every_item
from shop.repositories.inventory import HELD, held_key
from shop.repositories.orders import outcome_key

# Reads of one item after a condition failed: the shop changing one order this often while it is
# upgraded means something else is wrong; it is reported and left for the next run.
MAX_ATTEMPTS = 5


@dataclass
class Upgraded:
    """What one run changed, per kind of item; ``left`` names the items it gave up on (see MAX_ATTEMPTS)."""

    examined: int = 0
    changed: int = 0
    left: list[str] | None = None

    def give_up(self, key: str) -> None:
        self.left = [*(self.left or []), key]


# ---------------------------------------------------------------------------- orders
# What deciding an order's keys reads of it (a scan of the whole table reads no more than this).
_ORDER_ATTRIBUTES = (
    "order_id",
    "customer_id",
    "status",
    "version",
    "created_at",
    "created_key",
    "in_progress_for",
    "outcome",
    "in_progress",
)
_ORDER_READ: dict[str, Any] = {
    "ProjectionExpression": ", ".join(f"#{name}" for name in _ORDER_ATTRIBUTES),
    "ExpressionAttributeNames": {f"#{name}": name for name in _ORDER_ATTRIBUTES},
}


def _order_keys_wanted(item: Mapping[str, Any]) -> dict[str, str | None]:
    """The index attributes an order with this status has today (None: absent)."""
    status, order_id = item["status"]["S"], item["order_id"]["S"]
    return {
        "in_progress_for": item["customer_id"]["S"] if status in SAGA_IN_PROGRESS else None,
        "outcome": outcome_key(status, order_id) if status in TERMINAL else None,
        "created_key": f"{item['created_at']['S']}#{order_id}",
        "in_progress": None,  # the index key before 08ec6b3
    }


def _stale_keys(item: Mapping[str, Any]) -> dict[str, str | None]:
    return {
        name: wanted
        for name, wanted in _order_keys_wanted(item).items()
        if (item[name]["S"] if name in item else None) != wanted
    }


def _order_rewrite(order_id: str, stale: Mapping[str, str | None], item: Mapping[str, Any]) -> bool:
    """Set the stale keys if the order is still as read (status and version); False if it is not."""
    sets = [name for name, value in stale.items() if value is not None]
    removes = [name for name, value in stale.items() if value is None]
    update = " ".join(
        part
        for part in (
            ("SET " + ", ".join(f"#{name} = :{name}" for name in sets)) if sets else "",
            ("REMOVE " + ", ".join(f"#{name}" for name in removes)) if removes else "",
        )
        if part
    )
    names = {f"#{name}": name for name in stale} | {"#status": "status", "#version": "version"}
    values: dict[str, Any] = {f":{name}": {"S": stale[name]} for name in sets}
    values[":status"] = item["status"]
    condition = "#status = :status AND "
    if "version" in item:
        condition += "#version = :version"
        values[":version"] = item["version"]
    else:
        condition += "attribute_not_exists(#version)"
    return (
        call_if(
            "update_item",
            busy=OrderContention,
            TableName=table_settings().orders_table,
            Key={"order_id": {"S": order_id}},
            UpdateExpression=update,
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        is not None
    )


def upgrade_order_index_keys() -> Upgraded:
    """Give every order the sparse index keys its status calls for (see the module's docstring)."""
    done = Upgraded()
    table = table_settings().orders_table
    for item in every_item("scan", busy=OrderContention, TableName=table, **_ORDER_READ):
        done.examined += 1
        order_id = item["order_id"]["S"]
        for _ in range(MAX_ATTEMPTS):
            if item is None or not _is_order(item):
                break  # deleted meanwhile, or not an order at all: nothing to give keys to
            stale = _stale_keys(item)
            if not stale:
                break
            if _order_rewrite(order_id, stale, item):
                done.changed += 1
                break
            item = call(
                "get_item",
                busy=OrderContention,
                TableName=table,
                Key={"order_id": {"S": order_id}},
                ConsistentRead=True,
                **_ORDER_READ,
            ).get("Item")
        else:
            done.give_up(order_id)
    return done


def _is_order(item: Mapping[str, Any]) -> bool:
    return all(name in item and "S" in item[name] for name in ("order_id", "status", "customer_id", "created_at"))


def _still_old(
    table: str, old_layout: str, attributes: str, busy: type[TransientError], values: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """The items of ``table`` whose attributes match ``old_layout`` (a scan's filter), every page."""
    request: dict[str, Any] = {"TableName": table, "FilterExpression": old_layout, "ProjectionExpression": attributes}
    if values:
        request["ExpressionAttributeValues"] = values
    return every_item("scan", busy=busy, **request)


# ---------------------------------------------------------------------------- reservations
def upgrade_held_keys() -> Upgraded:
    """Move each hold keyed on the bare ``HELD`` to its shard of HeldByExpiry."""
    done = Upgraded()
    table = table_settings().reservations_table
    for item in _still_old(table, "held = :bare", "reservation_id", InventoryContention, {":bare": {"S": HELD}}):
        done.examined += 1
        reservation_id = item["reservation_id"]["S"]
        moved = call_if(
            "update_item",
            busy=InventoryContention,
            TableName=table,
            Key={"reservation_id": {"S": reservation_id}},
            UpdateExpression="SET held = :sharded",
            # Still holding under the old key: a hold committed or released meanwhile has no key left.
            ConditionExpression="held = :bare",
            ExpressionAttributeValues={":bare": {"S": HELD}, ":sharded": {"S": held_key(reservation_id)}},
        )
        done.changed += moved is not None
    return done


# ---------------------------------------------------------------------------- products
def upgrade_product_stock() -> Upgraded:
    """Move each product item's ``available`` into its stock counter (shard 0), in one transaction."""
    done = Upgraded()
    products = table_settings().products_table
    for item in _still_old(products, "attribute_exists(available)", "sku, available", TransientError):
        done.examined += 1
        sku, available = item["sku"]["S"], item["available"]
        try:
            call(
                "transact_write_items",
                busy=TransientError,
                TransactItems=[
                    # Fails if the SKU has a counter already: then the stock is there, not on the item.
                    stock.create(sku, 0, int(available["N"])),
                    {
                        "Update": {
                            "TableName": products,
                            "Key": {"sku": {"S": sku}},
                            "UpdateExpression": "REMOVE available",
                            "ConditionExpression": "available = :read",
                            "ExpressionAttributeValues": {":read": available},
                        }
                    },
                ],
            )
        except ClientError as error:
            if error_code(error) != "TransactionCanceledException":
                raise
            done.give_up(sku)  # a counter exists already, or the item changed: an operator's to look at
            continue
        done.changed += 1
    return done
