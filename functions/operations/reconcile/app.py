"""Scheduled reconciliation: check the books against the invariants, repair what is safe, report the rest."""

from __future__ import annotations

from typing import Any

from shop.domain import reconciliation_job
from shop.models.base import parse_event
from shop.models.orders import ScheduledEvent
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # "now" is the schedule's own event time, so a delayed delivery judges ages as of its schedule.
    return reconciliation_job.run(parse_event(ScheduledEvent, event).at()).summary().model_dump(mode="json")
