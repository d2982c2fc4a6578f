"""Payments: the four saga steps, each safe to run twice with the same input.

Two guards make a repeated step harmless. The provider gets an idempotency key derived from the
order and the operation, so it answers a repeat with its first result; and every change to the
payments ledger is a conditional transition that recognises one already made. Every provider
call goes through the shared circuit breaker.

Idempotency keys: ``{order_id}:authorize``, ``:capture``, ``:void``; a full refund uses
``{order_id}:refund:full``, a partial one ``{order_id}:refund:{execution name}:{amount}``, so
each refund saga execution gets its own refund and a redelivered step gets the same one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from shop.config import payment_settings
from shop.errors import (
    CaptureExceedsAuthorization,
    CheckoutCancelled,
    PaymentAlreadyCaptured,
    PaymentDeclined,
    PaymentRecordsContention,
    PaymentStateConflict,
    RefundExceedsCapture,
)
from shop.models.money import Money
from shop.models.payments import (
    CAPTURED_STATUSES,
    AuthorizePayment,
    CapturePayment,
    CircuitBreakerStatus,
    Payment,
    PaymentSummary,
    ReconciledPayment,
    ReconcilePayment,
    RefundPayment,
    VoidPayment,
)
from shop.payments.circuit_breaker import BreakerPolicy, CircuitBreaker
from shop.payments.provider import GuardedProvider, PaymentProvider
from shop.payments.simulator import SimulatorProvider
from shop.repositories import orders as orders_repository
from shop.repositories.operations import DynamoBreakerStore, DynamoSimulatorStore
from shop.repositories.payments import PaymentsRepository

# A concurrent refund of the same order moves refunded_amount under us; re-read and retry.
_REFUND_ATTEMPTS = 3


def idempotency_key(order_id: str, operation: str) -> str:
    return f"{order_id}:{operation}"


def refund_key(request: RefundPayment) -> str:
    if request.amount is None:
        return idempotency_key(request.order_id, "refund:full")
    assert request.execution_name is not None  # the model requires it of a partial refund
    return idempotency_key(request.order_id, f"refund:{request.execution_name}:{request.amount.amount}")


@dataclass
class PaymentService:
    ledger: PaymentsRepository
    provider: PaymentProvider

    # ------------------------------------------------------------------ authorize
    def authorize(self, request: AuthorizePayment) -> PaymentSummary:
        order_id = request.order_id
        started = self.ledger.begin_authorization(order_id, request.amount.currency, self.provider.name)
        if not started.applied:
            current = _existing(started.payment, order_id)
            self._release_fenced_authorization(current)
            return self._settled(current)
        try:
            authorization = self.provider.authorize(
                request.amount, request.payment_token, idempotency_key(order_id, "authorize")
            )
        except PaymentDeclined as declined:
            outcome = self.ledger.mark_declined(order_id, declined.decline_code)
            if not outcome.applied:
                return self._settled(_existing(outcome.payment, order_id))
            raise
        outcome = self.ledger.mark_authorized(order_id, authorization.amount.amount, authorization.reference)
        if outcome.applied:
            return _existing(outcome.payment, order_id).summary()
        current = _existing(outcome.payment, order_id)
        # The saga voided the order while this authorization was in flight: release the hold.
        self._release_fenced_authorization(current)
        return self._settled(current)

    @staticmethod
    def _settled(payment: Payment) -> PaymentSummary:
        """A payment that already has an outcome answers a repeated authorization with it."""
        if payment.status == "DECLINED":
            raise PaymentDeclined("the card was declined", decline_code=payment.decline_code or "card_declined")
        return payment.summary()

    # ------------------------------------------------------------------ capture
    def capture(self, request: CapturePayment, cancel_requested: Callable[[], bool] | None = None) -> PaymentSummary:
        """``cancel_requested``, when given, is asked before the provider is: True raises
        ``CheckoutCancelled`` (the saga voids instead). A capture already made is answered as made."""
        order_id, amount = request.order_id, request.amount
        payment = self.ledger.get(order_id)
        done = _already_captured(payment, order_id, amount.amount)
        if done is not None:
            return done
        if cancel_requested is not None and cancel_requested():
            raise CheckoutCancelled(f"the customer cancelled order {order_id} while its capture was retried")
        assert payment is not None and payment.authorization_ref is not None  # checked above
        capture = self.provider.capture(payment.authorization_ref, amount, idempotency_key(order_id, "capture"))
        outcome = self.ledger.mark_captured(order_id, capture.amount.amount, capture.reference)
        current = _existing(outcome.payment, order_id)
        if outcome.applied or current.capture_ref == capture.reference:
            return current.summary()
        done = _already_captured(current, order_id, amount.amount)
        if done is not None:
            return done
        raise PaymentStateConflict(
            f"payment of order {order_id} changed during capture; the saga reconciles it with the provider"
        )

    # ------------------------------------------------------------------ reconcile
    def reconcile(self, order_id: str) -> Payment | None:
        """Bring the ledger in line with what the provider did for this order, and return it.

        An outcome is ambiguous when the provider applied an operation and the ledger write of
        its answer failed (or the step timed out in between): the ledger then lags behind the
        provider. Each operation is looked up by its idempotency key, never assumed, and the
        ledger is moved forward with the same conditional transitions the steps use, so running
        this twice, or beside a step, changes nothing more.
        """
        payment = self.ledger.get(order_id)
        if payment is not None and payment.status == "PENDING":
            found = self.provider.lookup(idempotency_key(order_id, "authorize"))
            if found is not None and found.operation == "authorize":
                if found.approved and found.reference is not None:
                    outcome = self.ledger.mark_authorized(order_id, found.amount.amount, found.reference)
                else:
                    outcome = self.ledger.mark_declined(order_id, found.decline_code or "card_declined")
                payment = outcome.payment
        if payment is not None and payment.status == "AUTHORIZED":
            captured = self.provider.lookup(idempotency_key(order_id, "capture"))
            if captured is not None and captured.approved and captured.reference is not None:
                payment = self.ledger.mark_captured(order_id, captured.amount.amount, captured.reference).payment
            else:
                voided = self.provider.lookup(idempotency_key(order_id, "void"))
                if voided is not None and voided.approved and voided.reference is not None:
                    payment = self.ledger.mark_voided(order_id, voided.reference).payment
        return payment

    def _release_fenced_authorization(self, payment: Payment) -> None:
        """A VOIDED payment with no authorization fenced off a late one: release that hold if the
        provider approved it (the step that got the approval may have died before voiding it)."""
        if payment.status != "VOIDED" or payment.authorization_ref is not None:
            return
        late = self.provider.lookup(idempotency_key(payment.order_id, "authorize"))
        if late is None or not late.approved or late.reference is None:
            return
        self.provider.void(late.reference, idempotency_key(payment.order_id, "void"))

    # ------------------------------------------------------------------ void
    def void(self, request: VoidPayment) -> PaymentSummary:
        """Compensation: void what the provider says is authorized; a captured payment is refused
        with ``PaymentAlreadyCaptured`` (the saga refunds it instead)."""
        order_id = request.order_id
        payment = self.reconcile(order_id)
        if payment is None or payment.status == "PENDING":
            # The provider has no authorization for this order: fence off a late one.
            outcome = self.ledger.void_unauthorized(order_id, self.provider.name)
            payment = _existing(outcome.payment, order_id)
            if outcome.applied:
                return payment.summary()
        if payment.status == "VOIDED":
            self._release_fenced_authorization(payment)
            return payment.summary()
        if payment.status == "DECLINED":
            return payment.summary()
        if payment.status in CAPTURED_STATUSES:
            raise PaymentAlreadyCaptured(f"the payment of order {order_id} is captured; refund it instead")
        assert payment.authorization_ref is not None  # AUTHORIZED always carries its reference
        voided = self.provider.void(payment.authorization_ref, idempotency_key(order_id, "void"))
        outcome = self.ledger.mark_voided(order_id, voided.reference)
        current = _existing(outcome.payment, order_id)
        if outcome.applied or current.status == "VOIDED":
            return current.summary()
        raise PaymentStateConflict(f"the payment of order {order_id} is {current.status}; cannot void")

    # ------------------------------------------------------------------ refund
    def refund(self, request: RefundPayment) -> PaymentSummary:
        """Refund what the provider captured: a ledger that shows no capture asks the provider first,
        as the void does (an item restored from a backup taken before the capture would otherwise
        refund nothing, and the saga would mark the order REFUNDED with the customer still charged)."""
        order_id, key = request.order_id, refund_key(request)
        for _ in range(_REFUND_ATTEMPTS):
            payment = self.ledger.get(order_id)
            if payment is not None and payment.status in ("PENDING", "AUTHORIZED"):
                payment = self.reconcile(order_id)
            if payment is None:
                raise PaymentStateConflict(f"order {order_id} has no payment to refund")
            if key in payment.refunds:
                return payment.summary()
            remaining = payment.refundable_amount
            amount = remaining if request.amount is None else request.amount.amount
            if amount == 0:
                return payment.summary()
            if amount > remaining:
                raise RefundExceedsCapture(f"refund of {amount} exceeds the {remaining} still refundable")
            assert payment.capture_ref is not None  # a captured payment always carries its reference
            refund = self.provider.refund(payment.capture_ref, Money(amount=amount, currency=payment.currency), key)
            outcome = self.ledger.add_refund(
                order_id,
                idempotency_key=key,
                refund_ref=refund.reference,
                amount=refund.amount.amount,
                expected_refunded=payment.refunded_amount,
                expected_captured=payment.captured_amount,
            )
            current = _existing(outcome.payment, order_id)
            if outcome.applied or key in current.refunds:
                return current.summary()
            if current.refunded_amount == payment.refunded_amount:
                raise RefundExceedsCapture(f"refund of {refund.amount.amount} exceeds the capture of order {order_id}")
        # Named as the ledger's busy answer is, so the refund step retries it with the same backoff.
        raise PaymentRecordsContention(f"concurrent refunds of order {order_id}; retry")


def _existing(payment: Payment | None, order_id: str) -> Payment:
    """The item a transition returned; a failed condition on an absent item means it vanished."""
    if payment is None:
        raise PaymentStateConflict(f"order {order_id} has no payment")
    return payment


def _already_captured(payment: Payment | None, order_id: str, amount: int) -> PaymentSummary | None:
    """The summary if this capture already happened; raises if it cannot happen; None to go on."""
    if payment is None:
        raise PaymentStateConflict(f"order {order_id} has no authorized payment")
    if payment.status in CAPTURED_STATUSES:
        if payment.captured_amount == amount:
            return payment.summary()
        raise PaymentStateConflict(f"order {order_id} was already captured for {payment.captured_amount}")
    if payment.status != "AUTHORIZED":
        raise PaymentStateConflict(f"the payment of order {order_id} is {payment.status}; cannot capture")
    if amount > payment.authorized_amount:
        raise CaptureExceedsAuthorization(f"capture of {amount} exceeds the authorized {payment.authorized_amount}")
    return None


# ---------------------------------------------------------------------------- wiring
def payment_breaker() -> CircuitBreaker:
    settings = payment_settings()
    return CircuitBreaker(
        f"payment-provider:{settings.provider}",
        DynamoBreakerStore(),
        BreakerPolicy(
            failure_rate_percent=settings.breaker_failure_rate_percent,
            minimum_calls=settings.breaker_minimum_calls,
            minimum_failing_sources=settings.breaker_minimum_failing_sources,
            window_seconds=settings.breaker_window_seconds,
            cooldown_seconds=settings.breaker_cooldown_seconds,
        ),
    )


def simulator() -> SimulatorProvider:
    return SimulatorProvider(DynamoSimulatorStore())


# Every provider ``PaymentSettings.provider`` may name (its Literal admits exactly these keys, so a
# runtime switch to an unknown provider is rejected and logged by shop.config, never used).
PROVIDERS: dict[str, Callable[[], PaymentProvider]] = {"simulator": simulator}


def provider() -> PaymentProvider:
    """The configured provider (``PaymentSettings.provider``, switchable at run time), unguarded."""
    return PROVIDERS[payment_settings().provider]()


def payment_service(source: str | None = None) -> PaymentService:
    """``source`` is who the breaker counts the provider calls against (the customer);
    None counts each call against its order."""
    # Cheap to build and reads settings lazily, so nothing is cached across invocations here.
    return PaymentService(
        ledger=PaymentsRepository(), provider=GuardedProvider(provider(), payment_breaker(), source=source)
    )


def authorize_payment(request: AuthorizePayment) -> PaymentSummary:
    return payment_service(source=request.customer_id).authorize(request)


def capture_payment(request: CapturePayment) -> PaymentSummary:
    """A retried capture (an open breaker retries it for up to most of an hour) first checks that the
    customer has not cancelled meanwhile: a cancel is then honoured with a void, not a charge and a
    refund. The first attempt skips the read; a cancel that lands in its few milliseconds is refunded."""
    if request.attempt == 0:
        return payment_service().capture(request)
    return payment_service().capture(request, cancel_requested=lambda: _cancel_requested(request.order_id))


def _cancel_requested(order_id: str) -> bool:
    order = orders_repository.get(order_id)
    return order is not None and order.cancel_requested


def void_payment(request: VoidPayment) -> PaymentSummary:
    if request.claim is not None:
        orders_repository.ensure_claimed_compensating(request.order_id, request.claim, request.failure)
    return payment_service().void(request)


def reconcile_payment(request: ReconcilePayment) -> ReconciledPayment:
    """The order's payment once the ledger agrees with the provider (status None: never attempted)."""
    payment = payment_service().reconcile(request.order_id)
    return ReconciledPayment(
        order_id=request.order_id,
        status=payment.status if payment else None,
        captured=payment is not None and payment.status in CAPTURED_STATUSES,
    )


