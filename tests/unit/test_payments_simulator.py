"""The simulator's test tokens and idempotent replay, over an in-memory store.

The DynamoDB store and its ledger invariants are covered in tests/service/test_payments_ledger.py
(through the payment steps) and tests/fidelity/test_simulator_store.py (moto and DynamoDB Local).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shop.domain.payments import refund_key
from shop.errors import (
    CaptureExceedsAuthorization,
    FieldError,
    PaymentDeclined,
    PaymentProviderError,
    PaymentStateConflict,
    RefundExceedsCapture,
)
from shop.models.base import parse_event
from shop.models.money import Money
from shop.models.payments import AuthorizePayment, RefundPayment
from shop.payments.simulator import (
    LedgerAuthorization,
    LedgerEntry,
    SimulatedResult,
    SimulatorLedger,
    SimulatorProvider,
    authorization_ref_for_key,
    digest_of,
    key_digest,
)


class MemorySimulatorStore:
    """The store's contract in memory: results per key, one ledger per authorization."""

    def __init__(self) -> None:
        self.results: dict[str, SimulatedResult] = {}
        self.attempts: set[str] = set()
        self.authorizations: dict[str, LedgerAuthorization] = {}
        self.entries: dict[str, list[LedgerEntry]] = {}

    def result(self, idempotency_key: str) -> SimulatedResult | None:
        return self.results.get(idempotency_key)

    def first_attempt(self, idempotency_key: str) -> bool:
        first = idempotency_key not in self.attempts
        self.attempts.add(idempotency_key)
        return first

    def _store(self, result: SimulatedResult) -> SimulatedResult:
        return self.results.setdefault(result.idempotency_key, result)

    def record_decline(self, result: SimulatedResult) -> SimulatedResult:
        return self._store(result)

    def record_authorization(self, result: SimulatedResult, token: str) -> SimulatedResult:
        if result.idempotency_key in self.results:
            return self.results[result.idempotency_key]
        ref = str(result.reference)
        self.authorizations[ref] = LedgerAuthorization(
            reference=ref,
            token=token,
            amount=result.amount,
            status="AUTHORIZED",
            created_at=result.created_at,
            updated_at=result.created_at,
        )
        self.entries[ref] = []
        return self._store(result)

    def _move(self, result: SimulatedResult, kind: str, **changes: object) -> SimulatedResult:
        if result.idempotency_key in self.results:
            return self.results[result.idempotency_key]
        ref = str(result.authorization_ref)
        self.authorizations[ref] = self.authorizations[ref].model_copy(update=changes)
        self.entries[ref].append(
            LedgerEntry(
                kind=kind,
                reference=str(result.reference),
                amount=result.amount,
                idempotency_key=result.idempotency_key,
                created_at=result.created_at,
            )
        )
        return self._store(result)

    def _authorization(self, result: SimulatedResult) -> LedgerAuthorization:
        authorization = self.authorizations.get(str(result.authorization_ref))
        if authorization is None:
            raise PaymentStateConflict("unknown authorization")
        return authorization

    def record_capture(self, result: SimulatedResult) -> SimulatedResult:
        if result.idempotency_key in self.results:  # the key's first result, as the protocol says
            return self.results[result.idempotency_key]
        authorization = self._authorization(result)
        if authorization.status != "AUTHORIZED":
            raise PaymentStateConflict(authorization.status)
        if result.amount > authorization.amount:
            raise CaptureExceedsAuthorization("too much")
        return self._move(
            result, "capture", status="CAPTURED", captured_amount=result.amount, refundable_amount=result.amount
        )

    def record_void(self, result: SimulatedResult) -> SimulatedResult:
        if result.idempotency_key in self.results:  # the key's first result, as the protocol says
            return self.results[result.idempotency_key]
        if self._authorization(result).status != "AUTHORIZED":
            raise PaymentStateConflict("not voidable")
        return self._move(result, "void", status="VOIDED")

    def record_refund(self, result: SimulatedResult) -> SimulatedResult:
        if result.idempotency_key in self.results:  # the key's first result, as the protocol says
            return self.results[result.idempotency_key]
        authorization = self._authorization(result)
        if authorization.status != "CAPTURED":
            raise PaymentStateConflict(authorization.status)
        if result.amount > authorization.refundable_amount:
            raise RefundExceedsCapture("too much")
        return self._move(
            result,
            "refund",
            refundable_amount=authorization.refundable_amount - result.amount,
            refunded_amount=authorization.refunded_amount + result.amount,
        )

    def ledger(self, authorization_ref: str) -> SimulatorLedger | None:
        if authorization_ref not in self.authorizations:
            return None
        return SimulatorLedger(
            authorization=self.authorizations[authorization_ref], entries=self.entries[authorization_ref]
        )


@pytest.fixture
def store() -> MemorySimulatorStore:
    return MemorySimulatorStore()


@pytest.fixture
def simulator(store: MemorySimulatorStore) -> SimulatorProvider:
    return SimulatorProvider(store)


def usd(amount: int) -> Money:
    return Money(amount=amount)


def test_visa_is_approved_and_a_repeated_key_gets_the_first_result(
    simulator: SimulatorProvider, store: MemorySimulatorStore
) -> None:
    first = simulator.authorize(usd(1500), "tok_visa", "o1:authorize")
    again = simulator.authorize(usd(1500), "tok_visa", "o1:authorize")

    assert first == again
    assert first.amount == usd(1500)
    assert list(store.authorizations) == [first.reference]


