"""Saga step: mark the order COMPLETED, or hand it to the refund saga if the customer cancelled during capture."""

from __future__ import annotations

from typing import Any

from shop.domain import order_saga
from shop.models.base import parse_event
from shop.models.orders import CompleteOrder
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return order_saga.complete_order(parse_event(CompleteOrder, event)).model_dump(mode="json")
