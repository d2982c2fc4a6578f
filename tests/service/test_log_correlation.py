"""What an operator finds in a function's lines: the order (and execution or event) each line is about,
as Powertools writes them to CloudWatch, for the functions that are not saga steps (a helper's probes:
the stopped-execution handler's and the consumers' lines named no order)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local import lambda_runtime
from shop import aws
from shop.observability import logger
from tests.conftest import LocalAws
from tests.service.faults import SdkFault, inject
from tests.service.orders_helpers import Shop, eventually, open_shop, seed_product


class JsonLines(logging.Handler):
    """Every line the shared Powertools logger writes, formatted by its own formatter (thread-local keys
    included), with the function that wrote it."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logger().registered_formatter)
        self.lines: list[tuple[str | None, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = json.loads(self.format(record))
        with self._lock:
            self.lines.append((lambda_runtime.current_function.get(), line))


@pytest.fixture
def log_lines() -> Iterator[JsonLines]:
    handler = JsonLines()
    shared = logger()
    shared.addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger(shared.name).removeHandler(handler)


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=10)
    with open_shop(local_aws) as opened:
        yield opened


class Down(Exception):
    pass


def test_the_error_line_of_an_order_settled_from_its_execution_event_names_the_order(
    shop: Shop, local_aws: LocalAws, log_lines: JsonLines
) -> None:
    """The checkout's void and flag steps are down: the execution FAILS and SettleStoppedExecution
    dead-letters the order. Its ERROR line "saga could not finish; order needs attention" is what an
    operator paged by orders-needing-attention searches for by order id (README: every step's lines carry
    order_id and the execution name)."""
    names = {local_aws.function(n) for n in ("VoidPaymentFunction", "FlagOrderFunction")}

    def fail(function_name: str, event: Any) -> None:
        if function_name in names:
            raise Down(f"{function_name} is down")

    lambda_runtime.faults.before_invoke = fail
    order_id = shop.place_ok([("MUG-1", 1)], token="tok_chargeDeclined")["order_id"]
    assert shop.wait_checkout(order_id) == "FAILED"
    shop.wait_dead_letter(order_id, "OPEN")
    lambda_runtime.faults.clear()

    settle = local_aws.function("SettleStoppedExecutionFunction")

    def settle_errors() -> list[dict[str, Any]]:
        # The letter is written before the line: its being OPEN does not mean the line is out yet.
        return [line for fn, line in log_lines.lines if fn == settle and line["level"] == "ERROR"]

    from_settle = eventually(settle_errors, "the settle function's ERROR line")
    assert any(line["message"].startswith("saga could not finish") for line in from_settle), from_settle
    for line in from_settle:
        assert line.get("order_id") == order_id, f"no order_id on the settle function's ERROR line: {line}"
        assert line.get("execution_name") == order_id, line  # the checkout's execution is named after its order


def test_the_error_line_of_a_failing_notification_consumer_names_the_order_and_event(
    shop: Shop, local_aws: LocalAws, log_lines: JsonLines
) -> None:
    """NotifyCustomer fails on an OrderCompleted (its outbox write refused). The runbook of
    consumer-failures says: read the function's logs for why it keeps failing. Its only line must say
    which order (and event) it failed on, as the saga steps' lines do."""
    event = {
        "version": "0",
        "id": "5b7e0c1e-0000-0000-0000-000000000001",
        "detail-type": "OrderCompleted",
        "source": "shop.orders",
        "account": "123456789012",
        "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "version": 1,
            "event_id": "ord-probe-1:COMPLETED:7",
            "occurred_at": "2026-01-01T00:00:00.000Z",
            "order_id": "ord-probe-1",
            "customer_id": "alice",
            "status": "COMPLETED",
            "total": {"amount": 1250, "currency": "USD"},
        },
    }
    refused = SdkFault("PutItem", "AccessDeniedException", when=lambda r: "Notifications" in str(r))
    refused_tx = SdkFault("TransactWriteItems", "AccessDeniedException", when=lambda r: "Notifications" in str(r))
    refused_up = SdkFault("UpdateItem", "AccessDeniedException", when=lambda r: "Notifications" in str(r))
    with inject(aws.dynamodb(), refused), inject(aws.dynamodb(), refused_tx), inject(aws.dynamodb(), refused_up):
        answer = local_aws.client("lambda").invoke(
            FunctionName=local_aws.function("NotifyCustomerFunction"), Payload=json.dumps(event)
        )
    assert "FunctionError" in answer, answer["Payload"].read()
    notify = local_aws.function("NotifyCustomerFunction")
    errors = [line for fn, line in log_lines.lines if fn == notify and line["level"] == "ERROR"]
    assert errors, "the consumer logged no ERROR line"
    for line in errors:
        assert (line.get("order_id"), line.get("event_id")) == ("ord-probe-1", "ord-probe-1:COMPLETED:7"), line
