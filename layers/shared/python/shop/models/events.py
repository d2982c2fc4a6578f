"""The events the shop publishes to its EventBridge bus, and what its consumers store of them.

Each ``detail`` model is a published contract: its JSON Schema is committed in ``events/schemas/``
(``make schemas``: ``infra/event_schemas.py``) and ``tests/unit/test_event_schemas.py`` fails when a change
breaks a committed schema without a new ``version``. Consumers deduplicate on ``event_id``, which
is stable: the same transition always gets the same id, however often its stream record is
delivered.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shop.models.base import Record, StrictModel
from shop.models.catalog import Reason
from shop.models.money import Money
from shop.models.orders import OrderStatus

ORDERS_SOURCE = "shop.orders"
INVENTORY_SOURCE = "shop.inventory"


class EventDetail(BaseModel):
    """Base of every published ``detail``. A consumer reading one ignores fields it does not know:
    adding an optional field is not a breaking change (its schema rule: README.md, "Schemas and versions")."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # No default: the schema says it is always there. A field added later has one, so that the
    # schema does not require it of events published before (which is what makes it compatible).
    version: Literal[1]
    event_id: str = Field(min_length=1, description="Stable per transition: deduplicate on it.")
    occurred_at: str = Field(description="When the change was written (ISO 8601, UTC).")


class EventLine(StrictModel):
    sku: str
    quantity: int = Field(ge=1)


class OrderEventDetail(EventDetail):
    order_id: str
    customer_id: str
    status: OrderStatus
    total: Money


class OrderPlaced(OrderEventDetail):
    items: list[EventLine]


class OrderCompleted(OrderEventDetail):
    pass


# The reasons version 1 of OrderCancelled was published with. Its ``reason`` keeps exactly these, so that
# a consumer matching them exhaustively keeps working; a reason added since is in ``failure_reason`` only.
CancelReasonV1 = Literal[
    "OUT_OF_STOCK", "PAYMENT_DECLINED", "PAYMENT_UNAVAILABLE", "CANCELLED_BY_CUSTOMER", "PURCHASE_LIMIT_EXCEEDED"
]


class OrderCancelled(OrderEventDetail):
    reason: CancelReasonV1 | None = Field(
        description="Why the order was cancelled, among version 1's reasons; null for a reason added since."
    )
    failure_reason: str | None = Field(
        default=None,
        description=(
            "Why the order was cancelled: the order's failure_reason, whatever its value. An open list: "
            "INVENTORY_UNAVAILABLE was added after version 1, and more may come."
        ),
    )


class OrderRefunded(OrderEventDetail):
    pass


class OrderNeedsAttention(OrderEventDetail):
    pass


class StockLow(EventDetail):
    sku: str
    available: int = Field(ge=0)
    threshold: int = Field(ge=0)


# detail-type -> (source, detail model): every event the shop publishes.
PUBLISHED: dict[str, tuple[str, type[EventDetail]]] = {
    "OrderPlaced": (ORDERS_SOURCE, OrderPlaced),
    "OrderCompleted": (ORDERS_SOURCE, OrderCompleted),
    "OrderCancelled": (ORDERS_SOURCE, OrderCancelled),
    "OrderRefunded": (ORDERS_SOURCE, OrderRefunded),
    "OrderNeedsAttention": (ORDERS_SOURCE, OrderNeedsAttention),
    "StockLow": (INVENTORY_SOURCE, StockLow),
}

# The order status each transition event announces ("PLACED" is the order's creation).
ORDER_EVENT_FOR_STATUS: dict[str, str] = {
    "COMPLETED": "OrderCompleted",
    "CANCELLED": "OrderCancelled",
    "REFUNDED": "OrderRefunded",
    "NEEDS_ATTENTION": "OrderNeedsAttention",
}


class OutgoingEvent(BaseModel):
    """One PutEvents entry: where it goes and what it says."""

    model_config = ConfigDict(frozen=True)

    source: str
    detail_type: str
    detail: EventDetail

    @property
    def event_id(self) -> str:
        return self.detail.event_id


