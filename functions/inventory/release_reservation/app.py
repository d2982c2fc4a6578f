"""Saga compensation and refunds: return a reservation's stock (-> RELEASED); a missing one is a no-op."""

from __future__ import annotations

from typing import Any

from shop.domain import inventory
from shop.models.base import parse_event
from shop.models.inventory import ReleaseReservation
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = parse_event(ReleaseReservation, event)
    released = inventory.release(
        request.order_id,
        frees_purchase_units=request.frees_purchase_units,
        claim=request.claim,
        failure=request.failure,
    )
    return released.model_dump(mode="json")
