"""Stock discrepancy letters, in OperationsTable (pk ``STOCK_DISCREPANCY``, sk ``SKU#<sku>``).

A saga's dead letter belongs to an order; a SKU whose stock equation does not hold belongs to no
order and no redrive can fix it: an operator finds the cause and undoes it. The reconciliation
opens one letter per SKU (OPEN, counting the runs that saw it) and marks it RESOLVED at the first
run that finds the SKU consistent again. One small partition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shop.config import table_settings
from shop.errors import TransientError
from shop.models.reconciliation import StockDiscrepancyLetter
from shop.repositories.dynamodb import call, call_if, listable, partition_page, unmarshal

PARTITION = "STOCK_DISCREPANCY"


def _key(sku: str) -> dict[str, Any]:
    return {"pk": {"S": PARTITION}, "sk": {"S": f"SKU#{sku}"}}


def _to_letter(item: Mapping[str, Any]) -> StockDiscrepancyLetter:
    fields = unmarshal(item)
    fields.pop("pk", None)
    fields.pop("sk", None)
    return StockDiscrepancyLetter.model_validate(fields)


def open_letter(sku: str, *, kinds: list[str], detail: str, now: str) -> bool:
    """Open (or keep open) the SKU's letter with what this run found; True if it was not open before."""
    response = call(
        "update_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=_key(sku),
        UpdateExpression=(
            "SET sku = :sku, #status = :open, kinds = :kinds, detail = :detail, last_seen_at = :now, "
            "first_seen_at = if_not_exists(first_seen_at, :now) "
            "ADD runs_seen :one REMOVE resolved_at"
        ),
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={
            ":sku": {"S": sku},
            ":open": {"S": "OPEN"},
            ":kinds": {"L": [{"S": kind} for kind in kinds]},
            ":detail": {"S": detail},
            ":now": {"S": now},
            ":one": {"N": "1"},
        },
        ReturnValues="ALL_OLD",
    )
    return response.get("Attributes", {}).get("status", {}).get("S") != "OPEN"


def resolve(sku: str, *, now: str) -> bool:
    """OPEN -> RESOLVED; False when the SKU has no open letter."""
    resolved = call_if(
        "update_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=_key(sku),
        UpdateExpression="SET #status = :resolved, resolved_at = :now",
        ConditionExpression="#status = :open",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":resolved": {"S": "RESOLVED"}, ":open": {"S": "OPEN"}, ":now": {"S": now}},
    )
    return resolved is not None


def open_skus() -> set[str]:
    """The SKUs whose letter is OPEN (the partition is small: one item per SKU that ever drifted)."""
    found: set[str] = set()
    start: Mapping[str, Any] | None = None
    while True:
        letters, start = list_page(limit=100, start_key=start)
        found |= {letter.sku for letter in letters if letter.status == "OPEN"}
        if start is None:
            return found


def list_page(
    *, limit: int, start_key: Mapping[str, Any] | None
) -> tuple[list[StockDiscrepancyLetter], dict[str, Any] | None]:
    items, last_key = partition_page(
        table_settings().operations_table,
        PARTITION,
        limit=limit,
        start_key=start_key,
        busy=TransientError,
        consistent=True,
    )
    return listable(items, _to_letter, key="sk"), last_key
