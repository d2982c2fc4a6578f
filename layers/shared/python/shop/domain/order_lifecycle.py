"""The order's life cycle, as pure functions of the stored order.

An order moves PENDING -> STOCK_RESERVED -> PAYMENT_AUTHORIZED -> COMPLETED, or to CANCELLED
(compensated), REFUNDING -> REFUNDED (cancelled after capture, or a capture that cannot
complete), or NEEDS_ATTENTION (the saga could not finish; an operator redrives it). Each
transition returns the changed order, or None when it finds its work done, so every step is safe
to run twice; history entries are appended only if that (step, status) pair is not recorded yet.
``shop.repositories.orders.update`` applies a transition with optimistic locking, so the saga and
a racing cancel request serialize on the order's ``version``.

The saga's three forward transitions also exist as an ``Advance``: the same change written blind,
in one conditional UpdateItem, for the common case the condition describes (the order is where
the saga left it, and for completion no cancel was asked). When the condition fails, the step
reads the order and applies the pure function as above; tests/fidelity/test_orders_repository.py
holds both to the same stored item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shop.errors import OrderStateConflict
from shop.models.orders import (
    CHECKOUT_IN_PROGRESS,
    CHECKOUT_OVER,
    FIRST_EPOCH,
    SETTLED,
    CancelOrder,
    Failure,
    HistoryEntry,
    Order,
    OrderStatus,
)
from shop.saga_terms import PAYMENT_COMPENSATIONS, Outcome, Step

SUCCEEDED = Outcome.SUCCEEDED
FAILED = Outcome.FAILED

_PROGRESS_STATUS: dict[str, OrderStatus] = {
    Step.RESERVE_STOCK: "STOCK_RESERVED",
    Step.AUTHORIZE_PAYMENT: "PAYMENT_AUTHORIZED",
}
_PROGRESS_RANK: dict[str, int] = {"PENDING": 0, "STOCK_RESERVED": 1, "PAYMENT_AUTHORIZED": 2}

# Why a checkout is compensated when the saga stopped before recording a reason (it failed
# outside its own catches, or a redrive found nothing captured): the payment did not go through.
UNSETTLED_FAILURE = Failure(reason="PAYMENT_UNAVAILABLE", step=None, compensations=list(PAYMENT_COMPENSATIONS))
CUSTOMER_CANCELLED = Failure(reason="CANCELLED_BY_CUSTOMER", step=None, compensations=list(PAYMENT_COMPENSATIONS))
# The customer cancelled before the checkout's first run claimed the order: nothing ran to undo.
CANCELLED_BEFORE_CLAIM = Failure(reason="CANCELLED_BY_CUSTOMER", step=None, compensations=[])


def cancelled_before_claim(order: Order, epoch: int) -> bool:
    """The checkout's first run just claimed an order whose customer asked to cancel before any step
    ran: it is cancelled there, and nothing is reserved or authorized for it (before, the run reserved
    first, and a shortage then cancelled the customer's cancelled order as OUT_OF_STOCK).

    CANCELLED too: the first run's claim step, delivered again after it cancelled the order (its
    answer lost), must end the run as well, never go on to reserve for a cancelled order.
    """
    return epoch == FIRST_EPOCH and order.cancel_requested and order.status in ("PENDING", "CANCELLED")


@dataclass(frozen=True)
class Advance:
    """A forward transition as a blind write: from ``from_status`` (and, if ``unless_cancel_requested``,
    with no cancel asked) to ``to_status``, appending ``entries``; ``clears_failure`` removes the reason."""

    from_status: OrderStatus
    to_status: OrderStatus
    entries: tuple[tuple[str, str], ...]
    unless_cancel_requested: bool = False
    clears_failure: bool = False


# In the status each forward step finds the order in, its history entries cannot be recorded yet
# (a status only moves forward while the checkout runs), so appending them blind duplicates nothing.
PROGRESS_ADVANCES: dict[str, Advance] = {
    Step.RESERVE_STOCK: Advance("PENDING", "STOCK_RESERVED", ((Step.RESERVE_STOCK, SUCCEEDED),)),
    Step.AUTHORIZE_PAYMENT: Advance("STOCK_RESERVED", "PAYMENT_AUTHORIZED", ((Step.AUTHORIZE_PAYMENT, SUCCEEDED),)),
}
COMPLETE_ADVANCE = Advance(
    "PAYMENT_AUTHORIZED",
    "COMPLETED",
    ((Step.COMMIT_RESERVATION, SUCCEEDED), (Step.CAPTURE_PAYMENT, SUCCEEDED), (Step.COMPLETE_ORDER, "COMPLETED")),
    unless_cancel_requested=True,
    clears_failure=True,
)


def with_history(order: Order, entries: Sequence[tuple[str, str]], now: str) -> list[HistoryEntry]:
    """The order's history plus each (step, status) entry not recorded yet."""
    history = list(order.history)
    for step, status in entries:
        if not any(entry.step == step and entry.status == status for entry in history):
            history.append(HistoryEntry(step=step, status=status, at=now))
    return history


