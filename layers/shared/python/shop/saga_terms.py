"""The sagas' vocabulary, in one place: step names, step outcomes and the error names the state
machines retry or catch.

statemachines/*.asl.json use exactly these strings (in Pass results such as ``failed_step`` and
``Failure.step``/``compensations``, in step payloads, in ``ErrorEquals``); the order history
records them; tests/unit/test_saga_terms.py fails in milliseconds if an ASL file names a step,
reason or error that is not declared here or in ``shop.errors``. Failure reasons are the
``FailureReason`` literal of ``shop.models.orders`` (part of the HTTP contract).
"""

from __future__ import annotations

from enum import StrEnum


class Step(StrEnum):
    """A step of either saga, as the order history, ``failed_step`` and ``Failure`` name it."""

    ORDER_PLACED = "order_placed"
    RESERVE_STOCK = "reserve_stock"
    RECORD_RESERVATION = "record_reservation"
    AUTHORIZE_PAYMENT = "authorize_payment"
    RECORD_AUTHORIZATION = "record_authorization"
    COMMIT_RESERVATION = "commit_reservation"
    CAPTURE_PAYMENT = "capture_payment"
    RECONCILE_PAYMENT = "reconcile_payment"
    COMPLETE_ORDER = "complete_order"
    VOID_PAYMENT = "void_payment"
    RELEASE_STOCK = "release_stock"
    CANCEL_ORDER = "cancel_order"
    CANCEL_REQUESTED = "cancel_requested"
    START_REFUND = "start_refund"
    REFUND_PAYMENT = "refund_payment"
    RETURN_STOCK = "return_stock"
    REFUND_ORDER = "refund_order"
    NEEDS_ATTENTION = "needs_attention"


class Outcome(StrEnum):
    """What a history entry says happened at its step."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REQUESTED = "REQUESTED"


# The compensations of a checkout that got as far as an authorization, in the order they run.
PAYMENT_COMPENSATIONS: tuple[Step, ...] = (Step.VOID_PAYMENT, Step.RELEASE_STOCK)
