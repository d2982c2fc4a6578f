"""The built-in payment provider: deterministic test tokens and a real ledger.

Its state lives in a shared store (DynamoDB's OperationsTable in the stack) because many Lambda
instances act on the same authorizations. The store keeps, per authorization, a ledger whose
invariants it enforces atomically (capture <= authorization, once; refunds <= capture; no
capture after a void), and, per idempotency key, the first result, which a repeated key gets
back (declines included; transient failures are not results and are not stored).

An authorization's reference is derived from its idempotency key (``authorization_ref_for_key``),
so the store can write an authorization, and answer a repeat of it, in one conditional write.

Test tokens:
- ``tok_visa``: approved.
- ``tok_chargeDeclined``: declined (business error, retrying changes nothing).
- ``tok_processingError``: fails transiently on every attempt.
- ``tok_flaky``: the first authorization attempt for an idempotency key fails transiently; the
  retry with the same key is approved.
- anything else: declined.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal, Protocol

from shop.errors import PaymentDeclined, PaymentProviderError, PaymentStateConflict
from shop.models.base import Record, iso_now
from shop.models.money import Currency, Money
from shop.payments.provider import (
    ProviderAuthorization,
    ProviderCapture,
    ProviderOperation,
    ProviderRefund,
    ProviderVoid,
)

TOKEN_APPROVED = "tok_visa"
TOKEN_DECLINED = "tok_chargeDeclined"
TOKEN_PROCESSING_ERROR = "tok_processingError"
TOKEN_FLAKY = "tok_flaky"

_AUTH_PREFIX = "sim_auth_"
_CAPTURE_PREFIX = "sim_cap_"
_VOID_PREFIX = "sim_void_"
_REFUND_PREFIX = "sim_rfnd_"

SimulatedOperation = Literal["authorize", "capture", "void", "refund"]
LedgerStatus = Literal["AUTHORIZED", "CAPTURED", "VOIDED"]


class SimulatedResult(Record):
    """The first answer to an idempotency key."""

    idempotency_key: str
    operation: SimulatedOperation
    approved: bool
    # None for a decline (stored as an absent attribute, so it must default when read back).
    reference: str | None = None
    # The authorization the call acted on (its own reference for an approved authorize).
    authorization_ref: str | None = None
    amount: int
    currency: Currency = "USD"
    decline_code: str | None = None
    created_at: str


class LedgerAuthorization(Record):
    reference: str
    token: str
    amount: int
    currency: Currency = "USD"
    status: LedgerStatus
    captured_amount: int = 0
    refunded_amount: int = 0
    refundable_amount: int = 0
    created_at: str
    updated_at: str


class LedgerEntry(Record):
    kind: Literal["capture", "void", "refund"]
    reference: str
    amount: int
    idempotency_key: str
    created_at: str


class SimulatorLedger(Record):
    """Everything the simulator did to one authorization."""

    authorization: LedgerAuthorization
    entries: list[LedgerEntry]

    def of_kind(self, kind: str) -> list[LedgerEntry]:
        return [entry for entry in self.entries if entry.kind == kind]


class SimulatorStore(Protocol):
    """The simulator's shared state. Every ``record_*`` stores ``result`` under its idempotency key
    and moves the ledger as one change (a key is never answered without the ledger having moved,
    or the reverse), and returns the result stored under that key (``result`` itself, or the
    first one when the key was used before, with no change). A key used before for another
    operation may instead raise ``PaymentStateConflict``."""

    def result(self, idempotency_key: str) -> SimulatedResult | None: ...

    def first_attempt(self, idempotency_key: str) -> bool:
        """True exactly once per key: for the call that marks it first."""
        ...

    def record_decline(self, result: SimulatedResult) -> SimulatedResult: ...

    def record_authorization(self, result: SimulatedResult, token: str) -> SimulatedResult: ...

    def record_capture(self, result: SimulatedResult) -> SimulatedResult:
        """Raises CaptureExceedsAuthorization / PaymentStateConflict when the ledger forbids it."""
        ...

    def record_void(self, result: SimulatedResult) -> SimulatedResult:
        """Raises PaymentStateConflict unless the authorization is still uncaptured."""
        ...

    def record_refund(self, result: SimulatedResult) -> SimulatedResult:
        """Raises RefundExceedsCapture / PaymentStateConflict when the ledger forbids it."""
        ...

    def ledger(self, authorization_ref: str) -> SimulatorLedger | None: ...


def key_digest(idempotency_key: str) -> str:
    """A fixed-length name for an idempotency key (128 bits of its SHA-256)."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def authorization_ref_for_key(idempotency_key: str) -> str:
    # Deterministic, so a repeated key names the same authorization before anything is read.
    return _AUTH_PREFIX + key_digest(idempotency_key)


def digest_of(authorization_ref: str) -> str | None:
    """The key digest an authorization reference was derived from; None if it is not one of ours."""
    if not authorization_ref.startswith(_AUTH_PREFIX):
        return None
    return authorization_ref.removeprefix(_AUTH_PREFIX)


