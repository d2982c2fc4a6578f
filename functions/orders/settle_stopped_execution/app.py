"""EventBridge target: a saga execution ended FAILED, TIMED_OUT or ABORTED; make sure its order is
NEEDS_ATTENTION with an open dead letter (or reopen the dead letter of a redrive that stopped)."""

from __future__ import annotations

from typing import Any

from shop.domain import recovery
from shop.models.base import parse_event
from shop.models.orders import ExecutionStatusEvent
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    change = parse_event(ExecutionStatusEvent, event).detail
    return recovery.settle_stopped_execution(change).model_dump(mode="json")
