"""Seeded fault profiles for the local stack: faults enter at the real seams, never in domain code.

A ``FaultInjector`` installs one profile into the emulator's adapters:

- Lambda invoke (``lambda_runtime``): throttled or a service error before the handler runs; the
  handler runs and its answer is lost (``Sandbox.Timedout``, the effect stays); the same event
  delivered twice.
- DynamoDB requests (``moto_dynamodb``): throttling, ``ProvisionedThroughputExceededException``
  and ``InternalServerError`` before the request is applied; a write applied with its answer
  lost (``InternalServerError`` after the effect); ``TransactionConflict`` on transactions. The
  payment simulator keeps its ledger in DynamoDB too, so its writes fail the same ways: a
  provider call applied with its answer lost.
- EventBridge (``moto_events``): a ``PutEvents`` whose entry is refused (throttled, or an
  internal failure), so that a publisher's record fails and its stream retries it.
- Step Functions (``moto_stepfunctions``): ``StartExecution`` throttled for a window that outlasts
  the SDK's retries, so that orders are left for the orphan sweeper.
- The payment provider (the simulator, which stands in for a remote service): a slow answer; a
  transient error before the call has any effect; the call applied and its answer lost; an
  outage window during which every call fails transiently. Declines and failing cards come from
  the workload's test tokens.

Every decision comes from one ``random.Random(seed)``, so a profile and a seed name one run (the
interleaving of threads still varies); every injected fault is counted by kind.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from infra.local import lambda_runtime, moto_dynamodb, moto_events, moto_stepfunctions
from shop.errors import PaymentProviderError
from shop.payments.simulator import SimulatorProvider

WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"})
# StartExecution throttling comes as an outage window that outlasts the SDK's retries and backoff
# (shop.aws: 4 retries, a few seconds in all), so a caller sees the start fail.
START_EXECUTION_OUTAGE_SECONDS = 10.0
PROVIDER_OUTAGE_SECONDS = 5.0
# After an outage window, a healthy stretch this many times as long before the next can open:
# with many calls a second, a per-call chance would otherwise keep the service down nearly always.
CALM_AFTER_OUTAGE = 3.0
PROVIDER_SLOW_SECONDS = (0.2, 1.5)
# A kind not yet injected after this many times its expected wait (1 / probability chances) is
# injected at its next chance: at the rates a profile uses, pure chance would miss it about once
# in 20 runs (e^-3), and a test that demands every kind would then fail for no fault of the shop.
COVERAGE_FLOOR = 3.0
# ... or after this many chances, whichever comes first: a seam that few calls reach (the provider
# behind an open breaker: 300 chances of a 1 % kind may never come; the Express starts a StartExecution
# outage leaves, fewer than 30 in some 300-order runs) still gets every kind once.
FIRST_INJECTION_BY_CHANCE = 10
# The simulator's calls that reach the "remote" provider (``lookup`` is what reconciliation asks).
PROVIDER_CALLS = ("authorize", "capture", "void", "refund", "lookup")
PROVIDER_EFFECTS = frozenset({"authorize", "capture", "void", "refund"})


@dataclass(frozen=True)
class FaultProfile:
    """Probabilities per request (or invocation) of each kind of fault."""

    name: str
    lambda_throttled: float = 0.0
    lambda_service_error: float = 0.0
    lambda_answer_lost: float = 0.0
    lambda_duplicate: float = 0.0
    dynamodb_throttled: float = 0.0
    dynamodb_throughput_exceeded: float = 0.0
    dynamodb_internal_error: float = 0.0
    dynamodb_answer_lost: float = 0.0
    dynamodb_transaction_conflict: float = 0.0
    start_execution_throttled: float = 0.0
    # An EXPRESS start delivered twice (at-least-once): two executions of one order at once.
    express_start_duplicated: float = 0.0
    provider_slow: float = 0.0
    provider_transient_error: float = 0.0
    provider_answer_lost: float = 0.0
    provider_outage: float = 0.0
    # A PutEvents entry of the shop's refused by EventBridge.
    eventbridge_put_refused: float = 0.0
    # A saga run stopped right after one of its steps ran: an EXPRESS run at its 5-minute limit (the
    # orphan sweeper continues it), a STANDARD one by a timeout or an operator (its status event
    # dead-letters the order, for the redrive).
    saga_run_stopped: float = 0.0

    @property
    def kinds(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "name"]

    def kinds_for(self, workflow_type: str) -> list[str]:
        """The kinds a run with sagas of that workflow type can meet (a STANDARD start is never duplicated)."""
        return [kind for kind in self.kinds if workflow_type == "EXPRESS" or kind != "express_start_duplicated"]


PROFILES: dict[str, FaultProfile] = {
    "none": FaultProfile("none"),
    "light": FaultProfile(
        "light",
        lambda_throttled=0.01,
        lambda_service_error=0.01,
        lambda_answer_lost=0.01,
        lambda_duplicate=0.02,
        dynamodb_throttled=0.01,
        dynamodb_throughput_exceeded=0.01,
        dynamodb_internal_error=0.005,
        dynamodb_answer_lost=0.005,
        dynamodb_transaction_conflict=0.02,
        start_execution_throttled=0.02,
        express_start_duplicated=0.03,
        provider_slow=0.02,
        provider_transient_error=0.01,
        provider_answer_lost=0.01,
        provider_outage=0.002,
        eventbridge_put_refused=0.02,
        saga_run_stopped=0.003,
    ),
    "hostile": FaultProfile(
        "hostile",
        lambda_throttled=0.03,
        lambda_service_error=0.03,
        lambda_answer_lost=0.03,
        lambda_duplicate=0.05,
        dynamodb_throttled=0.03,
        dynamodb_throughput_exceeded=0.03,
        dynamodb_internal_error=0.02,
        dynamodb_answer_lost=0.02,
        dynamodb_transaction_conflict=0.05,
        start_execution_throttled=0.1,
        express_start_duplicated=0.1,
        provider_slow=0.05,
        provider_transient_error=0.03,
        provider_answer_lost=0.03,
        provider_outage=0.01,
        eventbridge_put_refused=0.05,
        saga_run_stopped=0.01,
    ),
}


class FaultInjector:
    """One profile, one seed, installed into the adapters until ``stop()``."""

    def __init__(self, profile: FaultProfile, seed: int, workflow_type: str = "STANDARD") -> None:
        self.profile = profile
        self.workflow_type = workflow_type
        self.injected: Counter[str] = Counter()
        # The chances each kind had so far, counted from 1.
        self._chances: dict[str, Iterator[int]] = {
            kind: itertools.count(1) for kind in profile.kinds_for(workflow_type)
        }
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._throttled_until = float("-inf")
        self._provider_down_until = float("-inf")
        self._provider_originals: dict[str, Any] = {}
        self.enabled = False

    def _roll(self, kind: str) -> bool:
        probability = float(getattr(self.profile, kind))
        if not self.enabled or probability <= 0.0:
            return False
        # No lock on this path, which every DynamoDB request and Lambda invoke takes (several
        # times): under the GIL, next() on a count and random() are atomic, and a lock shared by
        # a hundred threads costs more than the rolls themselves. Only a hit, which is rare, locks.
        chances = next(self._chances[kind])
        hit = self._random.random() < probability
        # Every kind of the profile is exercised: one that has not come up by COVERAGE_FLOOR
        # times its expected wait is injected at the next chance. A run whose calls to one
        # seam are few (e.g. an open breaker spares the provider) still proves that kind.
        if not hit and not self.injected[kind]:
            hit = chances >= min(COVERAGE_FLOOR / probability, FIRST_INJECTION_BY_CHANCE)
        if hit:
            with self._lock:
                self.injected[kind] += 1
        return hit

    # ------------------------------------------------------------------ seams
    def _before_invoke(self, function_name: str, event: Any) -> None:
        if self._roll("lambda_throttled"):
            raise type("Lambda.TooManyRequestsException", (Exception,), {})("injected: rate exceeded")
        if self._roll("lambda_service_error"):
            raise type("Lambda.ServiceException", (Exception,), {})("injected: Lambda service error")

    def _after_invoke(self, function_name: str, event: Any) -> None:
        if self._roll("lambda_answer_lost"):
            raise lambda_runtime.lambda_timeout()
        execution_name = event.get("execution_name") if isinstance(event, dict) else None
        if isinstance(execution_name, str) and self._roll("saga_run_stopped"):
            # The step's effect is done; its run ends before it hears the answer.
            moto_stepfunctions.stop_running(execution_name, error="States.Timeout", cause="injected: the run stopped")

    def _duplicate(self, function_name: str, event: Any) -> bool:
        return self._roll("lambda_duplicate")

    def _dynamodb(self, moment: str, operation: str, request: dict[str, Any]) -> str | None:
        if moment == "before":
            if operation == "TransactWriteItems" and self._roll("dynamodb_transaction_conflict"):
                return "TransactionConflictException"
            if self._roll("dynamodb_throttled"):
                return "ThrottlingException"
            if self._roll("dynamodb_throughput_exceeded"):
                return "ProvisionedThroughputExceededException"
            if self._roll("dynamodb_internal_error"):
                return "InternalServerError"
            return None
        if operation in WRITES and self._roll("dynamodb_answer_lost"):
            return "InternalServerError"
        return None

    def _stepfunctions(self, operation: str) -> str | None:
        if operation != "StartExecution" or not self.enabled:
            return None
        now = time.monotonic()
        with self._lock:
            if now < self._throttled_until:
                return "ThrottlingException"
            calm = now < self._throttled_until + START_EXECUTION_OUTAGE_SECONDS * CALM_AFTER_OUTAGE
        if not calm and self._roll("start_execution_throttled"):
            # An outage window, longer than the SDK's own retries and backoff: callers see it fail.
            with self._lock:
                self._throttled_until = now + START_EXECUTION_OUTAGE_SECONDS
            return "ThrottlingException"
        return None

    def _put_events(self) -> str | None:
        if self._roll("eventbridge_put_refused"):
            return "ThrottlingException" if self._random.random() < 0.5 else "InternalFailure"
        return None

    def _express_copies(self, machine: str, name: str) -> int:
        return 2 if self._roll("express_start_duplicated") else 1

    def _provider_call(self, name: str, call: Any) -> Any:
        """Around one simulator call: the remote provider's failures, decided before and after it."""
        if not self.enabled:
            return call()
        now = time.monotonic()
        with self._lock:
            down = now < self._provider_down_until
            calm = now < self._provider_down_until + PROVIDER_OUTAGE_SECONDS * CALM_AFTER_OUTAGE
        if down:
            raise PaymentProviderError("injected: provider outage")
        if not calm and self._roll("provider_outage"):
            with self._lock:
                self._provider_down_until = now + PROVIDER_OUTAGE_SECONDS
            raise PaymentProviderError("injected: provider outage")
        if self._roll("provider_transient_error"):
            raise PaymentProviderError("injected: provider error before the call took effect")
        if self._roll("provider_slow"):
            with self._lock:
                delay = self._random.uniform(*PROVIDER_SLOW_SECONDS)
            time.sleep(delay)  # a slow provider answer (the call waits, as on a slow network)
        result = call()
        if name in PROVIDER_EFFECTS and self._roll("provider_answer_lost"):
            raise PaymentProviderError("injected: provider answer lost after the call took effect")
        return result

    def _install_provider_faults(self) -> None:
        for name in PROVIDER_CALLS:
            original = getattr(SimulatorProvider, name)
            self._provider_originals[name] = original

            def faulty(provider: Any, *args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
                return self._provider_call(_name, lambda: _original(provider, *args, **kwargs))

            setattr(SimulatorProvider, name, faulty)

    def _remove_provider_faults(self) -> None:
        for name, original in self._provider_originals.items():
            setattr(SimulatorProvider, name, original)
        self._provider_originals.clear()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        lambda_runtime.faults.before_invoke = self._before_invoke
        lambda_runtime.faults.after_invoke = self._after_invoke
        lambda_runtime.faults.duplicate_when = self._duplicate
        moto_dynamodb.fault_hook = self._dynamodb
        moto_stepfunctions.fault_hook = self._stepfunctions
        moto_events.fault_hook = self._put_events
        if self.workflow_type == "EXPRESS":
            moto_stepfunctions.express_copies = self._express_copies
        self._install_provider_faults()
        self.enabled = True

    def stop(self) -> None:
        """Faults off: everything healthy again (the counts stay)."""
        self.enabled = False
        lambda_runtime.faults.clear()
        moto_dynamodb.fault_hook = None
        moto_stepfunctions.fault_hook = None
        moto_events.fault_hook = None
        moto_stepfunctions.express_copies = None
        self._remove_provider_faults()

    def summary(self) -> str:
        return json.dumps(dict(sorted(self.injected.items())))

    def never_injected(self) -> list[str]:
        """The profile's kinds this run never injected: the run proved nothing about them."""
        return [
            kind
            for kind in self.profile.kinds_for(self.workflow_type)
            if getattr(self.profile, kind) > 0.0 and not self.injected[kind]
        ]
