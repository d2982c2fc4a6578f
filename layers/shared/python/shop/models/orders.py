"""Orders: the HTTP bodies, the stored order, the checkout/refund saga steps and dead letters."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    field_validator,
    model_serializer,
    model_validator,
)

from shop.models.base import Record, StrictModel, require_distinct_skus
from shop.models.common import MAX_LINES, CheckoutLine, CustomerId, ExecutionName, Line, OrderId, PaymentToken
from shop.models.money import Money
from shop.saga_terms import Step

StepName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]

MAX_IDEMPOTENCY_KEY = 255
# How long POST /orders remembers an Idempotency-Key (Powertools' record): long enough to cover any
# client's retries. After it the same key and body still find the same order (its id is derived from
# them), so nothing is placed twice; the same key with another body is a new order then.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600

# What a client sends as the Idempotency-Key header of POST /orders: 1-255 visible ASCII
# characters, spaces only inside (an HTTP header value loses its leading and trailing whitespace).
IdempotencyKey = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        pattern=r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$",
        description=f"1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters (spaces only inside), scoped to the caller.",
    ),
]

OrderStatus = Literal[
    "PENDING",
    "STOCK_RESERVED",
    "PAYMENT_AUTHORIZED",
    "REFUNDING",
    "COMPLETED",
    "CANCELLED",
    "REFUNDED",
    "NEEDS_ATTENTION",
]
FailureReason = Literal[
    "OUT_OF_STOCK",
    "PAYMENT_DECLINED",
    "PAYMENT_UNAVAILABLE",
    "CANCELLED_BY_CUSTOMER",
    "PURCHASE_LIMIT_EXCEEDED",
    "INVENTORY_UNAVAILABLE",
]

# The checkout saga is between these; a cancel request only raises a flag the saga reads.
CHECKOUT_IN_PROGRESS: frozenset[str] = frozenset({"PENDING", "STOCK_RESERVED", "PAYMENT_AUTHORIZED"})
# A saga has settled these: nothing but a customer's refund moves them on.
SETTLED: frozenset[str] = frozenset({"COMPLETED", "CANCELLED", "REFUNDED"})
# NEEDS_ATTENTION is terminal for clients; only an operator's redrive moves it on.
TERMINAL: frozenset[str] = SETTLED | {"NEEDS_ATTENTION"}
# The checkout is over: nothing charges the payment token again (a refund refunds the capture), so the
# order forgets it. NEEDS_ATTENTION keeps it: a redrive's run may check out again.
CHECKOUT_OVER: frozenset[str] = SETTLED | {"REFUNDING"}
# A saga still has to move these on; each must have a running execution (the orphan sweeper
# starts or settles those that have none).
SAGA_IN_PROGRESS: frozenset[str] = CHECKOUT_IN_PROGRESS | {"REFUNDING"}

# Where an operator's redrive resumes: the checkout compensation (void, release, cancel), the
# checkout completion (complete, or hand over to the refund saga), or the refund saga.
ResumePoint = Literal["compensate", "complete", "refund"]
# The resume points the checkout machine itself runs (a refund resumes in the refund machine).
ResumeCheckout = Literal["compensate", "complete"]
DeadLetterStatus = Literal["OPEN", "REDRIVING", "RESOLVED"]


# ---------------------------------------------------------------------------- HTTP bodies
class OrderItemRequest(Line):
    """A line of a POST /orders body."""


class PaymentMethod(StrictModel):
    token: PaymentToken


def _items_or_cart(schema: dict[str, Any]) -> None:
    """``PlaceOrderRequest``'s schema as the server enforces it: exactly one of ``items`` and ``cart``, never null."""
    for name in ("items", "cart"):
        prop = schema["properties"][name]
        prop.pop("default", None)
        variants = [variant for variant in prop.pop("anyOf", []) if variant != {"type": "null"}]
        if len(variants) == 1:
            prop.update(variants[0])
    schema["oneOf"] = [{"required": ["items"]}, {"required": ["cart"]}]