def _refund_begins(
    order: Order, entries: Sequence[tuple[str, str]], marker: tuple[str, str], now: str
) -> list[HistoryEntry]:
    """The history of an order that becomes REFUNDING: ``entries`` not recorded yet, then ``marker``
    even if it was (only the move into REFUNDING appends it, once). The last entry says when this
    refund began, and the orphan sweeper times an Express refund's continuation window from it; an
    order redriven from NEEDS_ATTENTION has every entry recorded already, and its window was timed
    from the old flag: a refund begun a moment ago was dead-lettered at its first stop."""
    return [*with_history(order, entries, now), HistoryEntry(step=marker[0], status=marker[1], at=now)]


def _changed(order: Order, now: str, **changes: object) -> Order | None:
    """``order`` with ``changes`` applied, or None if they change nothing; an order whose checkout is
    over without its payment token."""
    if changes.get("status", order.status) in CHECKOUT_OVER:
        changes["payment_token"] = None
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
    done = [(Step.COMMIT_RESERVATION, SUCCEEDED), (Step.CAPTURE_PAYMENT, SUCCEEDED)]
    if order.cancel_requested:
        history = _refund_begins(order, done, (Step.COMPLETE_ORDER, "REFUND_REQUIRED"), now)
        return _changed(order, now, status="REFUNDING", failure_reason=None, history=history)
    history = with_history(order, [*done, (Step.COMPLETE_ORDER, "COMPLETED")], now)
    return _changed(order, now, status="COMPLETED", failure_reason=None, history=history)


def cancelled(order: Order, step: CancelOrder, now: str) -> Order | None:
    """The compensation ran (void, release): CANCELLED with the failure's reason."""
    if order.status == "CANCELLED":
        return None
    if order.status not in CHECKOUT_IN_PROGRESS and order.status != "NEEDS_ATTENTION":
        raise OrderStateConflict(f"order {order.order_id} is {order.status}; cannot cancel it")
    failure = step.failure
    entries: list[tuple[str, str]] = [(failure.step, FAILED)] if failure.step else []
    entries += [(compensation, SUCCEEDED) for compensation in failure.compensations]
    entries.append((Step.CANCEL_ORDER, "CANCELLED"))
    history = with_history(order, entries, now)
    return _changed(order, now, status="CANCELLED", failure_reason=failure.reason, history=history)


def refunded(order: Order, now: str) -> Order | None:
    """The refund saga refunded the capture in full and returned the stock.

    CANCELLED too, for a dead-lettered one only: the reconciliation found a cancelled order whose
    payment was captured (``cancelled_but_captured``), and its letter's redrive runs the refund saga
    (before, every redrive of it failed, and the customer stayed charged)."""
    if order.status == "REFUNDED":
        return None
    if order.status not in ("REFUNDING", "NEEDS_ATTENTION") and not (
        order.status == "CANCELLED" and order.dead_lettered
    ):
        raise OrderStateConflict(f"order {order.order_id} is {order.status}; cannot mark it refunded")
    entries = [(Step.REFUND_PAYMENT, SUCCEEDED), (Step.RETURN_STOCK, SUCCEEDED), (Step.REFUND_ORDER, "REFUNDED")]
    return _changed(order, now, status="REFUNDED", failure_reason=None, history=with_history(order, entries, now))


