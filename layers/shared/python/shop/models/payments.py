"""Payments boundaries: the saga steps' events, the stored payment and what the steps return."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from shop.models.base import Record, StrictModel
from shop.models.common import ExecutionName, OrderId, PaymentToken
from shop.models.money import Currency, Money
from shop.models.orders import Failure, SagaClaim

# PENDING: an authorization was attempted and has no outcome yet. VOIDED with nothing authorized
# is what voiding an order that never got an authorization leaves behind (it also fences off a
# late authorization of that order).
PaymentStatus = Literal["PENDING", "AUTHORIZED", "DECLINED", "CAPTURED", "VOIDED", "PARTIALLY_REFUNDED", "REFUNDED"]
CAPTURED_STATUSES: frozenset[str] = frozenset({"CAPTURED", "PARTIALLY_REFUNDED", "REFUNDED"})

BreakerStateName = Literal["CLOSED", "OPEN", "HALF_OPEN"]


# ---------------------------------------------------------------------------- saga step events
class _PaymentStep(StrictModel):
    order_id: OrderId
    # The saga passes its execution name for log correlation (and to tell partial refunds apart).
    execution_name: ExecutionName | None = None


class AuthorizePayment(_PaymentStep):
    amount: Money
    payment_token: PaymentToken
    # Who placed the order: the circuit breaker counts failing sources by it. Absent, the order
    # id stands in.
    customer_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None


class CapturePayment(_PaymentStep):
    amount: Money
    # The Task state's retry count (``$$.State.RetryCount``): a retry first asks whether the customer
    # cancelled meanwhile (a capture can wait out an open breaker for most of an hour). The first
    # attempt does not ask, so a checkout costs no extra read.
    attempt: Annotated[int, Field(ge=0, le=1000)] = 0


class VoidPayment(_PaymentStep):
    # The saga's claim: the void is made only while it still owns the order (None: unfenced).
    claim: SagaClaim | None = None
    # Why the saga compensates: recorded on the order (with the claim) before the void.
    failure: Failure | None = None


class ReconcilePayment(_PaymentStep):
    pass


class RefundPayment(_PaymentStep):
    # None refunds everything captured and not refunded yet.
    amount: Money | None = None

    @model_validator(mode="after")
    def _a_partial_refund_names_its_run(self) -> RefundPayment:
        # A partial refund's idempotency key is its run's name and amount: without a name, a second
        # refund of the same amount could not be told from a redelivery of the first, and was dropped.
        if self.amount is not None and self.execution_name is None:
            raise ValueError("a partial refund (amount) needs the execution_name that tells it from another")
        return self


# ---------------------------------------------------------------------------- stored and returned
class RefundEntry(Record):
    ref: str
    amount: int
    at: str


class Payment(Record):
    """The item in PaymentsTable, one per order. Amounts are minor units of ``currency``."""

    order_id: str
    status: PaymentStatus
    currency: Currency = "USD"
    provider: str
    authorized_amount: int = 0
    captured_amount: int = 0
    refunded_amount: int = 0
    authorization_ref: str | None = None
    capture_ref: str | None = None
    void_ref: str | None = None
    # Keyed by the refund's idempotency key, so recording the same refund twice is a no-op.
    refunds: dict[str, RefundEntry] = Field(default_factory=dict)
    decline_code: str | None = None
    attempts: int = 0
    created_at: str
    updated_at: str

    @property
    def refundable_amount(self) -> int:
        return self.captured_amount - self.refunded_amount if self.status in CAPTURED_STATUSES else 0

    def summary(self) -> PaymentSummary:
        return PaymentSummary(
            order_id=self.order_id,
            status=self.status,
            authorized=Money(amount=self.authorized_amount, currency=self.currency),
            captured=Money(amount=self.captured_amount, currency=self.currency),
            refunded=Money(amount=self.refunded_amount, currency=self.currency),
        )


class PaymentSummary(Record):
    """What every payment step returns; the Order's ``payment`` field is this without ``order_id``."""

    order_id: str
    status: PaymentStatus
    authorized: Money
    captured: Money
    refunded: Money


class ReconciledPayment(Record):
    """What the reconcile step returns: the payment as the provider and the ledger now agree on.

    ``captured`` is what the saga branches on (complete the order, or compensate).
    """

    order_id: str
    status: PaymentStatus | None
    captured: bool


class CircuitBreakerStatus(Record):
    """What operators see of the payment provider's circuit breaker."""

    name: str
    state: BreakerStateName
    # The sliding window as of now: one outcome per operation (idempotency key), however often
    # it was retried; only the outcomes the rate is judged on: those of calls admitted while the
    # window held a failure (a healthy call records nothing, see shop.payments.circuit_breaker).
    calls_in_window: int
    failures_in_window: int
    failure_rate_percent: float
    # Distinct sources (customers) of the failures in the window.
    failing_sources: int
    # It opens when calls >= minimum_calls, failure rate >= failure_rate_threshold_percent and
    # failing sources >= minimum_failing_sources, all within window_seconds.
    failure_rate_threshold_percent: float
    minimum_calls: int
    minimum_failing_sources: int
    window_seconds: float
    cooldown_seconds: float
    opened_at: str | None
    # Seconds until an open breaker lets a probe through (0 once it may); None unless OPEN.
    retry_after_seconds: float | None
    probe_in_flight: bool
    updated_at: str | None