def test_a_different_key_is_a_different_authorization(simulator: SimulatorProvider) -> None:
    first = simulator.authorize(usd(100), "tok_visa", "o1:authorize")
    second = simulator.authorize(usd(100), "tok_visa", "o2:authorize")
    assert first.reference != second.reference


def test_the_authorization_reference_is_derived_from_its_key(simulator: SimulatorProvider) -> None:
    reference = simulator.authorize(usd(100), "tok_visa", "o1:authorize").reference

    assert reference == authorization_ref_for_key("o1:authorize") != authorization_ref_for_key("o1:authorize ")
    assert digest_of(reference) == key_digest("o1:authorize")
    assert len(key_digest("o1:authorize")) == len(key_digest("x" * 500)) == 32
    assert digest_of("ch_elsewhere") is None


def test_charge_declined_is_declined_and_stays_declined(
    simulator: SimulatorProvider, store: MemorySimulatorStore
) -> None:
    for _ in range(2):
        with pytest.raises(PaymentDeclined) as raised:
            simulator.authorize(usd(100), "tok_chargeDeclined", "o1:authorize")
        assert raised.value.decline_code == "card_declined"
    assert store.authorizations == {}


def test_unknown_token_is_declined(simulator: SimulatorProvider) -> None:
    with pytest.raises(PaymentDeclined) as raised:
        simulator.authorize(usd(100), "tok_mystery", "o1:authorize")
    assert raised.value.decline_code == "unknown_token"


def test_processing_error_fails_transiently_every_time_and_stores_nothing(
    simulator: SimulatorProvider, store: MemorySimulatorStore
) -> None:
    for _ in range(5):
        with pytest.raises(PaymentProviderError):
            simulator.authorize(usd(100), "tok_processingError", "o1:authorize")
    assert store.results == {}
    assert store.authorizations == {}


def test_flaky_fails_the_first_attempt_per_key_then_approves(
    simulator: SimulatorProvider, store: MemorySimulatorStore
) -> None:
    with pytest.raises(PaymentProviderError):
        simulator.authorize(usd(100), "tok_flaky", "o1:authorize")
    approved = simulator.authorize(usd(100), "tok_flaky", "o1:authorize")
    assert simulator.authorize(usd(100), "tok_flaky", "o1:authorize") == approved

    with pytest.raises(PaymentProviderError):
        simulator.authorize(usd(100), "tok_flaky", "o2:authorize")
    assert list(store.authorizations) == [approved.reference]


def test_capture_replays_and_refunds_name_the_capture(simulator: SimulatorProvider) -> None:
    authorization = simulator.authorize(usd(1000), "tok_visa", "o1:authorize")
    capture = simulator.capture(authorization.reference, usd(800), "o1:capture")
    assert simulator.capture(authorization.reference, usd(800), "o1:capture") == capture
    assert capture.authorization_ref == authorization.reference

    refund = simulator.refund(capture.reference, usd(300), "o1:refund:a")
    assert refund.capture_ref == capture.reference
    assert simulator.refund(capture.reference, usd(300), "o1:refund:a") == refund

    ledger = simulator.ledger(authorization.reference)
    assert ledger is not None
    assert [entry.kind for entry in ledger.entries] == ["capture", "refund"]
    assert ledger.authorization.refundable_amount == 500


def test_a_key_reused_for_another_operation_is_a_conflict(simulator: SimulatorProvider) -> None:
    authorization = simulator.authorize(usd(1000), "tok_visa", "o1:authorize")
    with pytest.raises(PaymentStateConflict):
        simulator.capture(authorization.reference, usd(1000), "o1:authorize")


def test_a_malformed_capture_reference_is_a_conflict(simulator: SimulatorProvider) -> None:
    with pytest.raises(PaymentStateConflict):
        simulator.refund("ch_elsewhere", usd(1), "o1:refund:full")


def test_step_events_reject_bad_input_with_field_errors() -> None:
    with pytest.raises(FieldError) as raised:
        parse_event(AuthorizePayment, {"order_id": "o1", "amount": {"amount": "12"}, "payment_token": "tok_visa"})
    assert [error["field"] for error in raised.value.errors] == ["amount.amount"]

    with pytest.raises(FieldError):
        parse_event(AuthorizePayment, {"order_id": "o1", "amount": {"amount": 1}, "payment_token": "x", "extra": 1})
    with pytest.raises(FieldError):
        parse_event(RefundPayment, {"order_id": "", "amount": None})
    with pytest.raises(ValidationError):
        Money(amount=-1)


def test_step_events_accept_the_sagas_correlation_keys() -> None:
    event = parse_event(
        AuthorizePayment,
        {
            "order_id": "o1",
            "execution_name": "exec-1",
            "amount": {"amount": 5, "currency": "USD"},
            "payment_token": "t",
        },
    )
    assert event.execution_name == "exec-1"


def test_refund_keys_separate_full_partial_and_executions() -> None:
    full = RefundPayment(order_id="o1", amount=None)
    partial = RefundPayment(order_id="o1", amount=usd(5), execution_name="exec-1")
    other_execution = RefundPayment(order_id="o1", amount=usd(5), execution_name="exec-2")
    assert refund_key(full) == "o1:refund:full"
    assert len({refund_key(full), refund_key(partial), refund_key(other_execution)}) == 3
    assert refund_key(partial) == refund_key(RefundPayment(order_id="o1", amount=usd(5), execution_name="exec-1"))
