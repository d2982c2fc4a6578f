"""The circuit breaker's state machine, over an in-memory store and a clock the test moves."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Callable

import pytest

from shop.errors import CircuitOpen, PaymentDeclined, PaymentProviderError, RefundExceedsCapture
from shop.models.money import Money
from shop.observability import metrics
from shop.payments.circuit_breaker import BreakerPolicy, BreakerState, CircuitBreaker
from shop.payments.provider import GuardedProvider, ProviderAuthorization, ProviderCapture
from tests.conftest import FakeClock

# Opens at >= 50% failures among >= 4 calls, the failures from >= 2 sources, within 60 s.
POLICY = BreakerPolicy(
    failure_rate_percent=50.0, minimum_calls=4, minimum_failing_sources=2, window_seconds=60.0, cooldown_seconds=30.0
)


class FakeStore:
    """Compare-and-set on a version, like the DynamoDB store."""

    def __init__(self) -> None:
        self.states: dict[str, BreakerState] = {}
        self.writes = 0
        self.loads = 0
        # Runs before a replace is applied: lets a test slip in a competing writer.
        self.before_replace: Callable[[], None] | None = None
        # name -> what an eventually consistent read answers while it lags behind the last write.
        self.lagging: dict[str, BreakerState] = {}

    def load(self, name: str, *, consistent: bool = True) -> BreakerState:
        self.loads += 1
        if not consistent and name in self.lagging:
            # An eventually consistent read that has not seen the latest write yet.
            return self.lagging[name]
        return self.states.get(name, BreakerState())

    def replace(self, name: str, state: BreakerState, expected_version: int) -> bool:
        if self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None
            hook()
        if self.states.get(name, BreakerState()).version != expected_version:
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


def breaker(store: FakeStore, clock: FakeClock, policy: BreakerPolicy = POLICY) -> CircuitBreaker:
    return CircuitBreaker("payments", store, policy, clock=clock)


def fail_transiently() -> None:
    raise PaymentProviderError("provider 503")


def fail(subject: CircuitBreaker, key: str, source: str) -> None:
    with pytest.raises(PaymentProviderError):
        subject.call(fail_transiently, key=key, source=source)


def succeed(subject: CircuitBreaker, key: str, source: str) -> None:
    assert subject.call(lambda: "ok", key=key, source=source) == "ok"


def trip(subject: CircuitBreaker, first: int = 0) -> None:
    """Enough failed operations, each of another customer, to open the breaker: the first draws its
    attention (admitted while the window held no failure, it is not counted), then minimum_calls."""
    for n in range(first, first + 1 + POLICY.minimum_calls):
        fail(subject, f"ord-{n}:authorize", f"cust-{n}")


def state_of(store: FakeStore) -> BreakerState:
    return store.load("payments")


def opened(store: FakeStore, clock: FakeClock) -> float:
    """The breaker opened now (as trip() opens it); when."""
    store.states["payments"] = BreakerState(state="OPEN", opened_at=clock.now, version=1)
    return clock.now


# ---------------------------------------------------------------------------- stale admission reads
def test_admission_reads_eventually_consistent_and_a_stale_state_is_never_written_back(
    store: FakeStore, clock: FakeClock
) -> None:
    """Admission costs half a read unit: it may see a state a moment old. A call admitted on a
    stale CLOSED state records its failure on the current state (the compare-and-set on the
    version refuses the stale one, and the retry reads consistently), so nothing is lost."""
    subject = breaker(store, clock)
    fail(subject, "ord-0:authorize", "cust-0")
    store.lagging["payments"] = BreakerState()  # the read lags: no failure, version 0
    fail(subject, "ord-1:authorize", "cust-1")

    assert list(state_of(store).outcomes) == ["ord-0:authorize", "ord-1:authorize"]
    assert state_of(store).version == 2


def test_a_breaker_that_just_opened_may_admit_one_call_on_a_stale_read_but_stays_open(
    store: FakeStore, clock: FakeClock
) -> None:
    subject = breaker(store, clock)
    trip(subject)
    assert state_of(store).state == "OPEN"
    store.lagging["payments"] = BreakerState()
    # Admitted on the lagging CLOSED state, like a call already in flight when it opened.
    fail(subject, "ord-9:authorize", "cust-9")
    assert state_of(store).state == "OPEN"
    del store.lagging["payments"]
    with pytest.raises(CircuitOpen):
        subject.call(lambda: "ok", key="ord-10:authorize", source="cust-10")


# ---------------------------------------------------------------------------- CLOSED: counting
def test_closed_breaker_passes_calls_and_writes_nothing_on_success(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    for n in range(20):
        succeed(subject, f"ord-{n}:authorize", f"cust-{n}")
    assert (store.loads, store.writes) == (20, 0)  # a healthy call costs its admission read only
    assert state_of(store).state == "CLOSED"


def test_outcomes_are_counted_once_the_window_holds_a_failure(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    succeed(subject, "ord-0:authorize", "cust-0")  # before any failure: not recorded
    fail(subject, "ord-1:authorize", "cust-1")  # recorded, but admitted blind: not counted
    succeed(subject, "ord-2:authorize", "cust-2")
    succeed(subject, "ord-3:capture", "ord-3")
    fail(subject, "ord-4:authorize", "cust-4")

    stats = subject.stats()
    assert (stats.calls, stats.failures, stats.failing_sources) == (3, 1, 1)
    assert list(state_of(store).outcomes) == ["ord-1:authorize", "ord-2:authorize", "ord-3:capture", "ord-4:authorize"]
    outcome = state_of(store).outcomes["ord-1:authorize"]
    assert (outcome.failed, outcome.at, outcome.source, outcome.counted) == (True, clock.now, "cust-1", False)
    assert all(outcome.counted for key, outcome in state_of(store).outcomes.items() if key != "ord-1:authorize")


def test_a_failure_rate_below_the_threshold_stays_closed(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    fail(subject, "ord-0:authorize", "cust-0")  # draws attention, not counted
    fail(subject, "ord-1:authorize", "cust-1")
    for n in range(2, 5):
        succeed(subject, f"ord-{n}:authorize", f"cust-{n}")
    fail(subject, "ord-5:authorize", "cust-5")
    stats = subject.stats()
    assert (stats.calls, stats.failures, stats.failure_rate_percent) == (5, 2, 40.0)
    assert state_of(store).state == "CLOSED"

    fail(subject, "ord-6:authorize", "cust-6")  # 3 of 6: the rate reaches the threshold
    state = state_of(store)
    assert state.state == "OPEN"
    assert state.opened_at == clock.now


def test_fewer_calls_than_the_minimum_never_open(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    for n in range(POLICY.minimum_calls):  # the first one only draws attention
        fail(subject, f"ord-{n}:authorize", f"cust-{n}")
    assert (subject.stats().calls, subject.stats().failure_rate_percent) == (POLICY.minimum_calls - 1, 100.0)
    assert state_of(store).state == "CLOSED"

    fail(subject, "ord-last:authorize", "cust-last")
    assert state_of(store).state == "OPEN"


def test_one_sources_failures_never_open_however_many(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    for n in range(50):
        fail(subject, f"ord-{n}:authorize", "mallory")
    stats = subject.stats()
    assert (stats.failures, stats.failing_sources) == (49, 1)
    assert state_of(store).state == "CLOSED"
    succeed(subject, "ord-ok:authorize", "alice")
    assert state_of(store).state == "CLOSED"


def test_failures_from_enough_sources_above_the_rate_open(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    for n in range(5):
        fail(subject, f"ord-{n}:authorize", "mallory")
    assert state_of(store).state == "CLOSED"

    fail(subject, "ord-b:authorize", "bob")  # a second failing source

    assert state_of(store).state == "OPEN"
    assert subject.stats().failing_sources == POLICY.minimum_failing_sources


def test_retries_of_one_key_count_once(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    for _ in range(3):
        fail(subject, "ord-1:authorize", "cust-1")
    stats = subject.stats()
    assert (stats.calls, stats.failures) == (1, 1)


def test_a_retry_that_succeeds_replaces_the_keys_failure(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    fail(subject, "ord-1:authorize", "cust-1")
    fail(subject, "ord-2:authorize", "cust-2")
    clock.advance(1)
    succeed(subject, "ord-1:authorize", "cust-1")

    stats = subject.stats()
    assert (stats.calls, stats.failures, stats.failing_sources) == (2, 1, 1)
    assert state_of(store).outcomes["ord-1:authorize"].failed is False
    # The latest attempt is the newest outcome, so the cap drops it last.
    assert list(state_of(store).outcomes) == ["ord-2:authorize", "ord-1:authorize"]


def test_business_errors_count_as_successes(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    fail(subject, "ord-0:authorize", "cust-0")

    def decline() -> None:
        raise PaymentDeclined("no")

    def too_much() -> None:
        raise RefundExceedsCapture("no")

    fail(subject, "ord-1:authorize", "cust-1")
    for n, business in enumerate((decline, too_much, decline, decline), start=2):
        with pytest.raises((PaymentDeclined, RefundExceedsCapture)):
            subject.call(business, key=f"ord-{n}:authorize", source=f"cust-{n}")
    stats = subject.stats()
    assert (stats.calls, stats.failures) == (5, 1)
    assert state_of(store).state == "CLOSED"


def test_unexpected_exceptions_count_as_failures(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)

    def crash() -> None:
        raise TimeoutError("read timed out")

    for n in range(1 + POLICY.minimum_calls):
        with pytest.raises(TimeoutError):
            subject.call(crash, key=f"ord-{n}:capture", source=f"ord-{n}")
    assert state_of(store).state == "OPEN"


def test_outcomes_older_than_the_window_expire(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    for n in range(POLICY.minimum_calls - 1):
        fail(subject, f"ord-{n}:authorize", f"cust-{n}")
    clock.advance(POLICY.window_seconds + 1)
    assert subject.stats().calls == 0
    succeed(subject, "ord-ok:authorize", "cust-ok")  # the window holds no failure any more
    assert list(state_of(store).outcomes) == [f"ord-{n}:authorize" for n in range(POLICY.minimum_calls - 1)]

    fail(subject, "ord-late:authorize", "cust-late")

    state = state_of(store)
    assert state.state == "CLOSED"
    assert list(state.outcomes) == ["ord-late:authorize"]  # pruned on the write


def in_flight_together(subject: CircuitBreaker, calls: list[tuple[str, str, bool]]) -> None:
    """The calls (key, source, fails) are all admitted before any completes (as many function
    instances in flight), then complete in the listed order: each call's operation first starts the
    one listed before it, so the breaker admits them all, and the innermost (the first listed)
    completes first."""
    pending = list(calls)

    def start_next() -> None:
        key, source, fails = pending.pop()

        def operation() -> str:
            if pending:
                start_next()
            if fails:
                fail_transiently()
            return "ok"

        with contextlib.suppress(PaymentProviderError):
            subject.call(operation, key=key, source=source)

    start_next()


def one_in_four_fails(first: int, count: int) -> list[tuple[str, str, bool]]:
    """Operations ``first`` .. each of its own customer; every fourth fails: a 25% failure rate."""
    return [(f"ord-{n}:authorize", f"cust-{n}", n % 4 == 0) for n in range(first, first + count)]


def test_calls_in_flight_when_failures_start_do_not_bias_the_rate(store: FakeStore, clock: FakeClock) -> None:
    """Admitted while the window held no failure, these calls record their failures but not their
    successes: counted, 10 failures of 40 calls (25%) would read 10 of 10 and open a 50% breaker."""
    subject = breaker(store, clock)
    burst = one_in_four_fails(0, 40)
    in_flight_together(subject, burst)  # completes F S S S F S S S ...

    state = state_of(store)
    assert state.state == "CLOSED"
    assert sorted(state.outcomes) == sorted(key for key, _, fails in burst if fails)
    assert not any(outcome.counted for outcome in state.outcomes.values())
    assert subject.stats().calls == 0
    # The calls admitted from now on see the failures: they record every outcome, and are counted.
    for key, source, fails in one_in_four_fails(40, 40):
        (fail if fails else succeed)(subject, key, source)
    stats = subject.stats()
    assert (stats.calls, stats.failures, stats.failure_rate_percent) == (40, 10, 25.0)
    assert state_of(store).state == "CLOSED"


def test_an_outage_opens_after_minimum_calls_counted_failures(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    # Every call in flight as the provider fails: none counted, all draw attention.
    in_flight_together(subject, [(f"ord-{n}:authorize", f"cust-{n}", True) for n in range(10)])
    assert (state_of(store).state, subject.stats().calls, len(state_of(store).outcomes)) == ("CLOSED", 0, 10)

    for n in range(10, 10 + POLICY.minimum_calls - 1):
        fail(subject, f"ord-{n}:authorize", f"cust-{n}")
    assert state_of(store).state == "CLOSED"
    fail(subject, "ord-last:authorize", "cust-last")
    assert state_of(store).state == "OPEN"


def test_a_call_admitted_seeing_a_failure_records_its_success_even_once_that_failure_expired(
    store: FakeStore, clock: FakeClock
) -> None:
    """Whether an outcome counts is decided at admission, never by the outcome or what came after."""
    subject = breaker(store, clock)
    fail(subject, "ord-0:authorize", "cust-0")

    def slow() -> str:
        clock.advance(POLICY.window_seconds + 1)  # the failure that admitted it leaves the window
        return "ok"

    assert subject.call(slow, key="ord-1:authorize", source="cust-1") == "ok"
    assert list(state_of(store).outcomes) == ["ord-1:authorize"]
    assert (subject.stats().calls, subject.stats().failures) == (1, 0)


def test_the_stored_outcomes_are_capped_to_the_most_recent(store: FakeStore, clock: FakeClock) -> None:
    policy = BreakerPolicy(
        failure_rate_percent=50.0,
        minimum_calls=3,
        minimum_failing_sources=2,
        window_seconds=60.0,
        cooldown_seconds=30.0,
        max_outcomes=5,
    )
    subject = breaker(store, clock, policy)
    for n in range(8):
        clock.advance(1)
        fail(subject, f"ord-{n}:authorize", "mallory")
    assert list(state_of(store).outcomes) == [f"ord-{n}:authorize" for n in range(3, 8)]
    assert state_of(store).state == "CLOSED"


def test_a_policy_that_could_never_open_is_refused() -> None:
    with pytest.raises(ValueError, match="minimum_calls"):
        BreakerPolicy(
            failure_rate_percent=50.0,
            minimum_calls=201,
            minimum_failing_sources=3,
            window_seconds=60.0,
            cooldown_seconds=30.0,
        )
    with pytest.raises(ValueError, match="failure_rate_percent"):
        BreakerPolicy(
            failure_rate_percent=0, minimum_calls=1, minimum_failing_sources=1, window_seconds=1, cooldown_seconds=1
        )


# ---------------------------------------------------------------------------- OPEN and HALF_OPEN
def test_open_breaker_fails_fast_without_calling(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    trip(subject)
    before = state_of(store)
    calls: list[int] = []
    clock.advance(POLICY.cooldown_seconds - 1)

    with pytest.raises(CircuitOpen) as raised:
        subject.call(lambda: calls.append(1), key="ord-x:authorize", source="cust-x")

    assert calls == []
    assert raised.value.extensions["retry_after"] == pytest.approx(1.0)
    assert state_of(store) == before


def test_after_cooldown_exactly_one_probe_goes_through_and_success_closes(store: FakeStore, clock: FakeClock) -> None:
    subject, other = breaker(store, clock), breaker(store, clock)
    trip(subject)
    clock.advance(POLICY.cooldown_seconds)
    others: list[str] = []

    def probe() -> str:
        # While the probe is in flight, every other caller still fails fast.
        assert state_of(store).state == "HALF_OPEN"
        with pytest.raises(CircuitOpen):
            other.call(lambda: others.append("ran"), key="ord-o:authorize", source="cust-o")
        return "probed"

    assert subject.call(probe, key="ord-p:authorize", source="cust-p") == "probed"
    assert others == []
    state = state_of(store)
    assert state.state == "CLOSED"
    assert state.outcomes == {}  # closing starts a fresh window
    assert other.call(lambda: "through", key="ord-o:authorize", source="cust-o") == "through"


def test_failed_probes_from_enough_sources_reopen_with_a_fresh_cooldown(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    opened_at = opened(store, clock)
    clock.advance(POLICY.cooldown_seconds)
    fail(subject, "ord-p:authorize", "cust-p")  # the probe: one failing source of the 2 it takes
    state = state_of(store)
    assert (state.state, state.opened_at, state.failed_probes) == ("OPEN", opened_at, {"cust-p": clock.now})

    fail(subject, "ord-q:authorize", "cust-q")  # the next probe, another source: a real outage
    state = state_of(store)
    assert (state.state, state.opened_at, state.failed_probes) == ("OPEN", clock.now, {})

    clock.advance(POLICY.cooldown_seconds - 1)
    with pytest.raises(CircuitOpen):
        subject.call(lambda: None, key="ord-r:authorize", source="cust-r")


def test_with_one_failing_source_enough_a_failed_probe_reopens_at_once(store: FakeStore, clock: FakeClock) -> None:
    policy = BreakerPolicy(
        failure_rate_percent=50.0,
        minimum_calls=4,
        minimum_failing_sources=1,
        window_seconds=60.0,
        cooldown_seconds=30.0,
    )
    subject = breaker(store, clock, policy)
    opened(store, clock)
    clock.advance(policy.cooldown_seconds)
    fail(subject, "ord-p:authorize", "cust-p")
    state = state_of(store)
    assert (state.state, state.opened_at, state.failed_probes) == ("OPEN", clock.now, {})
    with pytest.raises(CircuitOpen):
        subject.call(lambda: None, key="ord-q:authorize", source="cust-q")


def test_one_customers_failing_probe_does_not_keep_the_breaker_open(store: FakeStore, clock: FakeClock) -> None:
    """Mallory's card always fails transiently, and after the cooldown hers is the first call:
    her failed probe must not keep the breaker open for everybody (opening takes failures from
    minimum_failing_sources sources; so does re-opening)."""
    subject, other = breaker(store, clock), breaker(store, clock)
    opened(store, clock)
    clock.advance(POLICY.cooldown_seconds)
    fail(subject, "ord-m1:authorize", "mallory")  # she is the half-open probe

    # Alice comes next: she is the next probe at once (no second cooldown), and only she.
    def alices_probe() -> str:
        assert state_of(store).state == "HALF_OPEN"
        with pytest.raises(CircuitOpen):
            other.call(lambda: "ran", key="ord-b:authorize", source="bob")
        return "authorized"

    assert subject.call(alices_probe, key="ord-a:authorize", source="alice") == "authorized"
    state = state_of(store)
    assert (state.state, state.outcomes, state.failed_probes) == ("CLOSED", {}, {})
    # Closed, mallory's failures are one source's: they never open it again.
    for n in range(2, 20):
        fail(subject, f"ord-m{n}:authorize", "mallory")
    assert state_of(store).state == "CLOSED"
    succeed(other, "ord-b:authorize", "bob")


def test_a_source_whose_probe_failed_waits_a_cooldown_before_probing_again(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    opened_at = opened(store, clock)
    clock.advance(POLICY.cooldown_seconds)
    fail(subject, "ord-m1:authorize", "mallory")
    calls: list[str] = []

    clock.advance(POLICY.cooldown_seconds - 1)
    with pytest.raises(CircuitOpen) as raised:
        subject.call(lambda: calls.append("mallory"), key="ord-m2:authorize", source="mallory")
    assert calls == []
    assert raised.value.extensions["retry_after"] == pytest.approx(1.0)

    clock.advance(1)  # her own cooldown is over: she may probe again; alone, she still opens nothing
    fail(subject, "ord-m2:authorize", "mallory")
    state = state_of(store)
    assert (state.state, state.opened_at, state.failed_probes) == ("OPEN", opened_at, {"mallory": clock.now})
    succeed(subject, "ord-a:authorize", "alice")
    assert state_of(store).state == "CLOSED"


def test_failed_probes_older_than_the_window_do_not_add_up(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    opened(store, clock)
    clock.advance(POLICY.cooldown_seconds)
    fail(subject, "ord-m:authorize", "mallory")
    clock.advance(POLICY.window_seconds + 1)
    fail(subject, "ord-t:authorize", "trent")

    state = state_of(store)
    assert (state.state, state.failed_probes) == ("OPEN", {"trent": clock.now})
    assert state.opened_at is not None and state.opened_at < clock.now


def test_declined_probe_closes_the_breaker(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    trip(subject)
    clock.advance(POLICY.cooldown_seconds)

    def decline() -> None:
        raise PaymentDeclined("no")

    with pytest.raises(PaymentDeclined):
        subject.call(decline, key="ord-p:authorize", source="cust-p")
    assert state_of(store).state == "CLOSED"


def test_a_stale_probe_can_be_replaced_and_its_late_report_is_ignored(store: FakeStore, clock: FakeClock) -> None:
    subject, rescuer = breaker(store, clock), breaker(store, clock)
    trip(subject)
    clock.advance(POLICY.cooldown_seconds)

    def hanging_probe() -> None:
        with pytest.raises(CircuitOpen):
            rescuer.call(lambda: None, key="ord-r:authorize", source="cust-r")  # the probe is still in flight
        # It hangs for another cooldown, so another instance may probe instead...
        clock.advance(POLICY.cooldown_seconds)
        assert rescuer.call(lambda: "second probe", key="ord-r:authorize", source="cust-r") == "second probe"
        # ...and the first probe's late failure changes nothing.
        raise PaymentProviderError("finally timed out")

    with pytest.raises(PaymentProviderError):
        subject.call(hanging_probe, key="ord-p:authorize", source="cust-p")
    state = state_of(store)
    assert state.state == "CLOSED"
    assert state.outcomes == {}


def test_a_stale_probes_late_failure_leaves_the_probe_that_replaced_it_in_flight(
    store: FakeStore, clock: FakeClock
) -> None:
    """The replacing probe is still in flight when the stale one's failure comes back: the breaker stays
    HALF_OPEN with the new probe, whose outcome decides (only a state other than HALF_OPEN pinned the stale
    probe's report before: a mutation run dropped the probe id's check and every test passed)."""
    subject, rescuer = breaker(store, clock), breaker(store, clock)
    trip(subject)
    clock.advance(POLICY.cooldown_seconds)
    second_in_flight, let_second_finish = threading.Event(), threading.Event()
    answers: list[str] = []
    second = threading.Thread(
        target=lambda: answers.append(rescuer.call(second_probe, key="ord-r:authorize", source="cust-r"))
    )

    def second_probe() -> str:
        second_in_flight.set()
        let_second_finish.wait(timeout=30)
        return "second probe"

    def hanging_probe() -> None:
        clock.advance(POLICY.cooldown_seconds)  # stale now: another instance may probe instead
        second.start()
        assert second_in_flight.wait(timeout=30)
        probing = state_of(store)
        assert probing.state == "HALF_OPEN"
        raise PaymentProviderError("finally timed out")

    with pytest.raises(PaymentProviderError):
        subject.call(hanging_probe, key="ord-p:authorize", source="cust-p")
    state = state_of(store)
    assert (state.state, state.failed_probes) == ("HALF_OPEN", {})  # the late report changed nothing
    let_second_finish.set()
    second.join(timeout=30)
    assert answers == ["second probe"]
    assert state_of(store).state == "CLOSED"


def test_calls_admitted_before_opening_do_not_close_it(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)

    def succeed_after_others_opened_it() -> str:
        trip(breaker(store, clock))
        return "late success"

    assert subject.call(succeed_after_others_opened_it, key="ord-s:authorize", source="cust-s") == "late success"
    state = state_of(store)
    assert state.state == "OPEN"
    assert "ord-s:authorize" not in state.outcomes


# ---------------------------------------------------------------------------- compare-and-set
def test_losing_the_probe_claim_race_fails_fast(store: FakeStore, clock: FakeClock) -> None:
    subject, rival = breaker(store, clock), breaker(store, clock)
    trip(subject)
    clock.advance(POLICY.cooldown_seconds)

    def rival_claims_the_probe_and_dies() -> None:
        def die() -> None:
            raise InstanceDied

        with pytest.raises(InstanceDied):
            rival.call(die, key="ord-r:authorize", source="cust-r")

    # The rival claims the probe between our read and our conditional write.
    store.before_replace = rival_claims_the_probe_and_dies
    calls: list[int] = []

    with pytest.raises(CircuitOpen):
        subject.call(lambda: calls.append(1), key="ord-s:authorize", source="cust-s")
    assert calls == []
    assert state_of(store).state == "HALF_OPEN"


def test_a_lost_count_race_is_retried_so_no_outcome_is_lost(store: FakeStore, clock: FakeClock) -> None:
    subject, rival = breaker(store, clock), breaker(store, clock)
    fail(subject, "ord-0:authorize", "cust-0")
    # Another instance records its outcome between our read and our conditional write.
    store.before_replace = lambda: fail(rival, "ord-1:authorize", "cust-1")
    succeed(subject, "ord-2:authorize", "cust-2")

    state = state_of(store)
    assert list(state.outcomes) == ["ord-0:authorize", "ord-1:authorize", "ord-2:authorize"]
    assert state.version == 3


def test_a_lost_race_is_re_decided_on_the_fresh_state(store: FakeStore, clock: FakeClock) -> None:
    subject, rival = breaker(store, clock), breaker(store, clock)
    for n in range(POLICY.minimum_calls):  # one uncounted, then one counted failure short
        fail(subject, f"ord-{n}:authorize", f"cust-{n}")
    # The rival's failure opens the breaker while ours is being written: ours then changes nothing.
    store.before_replace = lambda: fail(rival, "ord-r:authorize", "cust-r")
    fail(subject, "ord-s:authorize", "cust-s")

    state = state_of(store)
    assert state.state == "OPEN"
    assert "ord-s:authorize" not in state.outcomes


def test_a_broken_store_does_not_hide_the_providers_answer(clock: FakeClock) -> None:
    subject = CircuitBreaker("payments", BrokenStore(), POLICY, clock=clock)
    fail(subject, "ord-0:authorize", "cust-0")
    assert subject.call(lambda: "charged", key="ord-0:authorize", source="cust-0") == "charged"


# ---------------------------------------------------------------------------- the guarded provider
class RecordingProvider:
    name = "recording"

    def authorize(self, amount: Money, token: str, idempotency_key: str) -> ProviderAuthorization:
        raise PaymentProviderError("provider 503")

    def capture(self, authorization_ref: str, amount: Money, idempotency_key: str) -> ProviderCapture:
        raise PaymentProviderError("provider 503")


def test_the_guarded_provider_counts_by_key_and_source(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    provider = RecordingProvider()
    by_customer = GuardedProvider(provider, subject, source="cust-1")  # type: ignore[arg-type]
    by_order = GuardedProvider(provider, subject)  # type: ignore[arg-type]

    for _ in range(3):
        with pytest.raises(PaymentProviderError):
            by_customer.authorize(Money(amount=100), "tok", "ord-1:authorize")
    with pytest.raises(PaymentProviderError):
        by_order.capture("auth-1", Money(amount=100), "ord-2:capture")

    outcomes = state_of(store).outcomes
    assert {key: outcome.source for key, outcome in outcomes.items()} == {
        "ord-1:authorize": "cust-1",
        "ord-2:capture": "ord-2",
    }


def test_a_call_records_its_outcome_from_the_state_that_admitted_it(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    fail(subject, "ord-1:authorize", "cust-1")
    store.loads = 0

    fail(subject, "ord-2:authorize", "cust-2")
    succeed(subject, "ord-3:authorize", "cust-3")

    assert store.loads == 2  # one per call: admitting it; its record reuses that state
    assert list(store.load("payments").outcomes) == ["ord-1:authorize", "ord-2:authorize", "ord-3:authorize"]


def test_an_outcome_recorded_after_another_callers_write_re_reads(store: FakeStore, clock: FakeClock) -> None:
    subject = breaker(store, clock)
    fail(subject, "ord-1:authorize", "cust-1")
    # While ord-2's call is at the provider, another instance records ord-9's failure.
    store.before_replace = lambda: fail(breaker(store, clock), "ord-9:authorize", "cust-9")

    fail(subject, "ord-2:authorize", "cust-2")

    assert list(store.load("payments").outcomes) == ["ord-1:authorize", "ord-9:authorize", "ord-2:authorize"]


def opened_counts() -> list[float]:
    recorded = metrics().metric_set.get("CircuitBreakerOpened")
    return list(recorded["Value"]) if recorded else []


def test_each_opening_counts_one_circuit_breaker_opened_metric(store: FakeStore, clock: FakeClock) -> None:
    """The alarm on CircuitBreakerOpened (infra/template.yaml) counts these: one per transition to OPEN."""
    metrics().clear_metrics()
    subject = breaker(store, clock)

    trip(subject)
    with pytest.raises(CircuitOpen):  # failing fast opens nothing more
        subject.call(lambda: None, key="ord-late:authorize", source="cust-late")
    assert opened_counts() == [1.0]

    clock.advance(POLICY.cooldown_seconds)
    fail(subject, "ord-p:authorize", "cust-p")  # one source's failed probe: no fresh opening
    assert opened_counts() == [1.0]
    fail(subject, "ord-q:authorize", "cust-q")  # failed probes from two sources re-open it
    assert opened_counts() == [1.0, 1.0]

    clock.advance(POLICY.cooldown_seconds)
    succeed(subject, "ord-q:authorize", "cust-q")  # the probe's success closes it: no count
    assert opened_counts() == [1.0, 1.0]
    metrics().clear_metrics()


def test_a_state_change_is_logged_with_counts_and_names_no_customer(
    store: FakeStore, clock: FakeClock, log_lines: io.StringIO
) -> None:
    """The sources are customer ids: the breaker's WARNING says how many failed, never who."""
    subject = breaker(store, clock)
    trip(subject)
    clock.advance(POLICY.cooldown_seconds)
    fail(subject, "ord-p:authorize", "cust-probe")
    fail(subject, "ord-q:authorize", "cust-second")
    clock.advance(POLICY.cooldown_seconds)
    succeed(subject, "ord-r:authorize", "cust-closing")

    changes = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    # A probe's admission (OPEN -> HALF_OPEN) is not logged; its outcome is.
    assert [(change["from_state"], change["to_state"], change["failed_probes"]) for change in changes] == [
        ("CLOSED", "OPEN", 0),
        ("HALF_OPEN", "OPEN", 1),  # one source's failed probe: open, the probe counted
        ("HALF_OPEN", "OPEN", 0),  # a second source's: re-opened with a fresh cooldown
        ("HALF_OPEN", "CLOSED", 0),
    ]
    assert {change["level"] for change in changes} == {"WARNING"}
    assert changes[0]["failing_sources"] >= POLICY.minimum_failing_sources
    assert "cust-" not in log_lines.getvalue()
