"""The payment simulator's store on moto and on DynamoDB Local: its writes (one per authorize, two
per capture, void or refund, never a transaction), the first result replayed from a refused
write, key reuse across operations, the window between a key's pointer and its ledger entry,
and the ledger's invariants under concurrent callers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shop import aws
from shop.errors import (
    CaptureExceedsAuthorization,
    PaymentDeclined,
    PaymentProviderError,
    PaymentStateConflict,
    RefundExceedsCapture,
)
from shop.models.money import Money
from shop.payments.provider import ProviderAuthorization, ProviderCapture
from shop.payments.simulator import SimulatorLedger, SimulatorProvider, authorization_ref_for_key, capture_ref_for
from shop.repositories import operations
from shop.repositories.operations import DynamoSimulatorStore
from tests.fidelity.conftest import Backend


def usd(amount: int) -> Money:
    return Money(amount=amount)


@pytest.fixture
def simulator(backend: Backend) -> SimulatorProvider:
    aws.dynamodb()  # built once, before any thread asks for it
    return SimulatorProvider(DynamoSimulatorStore())


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The DynamoDB operations the store sends, in order."""
    sent: list[str] = []
    real = operations._call

    def recording(operation: str, **request: Any) -> Any:
        sent.append(operation)
        return real(operation, **request)

    monkeypatch.setattr(operations, "_call", recording)
    return sent


def ledger_of(simulator: SimulatorProvider, reference: str) -> SimulatorLedger:
    ledger = simulator.ledger(reference)
    assert ledger is not None
    return ledger


def authorized_and_captured(simulator: SimulatorProvider, amount: int) -> tuple[ProviderAuthorization, ProviderCapture]:
    authorization = simulator.authorize(usd(amount), "tok_visa", "o1:authorize")
    return authorization, simulator.capture(authorization.reference, usd(amount), "o1:capture")


# ---------------------------------------------------------------------------- cost
def test_each_operation_is_single_item_writes_and_the_ledger_one_read(
    simulator: SimulatorProvider, requests: list[str]
) -> None:
    def sent_by(call: Callable[[], object]) -> list[str]:
        requests.clear()
        call()
        return list(requests)

    authorization = simulator.authorize(usd(1000), "tok_visa", "o1:authorize")
    assert requests == ["put_item"]
    capture = simulator.capture(authorization.reference, usd(800), "o1:capture")
    assert requests == ["put_item", "put_item", "update_item"]
    assert sent_by(lambda: simulator.refund(capture.reference, usd(100), "o1:refund:a")) == ["put_item", "update_item"]
    assert sent_by(lambda: simulator.ledger(authorization.reference)) == ["get_item"]
    assert sent_by(lambda: simulator.lookup("o1:authorize")) == ["get_item"]
    assert sent_by(lambda: simulator.lookup("o1:refund:a")) == ["get_item", "get_item"]
    other = simulator.authorize(usd(5), "tok_visa", "o2:authorize")
    assert sent_by(lambda: simulator.void(other.reference, "o2:void")) == ["put_item", "update_item"]
    requests.clear()
    with pytest.raises(PaymentDeclined):
        simulator.authorize(usd(5), "tok_chargeDeclined", "o3:authorize")
    assert requests == ["put_item"]


# ---------------------------------------------------------------------------- replays
def test_a_repeated_authorize_gets_the_first_result_from_the_refused_write(
    simulator: SimulatorProvider, requests: list[str]
) -> None:
    first = simulator.authorize(usd(1000), "tok_visa", "o1:authorize")
    again = simulator.authorize(usd(2), "tok_visa", "o1:authorize")  # the first answer, whatever is asked
    assert (again, first.reference) == (first, authorization_ref_for_key("o1:authorize"))
    assert requests == ["put_item", "put_item"]

    for _ in range(2):
        with pytest.raises(PaymentDeclined) as raised:
            simulator.authorize(usd(100), "tok_chargeDeclined", "o2:authorize")
        assert raised.value.decline_code == "card_declined"
    # The same key with an approving card still gets the decline: a decline is a result.
    with pytest.raises(PaymentDeclined):
        simulator.authorize(usd(100), "tok_visa", "o2:authorize")
    assert simulator.ledger(authorization_ref_for_key("o2:authorize")) is None
    found = simulator.lookup("o2:authorize")
    assert found is not None and (found.approved, found.decline_code, found.reference) == (False, "card_declined", None)