def capture_ref_for(authorization_ref: str) -> str:
    # One capture per authorization (as card networks do), so its reference names the
    # authorization and a refund finds the ledger without an index.
    return _CAPTURE_PREFIX + authorization_ref.removeprefix(_AUTH_PREFIX)


def authorization_ref_for(capture_ref: str) -> str:
    if not capture_ref.startswith(_CAPTURE_PREFIX):
        raise PaymentStateConflict(f"unknown capture {capture_ref!r}")
    return _AUTH_PREFIX + capture_ref.removeprefix(_CAPTURE_PREFIX)


class SimulatorProvider:
    """A ``PaymentProvider`` that moves no money and keeps an exact ledger."""

    def __init__(self, store: SimulatorStore) -> None:
        self._store = store

    @property
    def name(self) -> str:
        return "simulator"

    def ledger(self, authorization_ref: str) -> SimulatorLedger | None:
        return self._store.ledger(authorization_ref)

    # Each call writes first: the store answers a key used before with its first result, in the
    # same request, so no read is spent on the (usual) first call.
    def authorize(self, amount: Money, token: str, idempotency_key: str) -> ProviderAuthorization:
        if token == TOKEN_PROCESSING_ERROR:
            raise PaymentProviderError("simulated provider processing error")  # never a result
        if token == TOKEN_FLAKY and self._store.first_attempt(idempotency_key):
            raise PaymentProviderError("simulated transient failure on the first attempt")
        if token in (TOKEN_APPROVED, TOKEN_FLAKY):
            result = self._store.record_authorization(
                self._result(
                    idempotency_key, "authorize", amount, reference=authorization_ref_for_key(idempotency_key)
                ),
                token,
            )
        else:
            code = "card_declined" if token == TOKEN_DECLINED else "unknown_token"
            result = self._store.record_decline(
                self._result(idempotency_key, "authorize", amount, reference=None, decline_code=code)
            )
        result = self._expect(result, "authorize")
        return ProviderAuthorization(reference=str(result.reference), amount=self._money(result))

    def capture(self, authorization_ref: str, amount: Money, idempotency_key: str) -> ProviderCapture:
        result = self._store.record_capture(
            self._result(
                idempotency_key,
                "capture",
                amount,
                reference=capture_ref_for(authorization_ref),
                authorization_ref=authorization_ref,
            )
        )
        result = self._expect(result, "capture")
        return ProviderCapture(
            reference=str(result.reference),
            authorization_ref=str(result.authorization_ref),
            amount=self._money(result),
        )

    def void(self, authorization_ref: str, idempotency_key: str) -> ProviderVoid:
        result = self._store.record_void(
            self._result(
                idempotency_key,
                "void",
                Money.zero(),
                reference=_VOID_PREFIX + authorization_ref.removeprefix(_AUTH_PREFIX),
                authorization_ref=authorization_ref,
            )
        )
        result = self._expect(result, "void")
        return ProviderVoid(reference=str(result.reference), authorization_ref=str(result.authorization_ref))

    def refund(self, capture_ref: str, amount: Money, idempotency_key: str) -> ProviderRefund:
        result = self._store.record_refund(
            self._result(
                idempotency_key,
                "refund",
                amount,
                reference=_REFUND_PREFIX + secrets.token_hex(12),
                authorization_ref=authorization_ref_for(capture_ref),
            )
        )
        result = self._expect(result, "refund")
        return ProviderRefund(
            reference=str(result.reference),
            capture_ref=capture_ref_for(str(result.authorization_ref)),
            amount=self._money(result),
        )

    def lookup(self, idempotency_key: str) -> ProviderOperation | None:
        result = self._store.result(idempotency_key)
        if result is None:
            return None
        return ProviderOperation(
            idempotency_key=result.idempotency_key,
            operation=result.operation,
            approved=result.approved,
            reference=result.reference,
            authorization_ref=result.authorization_ref,
            amount=self._money(result),
            decline_code=result.decline_code,
        )

    @staticmethod
    def _result(
        idempotency_key: str,
        operation: SimulatedOperation,
        amount: Money,
        *,
        reference: str | None,
        authorization_ref: str | None = None,
        decline_code: str | None = None,
    ) -> SimulatedResult:
        return SimulatedResult(
            idempotency_key=idempotency_key,
            operation=operation,
            approved=decline_code is None,
            reference=reference,
            authorization_ref=authorization_ref if authorization_ref is not None else reference,
            amount=amount.amount,
            currency=amount.currency,
            decline_code=decline_code,
            created_at=iso_now(),
        )

    @staticmethod
    def _expect(result: SimulatedResult, operation: SimulatedOperation) -> SimulatedResult:
        """Replay a stored result: a decline is raised again, just as the first time."""
        if result.operation != operation:
            raise PaymentStateConflict(
                f"idempotency key {result.idempotency_key!r} was already used for a {result.operation}"
            )
        if not result.approved:
            raise PaymentDeclined("the card was declined", decline_code=result.decline_code or "card_declined")
        return result

    @staticmethod
    def _money(result: SimulatedResult) -> Money:
        return Money(amount=result.amount, currency=result.currency)
