"""The payments ledger and the simulator's ledger on DynamoDB (moto): invariants, tokens, replays."""

from __future__ import annotations

import json

import pytest

from chalicelib.http import problem_response
from shop import aws
from shop.config import table_settings
from shop.domain import payments as domain
from shop.errors import (
    CaptureExceedsAuthorization,
    PaymentAlreadyCaptured,
    PaymentDeclined,
    PaymentProviderError,
    PaymentRecordsContention,
    PaymentStateConflict,
    RefundExceedsCapture,
)
from shop.models.money import Money
from shop.models.payments import AuthorizePayment, CapturePayment, Payment, RefundPayment, VoidPayment
from shop.payments.provider import (
    ProviderAuthorization,
    ProviderCapture,
    ProviderOperation,
    ProviderRefund,
    ProviderVoid,
)
from shop.payments.simulator import SimulatorLedger
from shop.repositories.operations import DynamoSimulatorStore
from shop.repositories.payments import PaymentsRepository, Transition
from tests.conftest import LocalAws, random_suffix
from tests.service.faults import SdkFault, inject


def usd(amount: int) -> Money:
    return Money(amount=amount)


def new_order() -> str:
    return f"ord-{random_suffix()}"


def stored(order_id: str) -> Payment:
    payment = PaymentsRepository().get(order_id)
    assert payment is not None
    return payment


def simulator_ledger(payment: Payment) -> SimulatorLedger:
    assert payment.authorization_ref is not None
    ledger = domain.simulator().ledger(payment.authorization_ref)
    assert ledger is not None
    return ledger


def authorized(order_id: str, amount: int = 1000, token: str = "tok_visa") -> Payment:
    domain.authorize_payment(AuthorizePayment(order_id=order_id, amount=usd(amount), payment_token=token))
    return stored(order_id)


def captured(order_id: str, amount: int = 1000) -> Payment:
    authorized(order_id, amount)
    domain.capture_payment(CapturePayment(order_id=order_id, amount=usd(amount)))
    return stored(order_id)


# ---------------------------------------------------------------------------- repository invariants
def test_dynamodb_refuses_a_capture_beyond_the_authorization(local_aws: LocalAws) -> None:
    repository, order_id = PaymentsRepository(), new_order()
    repository.begin_authorization(order_id, "USD", "simulator")
    repository.mark_authorized(order_id, 1000, "sim_auth_x")
    before = stored(order_id)

    outcome = repository.mark_captured(order_id, 1001, "sim_cap_x")

    assert not outcome.applied
    assert outcome.payment == before
    assert stored(order_id) == before


def test_dynamodb_refuses_a_refund_beyond_the_capture_whatever_the_caller_claims(local_aws: LocalAws) -> None:
    repository, order_id = PaymentsRepository(), new_order()
    repository.begin_authorization(order_id, "USD", "simulator")
    repository.mark_authorized(order_id, 1000, "sim_auth_x")
    repository.mark_captured(order_id, 800, "sim_cap_x")
    before = stored(order_id)

    def refund(amount: int, expected_refunded: int, expected_captured: int, key: str = "k1") -> bool:
        return repository.add_refund(
            order_id,
            idempotency_key=key,
            refund_ref="r1",
            amount=amount,
            expected_refunded=expected_refunded,
            expected_captured=expected_captured,
        ).applied

    assert not refund(801, 0, 800)
    assert not refund(801, 0, 5000)  # a caller that misstates the capture is still refused
    assert not refund(100, 50, 800)  # a stale view of what was refunded
    assert stored(order_id) == before

    assert refund(500, 0, 800)
    assert not refund(500, 0, 800, key="k2")  # stale now: 500 is already refunded
    assert not refund(301, 500, 800, key="k2")
    assert refund(300, 500, 800, key="k2")
    payment = stored(order_id)
    assert (payment.status, payment.refunded_amount, set(payment.refunds)) == ("REFUNDED", 800, {"k1", "k2"})