class BusEvent(BaseModel):
    """An event as EventBridge delivers it to a rule's target (the fields the consumers read)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    source: str
    detail_type: str = Field(alias="detail-type")
    detail: dict[str, Any]


# ---------------------------------------------------------------------------- consumers' records
EmailTemplate = Literal["order-completed", "order-cancelled", "order-refunded"]

# The e-mail each customer-facing event sends.
EMAIL_TEMPLATES: dict[str, EmailTemplate] = {
    "OrderCompleted": "order-completed",
    "OrderCancelled": "order-cancelled",
    "OrderRefunded": "order-refunded",
}


class EmailNotification(BaseModel):
    """An e-mail the notification consumer would send, in its outbox (one per event id)."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    customer_id: str
    order_id: str
    template: EmailTemplate
    # When the order's change happened (the event's ``occurred_at``), not when it was queued: an event
    # a consumer failed on is handed back late, so a completion's e-mail can be queued after the
    # refund's. A mailer sends an order's e-mails in this order, and drops one older than an e-mail of
    # the same order it has sent.
    occurred_at: str
    created_at: str
    # Deliveries of the same event after the first: deduplicated, never a second e-mail.
    duplicates_ignored: int = 0


class LowStockAlert(BaseModel):
    """An alert for operators, one per fall of a SKU to or below the threshold."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    sku: str
    available: int
    threshold: int
    occurred_at: str
    recorded_at: str


# ---------------------------------------------------------------------------- unreadable stream records
StreamSource = Literal["orders", "stock"]


class UnreadableRecord(Record):
    """A table stream record a publisher could not read (its images fail the model, a key is missing):
    set aside so that the records behind it are published, kept whole, and read again by the
    republisher every quarter of an hour until a fixed publisher reads it (then PUBLISHED)."""

    record_id: str = Field(description="`<source>-<sequence number>`: one per stream record")
    source: StreamSource = Field(description="the table whose stream the record came from")
    sequence_number: str
    keys: dict[str, str] = Field(description="the item's key attributes, as text")
    status: Literal["OPEN", "PUBLISHED", "DISMISSED"] = Field(
        description="OPEN until the republisher reads it (PUBLISHED) or an operator dismisses it (DISMISSED)"
    )
    error: str = Field(description="the exception that the last read raised (its class name)")
    detail: str = Field(description="its message, truncated")
    attempts: int = Field(ge=1, description="reads that failed, the first included")
    set_aside_at: str
    last_attempt_at: str
    published_at: str | None = None
    dismissed_at: str | None = None
    dismissed_by: str | None = Field(default=None, description="the operator who dismissed it")
    dismissal_reason: str | None = None
    record: dict[str, Any] = Field(description="the stream record as Lambda delivered it")
    images_dropped: bool = Field(
        default=False,
        description=(
            "true when the record was too large to keep whole (over 300 KB compressed): `record` keeps its keys "
            "and sequence number, not its images, and the republisher cannot read it; the item's keys say where "
            "to look"
        ),
    )


# ``<source>-<stream sequence number>``, as the publishers name a record they set aside (a number on
# AWS; whatever a damaged record carried otherwise, printable).
UnreadableRecordId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^(orders|stock)-[\x21-\x7e]+$")]


class DismissRecordRequest(StrictModel):
    """``POST /admin/unreadable-records/{record_id}/dismiss``: why the operator closes it unpublished."""

    reason: Reason


class UnreadableRecordPage(Record):
    items: list[UnreadableRecord]
    next_token: str | None


class RepublishResult(Record):
    """What one run of the republisher did."""

    published: int = 0
    still_unreadable: int = 0


class ConsumerFailuresStatus(Record):
    """ConsumerFailuresQueue at a glance: SQS's approximate counts of the events the consumers failed on."""

    waiting: int = Field(ge=0, description="events waiting for the next redrive (SQS: visible messages)")
    in_hand: int = Field(
        ge=0,
        description=(
            "events being handed back now, or hidden for the queue's visibility timeout after their consumer "
            "failed again (SQS: messages not visible)"
        ),
    )


class RedriveResult(Record):
    """What one run of the consumers' redriver did."""

    redelivered: int = 0
    still_failing: int = 0
    unrecognised: int = 0
