"""The orders table's stream (the outbox): each order transition published to the shop's bus."""

from __future__ import annotations

from typing import Any

from shop.domain import events
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # Partial batch response: Lambda retries from the first record that failed (ReportBatchItemFailures).
    return dict(events.publish_order_changes(event, context))
