"""The order's life cycle: the rules every saga step and every cancel request apply.

An order moves PENDING -> STOCK_RESERVED -> PAYMENT_AUTHORIZED -> COMPLETED, or to CANCELLED
(compensated), REFUNDING -> REFUNDED (cancelled after capture), or NEEDS_ATTENTION (a
compensation failed; an operator redrives it). Each transition is a pure function of the stored
order; ``_mutate`` applies it with optimistic locking, so the saga and a racing cancel request
serialize on the order's ``version`` and exactly one of them decides what happens.

Every step is safe to run twice: a transition that finds its work done changes nothing, and
history entries are appended only if that (step, status) pair is not recorded yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from shop.errors import CheckoutCancelled, OrderContention, OrderNotFound, OrderStateConflict
from shop.models.base import iso_now
from shop.models.orders import (
    CHECKOUT_IN_PROGRESS,
    CancelOrder,
    CompleteOrder,
    Failure,
    FlagOrder,
    HistoryEntry,
    MarkRefunded,
    Order,
    OrderStatus,
    RecordProgress,
    StartRefund,
    StepResult,
)
from shop.observability import logger, metrics
from shop.repositories import dead_letters, sagas
from shop.repositories import orders as repository

# A cancel request and the saga rarely collide more than once; more means something is wrong.
MAX_WRITE_ATTEMPTS = 8

SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"

_PROGRESS_STATUS: dict[str, OrderStatus] = {
    "reserve_stock": "STOCK_RESERVED",
    "authorize_payment": "PAYMENT_AUTHORIZED",
}
_PROGRESS_RANK: dict[str, int] = {"PENDING": 0, "STOCK_RESERVED": 1, "PAYMENT_AUTHORIZED": 2}

# Why a checkout is compensated when the saga stopped before recording a reason (it failed
# outside its own catches, or a redrive found nothing captured): the payment did not go through.
UNSETTLED_FAILURE = Failure(reason="PAYMENT_UNAVAILABLE", step=None, compensations=["void_payment", "release_stock"])


# ---------------------------------------------------------------------------- transitions (pure)
def with_history(order: Order, entries: list[tuple[str, str]], now: str) -> list[HistoryEntry]:
    """The order's history plus each (step, status) entry not recorded yet."""
    history = list(order.history)
    for step, status in entries:
        if not any(entry.step == step and entry.status == status for entry in history):
            history.append(HistoryEntry(step=step, status=status, at=now))
    return history


def _changed(order: Order, now: str, **changes: object) -> Order | None:
    """``order`` with ``changes`` applied, or None if they change nothing."""
    if all(getattr(order, field) == value for field, value in changes.items()):
        return None
    return order.model_copy(update={**changes, "updated_at": now})


def progressed(order: Order, step: str, now: str) -> Order | None:
    """A forward step of the checkout succeeded (stock reserved, payment authorized)."""
    if order.status not in CHECKOUT_IN_PROGRESS:
        if order.has_recorded(step, SUCCEEDED):
            return None  # a late duplicate: the saga has moved on
        raise OrderStateConflict(f"order {order.order_id} is {order.status}; cannot record {step}")
    target = _PROGRESS_STATUS[step]
    status = target if _PROGRESS_RANK[target] > _PROGRESS_RANK[order.status] else order.status
    return _changed(order, now, status=status, history=with_history(order, [(step, SUCCEEDED)], now))


def completed(order: Order, now: str) -> Order | None:
    """Stock committed and payment captured: COMPLETED, or REFUNDING if the customer cancelled meanwhile."""
    if order.status in ("COMPLETED", "REFUNDING", "REFUNDED"):
        return None
    if order.status not in CHECKOUT_IN_PROGRESS and order.status != "NEEDS_ATTENTION":
        raise OrderStateConflict(f"order {order.order_id} is {order.status}; cannot complete it")
    done = [("commit_reservation", SUCCEEDED), ("capture_payment", SUCCEEDED)]
    if order.cancel_requested:
        history = with_history(order, [*done, ("complete_order", "REFUND_REQUIRED")], now)
        return _changed(order, now, status="REFUNDING", failure_reason=None, history=history)
    history = with_history(order, [*done, ("complete_order", "COMPLETED")], now)
    return _changed(order, now, status="COMPLETED", failure_reason=None, history=history)