def test_capture_void_and_refund_replay_their_first_result(simulator: SimulatorProvider) -> None:
    authorization, capture = authorized_and_captured(simulator, 1000)
    assert simulator.capture(authorization.reference, usd(1), "o1:capture") == capture
    refund = simulator.refund(capture.reference, usd(400), "o1:refund:a")
    assert simulator.refund(capture.reference, usd(400), "o1:refund:a") == refund
    # Even once the amount asked no longer fits, the key's own refund is what it gets.
    simulator.refund(capture.reference, usd(600), "o1:refund:b")
    assert simulator.refund(capture.reference, usd(400), "o1:refund:a") == refund

    voidable = simulator.authorize(usd(300), "tok_visa", "o2:authorize")
    void = simulator.void(voidable.reference, "o2:void")
    assert simulator.void(voidable.reference, "o2:void") == void

    ledger = ledger_of(simulator, authorization.reference)
    assert [(entry.kind, entry.amount, entry.idempotency_key) for entry in ledger.entries] == [
        ("capture", 1000, "o1:capture"),
        ("refund", 400, "o1:refund:a"),
        ("refund", 600, "o1:refund:b"),
    ]
    assert (ledger.authorization.status, ledger.authorization.refunded_amount) == ("CAPTURED", 1000)
    assert ledger.authorization.refundable_amount == 0
    voided = ledger_of(simulator, voidable.reference)
    assert (voided.authorization.status, [entry.kind for entry in voided.entries]) == ("VOIDED", ["void"])


def test_lookup_finds_every_operation_by_its_key_alone(simulator: SimulatorProvider) -> None:
    authorization, capture = authorized_and_captured(simulator, 1000)
    refund = simulator.refund(capture.reference, usd(250), "o1:refund:a")

    found = {key: simulator.lookup(key) for key in ("o1:authorize", "o1:capture", "o1:refund:a", "o1:void")}

    assert found["o1:void"] is None
    assert [(f.operation, f.reference, f.authorization_ref, f.amount) for f in found.values() if f] == [
        ("authorize", authorization.reference, authorization.reference, usd(1000)),
        ("capture", capture.reference, authorization.reference, usd(1000)),
        ("refund", refund.reference, authorization.reference, usd(250)),
    ]


# ---------------------------------------------------------------------------- keys
def test_a_key_is_bound_to_its_first_operation_and_authorization(simulator: SimulatorProvider) -> None:
    authorization, capture = authorized_and_captured(simulator, 1000)
    other = simulator.authorize(usd(1000), "tok_visa", "o2:authorize")

    for reuse in (
        lambda: simulator.capture(authorization.reference, usd(1000), "o1:authorize"),
        lambda: simulator.void(other.reference, "o1:authorize"),
        lambda: simulator.authorize(usd(1000), "tok_visa", "o1:capture"),
        lambda: simulator.authorize(usd(1000), "tok_chargeDeclined", "o1:capture"),
        lambda: simulator.refund(capture.reference, usd(1), "o1:capture"),
        lambda: simulator.capture(other.reference, usd(1000), "o1:capture"),  # another authorization
    ):
        with pytest.raises(PaymentStateConflict):
            reuse()

    assert ledger_of(simulator, other.reference).entries == []
    assert [entry.kind for entry in ledger_of(simulator, authorization.reference).entries] == ["capture"]


def test_a_refused_call_stores_no_result_and_its_key_can_be_retried(simulator: SimulatorProvider) -> None:
    authorization = simulator.authorize(usd(1000), "tok_visa", "o1:authorize")
    with pytest.raises(CaptureExceedsAuthorization):
        simulator.capture(authorization.reference, usd(1001), "o1:capture")
    assert simulator.lookup("o1:capture") is None

    capture = simulator.capture(authorization.reference, usd(1000), "o1:capture")
    assert simulator.lookup("o1:capture") is not None
    assert [entry.reference for entry in ledger_of(simulator, authorization.reference).entries] == [capture.reference]


def test_a_flaky_token_fails_only_the_first_attempt_of_each_key(simulator: SimulatorProvider) -> None:
    """The first attempt of a key is recorded by a write conditioned on there being none: the retry of
    the key is approved (and replays), another key fails once in turn. A mutation run dropped
    ``attribute_not_exists(pk)`` (every attempt failed) and every test passed: the unit tests use the
    in-memory store."""
    with pytest.raises(PaymentProviderError):
        simulator.authorize(usd(100), "tok_flaky", "o1:authorize")
    approved = simulator.authorize(usd(100), "tok_flaky", "o1:authorize")
    assert simulator.authorize(usd(100), "tok_flaky", "o1:authorize") == approved

    with pytest.raises(PaymentProviderError):
        simulator.authorize(usd(100), "tok_flaky", "o2:authorize")
    assert ledger_of(simulator, approved.reference).authorization.amount == 100