def refund_started(order: Order, now: str) -> Order | None:
    """The payment is captured and the order will not complete: the refund saga takes over."""
    if order.status in ("REFUNDING", "REFUNDED"):
        return None
    if order.status not in CHECKOUT_IN_PROGRESS and order.status != "NEEDS_ATTENTION":
        raise OrderStateConflict(f"order {order.order_id} is {order.status}; cannot refund it")
    history = _refund_begins(order, [], (Step.START_REFUND, "REFUNDING"), now)
    return _changed(order, now, status="REFUNDING", failure_reason=None, history=history)


# Checkout failures an operator can act on: the shop's, not the customer's (declines, shortages,
# purchase limits and the customer's own cancellations are business as usual).
SHOP_FAILURES: frozenset[str] = frozenset({"PAYMENT_UNAVAILABLE", "INVENTORY_UNAVAILABLE"})


@dataclass(frozen=True)
class CheckoutOutcome:
    failed_by_the_shop: bool


def checkout_outcome(before: OrderStatus, after: Order) -> CheckoutOutcome | None:
    """The checkout's outcome, if the write from ``before`` to ``after`` is the one that ended it.

    Exactly one write per order moves it out of checkout, so the failure rate counts each checkout
    once: a checkout flagged and then redriven to an end was counted twice, and one handed over to
    the refund saga never. Failed by the shop: cancelled for a reason in SHOP_FAILURES, flagged, or
    a paid order the shop could not complete (refunding though the customer did not ask to cancel).
    """
    if before not in CHECKOUT_IN_PROGRESS or after.status in CHECKOUT_IN_PROGRESS:
        return None
    if after.status == "CANCELLED":
        return CheckoutOutcome(failed_by_the_shop=after.failure_reason in SHOP_FAILURES)
    if after.status == "REFUNDING":
        return CheckoutOutcome(failed_by_the_shop=not after.cancel_requested)
    return CheckoutOutcome(failed_by_the_shop=after.status == "NEEDS_ATTENTION")


def flagged(order: Order, failed_step: str, now: str) -> Order | None:
    """A compensation failed after its retries: NEEDS_ATTENTION until an operator redrives it."""
    if order.status in SETTLED:
        raise OrderStateConflict(f"order {order.order_id} is {order.status}; it needs no attention")
    history = with_history(order, [(failed_step, FAILED), (Step.NEEDS_ATTENTION, "NEEDS_ATTENTION")], now)
    return _changed(order, now, status="NEEDS_ATTENTION", history=history)


def dead_letter_marked(order: Order) -> Order | None:
    """A settled order whose books need an operator keeps its status; the mark makes whichever step
    settles it next (a redrive's, or a refund's) resolve its dead letter."""
    return None if order.dead_lettered else order.model_copy(update={"dead_lettered": True})


@dataclass(frozen=True)
class CancelDecision:
    order: Order | None
    start_refund: bool


def decide_cancel(order: Order, now: str) -> CancelDecision:
    """A customer (or admin) asked to cancel. Pending: flag it for the saga. Completed: refund it."""
    entries = [(Step.CANCEL_REQUESTED, Outcome.REQUESTED)]
    # NEEDS_ATTENTION: recorded, and honoured by the redrive (a captured payment is refunded).
    if order.status in CHECKOUT_IN_PROGRESS or order.status == "NEEDS_ATTENTION":
        changed = _changed(order, now, cancel_requested=True, history=with_history(order, entries, now))
        return CancelDecision(changed, start_refund=False)
    if order.status == "COMPLETED":
        history = _refund_begins(order, [], (Step.CANCEL_REQUESTED, Outcome.REQUESTED), now)
        changed = _changed(order, now, cancel_requested=True, status="REFUNDING", history=history)
        return CancelDecision(changed, start_refund=True)
    # REFUNDING: make sure its saga runs (starting it again is a no-op); terminal: nothing changes.
    return CancelDecision(None, start_refund=order.status == "REFUNDING")
