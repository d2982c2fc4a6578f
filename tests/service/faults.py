"""Faults injected at the AWS SDK seam of the code under test, for the recovery tests.

``SdkFault`` hooks botocore's event system on the process's cached client (``shop.aws``), which
the API and every in-process Lambda handler share, so a request fails exactly as AWS would fail
it: ``before`` the request is applied (throttled, a service error) or ``after`` it was applied
with the answer lost (a timeout after the effect). Each fault is scoped by a predicate on the
request and a budget of occurrences, and counts what it injected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.exceptions import ClientError

from shop.domain import payments as payment_domain
from shop.repositories.operations import DynamoBreakerStore

Request = dict[str, Any]


@dataclass
class SdkFault:
    """Fail matching calls of one operation with ``code``, ``times`` times (None: until removed)."""

    operation: str
    code: str
    when: Callable[[Request], bool] = lambda request: True
    times: int | None = None
    moment: Literal["before", "after"] = "before"
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
        return ClientError(
            {
                "Error": {"Code": self.code, "Message": f"injected {self.code}"},
                "ResponseMetadata": {"HTTPStatusCode": 400},
            },
            self.operation,
        )


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
