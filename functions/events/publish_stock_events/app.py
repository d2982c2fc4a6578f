"""The stock table's stream: a SKU falling to or below the low-stock threshold published once per fall."""

from __future__ import annotations

from typing import Any

from shop.domain import events
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # Partial batch response: Lambda retries from the first record that failed (ReportBatchItemFailures).
    return dict(events.publish_stock_changes(event, context))