def refund_payment(request: RefundPayment) -> PaymentSummary:
    return payment_service().refund(request)


def payment_summary(order_id: str) -> PaymentSummary | None:
    """The order's payment as the Order's ``payment`` field shows it; None before any attempt."""
    payment = PaymentsRepository().get(order_id)
    return payment.summary() if payment else None


def circuit_breaker_status() -> CircuitBreakerStatus:
    """The payment provider's breaker as operators should see it."""
    breaker = payment_breaker()
    state = breaker.state()
    policy = breaker.policy
    stats = breaker.stats(state)
    retry_after = None
    if state.state == "OPEN" and state.opened_at is not None:
        retry_after = max(0.0, round(state.opened_at + policy.cooldown_seconds - time.time(), 3))
    return CircuitBreakerStatus(
        name=breaker.name,
        state=state.state,
        calls_in_window=stats.calls,
        failures_in_window=stats.failures,
        failure_rate_percent=round(stats.failure_rate_percent, 1),
        failing_sources=stats.failing_sources,
        failure_rate_threshold_percent=policy.failure_rate_percent,
        minimum_calls=policy.minimum_calls,
        minimum_failing_sources=policy.minimum_failing_sources,
        window_seconds=policy.window_seconds,
        cooldown_seconds=policy.cooldown_seconds,
        opened_at=_iso(state.opened_at),
        retry_after_seconds=retry_after,
        probe_in_flight=state.state == "HALF_OPEN",
        updated_at=state.updated_at,
    )


def _iso(epoch_seconds: float | None) -> str | None:
    if epoch_seconds is None:
        return None
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
