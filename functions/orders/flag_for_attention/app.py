"""Saga step: a compensation failed after its retries; mark the order NEEDS_ATTENTION and dead-letter it."""

from __future__ import annotations

from typing import Any

from shop.domain import order_saga
from shop.models.base import parse_event
from shop.models.orders import FlagOrder
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return order_saga.flag_for_attention(parse_event(FlagOrder, event)).model_dump(mode="json")
