"""Saga step: record a forward checkout step on the order; at a checkpoint, stop if the customer cancelled."""

from __future__ import annotations

from typing import Any

from shop.domain import order_saga
from shop.models.base import parse_event
from shop.models.orders import RecordProgress
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return order_saga.record_progress(parse_event(RecordProgress, event)).model_dump(mode="json")