def test_every_transition_applies_once(local_aws: LocalAws) -> None:
    repository, order_id = PaymentsRepository(), new_order()
    assert repository.begin_authorization(order_id, "USD", "simulator").applied
    assert repository.mark_authorized(order_id, 1000, "sim_auth_x").applied
    assert not repository.mark_authorized(order_id, 1000, "sim_auth_x").applied
    assert not repository.begin_authorization(order_id, "USD", "simulator").applied
    assert repository.mark_captured(order_id, 1000, "sim_cap_x").applied
    assert not repository.mark_captured(order_id, 1000, "sim_cap_x").applied
    assert not repository.mark_voided(order_id, "sim_void_x").applied
    assert repository.add_refund(
        order_id, idempotency_key="k", refund_ref="r", amount=10, expected_refunded=0, expected_captured=1000
    ).applied
    before = stored(order_id)
    assert not repository.add_refund(
        order_id, idempotency_key="k", refund_ref="r", amount=10, expected_refunded=10, expected_captured=1000
    ).applied
    assert stored(order_id) == before
    assert (before.status, before.attempts, before.refunded_amount) == ("PARTIALLY_REFUNDED", 1, 10)


def test_a_payment_with_an_outcome_is_never_closed_as_if_nothing_were_authorized(local_aws: LocalAws) -> None:
    """``void_unauthorized`` and ``mark_declined`` hold only while the payment is PENDING (or absent): a
    void that read PENDING and lost the race to the authorization must find AUTHORIZED and void the hold at
    the provider, not mark the payment VOIDED over it. A mutation run let both close any payment, and every
    test passed."""
    repository, order_id = PaymentsRepository(), new_order()
    repository.begin_authorization(order_id, "USD", "simulator")
    repository.mark_authorized(order_id, 1000, "sim_auth_x")
    held = stored(order_id)

    assert repository.void_unauthorized(order_id, "simulator") == Transition(applied=False, payment=held)
    assert repository.mark_declined(order_id, "card_declined") == Transition(applied=False, payment=held)
    repository.mark_captured(order_id, 1000, "sim_cap_x")
    charged = stored(order_id)
    assert repository.void_unauthorized(order_id, "simulator") == Transition(applied=False, payment=charged)
    assert stored(order_id) == charged


# ---------------------------------------------------------------------------- tokens
def test_visa_authorizes_and_a_repeat_changes_nothing(local_aws: LocalAws) -> None:
    order_id = new_order()
    request = AuthorizePayment(order_id=order_id, amount=usd(2599), payment_token="tok_visa")

    summary = domain.authorize_payment(request)
    assert domain.authorize_payment(request) == summary

    assert summary.model_dump(mode="json") == {
        "order_id": order_id,
        "status": "AUTHORIZED",
        "authorized": {"amount": 2599, "currency": "USD"},
        "captured": {"amount": 0, "currency": "USD"},
        "refunded": {"amount": 0, "currency": "USD"},
    }
    payment = stored(order_id)
    assert payment.attempts == 1
    assert simulator_ledger(payment).authorization.amount == 2599


def test_declined_is_recorded_and_repeats_without_asking_the_provider(local_aws: LocalAws) -> None:
    order_id = new_order()
    request = AuthorizePayment(order_id=order_id, amount=usd(100), payment_token="tok_chargeDeclined")
    for _ in range(2):
        with pytest.raises(PaymentDeclined):
            domain.authorize_payment(request)
    payment = stored(order_id)
    assert (payment.status, payment.decline_code, payment.attempts) == ("DECLINED", "card_declined", 1)
    assert payment.authorization_ref is None


def test_processing_error_leaves_the_payment_pending_and_counts_attempts(local_aws: LocalAws) -> None:
    order_id = new_order()
    request = AuthorizePayment(order_id=order_id, amount=usd(100), payment_token="tok_processingError")
    for _ in range(3):
        with pytest.raises(PaymentProviderError):
            domain.authorize_payment(request)
    payment = stored(order_id)
    assert (payment.status, payment.attempts, payment.authorized_amount) == ("PENDING", 3, 0)
    assert DynamoSimulatorStore().result(f"{order_id}:authorize") is None


