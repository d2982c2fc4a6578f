"""A circuit breaker whose state lives in a shared store, so every function instance obeys it.

CLOSED: calls go through. The breaker decides on the failure *rate* over a sliding time window
(Resilience4j's time-based sliding window): it opens when, among the counted outcomes of the last
``window_seconds``, there are at least ``minimum_calls``, at least ``failure_rate_percent`` of them
failed, and the failures come from at least ``minimum_failing_sources`` distinct sources (e.g.
customers), so one customer retrying a broken card can never open it for everybody.

An outcome is counted once per key (the provider's idempotency key, e.g. ``"{order_id}:authorize"``),
not per attempt: a retry overwrites the key's earlier outcome, so three failed attempts of one
authorization are one failure and a success after failures is one success. The outcomes live in
the breaker's one stored item, pruned to the window and capped to the ``max_outcomes`` most recent
on every write.

To spare a write per healthy call, a call admitted while the window (as read to admit it) held no
failure records only a failure, never a success. Such a "blind" call's failure is stored, so the
calls admitted after it see a failure and record every outcome, but it is not *counted*: blind
calls record only their failures, so counting those would bias the rate (with many calls in flight
when failures start, the window would fill with failures only). The rate is judged over the
outcomes of calls admitted while the window held a failure, which record successes and failures
alike; an outage therefore opens the breaker after one blind failure and ``minimum_calls`` counted
ones, and a low failure rate never does, however many calls are in flight.

OPEN: calls fail fast with ``CircuitOpen`` until ``cooldown_seconds`` have passed. Then the first
caller claims the single probe (a conditional write: exactly one wins) and the breaker is
HALF_OPEN: everyone else still fails fast; the probe's success closes the breaker with an empty
window. A failed probe re-opens it with a fresh cooldown once the failed probes since it opened
come from ``minimum_failing_sources`` distinct sources (within ``window_seconds``), the rule that
opened it; until then the breaker is OPEN with its cooldown over: the next caller of *another*
source probes at once, while a source whose probe failed waits a cooldown from its failure. So one
customer's always-failing card cannot keep the breaker open for everybody, and a real outage
re-opens it after a few single probes. A probe that never reports (its instance died) may be
re-claimed after another cooldown.

Every transition is a compare-and-set on the stored state's version, so concurrent instances
never overwrite each other's view; a lost race re-reads and re-decides. Only failures the
predicate calls failures count: by default transient ones (``TransientError``) and unexpected
exceptions. A business answer such as a decline proves the provider is healthy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import Field

from shop.errors import CircuitOpen, ShopError, TransientError
from shop.models.base import Record
from shop.models.payments import BreakerStateName
from shop.observability import logger, metrics

T = TypeVar("T")

# Compare-and-set attempts per transition. Contention beyond this means other instances are
# making the same transition at the same moment, so giving up loses nothing.
_CAS_ATTEMPTS = 5

# Outcomes kept in the stored item: bounds its size (and a write's cost) however busy the window.
# While the window holds a failure every payment call reads and rewrites them all, so their number
# is most of a call's cost; 100 is Resilience4j's default window size, plenty to estimate a rate.
MAX_OUTCOMES = 100


class BreakerOutcome(Record):
    """The latest outcome of one key. ``at`` is epoch seconds; ``source`` is who caused the call.
    ``counted`` is False for the failure of a call admitted while the window held no failure: it
    draws the breaker's attention (later calls record every outcome) but is not in the rate."""

    failed: bool
    at: float
    source: str
    counted: bool = True


class BreakerState(Record):
    """The stored state. Times are epoch seconds; ``version`` 0 means never stored."""

    state: BreakerStateName = "CLOSED"
    # The window's outcomes by key; empty until the window holds a failure.
    outcomes: dict[str, BreakerOutcome] = Field(default_factory=dict)
    opened_at: float | None = None
    # Since the breaker last opened with a fresh cooldown: source -> when its half-open probe
    # failed (fewer than minimum_failing_sources of them; each waits a cooldown before probing again).
    failed_probes: dict[str, float] = Field(default_factory=dict)
    probe_id: str | None = None
    probe_started_at: float | None = None
    version: int = 0
    updated_at: str | None = None


class BreakerStore(Protocol):
    def load(self, name: str, *, consistent: bool = True) -> BreakerState:
        """The current state (the default CLOSED state, version 0, if none is stored). With
        ``consistent=False`` possibly a moment old (an eventually consistent read, half the price)."""
        ...

    def replace(self, name: str, state: BreakerState, expected_version: int) -> bool:
        """Store ``state`` as version ``expected_version + 1`` iff the stored version is still
        ``expected_version``; False when another writer got there first."""
        ...