def test_unknown_or_declined_authorizations_are_refused(simulator: SimulatorProvider) -> None:
    with pytest.raises(PaymentDeclined):
        simulator.authorize(usd(100), "tok_chargeDeclined", "o1:authorize")
    declined = authorization_ref_for_key("o1:authorize")
    capture_key_ref = authorization_ref_for_key("o2:capture")  # names a capture's item, not an authorization
    authorization = simulator.authorize(usd(100), "tok_visa", "o2:authorize")
    simulator.capture(authorization.reference, usd(100), "o2:capture")

    for reference in (declined, capture_key_ref, "sim_auth_unknown", "ch_elsewhere"):
        with pytest.raises(PaymentStateConflict):
            simulator.capture(reference, usd(1), f"capture-of-{reference}")
        with pytest.raises(PaymentStateConflict):
            simulator.void(reference, f"void-of-{reference}")
        assert simulator.ledger(reference) is None
        assert simulator.lookup(f"capture-of-{reference}") is None


def test_a_refund_of_an_authorization_never_captured_is_a_state_conflict_not_an_excess(
    simulator: SimulatorProvider,
) -> None:
    """A refund against an authorization still AUTHORIZED, or VOIDED, is refused as the wrong state
    (PaymentStateConflict), not as an amount beyond the capture: there is no capture to exceed. A mutation
    run answered every refused refund with RefundExceedsCapture and every test passed."""
    held = simulator.authorize(usd(500), "tok_visa", "o1:authorize")
    voided = simulator.authorize(usd(500), "tok_visa", "o2:authorize")
    simulator.void(voided.reference, "o2:void")

    for authorization in (held, voided):
        capture_ref = capture_ref_for(authorization.reference)
        with pytest.raises(PaymentStateConflict):
            simulator.refund(capture_ref, usd(1), f"refund-of-{authorization.reference}")
        assert simulator.lookup(f"refund-of-{authorization.reference}") is None
        assert ledger_of(simulator, authorization.reference).of_kind("refund") == []


