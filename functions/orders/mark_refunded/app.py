"""Refund saga step: mark the order REFUNDED once the capture is refunded and the stock returned."""

from __future__ import annotations

from typing import Any

from shop.domain import order_saga
from shop.models.base import parse_event
from shop.models.orders import MarkRefunded
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return order_saga.mark_refunded(parse_event(MarkRefunded, event)).model_dump(mode="json")
