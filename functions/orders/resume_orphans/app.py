"""Scheduled sweeper: start the saga of orders in progress that have none; settle those whose saga stopped."""

from __future__ import annotations

from typing import Any

from shop.domain import recovery
from shop.models.base import parse_event
from shop.models.orders import ScheduledEvent
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # "now" is the schedule's own event time, so a delayed delivery judges ages as of its schedule.
    sweep = recovery.resume_orphans(
        parse_event(ScheduledEvent, event).at(), seconds_left=lambda: context.get_remaining_time_in_millis() / 1000
    )
    return sweep.model_dump(mode="json")
