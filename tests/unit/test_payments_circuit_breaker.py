"""The circuit breaker's state machine, over an in-memory store and a clock the test moves."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shop.errors import CircuitOpen, PaymentDeclined, PaymentProviderError, RefundExceedsCapture
from shop.payments.circuit_breaker import BreakerPolicy, BreakerState, CircuitBreaker

POLICY = BreakerPolicy(failure_threshold=3, window_seconds=60.0, cooldown_seconds=30.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeStore:
    """Compare-and-set on a version, like the DynamoDB store."""

    def __init__(self) -> None:
        self.states: dict[str, BreakerState] = {}
        self.writes = 0
        # Runs before a replace is applied: lets a test slip in a competing writer.
        self.before_replace: Callable[[], None] | None = None

    def load(self, name: str) -> BreakerState:
        return self.states.get(name, BreakerState())

    def replace(self, name: str, state: BreakerState, expected_version: int) -> bool:
        if self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None
            hook()
        if self.load(name).version != expected_version:
            return False
        self.states[name] = state.model_copy(update={"version": expected_version + 1})
        self.writes += 1
        return True


class InstanceDied(BaseException):
    """The function instance vanished mid-call (timeout, crash): nothing after it runs."""


class BrokenStore(FakeStore):
    def replace(self, name: str, state: BreakerState, expected_version: int) -> bool:
        raise RuntimeError("store unavailable")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


def breaker(store: FakeStore, clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("payments", store, POLICY, clock=clock)


def fail_transiently() -> None:
    raise PaymentProviderError("provider 503")


def trip(subject: CircuitBreaker, times: int = POLICY.failure_threshold) -> None:
    for _ in range(times):
        with pytest.raises(PaymentProviderError):
            subject.call(fail_transiently)


def test_closed_breaker_passes_calls_and_writes_nothing_on_success(store: FakeStore, clock: FakeClock) -> None:
    assert breaker(store, clock).call(lambda: "ok") == "ok"
    assert store.writes == 0
    assert store.load("payments").state == "CLOSED"


def test_opens_after_threshold_consecutive_transient_failures(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    trip(subject, POLICY.failure_threshold - 1)
    assert store.load("payments").state == "CLOSED"
    assert store.load("payments").consecutive_failures == POLICY.failure_threshold - 1

    trip(subject, 1)
    state = store.load("payments")
    assert state.state == "OPEN"
    assert state.opened_at == clock.now


def test_success_resets_the_consecutive_count(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    trip(subject, POLICY.failure_threshold - 1)
    subject.call(lambda: None)
    trip(subject, POLICY.failure_threshold - 1)
    assert store.load("payments").state == "CLOSED"


def test_business_errors_do_not_count_and_reset_the_streak(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    trip(subject, POLICY.failure_threshold - 1)

    def decline() -> None:
        raise PaymentDeclined("no")

    def too_much() -> None:
        raise RefundExceedsCapture("no")

    for business in (decline, too_much, decline, decline):
        with pytest.raises((PaymentDeclined, RefundExceedsCapture)):
            subject.call(business)
    state = store.load("payments")
    assert state.state == "CLOSED"
    assert state.consecutive_failures == 0


def test_unexpected_exceptions_count_as_failures(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)

    def crash() -> None:
        raise TimeoutError("read timed out")

    for _ in range(POLICY.failure_threshold):
        with pytest.raises(TimeoutError):
            subject.call(crash)
    assert store.load("payments").state == "OPEN"


def test_failures_spread_wider_than_the_window_do_not_open(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    trip(subject, POLICY.failure_threshold - 1)
    clock.advance(POLICY.window_seconds + 1)
    trip(subject, 1)
    state = store.load("payments")
    assert state.state == "CLOSED"
    assert state.consecutive_failures == 1
    assert state.window_started_at == clock.now


def test_open_breaker_fails_fast_without_calling(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    trip(subject)
    before = store.load("payments")
    calls: list[int] = []
    clock.advance(POLICY.cooldown_seconds - 1)

    with pytest.raises(CircuitOpen) as raised:
        subject.call(lambda: calls.append(1))

    assert calls == []
    assert raised.value.extensions["retry_after"] == pytest.approx(1.0)
    assert store.load("payments") == before


def test_after_cooldown_exactly_one_probe_goes_through(store: FakeStore, clock: FakeClock) -> None:
    subject, other = breaker(store, clock), breaker(store, clock)
    trip(subject)
    clock.advance(POLICY.cooldown_seconds)
    others: list[str] = []

    def probe() -> str:
        # While the probe is in flight, every other caller still fails fast.
        assert store.load("payments").state == "HALF_OPEN"
        with pytest.raises(CircuitOpen):
            other.call(lambda: others.append("ran"))
        return "probed"

    assert subject.call(probe) == "probed"
    assert others == []
    state = store.load("payments")
    assert state.state == "CLOSED"
    assert state.consecutive_failures == 0
    assert other.call(lambda: "through") == "through"


def test_failed_probe_reopens_with_a_fresh_cooldown(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    trip(subject)
    clock.advance(POLICY.cooldown_seconds)
    trip(subject, 1)  # the probe
    state = store.load("payments")
    assert state.state == "OPEN"
    assert state.opened_at == clock.now

    clock.advance(POLICY.cooldown_seconds - 1)
    with pytest.raises(CircuitOpen):
        subject.call(lambda: None)


def test_declined_probe_closes_the_breaker(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    trip(subject)
    clock.advance(POLICY.cooldown_seconds)

    def decline() -> None:
        raise PaymentDeclined("no")

    with pytest.raises(PaymentDeclined):
        subject.call(decline)
    assert store.load("payments").state == "CLOSED"


def test_a_stale_probe_can_be_replaced_and_its_late_report_is_ignored(store: FakeStore, clock: FakeClock) -> None:
    subject, rescuer = breaker(store, clock), breaker(store, clock)
    trip(subject)
    clock.advance(POLICY.cooldown_seconds)

    def hanging_probe() -> None:
        with pytest.raises(CircuitOpen):
            rescuer.call(lambda: None)  # the probe is still in flight
        # It hangs for another cooldown, so another instance may probe instead...
        clock.advance(POLICY.cooldown_seconds)
        assert rescuer.call(lambda: "second probe") == "second probe"
        # ...and the first probe's late failure changes nothing.
        raise PaymentProviderError("finally timed out")

    with pytest.raises(PaymentProviderError):
        subject.call(hanging_probe)
    assert store.load("payments").state == "CLOSED"


def test_calls_admitted_before_opening_do_not_close_it(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)

    def succeed_after_others_opened_it() -> str:
        trip(breaker(store, clock))
        return "late success"

    assert subject.call(succeed_after_others_opened_it) == "late success"
    assert store.load("payments").state == "OPEN"


def test_losing_the_probe_claim_race_fails_fast(store: FakeStore, clock: FakeClock) -> None:
    subject, rival = breaker(store, clock), breaker(store, clock)
    trip(subject)
    clock.advance(POLICY.cooldown_seconds)

    def rival_claims_the_probe_and_dies() -> None:
        def die() -> None:
            raise InstanceDied

        with pytest.raises(InstanceDied):
            rival.call(die)

    # The rival claims the probe between our read and our conditional write.
    store.before_replace = rival_claims_the_probe_and_dies
    calls: list[int] = []

    with pytest.raises(CircuitOpen):
        subject.call(lambda: calls.append(1))
    assert calls == []
    assert store.load("payments").state == "HALF_OPEN"


def test_a_lost_count_race_is_retried_so_no_failure_is_lost(store: FakeStore, clock: FakeClock) -> None:
    subject, rival = breaker(store, clock), breaker(store, clock)
    store.before_replace = lambda: trip(rival, 1)
    trip(subject, 1)
    assert store.load("payments").consecutive_failures == 2


def test_a_broken_store_does_not_hide_the_providers_answer(clock: FakeClock) -> None:
    subject = CircuitBreaker("payments", BrokenStore(), POLICY, clock=clock)
    with pytest.raises(PaymentProviderError):
        subject.call(fail_transiently)
    assert subject.call(lambda: "charged") == "charged"
