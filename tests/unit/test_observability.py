"""Metrics with their own dimensions honour POWERTOOLS_METRICS_DISABLED, as the Metrics object does."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from aws_lambda_powertools.metrics import MetricUnit

from shop.observability import dimensioned_metric


def test_a_dimensioned_metric_is_one_emf_line_with_its_dimensions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Shop")

    dimensioned_metric("OrdersCancelled", MetricUnit.Count, 1, reason="OUT_OF_STOCK")

    line = json.loads(capsys.readouterr().out.strip())
    assert line["OrdersCancelled"] == [1.0] and line["reason"] == "OUT_OF_STOCK"


def test_no_line_when_metrics_are_disabled(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")

    dimensioned_metric("OrdersCancelled", MetricUnit.Count, 1, reason="OUT_OF_STOCK")

    assert capsys.readouterr().out == ""


def test_concurrent_invocations_of_two_functions_each_log_under_their_own_name() -> None:
    # The local emulator runs many functions' invocations in one process at once: the invocation's
    # ids that Powertools appends are process-wide, and the last to start named every line.
    import threading
    from types import SimpleNamespace

    from shop.observability import instrumented, logger

    second_logged = threading.Event()

    def context(name: str) -> SimpleNamespace:
        return SimpleNamespace(
            function_name=name,
            memory_limit_in_mb=256,
            invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
            aws_request_id=f"request-of-{name}",
        )

    @instrumented
    def first(event: dict[str, Any], _: Any) -> None:
        second_logged.wait(10)  # the second invocation starts, and logs, in between
        logger().warning("first speaking")

    @instrumented
    def second(event: dict[str, Any], _: Any) -> None:
        logger().warning("second speaking")
        second_logged.set()

    # The lines as Powertools formats them, whatever stream its own handler was given first.
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(logger().registered_formatter)
    logger().addHandler(handler)
    try:
        running = threading.Thread(target=first, args=({"order_id": "o-1"}, context("shop-First")))
        running.start()
        second({"order_id": "o-2"}, context("shop-Second"))
        running.join(10)
    finally:
        logging.getLogger(logger().name).removeHandler(handler)

    lines = [json.loads(line) for line in written.getvalue().splitlines() if "speaking" in line]
    assert {
        (line["message"], line["function_name"], line["function_request_id"], line["order_id"]) for line in lines
    } == {
        ("first speaking", "shop-First", "request-of-shop-First", "o-1"),
        ("second speaking", "shop-Second", "request-of-shop-Second", "o-2"),
    }


def test_the_correlation_keys_of_each_kind_of_event() -> None:
    """A function's lines carry the order (and the event or execution) its event is about: a saga step's
    input, a shop event a consumer reads, a status change the stopped-execution handler reads. The
    last two carried none (a helper's probe: a failing consumer's only line named no order)."""
    from shop.observability import correlation_keys

    step = {"order_id": "o-1", "execution_name": "o-1", "claim": {"epoch": 1}}
    assert correlation_keys(step) == {"order_id": "o-1", "execution_name": "o-1"}
    shop_event = {"detail-type": "OrderCompleted", "detail": {"order_id": "o-2", "event_id": "o-2:COMPLETED:5"}}
    assert correlation_keys(shop_event) == {"order_id": "o-2", "event_id": "o-2:COMPLETED:5"}
    stopped = {
        "detail-type": "Step Functions Execution Status Change",
        "detail": {"name": "o-3-redrive-1", "status": "FAILED", "input": json.dumps({"order_id": "o-3"})},
    }
    assert correlation_keys(stopped) == {"order_id": "o-3", "execution_name": "o-3-redrive-1"}
    unreadable = {"detail-type": "Step Functions Execution Status Change", "detail": {"input": "{not json"}}
    assert correlation_keys(unreadable) == {}
    assert correlation_keys({"detail": "text", "order_id": 7}) == {}
    assert correlation_keys(["not", "an", "event"]) == {}
