"""The payment provider's circuit breaker with its state in OperationsTable (moto)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from shop.config import payment_settings
from shop.domain import payments as domain
from shop.errors import CircuitOpen, PaymentProviderError
from shop.payments.circuit_breaker import BreakerPolicy, CircuitBreaker
from shop.repositories.operations import DynamoBreakerStore, DynamoSimulatorStore
from shop.repositories.payments import PaymentsRepository
from tests.conftest import LocalAws, random_suffix

POLICY = BreakerPolicy(failure_threshold=3, window_seconds=60.0, cooldown_seconds=30.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fail_transiently() -> None:
    raise PaymentProviderError("provider 503")


def instance(clock: FakeClock, name: str = "shared") -> CircuitBreaker:
    """A breaker as one function instance builds it: its own objects, the shared table."""
    return CircuitBreaker(name, DynamoBreakerStore(), POLICY, clock=clock)


def invoke_authorize(local_aws: LocalAws, order_id: str, token: str) -> tuple[dict[str, Any], str | None]:
    event = {"order_id": order_id, "amount": {"amount": 100, "currency": "USD"}, "payment_token": token}
    response = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function("AuthorizePaymentFunction"), Payload=json.dumps(event)
    )
    return json.loads(response["Payload"].read()), response.get("FunctionError")


def test_the_step_opens_the_breaker_after_n_failures_then_fails_fast(local_aws: LocalAws) -> None:
    threshold = payment_settings().breaker_failure_threshold
    for _ in range(threshold):
        payload, error = invoke_authorize(local_aws, f"ord-{random_suffix()}", "tok_processingError")
        assert payload["errorType"] == "PaymentProviderError"

    status = domain.circuit_breaker_status()
    assert (status.state, status.consecutive_failures, status.failure_threshold) == ("OPEN", threshold, threshold)
    assert status.retry_after_seconds is not None and status.retry_after_seconds > 0
    assert status.opened_at is not None

    order_id = f"ord-{random_suffix()}"
    payload, error = invoke_authorize(local_aws, order_id, "tok_visa")
    assert error is not None
    assert payload["errorType"] == "CircuitOpen"
    # Failing fast: the provider never saw the call, and nothing was authorized.
    assert DynamoSimulatorStore().result(f"{order_id}:authorize") is None
    payment = PaymentsRepository().get(order_id)
    assert payment is not None and payment.status == "PENDING"


def test_status_of_a_breaker_that_never_tripped(local_aws: LocalAws) -> None:
    status = domain.circuit_breaker_status()
    assert (status.state, status.consecutive_failures, status.retry_after_seconds) == ("CLOSED", 0, None)
    assert status.probe_in_flight is False
    assert status.name == "payment-provider:simulator"


def test_failures_seen_by_different_instances_add_up(local_aws: LocalAws) -> None:
    clock = FakeClock()
    first, second = instance(clock), instance(clock)
    for breaker in (first, second, first):
        with pytest.raises(PaymentProviderError):
            breaker.call(fail_transiently)

    calls: list[str] = []
    for breaker in (first, second):
        with pytest.raises(CircuitOpen):
            breaker.call(lambda: calls.append("reached the provider"))
    assert calls == []
    assert DynamoBreakerStore().load("shared").state == "OPEN"


def test_half_open_lets_exactly_one_probe_through(local_aws: LocalAws) -> None:
    clock = FakeClock()
    first, second = instance(clock), instance(clock)
    for _ in range(POLICY.failure_threshold):
        with pytest.raises(PaymentProviderError):
            first.call(fail_transiently)
    clock.advance(POLICY.cooldown_seconds)
    others: list[str] = []

    def probe() -> str:
        assert DynamoBreakerStore().load("shared").state == "HALF_OPEN"
        with pytest.raises(CircuitOpen):
            second.call(lambda: others.append("second got through"))
        return "healthy"

    assert first.call(probe) == "healthy"
    assert others == []
    assert DynamoBreakerStore().load("shared").state == "CLOSED"
    assert second.call(lambda: "through") == "through"


def test_a_failed_probe_reopens_for_every_instance(local_aws: LocalAws) -> None:
    clock = FakeClock()
    first, second = instance(clock), instance(clock)
    for _ in range(POLICY.failure_threshold):
        with pytest.raises(PaymentProviderError):
            second.call(fail_transiently)
    clock.advance(POLICY.cooldown_seconds)
    with pytest.raises(PaymentProviderError):
        first.call(fail_transiently)
    with pytest.raises(CircuitOpen):
        second.call(lambda: None)
    assert DynamoBreakerStore().load("shared").opened_at == clock.now


def test_concurrent_callers_after_the_cooldown_claim_one_probe(local_aws: LocalAws) -> None:
    clock = FakeClock()
    opener = instance(clock)
    for _ in range(POLICY.failure_threshold):
        with pytest.raises(PaymentProviderError):
            opener.call(fail_transiently)
    clock.advance(POLICY.cooldown_seconds)

    callers = 6
    start = threading.Barrier(callers)
    release = threading.Event()
    probes: list[int] = []
    outcomes: list[str] = []
    lock = threading.Lock()

    def caller(number: int) -> None:
        breaker = instance(clock)

        def probe() -> None:
            with lock:
                probes.append(number)
            # Hold the probe until every other caller has been turned away.
            assert release.wait(timeout=30)

        start.wait(timeout=30)
        try:
            breaker.call(probe)
            outcome = "probed"
        except CircuitOpen:
            outcome = "failed fast"
        with lock:
            outcomes.append(outcome)
            if outcomes.count("failed fast") == callers - 1:
                release.set()

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    assert len(probes) == 1
    assert sorted(outcomes) == ["failed fast"] * (callers - 1) + ["probed"]
    assert DynamoBreakerStore().load("shared").state == "CLOSED"


def test_breakers_of_different_providers_are_independent(local_aws: LocalAws) -> None:
    clock = FakeClock()
    for _ in range(POLICY.failure_threshold):
        with pytest.raises(PaymentProviderError):
            instance(clock, "provider-a").call(fail_transiently)
    assert instance(clock, "provider-b").call(lambda: "fine") == "fine"