class PlaceOrderRequest(StrictModel):
    """``POST /orders``: the lines (``items``), or ``"cart": true`` for the lines of the customer's cart."""

    model_config = ConfigDict(json_schema_extra=_items_or_cart)

    # Distinct SKUs (no JSON Schema keyword says "unique by sku"; uniqueItems is the part it can say).
    items: list[OrderItemRequest] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LINES,
        description="Each SKU at most once (a repeated SKU is 400). Not with `cart`.",
        json_schema_extra={"uniqueItems": True},
    )
    cart: Literal[True] | None = Field(
        default=None,
        description="Order the lines of the customer's cart as they are now (not with `items`); an empty cart is "
        "422 `cart-empty`. The cart is emptied of them only when the order COMPLETES.",
    )
    payment: PaymentMethod

    @field_validator("items", "cart", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null (send either items or cart)")
        return value

    @field_validator("cart", mode="before")
    @classmethod
    def _the_boolean_true(cls, value: Any) -> Any:
        # A Literal compares by equality, so 1 (and 1.0, read as 1) passed as true, strict or not.
        if value is not True:
            raise ValueError("must be true (the boolean)")
        return value

    @field_validator("items")
    @classmethod
    def _distinct_skus(cls, items: list[OrderItemRequest] | None) -> list[OrderItemRequest] | None:
        if items is not None:
            require_distinct_skus([item.sku for item in items])
        return items

    @model_validator(mode="after")
    def _one_source(self) -> PlaceOrderRequest:
        if (self.items is None) == (self.cart is None):
            raise ValueError("send either items or cart (true), not both")
        return self

    @model_serializer(mode="wrap")
    def _without_absent(self, serialize: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Absent stays absent: an order's id and its idempotency record are derived from this form,
        # which must not change for bodies that were valid before `cart` existed.
        data: dict[str, Any] = serialize(self)
        return {key: value for key, value in data.items() if not (key in ("items", "cart") and value is None)}


class OrderSubmission(StrictModel):
    """What POST /orders' idempotency is keyed on: the caller, their key and the body."""

    customer_id: str
    idempotency_key: str
    body: PlaceOrderRequest


# ---------------------------------------------------------------------------- stored order
class OrderLine(Record):
    sku: str
    name: str
    quantity: int
    unit_price: Money
    line_total: Money


class HistoryEntry(Record):
    step: str
    status: str
    at: str


class PaymentView(Record):
    status: str
    authorized: Money
    captured: Money
    refunded: Money


class Order(Record):
    """The item in OrdersTable. ``version`` guards every read-modify-write of the saga and the API."""

    order_id: str
    customer_id: str
    status: OrderStatus
    failure_reason: FailureReason | None = None
    items: list[OrderLine]
    total: Money
    history: list[HistoryEntry]
    cancel_requested: bool = False
    # Kept so that the orphan sweeper can start a saga whose StartExecution failed, until the checkout
    # is over (CHECKOUT_OVER); never shown.
    payment_token: str | None = None
    # The caller's Idempotency-Key (scoped to ``customer_id``); never shown. None on orders stored
    # before it was kept. The reconciliation checks that no key placed two orders.
    idempotency_key: str | None = None
    # SKU -> its product's purchase limit when the order was placed, for the lines that had one
    # (None when none had: an unlimited order stores nothing more). Passed to the reserve step;
    # never shown.
    purchase_limits: dict[str, int] | None = None
    # Each SKU's stock shard count when the order was placed (the saga's reservation picks a shard
    # from it without reading the product); never shown. Absent means 1.
    stock_shards: dict[str, int] = Field(default_factory=dict)
    # The cart the order was placed from (``"cart": true``), whose lines the completion removes
    # (shop.domain.carts.remove_ordered_lines); never shown. None for an order of ``items``.
    cart_id: str | None = None
    # The cart's version placement read the lines at: completion takes them only from lines the cart
    # held then. None for an order of ``items``, and on orders stored before it was kept.
    cart_version: int | None = None
    created_at: str
    updated_at: str
    version: int = 0
    # The fencing token of the execution that owns the saga (SagaClaim), absent until one claims it.
    saga_claim: str | None = None
    saga_epoch: int | None = None
    # A dead letter was opened for it outside the saga (the reconciliation found its books wrong):
    # whichever saga step settles it next resolves that letter. Absent otherwise; never shown.
    dead_lettered: Literal[True] | None = None
    # Why its checkout saga compensates, recorded by the first compensation (void or release) while the
    # run owns the order: an Express run that stops before its last compensation is continued from
    # it (the continuation compensates for the same reason instead of checking out again). Never shown.
    compensating: Failure | None = None

    @property
    def created_key(self) -> str:
        """Sort key of OrdersByCustomer: creation time first (newest-first listing), id for uniqueness."""
        return f"{self.created_at}#{self.order_id}"

    def has_recorded(self, step: str, status: str) -> bool:
        return any(entry.step == step and entry.status == status for entry in self.history)

    @property
    def was_completed(self) -> bool:
        """The order reached COMPLETED at some point (it may be REFUNDING or REFUNDED since)."""
        return self.has_recorded(Step.COMPLETE_ORDER, "COMPLETED")

    def view(self, payment: PaymentView | None) -> OrderView:
        return OrderView(
            order_id=self.order_id,
            customer_id=self.customer_id,
            status=self.status,
            failure_reason=self.failure_reason,
            cancel_requested=self.cancel_requested,
            items=self.items,
            total=self.total,
            payment=payment,
            history=self.history,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class OrderView(Record):
    """The Order of the HTTP contract (plus ``cancel_requested``)."""

    order_id: str
    customer_id: str
    status: OrderStatus
    failure_reason: FailureReason | None
    cancel_requested: bool
    items: list[OrderLine]
    total: Money
    payment: PaymentView | None
    history: list[HistoryEntry]
    created_at: str
    updated_at: str


class OrderPage(Record):
    items: list[OrderView]
    next_token: str | None


def _instant(value: str) -> tuple[datetime, Decimal]:
    """The instant as given: its whole seconds in UTC and the fraction of a second at full precision
    (a datetime keeps microseconds and drops the rest, and ``.1230001`` is after ``.123``)."""
    # pydantic alone would also take "0.5" (seconds since 1970) or a bare date.
    match = _RFC3339.fullmatch(value)
    if not match:
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-01-31T09:30:00Z")
    fraction = match.group(1) or ""
    try:
        whole = _DATE_TIME.validate_python(value.replace(fraction, "", 1) if fraction else value).astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValueError("must be a date-time within years 1-9999 in UTC") from None
    return whole, Decimal(fraction or "0")


def _stored_form(value: str, rounding: str) -> str:
    """As stored timestamps are written (UTC, milliseconds, Z), so it compares as text, the fraction
    rounded to a millisecond as ``rounding`` says; isoformat pads the year to 4 digits (strftime's %Y
    does not), so the text sorts as the time does."""
    whole, fraction = _instant(value)
    milliseconds = int((fraction * 1000).to_integral_value(rounding=rounding))
    try:
        instant = whole + timedelta(milliseconds=milliseconds)
    except OverflowError:  # within the last second of 9999, rounded up: nothing stored comes after it
        raise ValueError("must be a date-time within years 1-9999 in UTC") from None
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _lower_bound(value: str) -> str:
    """An inclusive lower bound: a fraction finer than a millisecond rounds UP, so no order created
    before the bound is listed (stored times have milliseconds)."""
    return _stored_form(value, ROUND_CEILING)


def _upper_bound(value: str) -> str:
    """An inclusive upper bound: a finer fraction rounds down, for the same reason."""
    return _stored_form(value, ROUND_FLOOR)


_DATE_TIME: TypeAdapter[AwareDatetime] = TypeAdapter(AwareDatetime)
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_TIMESTAMP_SCHEMA = Field(
    json_schema_extra={"format": "date-time"}, description="An RFC 3339 date-time with its offset."
)
SinceTimestamp = Annotated[str, _TIMESTAMP_SCHEMA, AfterValidator(_lower_bound)]
UntilTimestamp = Annotated[str, _TIMESTAMP_SCHEMA, AfterValidator(_upper_bound)]


class OrderFilter(StrictModel):
    """What an operator narrows the orders to; ``since``/``until`` bound the creation time (inclusive)."""

    status: OrderStatus | None = None
    reason: FailureReason | None = None
    customer: CustomerId | None = None
    since: SinceTimestamp | None = None
    until: UntilTimestamp | None = None

    @model_validator(mode="before")
    @classmethod
    def _ordered_range(cls, data: Any) -> Any:
        # On the instants as given: the stored forms are rounded (since up, until down), and two bounds
        # within one millisecond would compare wrongly in either direction after rounding.
        if isinstance(data, dict) and isinstance(data.get("since"), str) and isinstance(data.get("until"), str):
            try:
                since, until = _instant(data["since"]), _instant(data["until"])
            except ValueError:
                return data  # the field's own validator says what is wrong with it
            if since > until:
                raise ValueError("since must not be after until")
        return data

    @property
    def selects_no_time(self) -> bool:
        """Bounds within one millisecond that hold no stored time (since rounds up past until): a
        range DynamoDB refuses to query (BETWEEN wants its lower bound first), and an empty page."""
        return self.since is not None and self.until is not None and self.since > self.until


# ---------------------------------------------------------------------------- sagas
# The first epoch: a checkout's own execution. Every takeover (a redrive, the refund saga) is a later one.
FIRST_EPOCH = 1


class SagaClaim(StrictModel):
    """Which execution owns an order's saga: a fencing token.

    ``execution`` is the execution's id (unique even among Express executions of one name),
    ``epoch`` the saga run it belongs to: the checkout is epoch 1 and every explicit takeover (an
    operator's redrive, the refund saga) starts the next epoch. A claim is taken by an epoch
    higher than the stored one, or the first time for it; an execution of the same epoch that
    finds another execution's claim is a duplicate start and stops.
    """

    execution: str = Field(min_length=1, max_length=2048)
    epoch: int = Field(ge=FIRST_EPOCH)


class CheckoutInput(Record):
    """What the API starts CheckoutStateMachine with; the state machine passes parts to each step."""

    # A redrive starts the same machine as CheckoutRedriveInput (see checkout.asl.json's Route).
    mode: Literal["checkout"] = "checkout"
    order_id: str
    customer_id: str
    lines: list[CheckoutLine]
    total: Money
    payment_token: str
    epoch: int = FIRST_EPOCH


class CheckoutRedriveInput(Record):
    """An operator's redrive of a dead-lettered checkout: CheckoutStateMachine resumes at ReconcilePayment,
    then compensates with ``failure`` (nothing was captured) or completes (it was)."""

    mode: ResumeCheckout
    order_id: str
    failure: Failure
    epoch: int = Field(ge=FIRST_EPOCH)


class RefundInput(Record):
    """What RefundStateMachine starts with: the refund saga (or its redrive) takes the order over at ``epoch``.

    ``frees_purchase_units``: its release also takes the order's units off the customer's purchase
    counters. Only for an order that never COMPLETED (cancelled during its capture, or captured but
    unable to complete): the customer never had those goods. A completed order's refund keeps them counted.
    """

    order_id: str
    epoch: int = Field(ge=FIRST_EPOCH)
    frees_purchase_units: bool = False


class Failure(StrictModel):
    """Why the checkout saga compensates, set by the state machine on the way into compensation.

    ``step`` is the saga step that failed (None when the customer cancelled); ``compensations``
    are the steps that ran before the order is marked cancelled.
    """

    reason: FailureReason
    step: StepName | None = None
    compensations: list[StepName] = Field(default_factory=list, max_length=8)


class StepError(StrictModel):
    """A Catch's ``ResultPath`` value: Step Functions' error name and cause."""

    Error: str = Field(max_length=256)
    Cause: str = ""


class _OrderStep(StrictModel):
    order_id: OrderId
    execution_name: ExecutionName | None = None
    # The state machines pass their execution's claim to every step that writes the order, whose
    # write then holds only while that claim does; None (a direct call) writes unfenced.
    claim: SagaClaim | None = None


class RecordProgress(_OrderStep):
    step: Literal["reserve_stock", "authorize_payment"]
    # A checkpoint refuses to go on once the customer asked to cancel (CheckoutCancelled).
    checkpoint: bool = True


class _SettlingStep(_OrderStep):
    # The execution's start ($$.Execution.StartTime): the saga's duration (the SagaDuration metric) is
    # measured from it, so a refund or a redrive run days after the order counts its own run, not the
    # order's age. None (a direct call, an execution of an older definition): from the order's placement.
    execution_started_at: Annotated[AwareDatetime | None, Field(strict=False)] = None


class ClaimOrder(_SettlingStep):
    """The first step of every saga execution: claim the order, or stop (SagaClaimLost). It settles
    an order the customer cancelled before its first run (CANCELLED_BY_CUSTOMER)."""

    claim: SagaClaim


class CompleteOrder(_SettlingStep):
    pass


class CancelOrder(_SettlingStep):
    failure: Failure


class StartRefund(_OrderStep):
    pass


class MarkRefunded(_SettlingStep):
    pass


class FlagOrder(_OrderStep):
    resume: ResumePoint
    failed_step: StepName
    error: StepError | None = None
    failure: Failure | None = None


class ExecutionStatusChange(StrictModel):
    """The ``detail`` of EventBridge's "Step Functions Execution Status Change" event (the fields used)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    execution_arn: str = Field(alias="executionArn", max_length=2048)
    state_machine_arn: str = Field(alias="stateMachineArn", max_length=2048)
    name: str = Field(max_length=256)
    status: Literal["RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED", "PENDING_REDRIVE"]
    input: str | None = None
    error: str | None = None
    cause: str | None = None
    start_date: int | None = Field(default=None, alias="startDate")  # epoch milliseconds


class ScheduledEvent(StrictModel):
    """An EventBridge scheduled event; only its ``time`` matters (absent: now)."""

    model_config = ConfigDict(extra="ignore")

    time: str | None = Field(default=None, max_length=64)

    @field_validator("time")
    @classmethod
    def _iso_8601(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_time(value)
        return value

    def at(self) -> datetime:
        return datetime.now(UTC) if self.time is None else _parse_time(self.time)


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))  # ValueError: not ISO 8601
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class ExecutionStatusEvent(StrictModel):
    model_config = ConfigDict(extra="ignore")

    detail: ExecutionStatusChange


class StepResult(Record):
    """What every order step returns to the saga."""

    order_id: str
    status: OrderStatus
    # complete_order: COMPLETED, or REFUND_REQUIRED when the customer cancelled during capture.
    outcome: Literal["COMPLETED", "REFUND_REQUIRED"] | None = None


# ---------------------------------------------------------------------------- dead letters
class DeadLetter(Record):
    """A saga that could not finish its compensation: the order is NEEDS_ATTENTION until redriven."""

    order_id: str
    status: DeadLetterStatus
    resume: ResumePoint
    failed_step: str
    failure: Failure | None = None
    error: str | None = None
    cause: str | None = None
    execution_name: str | None = None
    redrive_count: int = 0
    redrive_execution: str | None = None
    # The claim epoch the running redrive takes the order over at, fixed when it was asked for: asked
    # again, the redrive starts at that epoch (a duplicate stops at its claim), never the next one.
    redrive_epoch: int | None = None
    # When the running redrive began: an execution that started earlier is one it replaced.
    redrive_started_at: str | None = None
    created_at: str
    updated_at: str


class SettledExecution(Record):
    """What SettleStoppedExecution did about one stopped execution."""

    order_id: str | None
    execution_name: str
    action: Literal["dead_lettered", "redrive_reopened", "already_settled", "superseded", "not_an_order"]


class OrphanSweep(Record):
    """What one run of the orphan sweeper did."""

    examined: int
    started: list[str] = Field(default_factory=list)
    settled: list[str] = Field(default_factory=list)
    # The run stopped with candidates left (at its bound of orders to act on, or before its Lambda
    # timeout); the next run goes on.
    stopped_early: bool = False


class DeadLetterPage(Record):
    items: list[DeadLetter]
    next_token: str | None
