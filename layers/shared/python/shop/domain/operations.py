"""What operators do: list the dead letters and redrive one; list the stock discrepancy letters and the
stream records the event publishers set aside; count the events the consumers failed on; read the stock levels.

A redrive restarts the saga where the dead letter says, once per redrive: the checkout machine at
``ReconcilePayment`` (it resumes from what the provider says happened to the payment), or the
refund machine from its start.
"""

from __future__ import annotations

from shop.config import inventory_settings
from shop.domain import order_lifecycle as lifecycle
from shop.domain import order_saga
from shop.errors import DeadLetterNotFound, SagaStillRunning, UnreadableRecordNotFound, UnreadableRecordPublished
from shop.models.base import iso_now
from shop.models.catalog import StockLevel, StockLevelPage
from shop.models.events import ConsumerFailuresStatus, UnreadableRecord, UnreadableRecordPage
from shop.models.orders import (
    FIRST_EPOCH,
    SAGA_IN_PROGRESS,
    CheckoutRedriveInput,
    DeadLetter,
    DeadLetterPage,
    Failure,
    RefundInput,
)
from shop.models.reconciliation import StockDiscrepancyPage
from shop.observability import logger
from shop.pagination import decode_token, encode_token
from shop.repositories import catalog, consumer_failures, dead_letters, sagas, stock_discrepancies, unreadable_records
from shop.repositories import orders as repository

DEAD_LETTERS_LISTING = "dead-letters"
STOCK_DISCREPANCIES_LISTING = "stock-discrepancies"
STOCK_LEVELS_LISTING = "stock-levels"
UNREADABLE_RECORDS_LISTING = "unreadable-records"
# A page of set-aside records answers at most this much JSON: Lambda's response holds 6 MB, and the
# proxy's envelope escapes every quote of the body again.
UNREADABLE_RECORDS_PAGE_BYTES = 3_000_000


def list_dead_letters(*, limit: int, next_token: str | None) -> DeadLetterPage:
    binding: dict[str, str | int | None] = {}
    start = decode_token(DEAD_LETTERS_LISTING, next_token, binding)
    letters, last_key = dead_letters.list_page(limit=limit, start_key=start)
    return DeadLetterPage(items=letters, next_token=encode_token(DEAD_LETTERS_LISTING, last_key, binding))


def list_stock_discrepancies(*, limit: int, next_token: str | None) -> StockDiscrepancyPage:
    binding: dict[str, str | int | None] = {}
    start = decode_token(STOCK_DISCREPANCIES_LISTING, next_token, binding)
    letters, last_key = stock_discrepancies.list_page(limit=limit, start_key=start)
    return StockDiscrepancyPage(items=letters, next_token=encode_token(STOCK_DISCREPANCIES_LISTING, last_key, binding))


def list_unreadable_records(*, limit: int, next_token: str | None) -> UnreadableRecordPage:
    binding: dict[str, str | int | None] = {}
    start = decode_token(UNREADABLE_RECORDS_LISTING, next_token, binding)
    records, last_key = unreadable_records.list_page(
        limit=limit, start_key=start, max_bytes=UNREADABLE_RECORDS_PAGE_BYTES
    )
    return UnreadableRecordPage(items=records, next_token=encode_token(UNREADABLE_RECORDS_LISTING, last_key, binding))


def dismiss_unreadable_record(record_id: str, reason: str, *, actor: str) -> UnreadableRecord:
    """An operator closes a record set aside that will never be published: its event cannot be
    rebuilt (kept without its images), or the item was junk written behind the shop's back. The
    republisher reads it no more, and the alarm's level no longer counts it. Dismissing it again
    changes nothing; a record the republisher published cannot be dismissed (409)."""
    record = unreadable_records.dismiss(record_id, reason=reason, actor=actor, now=iso_now())
    if record is None:
        raise UnreadableRecordNotFound(f"no stream record {record_id} was set aside")
    if record.status == "PUBLISHED":
        raise UnreadableRecordPublished(f"stream record {record_id} was published at {record.published_at}")
    logger().info("unreadable stream record dismissed", extra={"record_id": record_id, "by": record.dismissed_by})
    return record


def consumer_failures_status() -> ConsumerFailuresStatus:
    waiting, in_hand = consumer_failures.counts()
    return ConsumerFailuresStatus(waiting=waiting, in_hand=in_hand)


def low_stock_threshold() -> int:
    """Available units at or below which a product is low on stock (a runtime setting)."""
    return inventory_settings().low_stock_threshold


