"""Saga step: claim the order for this execution (the fencing token), or stop a duplicate execution."""

from __future__ import annotations

from typing import Any

from shop.domain import order_saga
from shop.models.base import parse_event
from shop.models.orders import ClaimOrder
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return order_saga.claim_order(parse_event(ClaimOrder, event)).model_dump(mode="json")
