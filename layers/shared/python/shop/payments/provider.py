"""The payment provider interface the domain talks to, and what a provider answers.

Every call carries an idempotency key derived from the order and the operation (e.g.
``"{order_id}:capture"``): a provider answers a repeated key with the first call's result, so a
retried step never charges twice. Providers raise ``PaymentDeclined`` for a business refusal,
``PaymentProviderError`` for a transient failure, ``CaptureExceedsAuthorization`` /
``RefundExceedsCapture`` for amounts beyond what their own ledger allows, and
``PaymentStateConflict`` for a call the reference's state forbids (e.g. capturing a voided
authorization).
"""

from __future__ import annotations

from typing import Protocol

from shop.models.base import Record
from shop.models.money import Money
from shop.payments.circuit_breaker import CircuitBreaker


class ProviderAuthorization(Record):
    reference: str
    amount: Money


class ProviderCapture(Record):
    reference: str
    authorization_ref: str
    amount: Money


class ProviderVoid(Record):
    reference: str
    authorization_ref: str


class ProviderRefund(Record):
    reference: str
    capture_ref: str
    amount: Money


class PaymentProvider(Protocol):
    @property
    def name(self) -> str: ...

    def authorize(self, amount: Money, token: str, idempotency_key: str) -> ProviderAuthorization: ...

    def capture(self, authorization_ref: str, amount: Money, idempotency_key: str) -> ProviderCapture: ...

    def void(self, authorization_ref: str, idempotency_key: str) -> ProviderVoid: ...

    def refund(self, capture_ref: str, amount: Money, idempotency_key: str) -> ProviderRefund:
        """Refund part or all of a capture; several refunds may follow one capture."""
        ...


class GuardedProvider:
    """A provider behind a circuit breaker: an open breaker fails fast with ``CircuitOpen``."""

    def __init__(self, provider: PaymentProvider, breaker: CircuitBreaker) -> None:
        self._provider = provider
        self.breaker = breaker

    @property
    def name(self) -> str:
        return self._provider.name

    def authorize(self, amount: Money, token: str, idempotency_key: str) -> ProviderAuthorization:
        return self.breaker.call(lambda: self._provider.authorize(amount, token, idempotency_key))

    def capture(self, authorization_ref: str, amount: Money, idempotency_key: str) -> ProviderCapture:
        return self.breaker.call(lambda: self._provider.capture(authorization_ref, amount, idempotency_key))

    def void(self, authorization_ref: str, idempotency_key: str) -> ProviderVoid:
        return self.breaker.call(lambda: self._provider.void(authorization_ref, idempotency_key))

    def refund(self, capture_ref: str, amount: Money, idempotency_key: str) -> ProviderRefund:
        return self.breaker.call(lambda: self._provider.refund(capture_ref, amount, idempotency_key))
