"""Whole-table reads for the reconciliation job, and where its last report is kept.

Each table is read with a strongly consistent, paginated parallel Scan (``TotalSegments``
segments, one thread each). Nothing here writes the tables it audits. The last report lives in
OperationsTable (pk ``RECONCILIATION``, sk ``LAST``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shop.config import table_settings
from shop.errors import TransientError
from shop.models.inventory import PurchaseCount, Reservation, total_available, units_by_shard
from shop.models.orders import Order
from shop.models.payments import Payment
from shop.models.reconciliation import ReconciliationReport, UnreadableItem
from shop.repositories import stock
from shop.repositories.dynamodb import call, every_item, key_text, read_each, unmarshal
from shop.repositories.orders import to_order
from shop.repositories.payments import to_payment

SEGMENTS = 4
REPORT_KEY = {"pk": {"S": "RECONCILIATION"}, "sk": {"S": "LAST"}}
# How much of a refused item's error the report keeps.
ERROR_TEXT_LIMIT = 300


@dataclass(frozen=True)
class Audited[T]:
    """A table's records, and the items its model refused: one bad item is reported, never fatal."""

    records: list[T]
    unreadable: list[UnreadableItem]


def scan(table: str, *, segments: int = SEGMENTS, projection: str | None = None) -> list[dict[str, Any]]:
    """Every item of ``table`` (low-level shape): ``segments`` parallel segments, each paginated."""

    def segment(number: int) -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            "TableName": table,
            "Segment": number,
            "TotalSegments": segments,
            "ConsistentRead": True,
        }
        if projection:
            request["ProjectionExpression"] = projection
        return list(every_item("scan", busy=TransientError, **request))

    with ThreadPoolExecutor(max_workers=segments) as pool:
        return [item for items in pool.map(segment, range(segments)) for item in items]


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, Decimal) else None


# What identifies a SKU's stock as read: the product's version and each shard's (number, version).
StockVersions = tuple[int, tuple[tuple[int, int], ...]]


@dataclass(frozen=True)
class StockLevels:
    """Per product: (available = the sum of its stock shards, initial stock or None, versions); and
    the StockTable items that are no counter the shop can read (left out of ``available``)."""

    by_sku: dict[str, tuple[int, int | None, StockVersions]]
    unreadable: list[UnreadableItem]


def product_stock() -> StockLevels:
    """Every product's stock as it stands.

    ``versions`` changes with any write of the product or of one of its shards, so two reads
    with equal versions bracket a moment in which the SKU's stock did not move.
    """
    tables = table_settings()
    products = scan(tables.products_table, projection="sku, initial_stock, version")
    shards, refused = stock.all_shards(scan(tables.stock_table))
    found: dict[str, tuple[int, int | None, StockVersions]] = {}
    for item in map(unmarshal, products):
        sku = str(item["sku"])
        counters = shards.get(sku, {})
        versions = tuple(sorted((number, shard.version) for number, shard in counters.items()))
        found[sku] = (
            total_available(units_by_shard(counters)),
            _int(item.get("initial_stock")),
            (int(item.get("version", 0)), versions),
        )
    return StockLevels(found, [_unreadable("StockTable", item, error, ("sku", "shard")) for item, error in refused])


def adjustments() -> dict[str, int]:
    """Per SKU, the sum of every audited stock adjustment."""
    totals: Counter[str] = Counter()
    for item in map(unmarshal, scan(table_settings().stock_ledger_table, projection="sku, delta")):
        totals[str(item["sku"])] += int(item["delta"])
    return dict(totals)


def _unreadable(table_role: str, item: Mapping[str, Any], error: Exception, keys: tuple[str, ...]) -> UnreadableItem:
    return UnreadableItem(
        table=table_role,
        key={key: key_text(item, key) for key in keys},
        error=f"{type(error).__name__}: {error}"[:ERROR_TEXT_LIMIT],
    )


def _read_each[T](table_role: str, items: list[dict[str, Any]], key: str, read: Callable[[Any], T]) -> Audited[T]:
    records, refused = read_each(items, read)
    return Audited(records, [_unreadable(table_role, item, error, (key,)) for item, error in refused])


def reservations() -> Audited[Reservation]:
    items = scan(table_settings().reservations_table)
    return _read_each("ReservationsTable", items, "reservation_id", lambda i: Reservation.model_validate(unmarshal(i)))


def orders() -> Audited[Order]:
    records, refused = read_each(scan(table_settings().orders_table), to_order)
    return Audited(
        records,
        [
            # The customer it names, where it names one: the purchase counters of the others can be judged.
            _unreadable(
                "OrdersTable",
                item,
                error,
                ("order_id", "customer_id") if key_text(item, "customer_id") else ("order_id",),
            )
            for item, error in refused
        ],
    )


def purchase_counts() -> Audited[PurchaseCount]:
    items = scan(table_settings().purchase_counts_table)
    records, refused = read_each(items, lambda item: PurchaseCount.model_validate(unmarshal(item)))
    return Audited(
        records, [_unreadable("PurchaseCountsTable", item, error, ("customer_id", "sku")) for item, error in refused]
    )


def payments() -> Audited[Payment]:
    return _read_each("PaymentsTable", scan(table_settings().payments_table), "order_id", to_payment)


def save_report(report: ReconciliationReport) -> None:
    # The report is stored as one JSON string: discrepancies are capped by the job, so it stays
    # far below DynamoDB's 400 KB item limit.
    call(
        "put_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Item={**REPORT_KEY, "report": {"S": report.model_dump_json()}},
    )


def last_report() -> ReconciliationReport | None:
    response = call(
        "get_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=REPORT_KEY,
        ConsistentRead=True,
    )
    item: Mapping[str, Any] | None = response.get("Item")
    if not item:
        return None
    return ReconciliationReport.model_validate(json.loads(item["report"]["S"]))
