"""The payment provider's circuit breaker with its state in OperationsTable (moto)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local import lambda_runtime
from shop.config import payment_settings, table_settings
from shop.domain import payments as domain
from shop.errors import CircuitOpen, PaymentProviderError
from shop.models.money import Money
from shop.models.payments import AuthorizePayment
from shop.payments.circuit_breaker import BreakerPolicy, BreakerState, CircuitBreaker
from shop.payments.simulator import SimulatorProvider
from shop.repositories.operations import DynamoBreakerStore, DynamoSimulatorStore
from shop.repositories.payments import PaymentsRepository
from tests.conftest import FakeClock, LocalAws, random_suffix
from tests.service.orders_helpers import Shop, open_shop, seed_product

# Opens at >= 50% failures among >= 3 calls, the failures from >= 2 sources, within 60 s.
POLICY = BreakerPolicy(
    failure_rate_percent=50.0, minimum_calls=3, minimum_failing_sources=2, window_seconds=60.0, cooldown_seconds=30.0
)


def fail_transiently() -> None:
    raise PaymentProviderError("provider 503")


def instance(clock: FakeClock, name: str = "shared") -> CircuitBreaker:
    """A breaker as one function instance builds it: its own objects, the shared table."""
    return CircuitBreaker(name, DynamoBreakerStore(), POLICY, clock=clock)


def fail(breaker: CircuitBreaker, n: int) -> None:
    """Order ``n`` of customer ``n`` fails transiently."""
    with pytest.raises(PaymentProviderError):
        breaker.call(fail_transiently, key=f"ord-{n}:authorize", source=f"cust-{n}")


def trip(breaker: CircuitBreaker) -> None:
    """The first failure draws the breaker's attention (uncounted), then minimum_calls open it."""
    for n in range(1 + POLICY.minimum_calls):
        fail(breaker, n)


def invoke_authorize(
    local_aws: LocalAws, order_id: str, token: str, customer_id: str | None = None
) -> tuple[dict[str, Any], str | None]:
    event: dict[str, Any] = {"order_id": order_id, "amount": {"amount": 100, "currency": "USD"}, "payment_token": token}
    if customer_id is not None:
        event["customer_id"] = customer_id
    response = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function("AuthorizePaymentFunction"), Payload=json.dumps(event)
    )
    return json.loads(response["Payload"].read()), response.get("FunctionError")


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=50)
    with open_shop(local_aws) as opened:
        yield opened


# ---------------------------------------------------------------------------- through the sagas
def test_one_customers_failing_card_does_not_cancel_other_customers_orders(shop: Shop, local_aws: LocalAws) -> None:
    """Issue "Recovery that holds", class 5: three orders of one customer with a card that fails
    transiently every time (each authorization attempted again by the saga's retries) used to
    open the breaker, so the next customer's healthy order was cancelled PAYMENT_UNAVAILABLE."""
    authorize = local_aws.function("AuthorizePaymentFunction")
    attempts: list[Any] = []

    def count(function_name: str, event: Any) -> None:
        if function_name == authorize:
            attempts.append(event)

    lambda_runtime.faults.before_invoke = count
    failing = [shop.place_ok([("MUG-1", 1)], token="tok_processingError", who="mallory") for _ in range(3)]
    for placed in failing:
        assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
        order = shop.order(placed["order_id"])
        assert (order.status, order.failure_reason) == ("CANCELLED", "PAYMENT_UNAVAILABLE")

    assert len(attempts) >= 2 * len(failing)  # every authorization was retried...
    status = domain.circuit_breaker_status()
    # ...yet counts as one outcome.
    assert (status.state, status.calls_in_window, status.failures_in_window) == ("CLOSED", 3, 3)

    healthy = shop.place_ok([("MUG-1", 1)], token="tok_visa", who="alice")

    assert shop.wait_checkout(healthy["order_id"]) == "SUCCEEDED"
    order = shop.order(healthy["order_id"])
    assert (order.status, order.failure_reason) == ("COMPLETED", None)
    status = domain.circuit_breaker_status()
    # Its authorization and capture count as successes while failures are in the window.
    assert (status.state, status.calls_in_window, status.failures_in_window) == ("CLOSED", 5, 3)


