"""Inventory boundaries: the saga's events, the stored reservation and what the steps return."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from shop.models.base import Record, StrictModel, require_distinct_skus
from shop.models.common import MAX_LINES, ExecutionName, Line, OrderId, ReserveLine

ReservationStatus = Literal["RESERVED", "COMMITTED", "RELEASED"]
ReservationOutcome = Literal["RESERVED", "COMMITTED", "RELEASED", "NOT_FOUND"]


class ReserveStock(StrictModel):
    """Reserve every line for an order; the reservation's id is the order's id."""

    order_id: OrderId
    # The saga passes its execution name for log correlation; nothing else unknown is accepted.
    execution_name: ExecutionName | None = None
    lines: list[ReserveLine] = Field(min_length=1, max_length=MAX_LINES)

    @field_validator("lines")
    @classmethod
    def _distinct_skus(cls, lines: list[ReserveLine]) -> list[ReserveLine]:
        require_distinct_skus([line.sku for line in lines])
        return lines


class _ReservationStep(StrictModel):
    """Commit and release the order's reservation (its id is the order's id)."""

    order_id: OrderId
    execution_name: ExecutionName | None = None


class CommitReservation(_ReservationStep):
    pass


class ReleaseReservation(_ReservationStep):
    pass


class ShardTake(Record):
    """Units of a line taken from one of its SKU's stock shards."""

    shard: int
    quantity: int


class StoredLine(Record):
    """A ``Line`` as read back from DynamoDB (lenient: numbers arrive as Decimal), with the shards
    its units came from, so a release returns them there."""

    sku: str
    quantity: int
    # Empty on a reservation stored before stock was sharded: all of it came from shard 0.
    takes: list[ShardTake] = Field(default_factory=list)

    def shard_takes(self) -> list[ShardTake]:
        return self.takes or [ShardTake(shard=0, quantity=self.quantity)]


class Reservation(Record):
    """The item in ReservationsTable (``held`` and ``purge_at`` are derived from ``status``)."""

    reservation_id: str
    order_id: str
    lines: list[StoredLine]
    status: ReservationStatus
    expires_at: int
    created_at: str
    updated_at: str
    purge_at: int | None = None

    def same_lines(self, lines: list[Line]) -> bool:
        """Order-insensitive comparison: a retried request may list the same lines differently."""
        return sorted((line.sku, line.quantity) for line in self.lines) == sorted(
            (line.sku, line.quantity) for line in lines
        )


class ReservationResult(Record):
    """What every reservation step returns to the saga."""

    reservation_id: str
    order_id: str | None
    status: ReservationOutcome
    lines: list[StoredLine]
    expires_at: int | None

    @classmethod
    def of(cls, reservation: Reservation) -> ReservationResult:
        return cls(
            reservation_id=reservation.reservation_id,
            order_id=reservation.order_id,
            status=reservation.status,
            lines=reservation.lines,
            expires_at=reservation.expires_at,
        )

    @classmethod
    def not_found(cls, reservation_id: str) -> ReservationResult:
        return cls(reservation_id=reservation_id, order_id=None, status="NOT_FOUND", lines=[], expires_at=None)


class SweepResult(Record):
    released: int
