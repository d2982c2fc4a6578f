"""Saga step: start the refund saga of an order cancelled after capture (once per order)."""

from __future__ import annotations

from typing import Any

from shop.domain import order_saga
from shop.models.base import parse_event
from shop.models.orders import StartRefund
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return order_saga.start_refund(parse_event(StartRefund, event)).model_dump(mode="json")
