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

from typing import Literal, Protocol

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


ProviderOperationKind = Literal["authorize", "capture", "void", "refund"]


class ProviderOperation(Record):
    """What the provider did under one idempotency key: the answer to ``lookup``.

    ``approved`` is False for a decline (``decline_code`` says why). ``authorization_ref`` is the
    authorization the operation acted on (its own reference for an authorization).
    """

    idempotency_key: str
    operation: ProviderOperationKind
    approved: bool
    reference: str | None
    authorization_ref: str | None
    amount: Money
    decline_code: str | None = None


class PaymentProvider(Protocol):
    @property
    def name(self) -> str: ...

    def authorize(self, amount: Money, token: str, idempotency_key: str) -> ProviderAuthorization: ...

    def capture(self, authorization_ref: str, amount: Money, idempotency_key: str) -> ProviderCapture: ...

    def void(self, authorization_ref: str, idempotency_key: str) -> ProviderVoid: ...

    def refund(self, capture_ref: str, amount: Money, idempotency_key: str) -> ProviderRefund:
        """Refund part or all of a capture; several refunds may follow one capture."""
        ...

    def lookup(self, idempotency_key: str) -> ProviderOperation | None:
        """What the provider did under ``idempotency_key``; None if it applied nothing with it.

        This is how an ambiguous outcome (the call timed out, or our record of its answer was
        lost) is resolved: by asking, never by assuming. Transient failures raise
        ``PaymentProviderError`` like any other call.
        """
        ...


class GuardedProvider:
    """A provider behind a circuit breaker: an open breaker fails fast with ``CircuitOpen``.

    The breaker counts one outcome per idempotency key (retries overwrite it) and needs failures
    from several sources to open: ``source`` (e.g. the customer) is who every call is counted
    against; without one, each call counts against its order (the key's ``{order_id}`` part).
    """

    def __init__(self, provider: PaymentProvider, breaker: CircuitBreaker, source: str | None = None) -> None:
        self._provider = provider
        self.breaker = breaker
        self._source = source

    @property
    def name(self) -> str:
        return self._provider.name

    def _source_of(self, idempotency_key: str) -> str:
        return self._source or idempotency_key.split(":")[0]

    def authorize(self, amount: Money, token: str, idempotency_key: str) -> ProviderAuthorization:
        return self.breaker.call(
            lambda: self._provider.authorize(amount, token, idempotency_key),
            key=idempotency_key,
            source=self._source_of(idempotency_key),
        )

    def capture(self, authorization_ref: str, amount: Money, idempotency_key: str) -> ProviderCapture:
        return self.breaker.call(
            lambda: self._provider.capture(authorization_ref, amount, idempotency_key),
            key=idempotency_key,
            source=self._source_of(idempotency_key),
        )

    def void(self, authorization_ref: str, idempotency_key: str) -> ProviderVoid:
        return self.breaker.call(
            lambda: self._provider.void(authorization_ref, idempotency_key),
            key=idempotency_key,
            source=self._source_of(idempotency_key),
        )

    def refund(self, capture_ref: str, amount: Money, idempotency_key: str) -> ProviderRefund:
        return self.breaker.call(
            lambda: self._provider.refund(capture_ref, amount, idempotency_key),
            key=idempotency_key,
            source=self._source_of(idempotency_key),
        )

    def lookup(self, idempotency_key: str) -> ProviderOperation | None:
        # Not behind the breaker: finding out what happened is how obligations finish, and a
        # lookup creates no new business for a struggling provider.
        return self._provider.lookup(idempotency_key)
