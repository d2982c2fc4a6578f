"""Inventory boundaries: the saga's events, the stored reservation and what the steps return."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

from pydantic import Field, field_validator, model_validator

from shop.models.base import Record, StrictModel, require_distinct_skus
from shop.models.common import MAX_LINES, CheckoutLine, CustomerId, ExecutionName, Line, OrderId
from shop.models.orders import Failure, SagaClaim

ReservationStatus = Literal["RESERVED", "COMMITTED", "RELEASED"]
ReservationOutcome = Literal["RESERVED", "COMMITTED", "RELEASED", "NOT_FOUND"]


class ReserveStock(StrictModel):
    """Reserve every line for an order; the reservation's id is the order's id."""

    order_id: OrderId
    # The saga passes its execution name for log correlation; nothing else unknown is accepted.
    execution_name: ExecutionName | None = None
    # Whose purchase limits the limited lines count against. Optional: an execution started before
    # limits existed passes none, and its lines carry no limit either.
    customer_id: CustomerId | None = None
    lines: list[CheckoutLine] = Field(min_length=1, max_length=MAX_LINES)

    @field_validator("lines")
    @classmethod
    def _distinct_skus(cls, lines: list[CheckoutLine]) -> list[CheckoutLine]:
        require_distinct_skus([line.sku for line in lines])
        return lines

    @model_validator(mode="after")
    def _limited_lines_have_a_customer(self) -> ReserveStock:
        if self.customer_id is None and any(line.purchase_limit is not None for line in self.lines):
            raise ValueError("lines with a purchase_limit need the customer_id they count against")
        return self


class _ReservationStep(StrictModel):
    """Commit and release the order's reservation (its id is the order's id)."""

    order_id: OrderId
    execution_name: ExecutionName | None = None


class CommitReservation(_ReservationStep):
    pass


class ReleaseReservation(_ReservationStep):
    # Whether the order's units stop counting against purchase limits: true where the order ends
    # CANCELLED (checkout compensation). The refund saga passes false: a REFUNDED order still counts.
    frees_purchase_units: bool = True
    # The saga's claim: the stock is released only while it still owns the order (None: unfenced).
    claim: SagaClaim | None = None
    # Why the checkout saga compensates: recorded on the order (with the claim) before the release.
    failure: Failure | None = None


class PurchaseCount(Record):
    """An item of PurchaseCountsTable: the units of one limited SKU one customer holds across the
    orders that count (shop.repositories.purchases)."""

    customer_id: str
    sku: str
    units: int


class ShardTake(Record):
    """Units of a line taken from one of its SKU's stock shards."""

    shard: int
    quantity: int


class ReservedLine(Record):
    """A ``Line`` as read back from DynamoDB (lenient: numbers arrive as Decimal), and as the steps return it."""

    sku: str
    quantity: int


class StoredLine(ReservedLine):
    """A reservation's line as stored: with the shards its units came from, so a release returns
    them there."""

    # Empty on a reservation stored before stock was sharded: all of it came from shard 0.
    takes: list[ShardTake] = Field(default_factory=list)
    # Set on a line that counts against its product's purchase limit (absent otherwise, so an
    # unlimited line stores nothing more).
    purchase_limit: int | None = None

    def shard_takes(self) -> list[ShardTake]:
        return self.takes or [ShardTake(shard=0, quantity=self.quantity)]


class Reservation(Record):
    """The item in ReservationsTable (``held`` and ``purge_at`` are derived from ``status``)."""

    reservation_id: str
    order_id: str
    # Whose purchase counters the limited lines moved; only on reservations with such a line.
    customer_id: str | None = None
    lines: list[StoredLine]
    status: ReservationStatus
    expires_at: int
    created_at: str
    updated_at: str
    purge_at: int | None = None

    @property
    def limited_lines(self) -> list[StoredLine]:
        """The lines whose units this reservation counted against the customer's purchase limits."""
        return [line for line in self.lines if line.purchase_limit is not None] if self.customer_id else []

    def same_lines(self, lines: Sequence[Line]) -> bool:
        """Order-insensitive comparison: a retried request may list the same lines differently."""
        return sorted((line.sku, line.quantity) for line in self.lines) == sorted(
            (line.sku, line.quantity) for line in lines
        )


class ReservationResult(Record):
    """What every reservation step returns to the saga."""

    reservation_id: str
    order_id: str | None
    status: ReservationOutcome
    lines: list[ReservedLine]
    expires_at: int | None

    @classmethod
    def of(cls, reservation: Reservation) -> ReservationResult:
        return cls(
            reservation_id=reservation.reservation_id,
            order_id=reservation.order_id,
            status=reservation.status,
            # What was reserved; which lines counted against purchase limits stays with the reservation.
            lines=[ReservedLine(sku=line.sku, quantity=line.quantity) for line in reservation.lines],
            expires_at=reservation.expires_at,
        )

    @classmethod
    def not_found(cls, reservation_id: str) -> ReservationResult:
        return cls(reservation_id=reservation_id, order_id=None, status="NOT_FOUND", lines=[], expires_at=None)


class SweepResult(Record):
    released: int


# ---------------------------------------------------------------------------- stock counters
class StockCounter(Protocol):
    """A stock counter as read (``shop.repositories.stock.Shard``): what the sums below need of it."""

    @property
    def available(self) -> int: ...


def units_by_shard(counters: Mapping[int, StockCounter]) -> dict[int, int]:
    """Each counter's ``available`` by shard number: what ``shop.domain.stock_shards`` is given."""
    return {number: counter.available for number, counter in counters.items()}


def total_available(available: Mapping[int, int]) -> int:
    """The SKU's ``available``: the sum of its counters, each as it stands."""
    return sum(available.values())
