"""Consumer of StockLow: an alert for operators, recorded once per event id."""

from __future__ import annotations

from typing import Any

from shop.domain import events
from shop.models.base import parse_event
from shop.models.events import BusEvent
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    recorded = events.record_low_stock(parse_event(BusEvent, event))
    return {"recorded": recorded.model_dump(mode="json") if recorded is not None else None}
