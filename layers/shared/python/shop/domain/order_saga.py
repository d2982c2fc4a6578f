"""The order steps of both sagas (each one Lambda in functions/orders/): record progress, complete,
mark cancelled, hand over to the refund saga, mark refunded, flag for attention.

Each applies one transition of ``order_lifecycle`` with optimistic locking and is safe to run
twice; metrics are emitted only by the write that made the transition.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from aws_lambda_powertools.metrics import MetricUnit

from shop.domain import carts
from shop.domain import order_lifecycle as lifecycle
from shop.errors import CheckoutCancelled, CheckoutCancelledAfterPayment, StoredItemUnusable, TransientError
from shop.models.base import iso_now, zoned_instant
from shop.models.orders import (
    CHECKOUT_IN_PROGRESS,
    FIRST_EPOCH,
    SETTLED,
    CancelOrder,
    ClaimOrder,
    CompleteOrder,
    FlagOrder,
    HistoryEntry,
    MarkRefunded,
    Order,
    OrderStatus,
    RecordProgress,
    RefundInput,
    SagaClaim,
    StartRefund,
    StepResult,
)
from shop.observability import dimensioned_metric, logger, metrics, metrics_now
from shop.repositories import dead_letters, sagas
from shop.repositories import orders as repository
from shop.repositories.payments import PaymentsRepository
from shop.saga_terms import Step


def _emit(name: str, order: Order, now: str, started_at: datetime | None, **dimensions: str) -> None:
    """One count and the saga's duration: from its execution's start (the order's placement when the
    step was not told it); emitted only by the write that made the transition."""
    ended, began = zoned_instant(now), started_at or zoned_instant(order.created_at)
    # None: a placement time written behind the shop's back: no duration to tell, and no reason to fail.
    seconds = None if ended is None or began is None else max((ended - began).total_seconds(), 0.0)
    if dimensions:
        dimensioned_metric(name, MetricUnit.Count, 1, **dimensions)
    with metrics_now() as line:  # at once, as the checkout outcome's counts
        if not dimensions:
            line.add_metric(name=name, unit=MetricUnit.Count, value=1)
        if seconds is not None:
            line.add_metric(name="SagaDuration", unit=MetricUnit.Seconds, value=seconds)


def _count_checkout_outcome(before: OrderStatus, order: Order) -> None:
    """The checkout failure rate's two counts, by the one write that ended the checkout (counted right
    after it: a step retried after a later failure finds its write done and counts nothing)."""
    outcome = lifecycle.checkout_outcome(before, order)
    if outcome is None:
        return
    # Printed at once, not with the invocation's other metrics: where invocations share a process (the
    # local emulator, the service tests), another function may flush that buffer under its own service.
    dimensioned_metric("CheckoutsFinished", MetricUnit.Count, 1)
    if outcome.failed_by_the_shop:
        dimensioned_metric("CheckoutsFailedByTheShop", MetricUnit.Count, 1)


def _transition(
    order_id: str, change: Callable[[Order], Order | None], claim: SagaClaim | None
) -> tuple[Order, Order | None]:
    """``repository.update``: the order, and the order as this call found it if the call changed it."""
    seen: list[Order] = []

    def change_seen(current: Order) -> Order | None:
        seen.append(current)  # the last one is what the write replaced (a lost race reads again)
        return change(current)

    order, changed = repository.update(order_id, change_seen, claim=claim)
    return order, seen[-1] if changed else None


def _settle_dead_letter(order: Order, now: str) -> None:
    """The order is settled: resolve its dead letter, if it has one.

    Letters are opened in two places, and each leaves its mark on the order: the flag step records
    NEEDS_ATTENTION, and the reconciliation (which finds a settled order's books wrong, say a
    COMPLETED order whose stock was never committed) marks it ``dead_lettered``. Whatever settles
    such an order next resolves the letter: the redrive's run, or a refund the customer asked for
    first. Any other order has no letter, and its settlement costs no write to look.
    """
    if order.has_recorded(Step.NEEDS_ATTENTION, "NEEDS_ATTENTION") or order.dead_lettered:
        dead_letters.resolve(order.order_id, now=now)


def _result(order: Order, outcome: str | None = None) -> StepResult:
    return StepResult.model_validate({"order_id": order.order_id, "status": order.status, "outcome": outcome})


# ---------------------------------------------------------------------------- saga steps
def claim_order(step: ClaimOrder) -> SagaClaim:
    """Claim the order for this execution (the first step of every saga run) and answer the claim,
    which the state machine passes to every later step that writes the order.

    Raises SagaClaimLost when another execution owns it: a duplicate start of an Express workflow,
    or an execution an explicit takeover replaced. It then stops with no effect at all. Raises
    CheckoutCancelled once it has cancelled an order the customer cancelled before this first run
    (``lifecycle.cancelled_before_claim``): the run ends there, with nothing to compensate.
    """
    order = repository.claim(step.order_id, step.claim)
    logger().info("saga claimed", extra={"epoch": order.saga_epoch})
    if lifecycle.cancelled_before_claim(order, step.claim.epoch):
        cancel = CancelOrder(
            order_id=step.order_id,
            claim=step.claim,
            failure=lifecycle.CANCELLED_BEFORE_CLAIM,
            execution_started_at=step.execution_started_at,
        )
        mark_cancelled(cancel)
        raise CheckoutCancelled(f"order {step.order_id}: the customer cancelled it before its saga started")
    return step.claim


def apply_advance(order_id: str, advance: lifecycle.Advance, now: str, claim: SagaClaim | None = None) -> Order | None:
    """The common case in one conditional write (see ``order_lifecycle.Advance``); None otherwise."""
    return repository.advance(
        order_id,
        from_status=advance.from_status,
        to_status=advance.to_status,
        entries=[HistoryEntry(step=step, status=status, at=now) for step, status in advance.entries],
        now=now,
        unless_cancel_requested=advance.unless_cancel_requested,
        clears_failure=advance.clears_failure,
        claim=claim,
    )


def record_progress(step: RecordProgress) -> StepResult:
    """Record a forward step; at a checkpoint, stop the saga if the customer asked to cancel."""
    now = iso_now()
    order = apply_advance(step.order_id, lifecycle.PROGRESS_ADVANCES[step.step], now, step.claim)
    if order is None:
        order, _ = repository.update(
            step.order_id, lambda current: lifecycle.progressed(current, step.step, now), claim=step.claim
        )
    if step.checkpoint and order.cancel_requested and order.status in CHECKOUT_IN_PROGRESS:
        logger().info("cancellation requested; the saga compensates", extra={"step": step.step})
        if step.step == Step.RESERVE_STOCK and PaymentsRepository().get(order.order_id) is not None:
            # Only a run after a stopped one passes this checkpoint with a payment begun.
            raise CheckoutCancelledAfterPayment(f"order {order.order_id}: the customer asked to cancel")
        raise CheckoutCancelled(f"order {order.order_id}: the customer asked to cancel")
    return _result(order)


def complete_order(step: CompleteOrder) -> StepResult:
    now = iso_now()
    advanced = apply_advance(step.order_id, lifecycle.COMPLETE_ADVANCE, now, step.claim)
    if advanced is not None:
        order, changed = advanced, True
        _count_checkout_outcome(lifecycle.COMPLETE_ADVANCE.from_status, order)
    else:
        order, before = _transition(step.order_id, lambda current: lifecycle.completed(current, now), step.claim)
        changed = before is not None
        if before is not None:
            _count_checkout_outcome(before.status, order)
    if order.status == "COMPLETED":
        _settle_dead_letter(order, now)
        if changed:
            _emit("OrdersCompleted", order, now, step.execution_started_at)
            logger().info("order completed")
        try:
            carts.remove_ordered_lines(order)  # an order placed from a cart; once, however often this runs
        except (TransientError, StoredItemUnusable):
            # The order and its books are settled: a cart left as it was (busy, or an item that is
            # not a cart) is the shopper's to tidy, never a reason to fail (and flag) a completed order.
            logger().warning("the ordered lines stay in the cart: it could not be written", exc_info=True)
            metrics().add_metric(name="CartsNotEmptied", unit=MetricUnit.Count, value=1)
        return _result(order, "COMPLETED")
    if changed:
        logger().info("cancellation arrived during capture; handing over to the refund saga")
    return _result(order, "REFUND_REQUIRED")


def mark_cancelled(step: CancelOrder) -> StepResult:
    now = iso_now()
    order, before = _transition(step.order_id, lambda current: lifecycle.cancelled(current, step, now), step.claim)
    if before is not None:
        _count_checkout_outcome(before.status, order)
    _settle_dead_letter(order, now)
    if before is not None:
        _emit("OrdersCancelled", order, now, step.execution_started_at, reason=step.failure.reason)
        logger().info("order cancelled", extra={"failure_reason": step.failure.reason})
    return _result(order)


def start_refund(step: StartRefund) -> StepResult:
    """Mark the order REFUNDING and start its refund saga (once: the execution name is fixed).

    Its dead letter, if any, stays as it is: only the refund saga's last step settles the order
    (and resolves the letter); if that saga fails, the letter must still be open.
    """
    order, before = _transition(step.order_id, lambda current: lifecycle.refund_started(current, iso_now()), step.claim)
    if before is not None:
        _count_checkout_outcome(before.status, order)
    start_refund_saga(order)
    return _result(order)


def next_epoch(order: Order) -> int:
    """The epoch of the next saga run that takes the order over (the refund saga, a redrive)."""
    return (order.saga_epoch or FIRST_EPOCH - 1) + 1


def start_refund_saga(order: Order) -> None:
    """Start the order's refund saga, which takes the order over from the checkout's execution.

    Nothing when an execution of the refund saga holds the order already: a cancel asked again while
    it runs must change nothing, and a second run (an EXPRESS name is not unique) would take the
    order over from the first. One that stopped without settling is the sweepers' to find.
    """
    if order.saga_claim is not None and sagas.claimed_by(order.saga_claim, sagas.refund_state_machine_arn()):
        return
    if not sagas.start(
        sagas.refund_state_machine_arn(),
        name=sagas.refund_execution_name(order.order_id),
        payload=refund_input(order, next_epoch(order)),
    ):
        # STANDARD: refund-<id> exists, but the order is not its (it read the order before an operator's
        # redrive took it at the same epoch, lost its claim and ended): a run under another name goes on.
        continue_refund_saga(order)


def continue_refund_saga(order: Order) -> None:
    """Start a run of the order's refund saga that takes it over from one that stopped without
    settling it (an Express run at its time limit), or lost it before its first step: its steps are
    idempotent, so it redoes nothing done. Once per epoch on STANDARD (its name holds the epoch)."""
    epoch = next_epoch(order)
    sagas.start(
        sagas.refund_state_machine_arn(),
        name=sagas.continuation_execution_name(sagas.refund_execution_name(order.order_id), epoch),
        payload=refund_input(order, epoch),
    )


def refund_input(order: Order, epoch: int) -> RefundInput:
    return RefundInput(order_id=order.order_id, epoch=epoch, frees_purchase_units=not order.was_completed)


def mark_refunded(step: MarkRefunded) -> StepResult:
    now = iso_now()
    order, changed = repository.update(
        step.order_id, lambda current: lifecycle.refunded(current, now), claim=step.claim
    )
    _settle_dead_letter(order, now)
    if changed:
        _emit("OrdersRefunded", order, now, step.execution_started_at)
        logger().info("order refunded")
    return _result(order)


def flag_for_attention(step: FlagOrder) -> StepResult:
    """Mark the order NEEDS_ATTENTION and leave a dead letter an operator can list and redrive.

    A saga's flag step can find its order settled: a redrive of an order COMPLETED with its books
    wrong (the reconciliation's letters) fails again at the same place. The order keeps its status
    and is marked instead, and the letter is open again for the operator, instead of the execution
    failing outside its catches with the letter REDRIVING for good (an EXPRESS run sends no event
    that would reopen it).
    """
    now = iso_now()

    def flag(current: Order) -> Order | None:
        if step.claim is not None and current.status in SETTLED:
            return lifecycle.dead_letter_marked(current)
        return lifecycle.flagged(current, step.failed_step, now)

    order, before = _transition(step.order_id, flag, step.claim)
    # Counted, and printed, before the letter is written: a retry after a failed letter write finds
    # the order flagged already (nothing changed) and would never count it.
    if before is not None:
        dimensioned_metric("OrdersNeedingAttention", MetricUnit.Count, 1)
        _count_checkout_outcome(before.status, order)
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
    logger().error(
        "saga could not finish; order needs attention",
        # Named here, not only by the invocation's keys: the sweepers flag many orders in one invocation.
        extra={
            "order_id": step.order_id,
            "execution_name": step.execution_name,
            "failed_step": step.failed_step,
            "error": step.error.Error if step.error else None,
        },
    )
    return _result(order)
