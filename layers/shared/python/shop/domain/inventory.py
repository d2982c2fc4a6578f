"""Inventory rules: reserve stock without overselling, commit it, give it back.

The checkout saga calls ``reserve`` (reservation id = order id), then ``commit`` once paid, or
``release`` to compensate; the refund saga calls ``release`` to return sold stock; the scheduled
sweeper calls ``release_expired``. Each is idempotent: a repeated call changes nothing more and
answers with the reservation as it now stands.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from shop.config import inventory_settings
from shop.errors import (
    InventoryContention,
    OutOfStock,
    PurchaseLimitExceeded,
    ReservationConflict,
    ReservationExpired,
    ReservationNotFound,
    ShopError,
)
from shop.models.base import iso_now
from shop.models.common import CheckoutLine, Line
from shop.models.inventory import Reservation, ReservationResult, StoredLine, SweepResult
from shop.observability import logger
from shop.repositories import inventory as repository
from shop.repositories.inventory import CancellationReason

# A released reservation is kept this long (then DynamoDB TTL deletes it) so late duplicate
# deliveries still find it and stay no-ops. Committed ones are never purged: a refund returns
# their stock, whenever it comes.
RELEASED_RETENTION_SECONDS = 30 * 24 * 3600

# Reservation states only move forward (RESERVED -> COMMITTED -> RELEASED, or RESERVED ->
# RELEASED), so a conditional write that lost a race settles after a re-read or two.
_ATTEMPTS = 3

# How many expired holds one sweep releases; the next scheduled run takes the rest.
SWEEP_LIMIT = 500

_CONTENTION_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)


@dataclass(frozen=True)
class CancellationVerdict:
    """What a cancelled transaction (reservation first, then one action per line) means."""

    reservation_failed: bool = False
    failed_skus: list[str] = field(default_factory=list)
    # Limited lines whose purchase counter refused the change (over the limit, or out of step).
    over_limit_skus: list[str] = field(default_factory=list)
    contention: bool = False
    unexpected: list[str] = field(default_factory=list)


def classify_cancellation(
    codes: Sequence[str], skus: Sequence[str], limited_skus: Sequence[str] = ()
) -> CancellationVerdict:
    """Read DynamoDB's CancellationReasons codes, which line up with the actions sent.

    ``codes[0]`` belongs to the reservation item, ``codes[i]`` to ``skus[i - 1]`` and the codes
    after those to ``limited_skus`` (the purchase counters), in order. ConditionalCheckFailed on a
    stock action means that SKU lacked stock (or does not exist); on a counter, that the customer
    would exceed the SKU's purchase limit.
    """
    expected = 1 + len(skus) + len(limited_skus)
    if len(codes) != expected:
        return CancellationVerdict(unexpected=[f"{len(codes)} reasons for {expected} actions"])
    reservation_failed = False
    failed: list[str] = []
    over_limit: list[str] = []
    contention = False
    unexpected: list[str] = []
    for index, code in enumerate(codes):
        if code in ("None", ""):
            continue
        if code == "ConditionalCheckFailed":
            if index == 0:
                reservation_failed = True
            elif index <= len(skus):
                failed.append(skus[index - 1])
            else:
                over_limit.append(limited_skus[index - 1 - len(skus)])
        elif code in _CONTENTION_REASONS:
            contention = True
        else:
            unexpected.append(code)
    return CancellationVerdict(
        reservation_failed=reservation_failed,
        failed_skus=failed,
        over_limit_skus=over_limit,
        contention=contention,
        unexpected=unexpected,
    )


def _now() -> int:
    return int(time.time())


def _existing_after_conflict(reservation_id: str, reasons: Sequence[CancellationReason]) -> Reservation | None:
    stored = reasons[0].item if reasons else None
    # DynamoDB returns the stored item (ReturnValuesOnConditionCheckFailure); read it otherwise.
    return repository.to_reservation(stored) if stored else repository.get_reservation(reservation_id)


def _limit_of(line: Line) -> int | None:
    return line.purchase_limit if isinstance(line, CheckoutLine) else None


def reserve(
    reservation_id: str,
    order_id: str,
    lines: Sequence[Line],
    *,
    customer_id: str | None = None,
    now: int | None = None,
) -> ReservationResult:
    """Take every line's stock and record the reservation, all or nothing.

    A line with a ``purchase_limit`` (a CheckoutLine) also counts its units for ``customer_id``
    in the same transaction, within the limit. Raises PurchaseLimitExceeded naming every SKU the
    customer would hold too many of, OutOfStock naming every short SKU (nothing changes either
    way), ReservationConflict if the id is already used for other lines, InventoryContention when
    worth retrying. A retry of the same request answers with the reservation as stored.
    """
    limited = [line for line in lines if _limit_of(line) is not None]
    if limited and customer_id is None:
        raise ShopError(f"reservation {reservation_id} has limited lines but no customer to count them for")
    issued_at = _now() if now is None else now
    stamp = iso_now()
    reservation = Reservation(
        reservation_id=reservation_id,
        order_id=order_id,
        # Stored only when it matters: a reservation without limited lines is what it always was.
        customer_id=customer_id if limited else None,
        lines=[StoredLine(sku=line.sku, quantity=line.quantity, purchase_limit=_limit_of(line)) for line in lines],
        status="RESERVED",
        expires_at=issued_at + inventory_settings().reservation_ttl_seconds,
        created_at=stamp,
        updated_at=stamp,
    )
    # A line over its limit by itself never fits (the API refuses it; this is for any other caller).
    alone_over = [line.sku for line in reservation.limited_lines if line.quantity > (line.purchase_limit or 0)]
    if alone_over:
        raise PurchaseLimitExceeded(alone_over)
    try:
        repository.create_reservation(reservation)
    except repository.TransactionCancelled as cancelled:
        verdict = classify_cancellation(
            [r.code for r in cancelled.reasons],
            [line.sku for line in lines],
            [line.sku for line in reservation.limited_lines],
        )
        if verdict.reservation_failed:
            existing = _existing_after_conflict(reservation_id, cancelled.reasons)
            if existing is None:  # purged between the write and the read: a fresh try decides
                raise InventoryContention("reservation changed while reserving; retry") from None
            if existing.order_id == order_id and existing.same_lines(list(lines)):
                return ReservationResult.of(existing)
            raise ReservationConflict(
                f"reservation {reservation_id} already exists with other lines", reservation_id=reservation_id
            ) from None
        if verdict.contention:
            raise InventoryContention("stock is being changed concurrently; retry") from None
        # The customer's own limit first: that order could never have been filled for them.
        if verdict.over_limit_skus:
            raise PurchaseLimitExceeded(verdict.over_limit_skus) from None
        if verdict.failed_skus:
            raise OutOfStock(verdict.failed_skus) from None
        raise ShopError(f"reservation cancelled unexpectedly: {verdict.unexpected}") from None
    return ReservationResult.of(reservation)


def commit(reservation_id: str) -> ReservationResult:
    """RESERVED -> COMMITTED (the stock is sold); committing again changes nothing.

    Raises ReservationExpired if it was released first, ReservationNotFound if it never existed.
    """
    for _ in range(_ATTEMPTS):
        current = repository.get_reservation(reservation_id)
        if current is None:
            raise ReservationNotFound(f"no reservation {reservation_id}", reservation_id=reservation_id)
        if current.status == "COMMITTED":
            return ReservationResult.of(current)
        if current.status == "RELEASED":
            raise ReservationExpired(
                f"reservation {reservation_id} was released before it was committed", reservation_id=reservation_id
            )
        committed = repository.commit_reservation(reservation_id, iso_now())
        if committed is not None:
            return ReservationResult.of(committed)
    raise InventoryContention(f"reservation {reservation_id} kept changing; retry")


def _release(
    reservation_id: str, *, only_if_reserved: bool, now: int, frees_purchase_units: bool = True
) -> tuple[ReservationResult, bool]:
    """Release and return stock (and, with ``frees_purchase_units``, the counted units); True if this call did it."""
    for _ in range(_ATTEMPTS):
        current = repository.get_reservation(reservation_id)
        if current is None:
            return ReservationResult.not_found(reservation_id), False
        if current.status == "RELEASED" or (only_if_reserved and current.status != "RESERVED"):
            return ReservationResult.of(current), False
        stamp = iso_now()
        purge_at = now + RELEASED_RETENTION_SECONDS
        freed = current.limited_lines if frees_purchase_units else []
        try:
            repository.release_reservation(
                current,
                expected=current.status,
                updated_at=stamp,
                purge_at=purge_at,
                frees_purchase_units=frees_purchase_units,
            )
        except repository.TransactionCancelled as cancelled:
            verdict = classify_cancellation(
                [r.code for r in cancelled.reasons],
                [line.sku for line in current.lines],
                [line.sku for line in freed],
            )
            if verdict.reservation_failed:
                continue  # its status moved on (a racing release or commit): decide again
            if verdict.contention:
                raise InventoryContention("stock is being changed concurrently; retry") from None
            if verdict.failed_skus:
                # Products are deactivated, never deleted; a missing one is a data error to look at.
                raise ReservationConflict(
                    f"cannot return stock to missing products: {', '.join(verdict.failed_skus)}",
                    reservation_id=reservation_id,
                ) from None
            if verdict.over_limit_skus:
                # Only this release takes units off a counter: one without them is out of step.
                raise ReservationConflict(
                    f"purchase counters do not hold this reservation's units: {', '.join(verdict.over_limit_skus)}",
                    reservation_id=reservation_id,
                ) from None
            raise ShopError(f"release cancelled unexpectedly: {verdict.unexpected}") from None
        released = current.model_copy(update={"status": "RELEASED", "updated_at": stamp, "purge_at": purge_at})
        return ReservationResult.of(released), True
    raise InventoryContention(f"reservation {reservation_id} kept changing; retry")


def release(reservation_id: str, *, frees_purchase_units: bool = True, now: int | None = None) -> ReservationResult:
    """Return a reservation's stock (RESERVED or COMMITTED -> RELEASED).

    ``frees_purchase_units``: the order ends CANCELLED, so its limited lines stop counting against
    the customer's purchase limits (in the same transaction). The refund saga passes False: a
    REFUNDED order still counts. Releasing again, or releasing a reservation that does not exist
    (compensation after a failed reserve), changes nothing; the latter answers with status NOT_FOUND.
    """
    result, _ = _release(
        reservation_id,
        only_if_reserved=False,
        now=_now() if now is None else now,
        frees_purchase_units=frees_purchase_units,
    )
    return result


def release_expired(now: int, *, limit: int = SWEEP_LIMIT) -> SweepResult:
    """Release every reservation still RESERVED whose hold expired at or before ``now``.

    A commit racing the sweeper wins: the release is conditional on the reservation still being
    RESERVED. Its order ends CANCELLED (the saga finds the hold lost), so the limited lines' units
    stop counting too. A reservation that cannot be released now is left for the next run.
    """
    released = 0
    for reservation_id in repository.held_expired_ids(now, limit):
        try:
            _, did_release = _release(reservation_id, only_if_reserved=True, now=now)
        except (InventoryContention, ReservationConflict) as error:
            logger().warning("expired reservation not released", reservation_id=reservation_id, error=str(error))
            continue
        released += int(did_release)
    return SweepResult(released=released)
