"""The metrics the alarms and the dashboard read, as the functions emit them: names and dimension sets
exactly as the template's queries name them (CloudWatch matches a metric only on its whole dimension
set), and counts that mean what the alarm descriptions say."""

from __future__ import annotations

import io
import json
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local import lambda_runtime
from infra.local.template import API_HANDLER, load_template
from shop import aws
from tests.conftest import LocalAws
from tests.service.faults import SdkFault, StepFaults, inject, updates_payment_to
from tests.service.orders_helpers import Shop, open_shop, seed_product
from tests.service.test_recovery import sweep
from tests.service.test_saga_claims import _past_the_express_limit, _stop_at_the_time_limit


# ---------------------------------------------------------------------------- recording EMF lines as on AWS
class _Recorder(io.TextIOBase):
    """stdout, each EMF line kept with the function that printed it (the in-process emulator shares one
    Powertools Metrics object, so the line's own `service` is the first function's: use the template's)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lines: list[tuple[str | None, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        function = lambda_runtime.current_function.get()
        for line in text.splitlines():
            if line.startswith('{"_aws"'):
                with self._lock:
                    self.lines.append((function, json.loads(line)))
        return self.inner.write(text)

    def flush(self) -> None:
        self.inner.flush()


def _record(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    """Called in the test body: pytest's own capture puts its sys.stdout back at the start of each phase."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    recording = _Recorder(sys.stdout)
    monkeypatch.setattr(sys, "stdout", recording)
    return recording


def _as_on_aws(local_aws: LocalAws, recorder: _Recorder) -> list[tuple[str, str, frozenset[tuple[str, str]], float]]:
    """(function, metric, dimensions, value) for every value printed, `service` as the template sets it."""
    template = load_template()
    logical = {name: logical_id for logical_id, name in local_aws.stack.function_names.items()}
    out = []
    for function, line in recorder.lines:
        logical_id = logical.get(function or "", API_HANDLER)
        service = template["Resources"][logical_id]["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        (keys,) = directive["Dimensions"]
        dims = frozenset((k, service if k == "service" else line[k]) for k in keys)
        for metric in directive["Metrics"]:
            values = line[metric["Name"]]
            for value in values if isinstance(values, list) else [values]:
                out.append((logical_id, metric["Name"], dims, float(value)))
    return out


def _failure_rate(points: list[tuple[str, str, frozenset[tuple[str, str]], float]]) -> float:
    """CheckoutFailureRateAlarm's expression over these points (one period), its queries as the template
    writes them (exact metric name and dimension set), the minimum-orders gate left out."""
    alarm = load_template()["Resources"]["CheckoutFailureRateAlarm"]["Properties"]
    sums: dict[str, float] = {}
    for query in alarm["Metrics"]:
        if "MetricStat" not in query:
            continue
        metric = query["MetricStat"]["Metric"]
        dims = frozenset((d["Name"], d["Value"]) for d in metric["Dimensions"])
        sums[query["Id"]] = sum(v for _, name, d, v in points if name == metric["MetricName"] and d == dims)
    return 100 * sums["failed"] / sums["finished"] if sums["finished"] else 0.0


def _checkouts_finished(points: list[tuple[str, str, frozenset[tuple[str, str]], float]]) -> float:
    return sum(value for _, name, _, value in points if name == "CheckoutsFinished")


class ProviderOutage(Exception):
    pass


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=10)
    with open_shop(local_aws) as opened:
        yield opened