def stock_levels(*, limit: int, next_token: str | None) -> StockLevelPage:
    """Every product's available stock (inactive ones too), each flagged when low."""
    binding: dict[str, str | int | None] = {}
    start = decode_token(STOCK_LEVELS_LISTING, next_token, binding)
    products, last_key = catalog.scan_products(limit, start)
    threshold = low_stock_threshold()
    levels = [
        StockLevel(
            sku=product.sku,
            name=product.name,
            active=product.active,
            available=product.available,
            low_stock=product.available <= threshold,
        )
        for product in sorted(products, key=lambda product: product.sku)
    ]
    return StockLevelPage(
        items=levels, low_stock_threshold=threshold, next_token=encode_token(STOCK_LEVELS_LISTING, last_key, binding)
    )


def redrive(order_id: str) -> DeadLetter:
    """Finish a dead-lettered saga: restart it where the dead letter says, once per redrive.

    OPEN -> REDRIVING as redrive number n with execution name ``<saga name>-redrive-<n>``, taking the
    order over at the next claim epoch, recorded on the letter. Asking again while it runs starts
    nothing once that run has claimed the order, and otherwise starts it at the same epoch (on
    EXPRESS, where names are not unique, a second run then stops at its claim); before, each ask
    started the epoch after the order's current one, which took the order from the running redrive.
    A RESOLVED letter is left alone. SagaStillRunning (409) for an OPEN letter whose order is in
    progress: its own saga settles it.
    """
    letter = dead_letters.get(order_id)
    if letter is None:
        raise DeadLetterNotFound(f"no dead letter for order {order_id}")
    if letter.status == "OPEN":
        order = repository.get(order_id)
        if order is not None and order.status in SAGA_IN_PROGRESS:
            # A redrive is a takeover: it would take the order from the saga that is settling it (a
            # refund asked for after the letter was written), which then could not finish, and on
            # STANDARD no second refund-<id> can start. A saga that stopped is the orphan sweeper's.
            raise SagaStillRunning(
                f"order {order_id} is {order.status}: its saga settles it and resolves this letter; "
                "if that saga stopped, the orphan sweeper resumes it"
            )
        number = letter.redrive_count + 1
        base = (
            sagas.refund_execution_name(order_id)
            if letter.resume == "refund"
            else sagas.checkout_execution_name(order_id)
        )
        claimed = dead_letters.start_redrive(
            order_id,
            expected_count=letter.redrive_count,
            execution_name=sagas.redrive_execution_name(base, number),
            # A redrive takes the order over from the execution that gave up: its claim's next epoch.
            epoch=order_saga.next_epoch(order) if order is not None else FIRST_EPOCH,
            now=iso_now(),
        )
        letter = claimed or dead_letters.get(order_id) or letter
    if letter.status == "REDRIVING" and letter.redrive_execution:
        _start_redrive(letter, letter.redrive_execution)
    return letter


def _start_redrive(letter: DeadLetter, name: str) -> None:
    order = repository.get(letter.order_id)
    if letter.redrive_epoch is None:  # a letter set REDRIVING before the epoch was recorded
        epoch = order_saga.next_epoch(order) if order is not None else FIRST_EPOCH
    else:
        epoch = letter.redrive_epoch
        if order is not None and (order.saga_epoch or 0) >= epoch:
            return  # the redrive's run (or a later one) has claimed the order: it exists
    if letter.resume == "refund":
        payload = (
            order_saga.refund_input(order, epoch)
            if order is not None
            else RefundInput(order_id=letter.order_id, epoch=epoch)
        )
        sagas.start(sagas.refund_state_machine_arn(), name=name, payload=payload)
        return
    # Every checkout redrive first reconciles the payment with the provider; if nothing was
    # captured it compensates with the recorded failure (or, when the saga stopped before it
    # knew one, as the payment not having gone through). Never a COMPLETED order: whatever its
    # letter says, its redrive completes it or flags it, and voids and releases nothing.
    completed = order is not None and order.status == "COMPLETED"
    redrive = CheckoutRedriveInput(
        mode="complete" if completed else letter.resume,
        order_id=letter.order_id,
        failure=letter.failure or _unsettled_failure(letter.order_id),
        epoch=epoch,
    )
    sagas.start(sagas.checkout_state_machine_arn(), name=name, payload=redrive)


def _unsettled_failure(order_id: str) -> Failure:
    """Why to compensate when the letter holds no reason: the one the saga's first compensation
    recorded on the order, if it got that far."""
    order = repository.get(order_id)
    if order is not None and order.compensating is not None:
        return order.compensating
    if order is not None and order.cancel_requested:
        return lifecycle.CUSTOMER_CANCELLED
    return lifecycle.UNSETTLED_FAILURE
