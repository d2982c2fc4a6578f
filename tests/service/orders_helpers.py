"""Helpers of the order and saga service tests: seed products, place orders, wait for the sagas.

Waiting is always polling a condition against a deadline; executions run in moto's ASL
interpreter (background threads) and call the real handlers in-process.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from chalice.test import Client

from app import app
from shop.domain import catalog
from shop.models.base import iso_now
from shop.models.catalog import UpdateProductRequest
from shop.models.orders import DeadLetter, Order
from shop.repositories import dead_letters
from shop.repositories import orders as order_repository
from tests.conftest import (
    LocalAws,
    seed_product,  # noqa: F401 - re-exported for the saga tests
)

DEADLINE_SECONDS = 60.0
POLL_SECONDS = 0.05
TERMINAL_EXECUTION = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}


def eventually[T](probe: Callable[[], T | None], what: str, deadline: float = DEADLINE_SECONDS) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after the deadline."""
    until = time.monotonic() + deadline
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > until:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_SECONDS)


def deactivate(sku: str) -> None:
    catalog.update_product(sku, UpdateProductRequest(active=False))


def available(sku: str) -> int:
    return catalog.get_product(sku).available


class PauseAt:
    """A ``faults.before_invoke`` hook that holds the saga before one step until the test releases it.

    ``reached`` is set when the saga arrives at the step (the handler has not run yet).
    """

    def __init__(self, function_name: str, when: Callable[[Any], bool] = lambda event: True) -> None:
        self.function_name = function_name
        self.when = when
        self.reached = threading.Event()
        self.released = threading.Event()

    def __call__(self, function_name: str, event: Any) -> None:
        if function_name == self.function_name and self.when(event) and not self.reached.is_set():
            self.reached.set()
            if not self.released.wait(DEADLINE_SECONDS):
                raise RuntimeError("the test never released the paused step")

    def wait_reached(self) -> None:
        assert self.reached.wait(DEADLINE_SECONDS), f"the saga never reached {self.function_name}"


class HoldEvery:
    """A ``faults.before_invoke`` hook that holds every saga arriving at one step until the test releases
    them (sagas alive in their long retries; several orders at the same step at once)."""

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name
        self.released = threading.Event()
        self.arrived = 0
        self._lock = threading.Lock()

    def __call__(self, function_name: str, event: Any) -> None:
        if function_name != self.function_name:
            return
        with self._lock:
            self.arrived += 1
        if not self.released.wait(DEADLINE_SECONDS):
            raise RuntimeError("the test never released the held step")

    def wait_arrived(self, count: int) -> None:
        eventually(lambda: self.arrived >= count, f"{count} sagas to reach {self.function_name}")