def cancelled(order: Order, step: CancelOrder, now: str) -> Order | None:
    """The compensation ran (void, release): CANCELLED with the failure's reason."""
    if order.status == "CANCELLED":
        return None
    if order.status not in CHECKOUT_IN_PROGRESS and order.status != "NEEDS_ATTENTION":
        raise OrderStateConflict(f"order {order.order_id} is {order.status}; cannot cancel it")
    failure = step.failure
    entries = [(failure.step, FAILED)] if failure.step else []
    entries += [(compensation, SUCCEEDED) for compensation in failure.compensations]
    entries.append(("cancel_order", "CANCELLED"))
    history = with_history(order, entries, now)
    return _changed(order, now, status="CANCELLED", failure_reason=failure.reason, history=history)


def refunded(order: Order, now: str) -> Order | None:
    """The refund saga refunded the capture in full and returned the stock."""
    if order.status == "REFUNDED":
        return None
    if order.status not in ("REFUNDING", "NEEDS_ATTENTION"):
        raise OrderStateConflict(f"order {order.order_id} is {order.status}; cannot mark it refunded")
    entries = [("refund_payment", SUCCEEDED), ("return_stock", SUCCEEDED), ("refund_order", "REFUNDED")]
    return _changed(order, now, status="REFUNDED", failure_reason=None, history=with_history(order, entries, now))


def refund_started(order: Order, now: str) -> Order | None:
    """The payment is captured and the order will not complete: the refund saga takes over."""
    if order.status in ("REFUNDING", "REFUNDED"):
        return None
    if order.status not in CHECKOUT_IN_PROGRESS and order.status != "NEEDS_ATTENTION":
        raise OrderStateConflict(f"order {order.order_id} is {order.status}; cannot refund it")
    history = with_history(order, [("start_refund", "REFUNDING")], now)
    return _changed(order, now, status="REFUNDING", failure_reason=None, history=history)


def flagged(order: Order, failed_step: str, now: str) -> Order | None:
    """A compensation failed after its retries: NEEDS_ATTENTION until an operator redrives it."""
    if order.status in ("COMPLETED", "CANCELLED", "REFUNDED"):
        raise OrderStateConflict(f"order {order.order_id} is {order.status}; it needs no attention")
    history = with_history(order, [(failed_step, FAILED), ("needs_attention", "NEEDS_ATTENTION")], now)
    return _changed(order, now, status="NEEDS_ATTENTION", history=history)


@dataclass(frozen=True)
class CancelDecision:
    order: Order | None
    start_refund: bool


def cancel_requested(order: Order, now: str) -> CancelDecision:
    """A customer (or admin) asked to cancel. Pending: flag it for the saga. Completed: refund it."""
    entries = [("cancel_requested", "REQUESTED")]
    # NEEDS_ATTENTION: recorded, and honoured by the redrive (a captured payment is refunded).
    if order.status in CHECKOUT_IN_PROGRESS or order.status == "NEEDS_ATTENTION":
        changed = _changed(order, now, cancel_requested=True, history=with_history(order, entries, now))
        return CancelDecision(changed, start_refund=False)
    if order.status == "COMPLETED":
        changed = _changed(
            order, now, cancel_requested=True, status="REFUNDING", history=with_history(order, entries, now)
        )
        return CancelDecision(changed, start_refund=True)
    # REFUNDING: make sure its saga runs (starting it again is a no-op); terminal: nothing changes.
    return CancelDecision(None, start_refund=order.status == "REFUNDING")


# ---------------------------------------------------------------------------- persistence
def mutate(order_id: str, change: Callable[[Order], Order | None]) -> tuple[Order, bool]:
    """Apply ``change`` to the stored order with optimistic locking; (order now, whether it changed)."""
    for _ in range(MAX_WRITE_ATTEMPTS):
        order = repository.get(order_id)
        if order is None:
            raise OrderNotFound(f"order {order_id} does not exist")
        updated = change(order)
        if updated is None:
            return order, False
        updated = updated.model_copy(update={"version": order.version + 1})
        try:
            repository.save(updated, expected_version=order.version)
        except repository.VersionConflict:
            continue
        return updated, True
    raise OrderContention(f"order {order_id} kept changing; retry")


def _saga_seconds(order: Order, now: str) -> float:
    def parse(value: str) -> datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    return max((parse(now) - parse(order.created_at)).total_seconds(), 0.0)


