"""The stopped-execution handler's pure decisions (shop.domain.recovery), on items as stored."""

from __future__ import annotations

from shop.domain import recovery
from shop.models.orders import DeadLetter, ExecutionStatusChange

OID = "order-1"
AT = "2026-11-01T10:00:00.000Z"


def test_a_late_event_beside_a_redrive_whose_start_time_is_no_time_leaves_the_redrive_alone() -> None:
    """A REDRIVING letter written behind the shop's back with an odd start time: every status event for its
    order raised ValueError in the check of which run came first (the same odd time 63dc068 fixed for the
    sweeps, reached through the event handler). The running redrive is left alone instead."""
    letter = DeadLetter(
        order_id=OID,
        status="REDRIVING",
        resume="compensate",
        failed_step="void_payment",
        redrive_execution=f"{OID}-redrive-1",
        redrive_started_at="sometime",
        created_at=AT,
        updated_at=AT,
    )
    late = ExecutionStatusChange.model_validate(
        {"executionArn": "arn:x", "stateMachineArn": "arn:m", "name": OID, "status": "FAILED", "startDate": 1}
    )
    assert recovery._replaced_by_running_redrive(late, letter)
