"""Saga step: the order is paid, so its reserved stock is sold (RESERVED -> COMMITTED)."""

from __future__ import annotations

from typing import Any

from shop.domain import inventory
from shop.models.base import parse_event
from shop.models.inventory import CommitReservation
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = parse_event(CommitReservation, event)
    return inventory.commit(request.order_id).model_dump(mode="json")
