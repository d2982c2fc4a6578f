"""Faults injected at the AWS SDK seam of the code under test, for the recovery tests, and at the
Lambda runtime's seam for the saga tests (``StepFaults``, the service tier's ``faults`` fixture).

``SdkFault`` hooks botocore's event system on the process's cached client (``shop.aws``), which
the API and every in-process Lambda handler share, so a request fails exactly as AWS would fail
it: ``before`` the request is applied (throttled, a service error) or ``after`` it was applied
with the answer lost (a timeout after the effect). Each fault is scoped by a predicate on the
request and a budget of occurrences, and counts what it injected.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.exceptions import ClientError

from infra.local import lambda_runtime
from shop.domain import payments as payment_domain
from shop.repositories.operations import DynamoBreakerStore
from tests.conftest import LocalAws
from tests.service.orders_helpers import PauseAt

Request = dict[str, Any]


@dataclass
class SdkFault:
    """Fail matching calls of one operation with ``code``, ``times`` times (None: until removed)."""

    operation: str
    code: str
    when: Callable[[Request], bool] = lambda request: True
    times: int | None = None
    moment: Literal["before", "after"] = "before"
    # A TransactionCanceledException's per-action reasons (``CancellationReasons`` codes), in order.
    reasons: tuple[str, ...] = ()
    injected: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _claim(self, request: Request) -> bool:
        if not self.when(request):
            return False
        with self._lock:
            if self.times is not None and self.injected >= self.times:
                return False
            self.injected += 1
            return True

    def _error(self) -> ClientError:
        response: dict[str, Any] = {
            "Error": {"Code": self.code, "Message": f"injected {self.code}"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        if self.reasons:
            response["CancellationReasons"] = [{"Code": code} for code in self.reasons]
        return ClientError(response, self.operation)


@contextmanager
def inject(client: Any, fault: SdkFault) -> Iterator[SdkFault]:
    """Apply ``fault`` to ``client`` (one of ``shop.aws``'s cached clients) while the block runs."""
    event_name = f"{client.meta.service_model.service_name.replace(' ', '-').lower()}.{fault.operation}"
    pending: dict[int, Request] = {}

    def remember(params: dict[str, Any], **_: Any) -> None:
        pending[threading.get_ident()] = dict(params)
        if fault.moment == "before" and fault._claim(params):
            raise fault._error()

    def after(**kwargs: Any) -> None:
        request = pending.pop(threading.get_ident(), {})
        http_response = kwargs.get("http_response")
        succeeded = http_response is None or http_response.status_code < 300
        if fault.moment == "after" and succeeded and fault._claim(request):
            raise fault._error()

    client.meta.events.register(f"provide-client-params.{event_name}", remember)
    client.meta.events.register(f"after-call.{event_name}", after)
    try:
        yield fault
    finally:
        client.meta.events.unregister(f"provide-client-params.{event_name}", remember)
        client.meta.events.unregister(f"after-call.{event_name}", after)


def updates_payment_to(status: str) -> Callable[[Request], bool]:
    """Matches the payments ledger's UpdateItem that moves a payment to ``status``."""

    def matches(request: Request) -> bool:
        return "PaymentsTable" in str(request.get("TableName", "")) and str(
            request.get("UpdateExpression", "")
        ).startswith(f"SET #status = :{status.lower()}")

    return matches


def open_breaker() -> None:
    """Open the payment provider's shared circuit breaker now, as a burst of failures would."""
    breaker = payment_domain.payment_breaker()
    current = breaker.state()
    opened = current.model_copy(update={"state": "OPEN", "opened_at": time.time()})
    assert DynamoBreakerStore().replace(breaker.name, opened, current.version)


class Down(Exception):
    """A step's dependency is down: an error no first retrier names (only States.ALL takes it)."""


class StepFaults:
    """The Lambda runtime's fault hooks for one test: steps that are down, answers lost once, a pause.

    ``lose_answer_once``: the named functions run, then their answer is lost (a Lambda timeout
    after the effect) the first time per execution and step, so each task state's first retrier
    runs it again.
    """

    def __init__(self, local_aws: LocalAws) -> None:
        self._aws = local_aws
        self._logical_ids = {name: logical_id for logical_id, name in local_aws.stack.function_names.items()}
        self._lock = threading.Lock()
        self._down: dict[str, tuple[type[Exception], Callable[[Any], bool]]] = {}
        self._losing: set[str] = set()
        self.refused: Counter[str] = Counter()
        self.lost: list[tuple[str, str | None]] = []
        self._lost_keys: set[tuple[str, str, str | None]] = set()
        self._pause: PauseAt | None = None
        lambda_runtime.faults.before_invoke = self._before
        lambda_runtime.faults.after_invoke = self._after

    def fail(
        self, logical_id: str, error: type[Exception] = Down, when: Callable[[Any], bool] = lambda e: True
    ) -> None:
        self._down[logical_id] = (error, when)

    def heal(self) -> None:
        self._down.clear()

    def lose_answer_once(self, *logical_ids: str) -> None:
        self._losing.update(logical_ids)

    def pause_at(self, logical_id: str) -> PauseAt:
        self._pause = PauseAt(self._aws.function(logical_id))
        return self._pause

    def _before(self, function_name: str, event: Any) -> None:
        if self._pause is not None:
            self._pause(function_name, event)
        logical_id = self._logical_ids.get(function_name, function_name)
        error, when = self._down.get(logical_id, (None, None))
        if error is not None and when is not None and when(event):
            with self._lock:
                self.refused[logical_id] += 1
            raise error(f"{logical_id} is down")

    def _after(self, function_name: str, event: Any) -> None:
        logical_id = self._logical_ids.get(function_name, function_name)
        if logical_id not in self._losing:
            return
        key = (logical_id, str(event.get("execution_name")), event.get("step"))
        with self._lock:
            if key in self._lost_keys:
                return
            self._lost_keys.add(key)
            self.lost.append((logical_id, event.get("step")))
        raise lambda_runtime.lambda_timeout()