class Shop:
    """The API as a customer or admin sees it, plus what the tests need to look behind it."""

    def __init__(self, local_aws: LocalAws, client: Client) -> None:
        self.aws = local_aws
        self.client = client
        self.sfn = local_aws.client("stepfunctions")
        self.tokens: dict[str, str] = {}

    def token(self, who: str) -> str:
        if who not in self.tokens:
            groups = ["admin"] if who == "admin" else []
            self.tokens[who] = self.aws.identity.token(who, groups=groups)
        return self.tokens[who]

    def headers(self, who: str, key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token(who)}", "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    # ------------------------------------------------------------------ API calls
    def place(
        self,
        items: Iterable[tuple[str, int]],
        *,
        token: str = "tok_visa",
        who: str = "alice",
        key: str | None = None,
        body: dict[str, Any] | None = None,
        prefer: str | None = None,
    ) -> Any:
        payload = body or {"items": [{"sku": sku, "quantity": qty} for sku, qty in items], "payment": {"token": token}}
        headers = self.headers(who, key or str(uuid.uuid4()))
        if prefer is not None:
            headers["Prefer"] = prefer
        return self.client.http.post("/orders", headers=headers, body=json.dumps(payload))

    def place_ok(self, items: Iterable[tuple[str, int]], **kwargs: Any) -> dict[str, Any]:
        response = self.place(items, **kwargs)
        assert response.status_code == 202, response.body
        return response.json_body

    def get(self, order_id: str, who: str = "alice") -> Any:
        return self.client.http.get(f"/orders/{order_id}", headers=self.headers(who))

    def cancel(self, order_id: str, who: str = "alice") -> Any:
        return self.client.http.post(f"/orders/{order_id}/cancel", headers=self.headers(who))

    def redrive(self, order_id: str) -> Any:
        return self.client.http.post(f"/admin/dead-letters/{order_id}/redrive", headers=self.headers("admin"))

    # ------------------------------------------------------------------ behind the API
    def execution_arn(self, machine: str, name: str) -> str:
        arn = self.aws.state_machine(machine)
        return arn.replace(":stateMachine:", ":execution:") + f":{name}"

    def execution_status(self, machine: str, name: str) -> str | None:
        """The status of the named execution; None if none was started. Listed, not described by
        ARN: an EXPRESS name is not unique (a duplicate start runs a second execution, which
        claims nothing and succeeds at once), so any execution still running is RUNNING, then any
        that did not succeed gives its status."""
        pages = self.sfn.get_paginator("list_executions").paginate(stateMachineArn=self.aws.state_machine(machine))
        statuses = [e["status"] for page in pages for e in page["executions"] if e["name"] == name]
        if not statuses:
            return None
        if "RUNNING" in statuses:
            return "RUNNING"
        return next((status for status in statuses if status != "SUCCEEDED"), "SUCCEEDED")

    def wait_execution(self, machine: str, name: str) -> str:
        """The final status of an execution, once it has one."""

        def finished() -> str | None:
            status = self.execution_status(machine, name)
            return status if status in TERMINAL_EXECUTION else None

        return eventually(finished, f"execution {name} of {machine} to finish")

    def wait_checkout(self, order_id: str) -> str:
        return self.wait_execution("CheckoutStateMachine", order_id)

    def wait_refund(self, order_id: str) -> str:
        return self.wait_execution("RefundStateMachine", f"refund-{order_id}")

    def executions(self, machine: str) -> list[dict[str, Any]]:
        arn = self.aws.state_machine(machine)
        return list(self.sfn.list_executions(stateMachineArn=arn)["executions"])

    def order(self, order_id: str) -> Order:
        order = order_repository.get(order_id)
        assert order is not None
        return order

    def wait_status(self, order_id: str, *statuses: str) -> Order:
        def reached() -> Order | None:
            order = order_repository.get(order_id)
            return order if order is not None and order.status in statuses else None

        return eventually(reached, f"order {order_id} to be {' or '.join(statuses)}")

    def dead_letter(self, order_id: str) -> DeadLetter | None:
        return dead_letters.get(order_id)

    def wait_dead_letter(self, order_id: str, status: str) -> DeadLetter:
        def reached() -> DeadLetter | None:
            letter = dead_letters.get(order_id)
            return letter if letter is not None and letter.status == status else None

        return eventually(reached, f"the dead letter of order {order_id} to be {status}")

    def payment(self, order_id: str) -> dict[str, Any] | None:
        body = self.get(order_id, who="admin").json_body
        return body["payment"]


@contextmanager
def open_shop(local_aws: LocalAws) -> Iterator[Shop]:
    # The packaged stage: dev's variables are chalice local's (.chalice/config.json).
    with Client(app, stage_name="prod") as client:
        yield Shop(local_aws, client)


def steps(order: Order | dict[str, Any]) -> list[tuple[str, str]]:
    history = order.history if isinstance(order, Order) else order["history"]
    return [
        (entry.step, entry.status) if not isinstance(entry, dict) else (entry["step"], entry["status"])
        for entry in history
    ]


def open_reconciliation_letter(order_id: str, cause: str, *, now: str | None = None) -> None:
    """An OPEN letter as the books check writes one for a discrepancy of ``order_id``."""
    dead_letters.record(
        order_id=order_id,
        resume="complete",
        failed_step="reconciliation",
        failure=None,
        error="ReconciliationDiscrepancy",
        cause=cause,
        execution_name=None,
        now=now or iso_now(),
    )
