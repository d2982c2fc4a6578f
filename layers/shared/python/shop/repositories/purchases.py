"""Purchase counters (PurchaseCountsTable): the units of one SKU one customer holds across orders not CANCELLED.

Only SKUs with a purchase limit have counters (item: ``customer_id``, ``sku``, ``units``). The
reservation that takes a limited line's stock adds its units in the same transaction, on the
condition that they stay within the limit; the release of a reservation whose order ends CANCELLED
takes them off in the same transaction, which is conditional on the reservation's status, so it
happens exactly once (shop.repositories.inventory builds both with ``count_update``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shop.config import table_settings
from shop.errors import TransientError
from shop.models.inventory import StoredLine
from shop.repositories.dynamodb import batch_get


def _key(customer_id: str, sku: str) -> dict[str, Any]:
    return {"customer_id": {"S": customer_id}, "sku": {"S": sku}}


def count_update(customer_id: str, line: StoredLine, *, take: bool) -> dict[str, Any]:
    """The transaction action that counts a limited line's units for the customer (take) or stops counting them.

    Taking holds only while the customer's units stay within ``line.purchase_limit`` (a line over
    the limit by itself is the caller's to refuse: an absent counter would let it through).
    Returning holds only while the counter has the units: a failure means it is out of step.
    """
    if line.purchase_limit is None:
        raise ValueError(f"line {line.sku} has no purchase limit to count against")
    if take:
        condition = "attribute_not_exists(#units) OR #units <= :headroom"
        values = {":quantity": {"N": str(line.quantity)}, ":headroom": {"N": str(line.purchase_limit - line.quantity)}}
    else:
        condition = "#units >= :returned"
        values = {":quantity": {"N": str(-line.quantity)}, ":returned": {"N": str(line.quantity)}}
    return {
        "Update": {
            "TableName": table_settings().purchase_counts_table,
            "Key": _key(customer_id, line.sku),
            "UpdateExpression": "ADD #units :quantity",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#units": "units"},
            "ExpressionAttributeValues": values,
        }
    }


def counted_units(customer_id: str, skus: Iterable[str]) -> dict[str, int]:
    """The units of each of ``skus`` the customer holds (0 where nothing is counted); strongly consistent."""
    wanted = list(dict.fromkeys(skus))
    counted = dict.fromkeys(wanted, 0)
    if not wanted:
        return counted
    items = batch_get(
        table_settings().purchase_counts_table,
        [_key(customer_id, sku) for sku in wanted],
        busy=TransientError,
        ProjectionExpression="sku, #units",
        ExpressionAttributeNames={"#units": "units"},
    )
    for item in items:
        counted[item["sku"]["S"]] = int(item["units"]["N"])
    return counted