# ---------------------------------------------------------------------------- many calls in flight
def test_many_authorizations_in_flight_as_failures_start_do_not_open_the_breaker(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 authorizations all admitted by the breaker before the first completes (40 function
    instances in flight: an ordinary busy minute), one in four failing transiently, each of its own
    customer: 25%, half the threshold. The blind calls' successes are not recorded, so counting
    their failures read 10 of 10 failed, opened the breaker, and refused the next healthy card."""
    settings = payment_settings()
    tag = random_suffix()
    requests = [
        AuthorizePayment(
            order_id=f"ord-{tag}-{n}",
            amount=Money(amount=100),
            payment_token="tok_processingError" if n % 4 == 0 else "tok_visa",
            customer_id=f"cust-{tag}-{n}",
        )
        for n in range(4 * settings.breaker_minimum_calls)
    ]
    index = {request.order_id: n for n, request in enumerate(requests)}
    in_flight = threading.Barrier(len(requests))
    turns = [threading.Event() for _ in range(len(requests) + 1)]
    original = SimulatorProvider.authorize

    def authorize(self: SimulatorProvider, amount: Money, token: str, idempotency_key: str) -> Any:
        n = index[idempotency_key.split(":")[0]]
        in_flight.wait(timeout=60)  # every call was admitted by the breaker
        assert turns[n].wait(timeout=60)  # and they complete in order: F S S S F S S S ...
        return original(self, amount, token, idempotency_key)

    monkeypatch.setattr(SimulatorProvider, "authorize", authorize)
    outcomes: dict[int, str] = {}

    def run(n: int) -> None:
        try:
            outcomes[n] = domain.authorize_payment(requests[n]).status
        except PaymentProviderError:
            outcomes[n] = "FAILED"
        finally:
            turns[n + 1].set()  # the next call completes once this one recorded its outcome

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(requests))]
    for thread in threads:
        thread.start()
    turns[0].set()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    monkeypatch.setattr(SimulatorProvider, "authorize", original)
    assert [outcomes[n] for n in range(len(requests))] == ["FAILED", "AUTHORIZED", "AUTHORIZED", "AUTHORIZED"] * (
        len(requests) // 4
    )

    status = domain.circuit_breaker_status()
    assert (status.state, status.calls_in_window, status.failures_in_window) == ("CLOSED", 0, 0)
    # The failures are stored (calls admitted from now on record every outcome) but not counted.
    stored = domain.payment_breaker().state()
    assert sorted(stored.outcomes) == sorted(f"{r.order_id}:authorize" for r in requests[::4])
    assert not any(outcome.counted for outcome in stored.outcomes.values())

    alice = AuthorizePayment(order_id=f"ord-{random_suffix()}", amount=Money(amount=100), payment_token="tok_visa")
    assert domain.authorize_payment(alice).status == "AUTHORIZED"
    status = domain.circuit_breaker_status()
    assert (status.state, status.calls_in_window, status.failures_in_window) == ("CLOSED", 1, 0)


# ---------------------------------------------------------------------------- through the step
def test_the_step_opens_the_breaker_when_many_orders_fail_then_fails_fast(local_aws: LocalAws) -> None:
    settings = payment_settings()
    calls = settings.breaker_minimum_calls
    # The first failure draws the breaker's attention; it counts the outcomes from then on.
    for n in range(1 + calls):
        payload, error = invoke_authorize(local_aws, f"ord-{random_suffix()}", "tok_processingError", f"cust-{n}")
        assert payload["errorType"] == "PaymentProviderError"

    status = domain.circuit_breaker_status()
    assert (status.state, status.calls_in_window, status.failures_in_window) == ("OPEN", calls, calls)
    assert (status.failure_rate_percent, status.failing_sources) == (100.0, calls)
    assert (status.minimum_calls, status.minimum_failing_sources) == (calls, settings.breaker_minimum_failing_sources)
    assert status.failure_rate_threshold_percent == settings.breaker_failure_rate_percent
    assert status.retry_after_seconds is not None and status.retry_after_seconds > 0
    assert status.opened_at is not None

    order_id = f"ord-{random_suffix()}"
    payload, error = invoke_authorize(local_aws, order_id, "tok_visa", "someone-else")
    assert error is not None
    assert payload["errorType"] == "CircuitOpen"
    # Failing fast: the provider never saw the call, and nothing was authorized.
    assert DynamoSimulatorStore().result(f"{order_id}:authorize") is None
    payment = PaymentsRepository().get(order_id)
    assert payment is not None and payment.status == "PENDING"


def test_the_step_counts_one_customers_failures_as_one_source(local_aws: LocalAws) -> None:
    orders = [f"ord-{random_suffix()}" for _ in range(payment_settings().breaker_minimum_calls + 2)]
    for order_id in orders:
        for _ in range(2):  # the saga's retry of the same authorization
            payload, _ = invoke_authorize(local_aws, order_id, "tok_processingError", "mallory")
            assert payload["errorType"] == "PaymentProviderError"

    status = domain.circuit_breaker_status()
    assert (status.state, status.calls_in_window, status.failures_in_window) == ("CLOSED", len(orders), len(orders))
    assert status.failing_sources == 1
    payload, error = invoke_authorize(local_aws, f"ord-{random_suffix()}", "tok_visa", "alice")
    assert error is None and payload["status"] == "AUTHORIZED"


def test_status_of_a_breaker_that_never_tripped(local_aws: LocalAws) -> None:
    status = domain.circuit_breaker_status()
    assert (status.state, status.calls_in_window, status.failures_in_window) == ("CLOSED", 0, 0)
    assert (status.failure_rate_percent, status.failing_sources, status.retry_after_seconds) == (0.0, 0, None)
    assert status.probe_in_flight is False
    assert status.name == "payment-provider:simulator"


def test_other_thresholds_come_from_the_runtime_parameters(local_aws: LocalAws) -> None:
    local_aws.set_runtime_parameter("payment-breaker-minimum-calls", "2")
    local_aws.set_runtime_parameter("payment-breaker-minimum-failing-sources", "2")
    local_aws.set_runtime_parameter("payment-breaker-failure-rate-percent", "75")

    for n in range(2):  # the first draws attention, the second is counted
        invoke_authorize(local_aws, f"ord-{random_suffix()}", "tok_processingError", f"cust-{n}")
    assert domain.circuit_breaker_status().state == "CLOSED"
    invoke_authorize(local_aws, f"ord-{random_suffix()}", "tok_processingError", "cust-2")

    status = domain.circuit_breaker_status()
    assert (status.state, status.minimum_calls, status.failure_rate_threshold_percent) == ("OPEN", 2, 75.0)


# ---------------------------------------------------------------------------- instances sharing the table
def test_outcomes_round_trip_through_the_table(local_aws: LocalAws) -> None:
    clock = FakeClock()
    clock.now += 0.123
    breaker = instance(clock)
    fail(breaker, 1)
    assert breaker.call(lambda: "ok", key="ord-2:capture", source="ord-2") == "ok"

    outcomes = DynamoBreakerStore().load("shared").outcomes
    assert list(outcomes) == ["ord-1:authorize", "ord-2:capture"]
    assert (outcomes["ord-1:authorize"].failed, outcomes["ord-1:authorize"].at) == (True, clock.now)
    assert outcomes["ord-1:authorize"].counted is False  # admitted while the window held no failure
    assert (outcomes["ord-2:capture"].failed, outcomes["ord-2:capture"].source) == (False, "ord-2")
    assert outcomes["ord-2:capture"].counted is True


def test_the_window_is_stored_as_one_string_and_the_earlier_map_form_still_loads(local_aws: LocalAws) -> None:
    clock = FakeClock()
    fail(instance(clock, "compact"), 1)
    fail(instance(clock, "compact"), 2)
    dynamodb, table = local_aws.client("dynamodb"), table_settings().operations_table
    key = {"pk": {"S": "circuit#compact"}, "sk": {"S": "state"}}
    stored = dynamodb.get_item(TableName=table, Key=key)["Item"]
    assert "outcomes" not in stored and "failed_probes" not in stored
    # [key, at, flags, source]: flags 1 = failed, + 2 = not counted (admitted blind).
    assert json.loads(stored["window"]["S"]) == [
        ["ord-1:authorize", clock.now, 3, "cust-1"],
        ["ord-2:authorize", clock.now, 1, "cust-2"],
    ]

    # A breaker item written before the compact form: its outcomes as a map of maps.
    earlier = {
        "pk": {"S": "circuit#earlier"},
        "sk": {"S": "state"},
        "state": {"S": "CLOSED"},
        "version": {"N": "3"},
        "outcomes": {
            "M": {"ord-7:capture": {"M": {"failed": {"BOOL": True}, "at": {"N": "12.5"}, "source": {"S": "cust-7"}}}}
        },
    }
    dynamodb.put_item(TableName=table, Item=earlier)
    state = DynamoBreakerStore().load("earlier")
    assert state.version == 3
    assert state.outcomes["ord-7:capture"].model_dump() == {
        "failed": True,
        "at": 12.5,
        "source": "cust-7",
        "counted": True,
    }

    # A window string written before outcomes had a counted flag: its rows' 0/1 are counted.
    dynamodb.put_item(
        TableName=table,
        Item={
            "pk": {"S": "circuit#before-flags"},
            "sk": {"S": "state"},
            "state": {"S": "CLOSED"},
            "version": {"N": "2"},
            "window": {"S": '[["ord-8:authorize",12.5,1,"cust-8"],["ord-9:capture",13.0,0,"ord-9"]]'},
        },
    )
    outcomes = DynamoBreakerStore().load("before-flags").outcomes
    assert [(o.failed, o.counted) for o in outcomes.values()] == [(True, True), (False, True)]


def test_failures_seen_by_different_instances_add_up(local_aws: LocalAws) -> None:
    clock = FakeClock()
    first, second = instance(clock), instance(clock)
    for n, breaker in enumerate((first, second, first, second)):
        fail(breaker, n)

    calls: list[str] = []
    for breaker in (first, second):
        with pytest.raises(CircuitOpen):
            breaker.call(lambda: calls.append("reached the provider"), key="ord-x:authorize", source="cust-x")
    assert calls == []
    assert DynamoBreakerStore().load("shared").state == "OPEN"


def test_retries_on_different_instances_count_once(local_aws: LocalAws) -> None:
    clock = FakeClock()
    first, second = instance(clock), instance(clock)
    for breaker in (first, second, first, second):
        fail(breaker, 1)
    assert first.stats().calls == 1
    assert DynamoBreakerStore().load("shared").state == "CLOSED"


def test_half_open_lets_exactly_one_probe_through(local_aws: LocalAws) -> None:
    clock = FakeClock()
    first, second = instance(clock), instance(clock)
    trip(first)
    clock.advance(POLICY.cooldown_seconds)
    others: list[str] = []

    def probe() -> str:
        assert DynamoBreakerStore().load("shared").state == "HALF_OPEN"
        with pytest.raises(CircuitOpen):
            second.call(lambda: others.append("second got through"), key="ord-s:authorize", source="cust-s")
        return "healthy"

    assert first.call(probe, key="ord-p:authorize", source="cust-p") == "healthy"
    assert others == []
    state = DynamoBreakerStore().load("shared")
    assert (state.state, state.outcomes) == ("CLOSED", {})
    assert second.call(lambda: "through", key="ord-s:authorize", source="cust-s") == "through"


def test_failed_probes_from_enough_sources_reopen_for_every_instance(local_aws: LocalAws) -> None:
    clock = FakeClock()
    first, second = instance(clock), instance(clock)
    trip(second)
    clock.advance(POLICY.cooldown_seconds)
    fail(first, 99)
    assert DynamoBreakerStore().load("shared").failed_probes == {"cust-99": clock.now}
    fail(second, 98)  # another source's probe fails too: a fresh cooldown
    with pytest.raises(CircuitOpen):
        first.call(lambda: None, key="ord-s:authorize", source="cust-s")
    state = DynamoBreakerStore().load("shared")
    assert (state.state, state.opened_at, state.failed_probes) == ("OPEN", clock.now, {})


def test_one_customers_failing_probe_does_not_keep_the_breaker_open_for_everyone(local_aws: LocalAws) -> None:
    """After the cooldown Mallory's always-failing card is the first call, round after round; it
    used to re-open the breaker each time, so Alice's healthy card was refused for good."""
    clock = FakeClock()
    mallorys, alices = instance(clock), instance(clock)
    # A provider outage opened it (as trip() does).
    assert DynamoBreakerStore().replace("shared", BreakerState(state="OPEN", opened_at=clock.now), 0)
    for round_ in range(3):
        clock.advance(POLICY.cooldown_seconds)
        with pytest.raises(PaymentProviderError):  # she is the half-open probe
            mallorys.call(fail_transiently, key=f"ord-m{round_}:authorize", source="mallory")
        assert alices.call(lambda: "authorized", key=f"ord-a{round_}:authorize", source="alice") == "authorized"
        assert DynamoBreakerStore().load("shared").state == "CLOSED"


def test_concurrent_callers_after_the_cooldown_claim_one_probe(local_aws: LocalAws) -> None:
    clock = FakeClock()
    trip(instance(clock))
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
            breaker.call(probe, key=f"ord-{number}:authorize", source=f"cust-{number}")
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


def test_concurrent_failures_are_all_counted(local_aws: LocalAws) -> None:
    clock = FakeClock()
    wide = BreakerPolicy(
        failure_rate_percent=50.0,
        minimum_calls=100,
        minimum_failing_sources=2,
        window_seconds=60.0,
        cooldown_seconds=30.0,
    )
    callers = 4
    start = threading.Barrier(callers)

    def caller(number: int) -> None:
        breaker = CircuitBreaker("shared", DynamoBreakerStore(), wide, clock=clock)
        start.wait(timeout=30)
        with contextlib.suppress(PaymentProviderError):
            breaker.call(fail_transiently, key=f"ord-{number}:authorize", source=f"cust-{number}")

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Every compare-and-set that lost re-read and re-applied its outcome.
    assert len(DynamoBreakerStore().load("shared").outcomes) == callers


def test_breakers_of_different_providers_are_independent(local_aws: LocalAws) -> None:
    clock = FakeClock()
    trip(instance(clock, "provider-a"))
    assert DynamoBreakerStore().load("provider-a").state == "OPEN"
    assert instance(clock, "provider-b").call(lambda: "fine", key="ord-b:authorize", source="cust-b") == "fine"