# ---------------------------------------------------------------------------- the crash window
@pytest.fixture
def lost_updates(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """While the list holds a number, that many ledger updates fail before they reach DynamoDB, as a
    process dying between a key's pointer and its entry would leave them."""
    remaining = [0]
    real = operations._call

    def failing(operation: str, **request: Any) -> Any:
        if operation == "update_item" and remaining[0] > 0:
            remaining[0] -= 1
            raise PaymentProviderError("the caller died before its ledger update")
        return real(operation, **request)

    monkeypatch.setattr(operations, "_call", failing)
    yield remaining


@pytest.mark.parametrize("operation", ["capture", "void", "refund"])
def test_a_pointer_without_its_entry_is_not_a_result_and_a_retry_completes_it(
    simulator: SimulatorProvider, lost_updates: list[int], operation: str
) -> None:
    authorization = simulator.authorize(usd(1000), "tok_visa", "o1:authorize")
    capture_ref = ""
    if operation == "refund":
        capture_ref = simulator.capture(authorization.reference, usd(1000), "o1:capture").reference

    def act() -> object:
        if operation == "capture":
            return simulator.capture(authorization.reference, usd(600), "o1:op")
        if operation == "void":
            return simulator.void(authorization.reference, "o1:op")
        return simulator.refund(capture_ref, usd(600), "o1:op")

    before = ledger_of(simulator, authorization.reference)
    lost_updates[0] = 1
    with pytest.raises(PaymentProviderError):
        act()
    assert simulator.lookup("o1:op") is None
    assert ledger_of(simulator, authorization.reference) == before

    done = act()
    assert act() == done
    found = simulator.lookup("o1:op")
    assert found is not None and (found.operation, found.reference) == (operation, getattr(done, "reference", None))
    assert [entry.idempotency_key for entry in ledger_of(simulator, authorization.reference).of_kind(operation)] == [
        "o1:op"
    ]


# ---------------------------------------------------------------------------- concurrency
def race[Outcome](callers: int, call: Callable[[int], Outcome]) -> list[Outcome | Exception]:
    """Run ``call(i)`` for every caller at once; each caller's result or the exception it raised."""
    start = threading.Barrier(callers)

    def one(number: int) -> Outcome | Exception:
        start.wait()
        try:
            return call(number)
        except (PaymentStateConflict, CaptureExceedsAuthorization, RefundExceedsCapture) as refused:
            return refused

    with ThreadPoolExecutor(max_workers=callers) as pool:
        return list(pool.map(one, range(callers)))


def test_concurrent_captures_with_their_own_keys_capture_once(simulator: SimulatorProvider) -> None:
    authorization = simulator.authorize(usd(1000), "tok_visa", "o1:authorize")

    outcomes = race(8, lambda n: simulator.capture(authorization.reference, usd(500 + 100 * n), f"o1:capture:{n}"))

    captures = [outcome for outcome in outcomes if isinstance(outcome, ProviderCapture)]
    refused = [type(outcome) for outcome in outcomes if isinstance(outcome, Exception)]
    assert len(captures) == 1 and captures[0].amount.amount <= 1000
    assert set(refused) <= {PaymentStateConflict, CaptureExceedsAuthorization} and len(refused) == 7
    ledger = ledger_of(simulator, authorization.reference)
    assert [(entry.kind, entry.amount) for entry in ledger.entries] == [("capture", captures[0].amount.amount)]
    assert ledger.authorization.captured_amount == captures[0].amount.amount


def test_concurrent_refunds_never_exceed_the_capture(simulator: SimulatorProvider) -> None:
    _, capture = authorized_and_captured(simulator, 1000)

    outcomes = race(10, lambda n: simulator.refund(capture.reference, usd(300), f"o1:refund:{n}"))

    refunds = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
    assert len(refunds) == 3
    assert all(isinstance(outcome, RefundExceedsCapture) for outcome in outcomes if isinstance(outcome, Exception))
    ledger = ledger_of(simulator, capture.authorization_ref)
    assert sorted(entry.reference for entry in ledger.of_kind("refund")) == sorted(r.reference for r in refunds)
    assert (ledger.authorization.refunded_amount, ledger.authorization.refundable_amount) == (900, 100)


def test_concurrent_repeats_of_one_key_act_once_and_agree(simulator: SimulatorProvider) -> None:
    authorization, capture = authorized_and_captured(simulator, 1000)

    authorizations = race(6, lambda _: simulator.authorize(usd(50), "tok_visa", "o2:authorize"))
    refunds = race(6, lambda _: simulator.refund(capture.reference, usd(100), "o1:refund:a"))

    assert len({outcome.reference for outcome in authorizations if isinstance(outcome, ProviderAuthorization)}) == 1
    assert not any(isinstance(outcome, Exception) for outcome in [*authorizations, *refunds])
    assert len(set(map(repr, refunds))) == 1
    ledger = ledger_of(simulator, authorization.reference)
    assert [(entry.kind, entry.amount) for entry in ledger.entries] == [("capture", 1000), ("refund", 100)]
    assert ledger.authorization.refunded_amount == 100


def test_a_void_racing_a_capture_leaves_one_of_them(simulator: SimulatorProvider) -> None:
    for number in range(5):
        authorization = simulator.authorize(usd(100), "tok_visa", f"o{number}:authorize")

        def capture_or_void(caller: int, reference: str = authorization.reference, n: int = number) -> str:
            if caller == 0:
                return simulator.capture(reference, usd(100), f"o{n}:capture").reference
            return simulator.void(reference, f"o{n}:void").reference

        outcomes = race(2, capture_or_void)

        assert sum(isinstance(outcome, PaymentStateConflict) for outcome in outcomes) == 1
        ledger = ledger_of(simulator, authorization.reference)
        assert len(ledger.entries) == 1
        assert ledger.authorization.status == {"capture": "CAPTURED", "void": "VOIDED"}[ledger.entries[0].kind]


def test_a_void_has_its_own_reference_never_the_capture_one(simulator: SimulatorProvider) -> None:
    """The void's reference named the authorization's (only) capture, and every test passed."""
    authorization = simulator.authorize(usd(500), "tok_visa", "o1:authorize")
    voided = simulator.void(authorization.reference, "o1:void")

    assert voided.reference.startswith("sim_void_")
    assert voided.reference != capture_ref_for(authorization.reference)
    assert [entry.reference for entry in ledger_of(simulator, authorization.reference).of_kind("void")] == [
        voided.reference
    ]


def test_a_refund_of_a_capture_not_the_simulators_binds_no_key(simulator: SimulatorProvider) -> None:
    """A capture reference that is not one of ours is refused before anything is written, so the
    key stays free for the order's real capture."""
    _, capture = authorized_and_captured(simulator, 1000)
    with pytest.raises(PaymentStateConflict):
        simulator.refund("ch_elsewhere", usd(100), "o1:refund:a")
    assert simulator.lookup("o1:refund:a") is None

    refund = simulator.refund(capture.reference, usd(100), "o1:refund:a")

    assert refund.amount == usd(100)
    assert simulator.lookup("o1:refund:a") is not None
