"""A circuit breaker whose state lives in a shared store, so every function instance obeys it.

CLOSED: calls go through; ``failure_threshold`` consecutive failures within ``window_seconds``
open it. OPEN: calls fail fast with ``CircuitOpen`` until ``cooldown_seconds`` have passed.
Then the first caller claims the single probe (a conditional write: exactly one wins) and the
breaker is HALF_OPEN: everyone else still fails fast; the probe's success closes the breaker,
its failure re-opens it. A probe that never reports (its instance died) may be re-claimed
after another cooldown.

Every transition is a compare-and-set on the stored state's version, so concurrent instances
never overwrite each other's view; a lost race re-reads and re-decides. Only failures the
predicate calls failures count: by default transient ones (``TransientError``) and unexpected
exceptions. A business answer such as a decline proves the provider is healthy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from shop.errors import CircuitOpen, ShopError, TransientError
from shop.models.base import Record
from shop.models.payments import BreakerStateName
from shop.observability import logger

T = TypeVar("T")

# Compare-and-set attempts per transition. Contention beyond this means other instances are
# making the same transition at the same moment, so giving up loses nothing.
_CAS_ATTEMPTS = 5


class BreakerState(Record):
    """The stored state. Times are epoch seconds; ``version`` 0 means never stored."""

    state: BreakerStateName = "CLOSED"
    consecutive_failures: int = 0
    window_started_at: float | None = None
    opened_at: float | None = None
    probe_id: str | None = None
    probe_started_at: float | None = None
    version: int = 0
    updated_at: str | None = None


class BreakerStore(Protocol):
    def load(self, name: str) -> BreakerState:
        """The current state (the default CLOSED state, version 0, if none is stored)."""
        ...

    def replace(self, name: str, state: BreakerState, expected_version: int) -> bool:
        """Store ``state`` as version ``expected_version + 1`` iff the stored version is still
        ``expected_version``; False when another writer got there first."""
        ...


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int
    window_seconds: float
    cooldown_seconds: float


def counts_as_failure(error: BaseException) -> bool:
    """Transient errors and unexpected exceptions are failures; business answers are not."""
    return isinstance(error, TransientError) or not isinstance(error, ShopError)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        store: BreakerStore,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float] = time.time,
        is_failure: Callable[[BaseException], bool] = counts_as_failure,
    ) -> None:
        self.name = name
        self.policy = policy
        self._store = store
        self._clock = clock
        self._is_failure = is_failure

    def state(self) -> BreakerState:
        return self._store.load(self.name)

    def call(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` if the breaker admits it, and record how it went."""
        probe_id = self._admit()
        try:
            result = operation()
        except Exception as error:
            self._record(probe_id, failed=self._is_failure(error))
            raise
        self._record(probe_id, failed=False)
        return result

    # ------------------------------------------------------------------ admission
    def _admit(self) -> str | None:
        """None for an ordinary call, a probe id when this call is the half-open probe."""
        for _ in range(_CAS_ATTEMPTS):
            current = self._store.load(self.name)
            if current.state == "CLOSED":
                return None
            now = self._clock()
            # OPEN waits for the cooldown; HALF_OPEN waits for the probe (or for it to go stale).
            since = current.opened_at if current.state == "OPEN" else current.probe_started_at
            wait = (since or 0.0) + self.policy.cooldown_seconds - now
            if wait > 0:
                reason = "open" if current.state == "OPEN" else "half-open, a probe is in flight"
                raise CircuitOpen(f"payment provider circuit is {reason}; retry in {wait:.1f}s", retry_after=wait)
            probe_id = uuid.uuid4().hex
            claimed = current.model_copy(update={"state": "HALF_OPEN", "probe_id": probe_id, "probe_started_at": now})
            if self._store.replace(self.name, claimed, current.version):
                return probe_id
        raise CircuitOpen("payment provider circuit is being probed by another caller")

    # ------------------------------------------------------------------ outcome
    def _record(self, probe_id: str | None, *, failed: bool) -> None:
        # Bookkeeping must not replace the provider's answer with a store error: the caller
        # would see the wrong error name, and a successful charge would look like a failure.
        try:
            self._transition(probe_id, failed=failed)
        except Exception:  # noqa: BLE001 - logged; the breaker simply misses one observation
            logger().exception("circuit breaker could not record an outcome", extra={"breaker": self.name})

    def _transition(self, probe_id: str | None, *, failed: bool) -> None:
        for _ in range(_CAS_ATTEMPTS):
            current = self._store.load(self.name)
            updated = self._next_state(current, probe_id, failed=failed)
            if updated is None or self._store.replace(self.name, updated, current.version):
                if updated is not None and updated.state != current.state:
                    logger().warning(
                        "circuit breaker state changed",
                        extra={"breaker": self.name, "from_state": current.state, "to_state": updated.state},
                    )
                return

    def _next_state(self, current: BreakerState, probe_id: str | None, *, failed: bool) -> BreakerState | None:
        """The state after this outcome, or None when it changes nothing."""
        now = self._clock()
        if probe_id is not None:
            if current.state != "HALF_OPEN" or current.probe_id != probe_id:
                return None  # a newer probe or transition superseded this one
            if failed:
                return current.model_copy(
                    update={"state": "OPEN", "opened_at": now, "probe_id": None, "probe_started_at": None}
                )
            return BreakerState(version=current.version)
        if current.state != "CLOSED":
            # Calls admitted before the breaker opened neither close it nor extend the cooldown.
            return None
        if not failed:
            return BreakerState(version=current.version) if current.consecutive_failures else None
        window_started = current.window_started_at
        if window_started is None or now - window_started > self.policy.window_seconds:
            failures, window_started = 1, now
        else:
            failures = current.consecutive_failures + 1
        if failures >= self.policy.failure_threshold:
            return current.model_copy(
                update={
                    "state": "OPEN",
                    "consecutive_failures": failures,
                    "window_started_at": window_started,
                    "opened_at": now,
                }
            )
        return current.model_copy(update={"consecutive_failures": failures, "window_started_at": window_started})