def test_a_refund_that_needs_attention_is_not_a_failed_checkout(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One checkout, completed. Its customer's refund later fails and is dead-lettered: the checkout
    failure rate ("percent of finished checkouts the shop failed") still reads 0. Before, the alarm read
    every order flagged (OrdersNeedingAttention): 50% here, and on AWS a page saying "check the payment
    breaker" with no checkout failed (a helper's probe)."""
    recorder = _record(monkeypatch)
    placed = shop.place_ok([("MUG-1", 1)])
    order_id = placed["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    refund = local_aws.function("RefundPaymentFunction")

    def outage(function_name: str, event: Any) -> None:
        if function_name == refund:
            raise ProviderOutage("the refund endpoint is down")

    lambda_runtime.faults.before_invoke = outage
    try:
        shop.cancel(order_id)
        assert shop.wait_refund(order_id) == "FAILED"
    finally:
        lambda_runtime.faults.before_invoke = None
    assert shop.order(order_id).status == "NEEDS_ATTENTION"

    points = _as_on_aws(local_aws, recorder)
    attention = [(f, d) for f, name, d, _ in points if name == "OrdersNeedingAttention"]
    assert _failure_rate(points) == 0.0, attention


def test_a_paid_checkout_the_shop_could_not_complete_is_a_failed_checkout(
    shop: Shop, local_aws: LocalAws, faults: StepFaults, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The capture's answer is lost and the reservation cannot be committed: the checkout hands the paid
    order to the refund saga (REFUNDING, no cancel asked), which cannot be started, and flags it: one
    checkout, failed by the shop. An earlier count of flags read it 0% (the diff's reviewer); the
    REFUNDING write, not the later flag, is the one that ends the checkout now."""
    recorder = _record(monkeypatch)
    faults.fail("ReconcilePaymentFunction")
    lost = SdkFault(
        "UpdateItem", "ProvisionedThroughputExceededException", when=updates_payment_to("CAPTURED"), times=5
    )
    refund_not_started = SdkFault(
        "StartExecution", "ThrottlingException", when=lambda r: "Refund" in str(r.get("stateMachineArn", ""))
    )
    with inject(aws.dynamodb(), lost), inject(aws.stepfunctions(), refund_not_started):
        order_id = shop.place_ok([("MUG-1", 1)])["order_id"]
        assert shop.wait_checkout(order_id) == "FAILED"
    order = shop.order(order_id)
    assert order.status == "NEEDS_ATTENTION" and order.has_recorded("start_refund", "REFUNDING")
    assert _failure_rate(_as_on_aws(local_aws, recorder)) == 100.0


def _opens_a_letter(request: dict[str, Any]) -> bool:
    return "Operations" in str(request.get("TableName", "")) and str(request.get("UpdateExpression", "")).startswith(
        "SET #status = :open, order_id"
    )


def test_a_flag_retried_after_its_letter_write_failed_is_still_counted(
    shop: Shop, local_aws: LocalAws, faults: StepFaults, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag step writes NEEDS_ATTENTION, then its letter's write is throttled once; the retry finds
    the order flagged already. Before, the metrics came after the letter, and the retry (nothing
    changed) counted nothing: a failed checkout no alarm saw (the diff's reviewer)."""
    recorder = _record(monkeypatch)
    faults.fail("CompleteOrderFunction")
    throttled = SdkFault("UpdateItem", "ProvisionedThroughputExceededException", when=_opens_a_letter, times=1)
    with inject(aws.dynamodb(), throttled):
        order_id = shop.place_ok([("MUG-1", 1)])["order_id"]
        assert shop.wait_checkout(order_id) == "FAILED"
    assert throttled.injected == 1
    letter = shop.dead_letter(order_id)
    assert shop.order(order_id).status == "NEEDS_ATTENTION" and letter is not None and letter.status == "OPEN"
    counted = [(name, value) for _, name, _, value in _as_on_aws(local_aws, recorder) if name.startswith("Checkouts")]
    assert sorted(counted) == [("CheckoutsFailedByTheShop", 1.0), ("CheckoutsFinished", 1.0)]


def test_a_checkout_flagged_then_redriven_to_completion_is_one_failed_checkout(
    shop: Shop, faults: StepFaults, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The completion fails until an operator's redrive completes the order: one checkout, and the shop
    failed it. Before, the flag and the completion each counted as a finished checkout (the rate read
    50%, and a redrive of every failed checkout halved the rate the alarm saw)."""
    recorder = _record(monkeypatch)
    faults.fail("CompleteOrderFunction")
    order_id = shop.place_ok([("MUG-1", 1)])["order_id"]
    assert shop.wait_checkout(order_id) == "FAILED"
    faults.heal()
    assert shop.redrive(order_id).status_code == 202
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-redrive-1") == "SUCCEEDED"
    assert shop.order(order_id).status == "COMPLETED"

    points = _as_on_aws(local_aws, recorder)
    assert _checkouts_finished(points) == 1.0
    assert _failure_rate(points) == 100.0


def test_a_checkout_the_customer_cancelled_after_its_capture_is_a_finished_checkout(
    shop: Shop, faults: StepFaults, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One checkout fails for the shop (the provider unavailable); another is captured, and its customer
    cancels before it completes, so it is handed over to the refund saga: two finished checkouts, one
    failed. Before, a checkout handed over to a refund was no finished checkout at all (100%)."""
    recorder = _record(monkeypatch)
    unavailable = shop.place_ok([("MUG-1", 1)], token="tok_processingError")["order_id"]
    assert shop.wait_checkout(unavailable) == "SUCCEEDED"
    pause = faults.pause_at("CompleteOrderFunction")
    cancelled = shop.place_ok([("MUG-1", 1)])["order_id"]
    pause.wait_reached()
    assert shop.cancel(cancelled).status_code == 202
    pause.released.set()
    assert shop.wait_checkout(cancelled) == "SUCCEEDED"
    assert shop.wait_refund(cancelled) == "SUCCEEDED"
    assert shop.order(cancelled).status == "REFUNDED"

    points = _as_on_aws(local_aws, recorder)
    assert _checkouts_finished(points) == 2.0
    assert _failure_rate(points) == 50.0


# ---------------------------------------------------------------------------- the sweeper's counts
@pytest.mark.parametrize("workflow_type", ["EXPRESS"], indirect=True)
def test_an_express_continuation_is_not_counted_as_an_orphan_started(
    shop: Shop, local_aws: LocalAws, faults: StepFaults, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard's Recovery widget graphs "orphans started by the sweeper" and "Express sagas continued"
    side by side; a continuation was counted as both (a helper's probe)."""
    pause = faults.pause_at("CapturePaymentFunction")
    order_id = shop.place_ok([("MUG-1", 1)])["order_id"]
    pause.wait_reached()
    _stop_at_the_time_limit(shop, "CheckoutStateMachine", order_id)
    pause.released.set()
    assert shop.wait_checkout(order_id) == "ABORTED"

    recorder = _record(monkeypatch)
    swept = sweep(local_aws, _past_the_express_limit())
    assert swept["started"] == [order_id]  # the sweep's "started" is the continuation
    assert shop.wait_execution("CheckoutStateMachine", f"{order_id}-continue-2") == "SUCCEEDED"

    points = _as_on_aws(local_aws, recorder)
    counted = {
        name: v
        for f, name, d, v in points
        if f == "ResumeOrphanedOrdersFunction" and name in ("OrphanedSagasStarted", "ExpressSagasContinued")
    }
    assert counted == {"ExpressSagasContinued": 1.0}, counted


# ---------------------------------------------------------------------------- the order metrics
def test_the_order_metrics_match_the_alarm_queries_as_on_aws(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _record(monkeypatch)
    done = shop.place_ok([("MUG-1", 1)])["order_id"]
    declined = shop.place_ok([("MUG-1", 1)], token="tok_chargeDeclined")["order_id"]
    unavailable = shop.place_ok([("MUG-1", 1)], token="tok_processingError")["order_id"]
    short = shop.place_ok([("MUG-1", 50)])["order_id"]
    for order_id in (done, declined, unavailable, short):
        assert shop.wait_checkout(order_id) == "SUCCEEDED"
    shop.cancel(done)
    assert shop.wait_refund(done) == "SUCCEEDED"
    reasons = {o: shop.order(o).failure_reason for o in (declined, unavailable, short)}
    assert reasons == {declined: "PAYMENT_DECLINED", unavailable: "PAYMENT_UNAVAILABLE", short: "OUT_OF_STOCK"}

    points = _as_on_aws(local_aws, recorder)
    series = {(name, d) for _, name, d, _ in points}
    orders = frozenset({("service", "orders")})
    for name, dims in [
        ("OrdersCompleted", orders),
        ("OrdersRefunded", orders),
        ("SagaDuration", orders),
        ("OrdersCancelled", orders | {("reason", "PAYMENT_DECLINED")}),
        ("OrdersCancelled", orders | {("reason", "PAYMENT_UNAVAILABLE")}),
        ("OrdersCancelled", orders | {("reason", "OUT_OF_STOCK")}),
    ]:
        assert (name, dims) in series, (name, dims, sorted(series, key=str))
    assert round(_failure_rate(points), 1) == 25.0  # 1 unavailable of 4 finished
    emitters = {f for f, name, _, _ in points if name.startswith("Orders")}
    assert emitters <= {"ClaimOrderFunction", "CompleteOrderFunction", "CancelOrderFunction", "MarkRefundedFunction"}, (
        emitters
    )


def test_the_order_counts_are_printed_by_the_step_that_made_them_whoever_flushes_next(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OrdersCompleted and SagaDuration went into the Powertools buffer that every function of the process
    shares: another function flushing it before the step's own end printed them under its name and service
    (as on AWS never, but it failed the metric tests on a fresh clone now and then). Here another function
    flushes right after each count is made."""
    from shop.domain import order_saga
    from shop.observability import metrics

    recorder = _record(monkeypatch)
    made = order_saga._emit

    def made_then_flushed_elsewhere(*args: Any, **kwargs: Any) -> None:
        made(*args, **kwargs)

        def another_function_ends() -> None:
            lambda_runtime.current_function.set(local_aws.function("NotifyCustomerFunction"))
            metrics().flush_metrics()

        other = threading.Thread(target=another_function_ends)
        other.start()
        other.join(10)

    monkeypatch.setattr(order_saga, "_emit", made_then_flushed_elsewhere)
    order_id = shop.place_ok([("MUG-1", 1)])["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    shop.cancel(order_id)
    assert shop.wait_refund(order_id) == "SUCCEEDED"

    points = _as_on_aws(local_aws, recorder)
    printed_by = {
        (name, f) for f, name, _, _ in points if name in ("OrdersCompleted", "OrdersRefunded", "SagaDuration")
    }
    assert printed_by == {
        ("OrdersCompleted", "CompleteOrderFunction"),
        ("OrdersRefunded", "MarkRefundedFunction"),
        ("SagaDuration", "CompleteOrderFunction"),
        ("SagaDuration", "MarkRefundedFunction"),
    }, printed_by