def _emit(name: str, order: Order, now: str, **dimensions: str) -> None:
    """One count and the saga's duration; emitted only by the write that made the transition."""
    if dimensions:
        with single_metric(name=name, unit=MetricUnit.Count, value=1) as metric:
            for key, value in dimensions.items():
                metric.add_dimension(name=key, value=value)
    else:
        metrics().add_metric(name=name, unit=MetricUnit.Count, value=1)
    metrics().add_metric(name="SagaDuration", unit=MetricUnit.Seconds, value=_saga_seconds(order, now))


def _settle_dead_letter(order: Order, now: str) -> None:
    """A redrive finished the order: resolve its dead letter (only orders that ever needed attention have one)."""
    if order.has_recorded("needs_attention", "NEEDS_ATTENTION"):
        dead_letters.resolve(order.order_id, now=now)


def _result(order: Order, outcome: str | None = None) -> StepResult:
    return StepResult.model_validate({"order_id": order.order_id, "status": order.status, "outcome": outcome})


# ---------------------------------------------------------------------------- saga steps
def record_progress(step: RecordProgress) -> StepResult:
    """Record a forward step; at a checkpoint, stop the saga if the customer asked to cancel."""
    now = iso_now()
    order, _ = mutate(step.order_id, lambda current: progressed(current, step.step, now))
    if step.checkpoint and order.cancel_requested and order.status in CHECKOUT_IN_PROGRESS:
        logger().info("cancellation requested; the saga compensates", extra={"step": step.step})
        raise CheckoutCancelled(f"order {order.order_id}: the customer asked to cancel")
    return _result(order)


def complete_order(step: CompleteOrder) -> StepResult:
    now = iso_now()
    order, changed = mutate(step.order_id, lambda current: completed(current, now))
    if order.status == "COMPLETED":
        _settle_dead_letter(order, now)
        if changed:
            _emit("OrdersCompleted", order, now)
            logger().info("order completed")
        return _result(order, "COMPLETED")
    if changed:
        logger().info("cancellation arrived during capture; handing over to the refund saga")
    return _result(order, "REFUND_REQUIRED")


def cancel_order(step: CancelOrder) -> StepResult:
    now = iso_now()
    order, changed = mutate(step.order_id, lambda current: cancelled(current, step, now))
    _settle_dead_letter(order, now)
    if changed:
        _emit("OrdersCancelled", order, now, reason=step.failure.reason)
        logger().info("order cancelled", extra={"failure_reason": step.failure.reason})
    return _result(order)


def start_refund(step: StartRefund) -> StepResult:
    """Mark the order REFUNDING and start its refund saga (once: the execution name is fixed).

    Its dead letter, if any, stays as it is: only the refund saga's last step settles the order
    (and resolves the letter); if that saga fails, the letter must still be open.
    """
    order, _ = mutate(step.order_id, lambda current: refund_started(current, iso_now()))
    request_refund(order.order_id)
    return _result(order)


def request_refund(order_id: str) -> None:
    sagas.start(
        sagas.refund_state_machine_arn(),
        name=sagas.refund_execution_name(order_id),
        payload={"order_id": order_id},
    )


def mark_refunded(step: MarkRefunded) -> StepResult:
    now = iso_now()
    order, changed = mutate(step.order_id, lambda current: refunded(current, now))
    _settle_dead_letter(order, now)
    if changed:
        _emit("OrdersRefunded", order, now)
        logger().info("order refunded")
    return _result(order)


def flag_for_attention(step: FlagOrder) -> StepResult:
    """Mark the order NEEDS_ATTENTION and leave a dead letter an operator can list and redrive."""
    now = iso_now()
    order, changed = mutate(step.order_id, lambda current: flagged(current, step.failed_step, now))
    dead_letters.record(
        order_id=order.order_id,
        resume=step.resume,
        failed_step=step.failed_step,
        failure=step.failure,
        error=step.error.Error if step.error else None,
        cause=step.error.Cause if step.error else None,
        execution_name=step.execution_name,
        now=now,
    )
    if changed:
        metrics().add_metric(name="OrdersNeedingAttention", unit=MetricUnit.Count, value=1)
    logger().error(
        "compensation failed; order needs attention",
        extra={"failed_step": step.failed_step, "error": step.error.Error if step.error else None},
    )
    return _result(order)
