"""Scheduled redriver: the events the consumers failed on, handed back to them until they succeed."""

from __future__ import annotations

from typing import Any

from shop.domain import consumer_failures
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # The EventBridge schedule's payload carries nothing the run needs.
    return consumer_failures.redrive().model_dump(mode="json")
