"""Saga step: reserve every line's stock for an order, all or nothing.

ReservationsTable + StockTable, and PurchaseCountsTable for lines with a purchase limit.
"""

from __future__ import annotations

from typing import Any

from shop.domain import inventory
from shop.models.base import parse_event
from shop.models.inventory import ReserveStock
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = parse_event(ReserveStock, event)
    return inventory.reserve(request.order_id, request.lines, customer_id=request.customer_id).model_dump(mode="json")
