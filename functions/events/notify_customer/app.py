"""Consumer of the customer-facing order events: the e-mail each sends, queued once per event id."""

from __future__ import annotations

from typing import Any

from shop.domain import events
from shop.models.base import parse_event
from shop.models.events import BusEvent
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    queued = events.queue_email(parse_event(BusEvent, event))
    return {"queued": queued.model_dump(mode="json") if queued is not None else None}