@dataclass(frozen=True)
class BreakerPolicy:
    failure_rate_percent: float
    minimum_calls: int
    minimum_failing_sources: int
    window_seconds: float
    cooldown_seconds: float
    max_outcomes: int = MAX_OUTCOMES

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate_percent <= 100:
            raise ValueError("failure_rate_percent must be in (0, 100]")
        if not 1 <= self.minimum_calls <= self.max_outcomes:
            raise ValueError("minimum_calls must be between 1 and max_outcomes, or the breaker could never open")
        if self.minimum_failing_sources < 1:
            raise ValueError("minimum_failing_sources must be at least 1")
        if self.window_seconds <= 0 or self.cooldown_seconds <= 0:
            raise ValueError("window_seconds and cooldown_seconds must be positive")


@dataclass(frozen=True)
class WindowStats:
    """What the counted outcomes in the window add up to (see ``BreakerOutcome.counted``)."""

    calls: int
    failures: int
    failing_sources: int

    @property
    def failure_rate_percent(self) -> float:
        return 100.0 * self.failures / self.calls if self.calls else 0.0

    def should_open(self, policy: BreakerPolicy) -> bool:
        return (
            self.calls >= policy.minimum_calls
            and self.failures * 100 >= policy.failure_rate_percent * self.calls
            and self.failing_sources >= policy.minimum_failing_sources
        )


def in_window(outcomes: Mapping[str, BreakerOutcome], now: float, policy: BreakerPolicy) -> dict[str, BreakerOutcome]:
    """The outcomes still inside the window, oldest first, at most ``max_outcomes`` of them."""
    recent = sorted(
        ((key, outcome) for key, outcome in outcomes.items() if now - outcome.at <= policy.window_seconds),
        key=lambda item: item[1].at,
    )
    return dict(recent[-policy.max_outcomes :])


def window_stats(outcomes: Mapping[str, BreakerOutcome]) -> WindowStats:
    counted = [outcome for outcome in outcomes.values() if outcome.counted]
    failing = [outcome for outcome in counted if outcome.failed]
    return WindowStats(
        calls=len(counted), failures=len(failing), failing_sources=len({outcome.source for outcome in failing})
    )