def test_flaky_fails_once_then_authorizes(local_aws: LocalAws) -> None:
    order_id = new_order()
    request = AuthorizePayment(order_id=order_id, amount=usd(100), payment_token="tok_flaky")
    with pytest.raises(PaymentProviderError):
        domain.authorize_payment(request)
    assert domain.authorize_payment(request).status == "AUTHORIZED"
    assert stored(order_id).attempts == 2


def test_unknown_token_is_declined(local_aws: LocalAws) -> None:
    order_id = new_order()
    with pytest.raises(PaymentDeclined):
        domain.authorize_payment(AuthorizePayment(order_id=order_id, amount=usd(100), payment_token="tok_unknown"))
    assert stored(order_id).decline_code == "unknown_token"


# ---------------------------------------------------------------------------- capture, refund, void
def test_capture_then_partial_and_full_refunds(local_aws: LocalAws) -> None:
    order_id = new_order()
    authorized(order_id, 1000)
    capture = CapturePayment(order_id=order_id, amount=usd(900))
    assert domain.capture_payment(capture).status == "CAPTURED"
    assert domain.capture_payment(capture).captured == usd(900)

    partial = RefundPayment(order_id=order_id, amount=usd(250), execution_name="refund-1")
    assert domain.refund_payment(partial).status == "PARTIALLY_REFUNDED"
    assert domain.refund_payment(partial).refunded == usd(250)  # the same refund again: no-op

    full = RefundPayment(order_id=order_id, amount=None)
    summary = domain.refund_payment(full)
    assert (summary.status, summary.refunded, summary.captured) == ("REFUNDED", usd(900), usd(900))
    assert domain.refund_payment(full) == summary

    ledger = simulator_ledger(stored(order_id))
    assert [(entry.kind, entry.amount) for entry in ledger.entries] == [
        ("capture", 900),
        ("refund", 250),
        ("refund", 650),
    ]
    assert (ledger.authorization.refunded_amount, ledger.authorization.refundable_amount) == (900, 0)


