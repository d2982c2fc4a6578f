"""Saga step: after the compensation ran, mark the order CANCELLED with its failure reason."""

from __future__ import annotations

from typing import Any

from shop.domain import order_saga
from shop.models.base import parse_event
from shop.models.orders import CancelOrder
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return order_saga.mark_cancelled(parse_event(CancelOrder, event)).model_dump(mode="json")