def holds_failure(outcomes: Mapping[str, BreakerOutcome]) -> bool:
    """Whether the window holds a failure, counted or not: calls admitted then record every outcome."""
    return any(outcome.failed for outcome in outcomes.values())


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

    def stats(self, state: BreakerState | None = None) -> WindowStats:
        """The window as of now (of ``state``, or of the stored state)."""
        current = state if state is not None else self.state()
        return window_stats(in_window(current.outcomes, self._clock(), self.policy))

    def call(self, operation: Callable[[], T], *, key: str, source: str) -> T:
        """Run ``operation`` if the breaker admits it, and record how it went.

        ``key`` identifies the business operation (its idempotency key): its retries share one
        outcome. ``source`` is who caused it (e.g. the customer); only failures from at least
        ``minimum_failing_sources`` distinct sources can open the breaker.
        """
        probe_id, admitted = self._admit(source)
        # An ordinary call's first compare-and-set starts from the state that admitted it (no second
        # read); if another caller wrote meanwhile, the version check fails and it re-reads.
        seen = admitted if probe_id is None else None
        # Decided before the call, so whether its outcome counts never depends on the outcome: a call
        # admitted while the window held a failure records its success too, a "blind" one does not.
        counted = probe_id is None and holds_failure(in_window(admitted.outcomes, self._clock(), self.policy))
        try:
            result = operation()
        except Exception as error:
            self._record(probe_id, key, source, failed=self._is_failure(error), counted=counted, seen=seen)
            raise
        if probe_id is None and not counted:
            return result  # a blind success is not recorded (see _next_state): no write, no read
        self._record(probe_id, key, source, failed=False, counted=counted, seen=seen)
        return result

    # ------------------------------------------------------------------ admission
    def _admit(self, source: str) -> tuple[str | None, BreakerState]:
        """(None for an ordinary call or a probe id when this call is the half-open probe, the
        state that admitted it)."""
        for attempt in range(_CAS_ATTEMPTS):
            # Admission may read a state a moment old: a call admitted just after the breaker
            # opened is one more call in flight as it opened, and every write is a compare-and-set
            # on the version, so a stale state is never written back (the retry reads consistently).
            current = self._store.load(self.name, consistent=attempt > 0)
            if current.state == "CLOSED":
                return None, current
            now = self._clock()
            # OPEN waits for the cooldown, and a source whose probe failed for a cooldown from that
            # failure; HALF_OPEN waits for the probe (or for it to go stale).
            if current.state == "OPEN":
                since = max(current.opened_at or 0.0, current.failed_probes.get(source, 0.0))
            else:
                since = current.probe_started_at or 0.0
            wait = since + self.policy.cooldown_seconds - now
            if wait > 0:
                reason = "open" if current.state == "OPEN" else "half-open, a probe is in flight"
                raise CircuitOpen(f"payment provider circuit is {reason}; retry in {wait:.1f}s", retry_after=wait)
            probe_id = uuid.uuid4().hex
            claimed = current.model_copy(update={"state": "HALF_OPEN", "probe_id": probe_id, "probe_started_at": now})
            if self._store.replace(self.name, claimed, current.version):
                return probe_id, claimed
        raise CircuitOpen("payment provider circuit is being probed by another caller")

    # ------------------------------------------------------------------ outcome
    def _record(
        self,
        probe_id: str | None,
        key: str,
        source: str,
        *,
        failed: bool,
        counted: bool,
        seen: BreakerState | None = None,
    ) -> None:
        # Bookkeeping must not replace the provider's answer with a store error: the caller
        # would see the wrong error name, and a successful charge would look like a failure.
        try:
            self._transition(probe_id, key, source, failed=failed, counted=counted, seen=seen)
        except Exception:  # noqa: BLE001 - logged; the breaker simply misses one observation
            logger().exception("circuit breaker could not record an outcome", extra={"breaker": self.name})

    def _transition(
        self,
        probe_id: str | None,
        key: str,
        source: str,
        *,
        failed: bool,
        counted: bool,
        seen: BreakerState | None = None,
    ) -> None:
        for attempt in range(_CAS_ATTEMPTS):
            current = seen if attempt == 0 and seen is not None else self._store.load(self.name)
            updated = self._next_state(current, probe_id, key, source, failed=failed, counted=counted)
            if updated is None or self._store.replace(self.name, updated, current.version):
                if updated is not None and updated.state != current.state:
                    stats = window_stats(updated.outcomes)
                    logger().warning(
                        "circuit breaker state changed",
                        extra={
                            "breaker": self.name,
                            "from_state": current.state,
                            "to_state": updated.state,
                            "calls_in_window": stats.calls,
                            "failures_in_window": stats.failures,
                            "failing_sources": stats.failing_sources,
                            # A count: the sources are customer ids, which the logs do not keep.
                            "failed_probes": len(updated.failed_probes),
                        },
                    )
                    if updated.state == "OPEN" and updated.opened_at != current.opened_at:
                        # Alarmed on (infra/template.yaml): payments fail fast until a probe succeeds.
                        metrics().add_metric(name="CircuitBreakerOpened", unit=MetricUnit.Count, value=1)
                return

    def _next_state(
        self, current: BreakerState, probe_id: str | None, key: str, source: str, *, failed: bool, counted: bool
    ) -> BreakerState | None:
        """The state after this outcome, or None when it changes nothing."""
        now = self._clock()
        if probe_id is not None:
            if current.state != "HALF_OPEN" or current.probe_id != probe_id:
                return None  # a newer probe or transition superseded this one
            if not failed:
                return BreakerState(version=current.version)
            probe_cleared = {"state": "OPEN", "probe_id": None, "probe_started_at": None}
            failed_probes = {
                other: at
                for other, at in current.failed_probes.items()
                if other != source and now - at <= self.policy.window_seconds
            }
            failed_probes[source] = now
            if len(failed_probes) >= self.policy.minimum_failing_sources:
                # Failed probes from enough sources, like the failures that opened it: a fresh cooldown.
                return current.model_copy(update={**probe_cleared, "opened_at": now, "failed_probes": {}})
            # Maybe only this source's card fails: its cooldown stays over, another source probes next.
            return current.model_copy(update={**probe_cleared, "failed_probes": failed_probes})
        if current.state != "CLOSED":
            # Calls admitted before the breaker opened neither close it nor extend the cooldown.
            return None
        if not failed and not counted:
            return None  # a blind success: a healthy call costs no write
        window = in_window(current.outcomes, now, self.policy)
        # The key's latest attempt replaces its earlier ones, and moves to the newest end.
        window.pop(key, None)
        window[key] = BreakerOutcome(failed=failed, at=now, source=source, counted=counted)
        window = in_window(window, now, self.policy)
        if window_stats(window).should_open(self.policy):
            return current.model_copy(update={"state": "OPEN", "outcomes": window, "opened_at": now})
        return current.model_copy(update={"outcomes": window})