def test_a_refund_that_keeps_losing_to_concurrent_refunds_is_retried_as_a_busy_ledger(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = new_order()
    captured(order_id, 1000)

    def another_refund_moved_it_first(self: PaymentsRepository, order_id: str, **_: object) -> Transition:
        current = self.get(order_id)
        assert current is not None
        return Transition(applied=False, payment=current.model_copy(update={"refunded_amount": 1}))

    monkeypatch.setattr(PaymentsRepository, "add_refund", another_refund_moved_it_first)
    # The refund step's first Retry names PaymentRecordsContention (5 attempts with backoff); a plain
    # TransientError met only its last-resort rule (2 attempts), then NEEDS_ATTENTION.
    with pytest.raises(PaymentRecordsContention):
        domain.refund_payment(RefundPayment(order_id=order_id, amount=None))


def test_capture_beyond_the_authorization_changes_nothing(local_aws: LocalAws) -> None:
    order_id = new_order()
    before = authorized(order_id, 1000)
    with pytest.raises(CaptureExceedsAuthorization):
        domain.capture_payment(CapturePayment(order_id=order_id, amount=usd(1001)))
    assert stored(order_id) == before
    assert simulator_ledger(before).entries == []


def test_a_second_capture_for_another_amount_is_refused(local_aws: LocalAws) -> None:
    order_id = new_order()
    before = captured(order_id, 1000)
    with pytest.raises(PaymentStateConflict):
        domain.capture_payment(CapturePayment(order_id=order_id, amount=usd(10)))
    assert stored(order_id) == before


def test_capture_without_an_authorization_is_refused(local_aws: LocalAws) -> None:
    with pytest.raises(PaymentStateConflict):
        domain.capture_payment(CapturePayment(order_id=new_order(), amount=usd(10)))
    order_id = new_order()
    with pytest.raises(PaymentDeclined):
        authorized(order_id, token="tok_chargeDeclined")
    with pytest.raises(PaymentStateConflict):
        domain.capture_payment(CapturePayment(order_id=order_id, amount=usd(10)))


def test_refund_beyond_what_remains_changes_nothing(local_aws: LocalAws) -> None:
    order_id = new_order()
    captured(order_id, 1000)
    domain.refund_payment(RefundPayment(order_id=order_id, amount=usd(600), execution_name="r1"))
    before = stored(order_id)
    with pytest.raises(RefundExceedsCapture):
        domain.refund_payment(RefundPayment(order_id=order_id, amount=usd(401), execution_name="r2"))
    assert stored(order_id) == before
    assert len(simulator_ledger(before).of_kind("refund")) == 1


def test_refund_of_an_uncaptured_payment(local_aws: LocalAws) -> None:
    order_id = new_order()
    before = authorized(order_id, 1000)
    assert domain.refund_payment(RefundPayment(order_id=order_id)).status == "AUTHORIZED"  # nothing to refund
    with pytest.raises(RefundExceedsCapture):
        domain.refund_payment(RefundPayment(order_id=order_id, amount=usd(1), execution_name="r1"))
    with pytest.raises(PaymentStateConflict):
        domain.refund_payment(RefundPayment(order_id=new_order()))
    assert stored(order_id) == before


def test_a_refund_asks_the_provider_when_the_ledger_shows_no_capture(local_aws: LocalAws) -> None:
    """Our item restored from a backup taken between authorization and capture: the refund saw
    nothing to refund and answered success, and the saga marked the order REFUNDED with the customer
    still charged (a helper's probe). The refund now asks the provider first, as the void does."""
    order_id = new_order()
    authorized(order_id, 1000)
    table, key = table_settings().payments_table, {"order_id": {"S": order_id}}
    backup = aws.dynamodb().get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
    captured(order_id, 1000)
    aws.dynamodb().put_item(TableName=table, Item=backup)
    assert stored(order_id).status == "AUTHORIZED"

    summary = domain.refund_payment(RefundPayment(order_id=order_id))

    after = stored(order_id)
    assert (summary.status, after.captured_amount, after.refunded_amount) == ("REFUNDED", 1000, 1000)
    assert simulator_ledger(after).authorization.refunded_amount == 1000


def test_a_partial_refund_must_name_its_run(local_aws: LocalAws) -> None:
    """Its idempotency key is its run's name and amount: two unnamed refunds of one amount shared a key,
    and the second was answered as done without being made."""
    with pytest.raises(ValueError, match="execution_name"):
        RefundPayment(order_id=new_order(), amount=usd(300))


def test_void_releases_the_authorization_once(local_aws: LocalAws) -> None:
    order_id = new_order()
    authorized(order_id, 1000)
    summary = domain.void_payment(VoidPayment(order_id=order_id))
    assert domain.void_payment(VoidPayment(order_id=order_id)) == summary
    assert (summary.status, summary.authorized, summary.captured) == ("VOIDED", usd(1000), usd(0))

    ledger = simulator_ledger(stored(order_id))
    assert ledger.authorization.status == "VOIDED"
    assert len(ledger.of_kind("void")) == 1
    with pytest.raises(PaymentStateConflict):
        domain.capture_payment(CapturePayment(order_id=order_id, amount=usd(1000)))


def test_void_with_nothing_authorized_is_a_no_op_success(local_aws: LocalAws) -> None:
    summary = domain.void_payment(VoidPayment(order_id=(order_id := new_order())))
    assert (summary.status, summary.authorized) == ("VOIDED", usd(0))

    declined = new_order()
    with pytest.raises(PaymentDeclined):
        authorized(declined, token="tok_chargeDeclined")
    assert domain.void_payment(VoidPayment(order_id=declined)).status == "DECLINED"

    # A late (re)delivered authorization of a voided order no longer reaches the provider.
    late = domain.authorize_payment(AuthorizePayment(order_id=order_id, amount=usd(5), payment_token="tok_visa"))
    assert late.status == "VOIDED"
    assert DynamoSimulatorStore().result(f"{order_id}:authorize") is None


def test_void_of_a_captured_payment_is_refused(local_aws: LocalAws) -> None:
    order_id = new_order()
    before = captured(order_id)
    with pytest.raises(PaymentAlreadyCaptured):
        domain.void_payment(VoidPayment(order_id=order_id))
    assert stored(order_id) == before


class VoidedMeanwhile:
    """The simulator, except the saga voids the order while its authorization is in flight."""

    def __init__(self) -> None:
        self.inner = domain.simulator()
        self.authorizations: list[ProviderAuthorization] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def authorize(self, amount: Money, token: str, idempotency_key: str) -> ProviderAuthorization:
        authorization = self.inner.authorize(amount, token, idempotency_key)
        domain.void_payment(VoidPayment(order_id=idempotency_key.split(":")[0]))
        self.authorizations.append(authorization)
        return authorization

    def capture(self, authorization_ref: str, amount: Money, idempotency_key: str) -> ProviderCapture:
        return self.inner.capture(authorization_ref, amount, idempotency_key)

    def void(self, authorization_ref: str, idempotency_key: str) -> ProviderVoid:
        return self.inner.void(authorization_ref, idempotency_key)

    def refund(self, capture_ref: str, amount: Money, idempotency_key: str) -> ProviderRefund:
        return self.inner.refund(capture_ref, amount, idempotency_key)

    def lookup(self, idempotency_key: str) -> ProviderOperation | None:
        return self.inner.lookup(idempotency_key)


def test_an_authorization_that_loses_to_a_void_releases_its_hold(local_aws: LocalAws) -> None:
    order_id, provider = new_order(), VoidedMeanwhile()
    service = domain.PaymentService(ledger=PaymentsRepository(), provider=provider)

    summary = service.authorize(AuthorizePayment(order_id=order_id, amount=usd(700), payment_token="tok_visa"))

    # The void asked the provider, found the authorization and released it; the ledger says so.
    assert (summary.status, summary.authorized) == ("VOIDED", usd(700))
    (authorization,) = provider.authorizations
    ledger = provider.inner.ledger(authorization.reference)
    assert ledger is not None
    assert ledger.authorization.status == "VOIDED"


# ---------------------------------------------------------------------------- the simulator's own ledger
def test_simulator_ledger_enforces_its_invariants(local_aws: LocalAws) -> None:
    simulator = domain.simulator()
    authorization = simulator.authorize(usd(1000), "tok_visa", "s1:authorize")
    with pytest.raises(CaptureExceedsAuthorization):
        simulator.capture(authorization.reference, usd(1001), "s1:capture-too-much")
    capture = simulator.capture(authorization.reference, usd(1000), "s1:capture")
    with pytest.raises(PaymentStateConflict):
        simulator.capture(authorization.reference, usd(1), "s1:capture-again")
    with pytest.raises(PaymentStateConflict):
        simulator.void(authorization.reference, "s1:void")
    simulator.refund(capture.reference, usd(700), "s1:refund-1")
    with pytest.raises(RefundExceedsCapture):
        simulator.refund(capture.reference, usd(301), "s1:refund-2")
    simulator.refund(capture.reference, usd(300), "s1:refund-2")
    with pytest.raises(PaymentStateConflict):
        simulator.capture("sim_auth_unknown", usd(1), "s1:capture-unknown")

    ledger = simulator.ledger(authorization.reference)
    assert ledger is not None
    assert [(entry.kind, entry.amount) for entry in ledger.entries] == [
        ("capture", 1000),
        ("refund", 700),
        ("refund", 300),
    ]
    # Refused calls stored no result, so their keys are still unused.
    assert DynamoSimulatorStore().result("s1:refund-2") is not None
    assert DynamoSimulatorStore().result("s1:capture-too-much") is None


def test_the_provider_answers_what_it_did_under_an_idempotency_key(local_aws: LocalAws) -> None:
    simulator, declined, approved = domain.simulator(), new_order(), new_order()
    assert simulator.lookup(f"{declined}:authorize") is None
    with pytest.raises(PaymentDeclined):
        simulator.authorize(usd(100), "tok_chargeDeclined", f"{declined}:authorize")
    authorization = simulator.authorize(usd(100), "tok_visa", f"{approved}:authorize")
    capture = simulator.capture(authorization.reference, usd(100), f"{approved}:capture")

    refused = simulator.lookup(f"{declined}:authorize")
    found = simulator.lookup(f"{approved}:capture")

    assert refused is not None
    assert (refused.operation, refused.approved, refused.decline_code, refused.reference) == (
        "authorize",
        False,
        "card_declined",
        None,
    )
    assert found is not None
    assert (found.operation, found.approved, found.reference, found.authorization_ref, found.amount) == (
        "capture",
        True,
        capture.reference,
        authorization.reference,
        usd(100),
    )
    assert simulator.lookup(f"{approved}:void") is None


def test_a_busy_ledger_is_told_as_our_ledger_busy_never_as_the_providers_failure(local_aws: LocalAws) -> None:
    # The ledger's throttled table raised PaymentProviderError: a step's history, its dead letter and the
    # API's 503 blamed the payment provider for a table of ours (a helper's review).
    order_id = new_order()
    authorized(order_id, 1000)
    ledger = local_aws.table("PaymentsTable")
    throttled = SdkFault("GetItem", "ProvisionedThroughputExceededException", when=lambda r: r["TableName"] == ledger)

    with inject(aws.dynamodb(), throttled), pytest.raises(PaymentRecordsContention) as raised:
        PaymentsRepository().get(order_id)

    assert not isinstance(raised.value, PaymentProviderError)
    problem = problem_response(raised.value)
    assert (problem.status_code, json.loads(problem.body)["type"]) == (
        503,
        "urn:shop:problem:payment-records-contention",
    )


def test_a_busy_breaker_table_is_ours_to_retry_never_the_providers_failure(local_aws: LocalAws) -> None:
    # The breaker's state, read on every admission, shares the simulator's store (the provider's books) and
    # its error: a throttled read named the provider (the diff's reviewer).
    operations_table = local_aws.table("OperationsTable")
    throttled = SdkFault("GetItem", "ThrottlingException", when=lambda r: r["TableName"] == operations_table)

    with inject(aws.dynamodb(), throttled), pytest.raises(PaymentRecordsContention) as raised:
        domain.payment_breaker().state()

    assert not isinstance(raised.value, PaymentProviderError)


def test_a_redelivered_partial_refund_of_more_than_what_remains_answers_the_refund_it_made(
    local_aws: LocalAws,
) -> None:
    # A refund of 600 of 900, delivered again: 300 remain, and without its key's check the second delivery
    # raised RefundExceedsCapture, where the step must answer the refund already made (a mutation run).
    order_id = new_order()
    authorized(order_id, 1000)
    domain.capture_payment(CapturePayment(order_id=order_id, amount=usd(900)))
    partial = RefundPayment(order_id=order_id, amount=usd(600), execution_name="refund-1")
    first = domain.refund_payment(partial)
    assert domain.refund_payment(partial) == first
    assert stored(order_id).refunded_amount == 600


def test_a_void_that_loses_its_ledger_write_to_another_void_answers_voided(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two deliveries of the void step at once: the one whose ledger write finds the payment VOIDED already
    # answers it, not a PaymentStateConflict (a mutation run dropped that branch and every test passed).
    order_id = new_order()
    authorized(order_id, 1000)
    real_mark_voided = PaymentsRepository.mark_voided
    raced: list[str] = []

    def another_void_first(self: PaymentsRepository, order_id: str, void_ref: str) -> Transition:
        if not raced:
            raced.append(order_id)
            domain.void_payment(VoidPayment(order_id=order_id))  # the other delivery wins the write
        return real_mark_voided(self, order_id, void_ref)

    monkeypatch.setattr(PaymentsRepository, "mark_voided", another_void_first)

    assert domain.void_payment(VoidPayment(order_id=order_id)).status == "VOIDED"
    assert raced == [order_id] and stored(order_id).status == "VOIDED"
