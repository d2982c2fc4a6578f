"""Inventory rules: reserve stock without overselling, commit it, give it back.

The checkout saga calls ``reserve`` (reservation id = order id), then ``commit`` once paid, or
``release`` to compensate; the refund saga calls ``release`` to return sold stock; the scheduled
sweeper calls ``release_expired``. Each is idempotent: a repeated call changes nothing more and
answers with the reservation as it now stands.

Stock is sharded (``shop.domain.stock_shards``): a line first tries one shard picked at random
among the SKU's count as the order recorded it, with no read. Only when that shard lacks the
units are the SKU's shards read (one Query) and the line planned over the shards that have
them, several if no single one suffices; OUT_OF_STOCK only when the sum is short. The
reservation records the shard(s) each line took; a release returns the units there, or to
shard 0 when a reshard has removed that shard.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from shop.config import inventory_settings
from shop.domain import stock_shards
from shop.errors import (
    InventoryContention,
    OutOfStock,
    PurchaseLimitExceeded,
    ReservationConflict,
    ReservationExpired,
    ReservationNotFound,
    SagaClaimLost,
    ShopError,
    StockTransactionRefused,
    StoredItemUnusable,
)
from shop.models.base import iso_now
from shop.models.common import CheckoutLine
from shop.models.inventory import (
    Reservation,
    ReservationResult,
    ShardTake,
    StoredLine,
    SweepResult,
    total_available,
    units_by_shard,
)
from shop.models.orders import Failure, SagaClaim
from shop.observability import logger
from shop.repositories import inventory as repository
from shop.repositories import orders as orders_repository
from shop.repositories import stock
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
# Expired holds one sweep reads at most, those left for an operator included: they stay first in the
# index (oldest), so the run reads past them to the holds behind, within this and its time.
SWEEP_EXAMINE_LIMIT = 20 * SWEEP_LIMIT
# A sweep stops reading once its invocation has this little time left (the next run goes on).
SWEEP_TIME_MARGIN_MS = 10_000

# Rounds of "try the planned shards; read the short SKUs' shards and plan again" before the
# saga's Retry takes over: each round after the first follows a fresh read, so only a shard
# emptied between that read and the write sends it round again.
_RESERVE_ROUNDS = 4
# A transaction cancelled because another one wrote the same stock counter at that moment (buyers
# of one SKU at once; DynamoDB's TransactionConflict) is tried again within the step after a short
# jittered pause, each line on a freshly picked shard: the saga's own Retry waits seconds between
# its few attempts, and a hot SKU's conflicts would use them up.
_CONFLICT_PAUSE_SECONDS = 0.02
# TransactWriteItems' limit: the reservation plus every take must fit.
MAX_TRANSACTION_ACTIONS = 100
# Gathers before a reservation gives up (InventoryContention, which the saga retries): each moves
# one spread line onto one shard, and a 50-line order needs at most 50.
_GATHER_ATTEMPTS = 60


@dataclass(frozen=True)
class CancellationVerdict:
    """What a cancelled transaction (reservation first, then one action per line) means."""

    reservation_failed: bool = False
    failed_skus: list[str] = field(default_factory=list)
    # Limited lines whose purchase counter refused the change (over the limit, or out of step).
    over_limit_skus: list[str] = field(default_factory=list)
    contention: bool = False
    unexpected: list[str] = field(default_factory=list)
    # The fence (the last action, when sent) failed: the saga's claim on the order was taken over.
    claim_lost: bool = False


def classify_cancellation(
    reasons: Sequence[repository.CancellationReason],
    skus: Sequence[str],
    limited_skus: Sequence[str] = (),
    *,
    fenced: bool = False,
) -> CancellationVerdict:
    """Read a cancelled transaction's reasons, which line up with the actions sent.

    ``reasons[0]`` belongs to the reservation item, ``reasons[i]`` to ``skus[i - 1]``, the SKU of
    the i-th stock action (a line taking from several shards has several), and the reasons after
    those to ``limited_skus`` (the purchase counters), in order. A failed condition on a stock
    action means that shard lacked stock (or does not exist), each SKU named once; on a counter,
    that the customer would exceed the SKU's purchase limit. With ``fenced``, the last reason is
    the order's claim condition.
    """
    expected = 1 + len(skus) + len(limited_skus) + int(fenced)
    if len(reasons) != expected:
        return CancellationVerdict(unexpected=[f"{len(reasons)} reasons for {expected} actions"])
    reservation_failed = False
    failed: list[str] = []
    over_limit: list[str] = []
    contention = False
    unexpected: list[str] = []
    claim_lost = False
    if fenced:
        *reasons, fence = reasons
        claim_lost = fence.kind == "condition_failed"
        contention = fence.kind == "contention"
        if fence.kind == "other":
            unexpected.append(fence.code)
    for index, reason in enumerate(reasons):
        if reason.kind == "held":
            continue
        if reason.kind == "condition_failed":
            if index == 0:
                reservation_failed = True
            elif index <= len(skus):
                if skus[index - 1] not in failed:
                    failed.append(skus[index - 1])
            else:
                over_limit.append(limited_skus[index - 1 - len(skus)])
        elif reason.kind == "contention":
            contention = True
        else:
            unexpected.append(reason.code)
    return CancellationVerdict(
        reservation_failed=reservation_failed,
        failed_skus=failed,
        over_limit_skus=over_limit,
        contention=contention,
        unexpected=unexpected,
        claim_lost=claim_lost,
    )


def _now() -> int:
    return int(time.time())


def _existing_after_conflict(reservation_id: str, reasons: Sequence[CancellationReason]) -> Reservation | None:
    stored = reasons[0].item if reasons else None
    # DynamoDB returns the stored item (ReturnValuesOnConditionCheckFailure); read it otherwise.
    return repository.to_reservation(stored) if stored else repository.get_reservation(reservation_id)


def reserve(
    order_id: str,
    lines: Sequence[CheckoutLine],
    *,
    customer_id: str | None = None,
    now: int | None = None,
    rng: random.Random | None = None,
) -> ReservationResult:
    """Take every line's stock and record the reservation, all or nothing.

    A line with a ``purchase_limit`` also counts its units for ``customer_id``
    in the same transaction, within the limit. Raises PurchaseLimitExceeded naming every SKU the
    customer would hold too many of, OutOfStock naming every short SKU (nothing changes either
    way), ReservationConflict if the id is already used for other lines, InventoryContention when
    worth retrying. A retry of the same request answers with the reservation as stored.

    The reservation is keyed by its order's id: the release and the commit fence on the order's saga
    claim through it, so no other id would do.
    """
    reservation_id = order_id
    limited = [line for line in lines if line.purchase_limit is not None]
    if limited and customer_id is None:
        raise ValueError(f"reservation {reservation_id} has limited lines but no customer to count them for")
    issued_at = _now() if now is None else now
    stamp = iso_now()
    plan = {
        line.sku: [ShardTake(shard=stock_shards.pick_shard(line.stock_shards, rng), quantity=line.quantity)]
        for line in lines
    }
    # A line over its limit by itself never fits (the API refuses it; this is for any other caller).
    alone_over = [line.sku for line in limited if line.quantity > (line.purchase_limit or 0)]
    if alone_over:
        raise PurchaseLimitExceeded(alone_over)
    for round_number in range(_RESERVE_ROUNDS):
        _gather_until_it_fits(plan, {line.sku: line.quantity for line in lines}, len(limited), rng)
        reservation = Reservation(
            reservation_id=reservation_id,
            order_id=order_id,
            # Stored only when it matters: a reservation without limited lines is what it always was.
            customer_id=customer_id if limited else None,
            lines=[
                StoredLine(
                    sku=line.sku, quantity=line.quantity, takes=plan[line.sku], purchase_limit=line.purchase_limit
                )
                for line in lines
            ],
            status="RESERVED",
            expires_at=issued_at + inventory_settings().reservation_ttl_seconds,
            created_at=stamp,
            updated_at=stamp,
        )
        try:
            repository.create_reservation(reservation)
        except repository.TransactionCancelled as cancelled:
            verdict = classify_cancellation(
                cancelled.reasons,
                repository.take_skus(reservation),
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
                if round_number + 1 == _RESERVE_ROUNDS:
                    raise _contention_or_shortage(lines, "stock is being changed concurrently; retry") from None
                time.sleep(random.uniform(0, _CONFLICT_PAUSE_SECONDS * 2**round_number))
                # A fresh shard for a line on one shard; a line spread over several after a read keeps its plan.
                plan = {
                    line.sku: plan[line.sku]
                    if len(plan[line.sku]) > 1
                    else [ShardTake(shard=stock_shards.pick_shard(line.stock_shards, rng), quantity=line.quantity)]
                    for line in lines
                }
                continue
            # The customer's own limit first: that order could never have been filled for them.
            if verdict.over_limit_skus:
                raise PurchaseLimitExceeded(verdict.over_limit_skus) from None
            if verdict.failed_skus:
                quantities = {line.sku: line.quantity for line in lines}
                short = _replan(plan, {sku: quantities[sku] for sku in verdict.failed_skus}, rng)
                if short:
                    raise OutOfStock(short) from None
                continue
            raise StockTransactionRefused(f"reservation cancelled unexpectedly: {verdict.unexpected}") from None
        return ReservationResult.of(reservation)
    raise _contention_or_shortage(lines, "the shards kept emptying while reserving; retry")


def _contention_or_shortage(lines: Sequence[CheckoutLine], message: str) -> OutOfStock | InventoryContention:
    """Why this attempt gives up, from a fresh read of each line's shards: OutOfStock naming the SKUs
    that no longer hold the line's quantity (a buyer who kept losing races while the stock ran out
    hears that, not "try again"), else InventoryContention for the saga to retry."""
    short = [line.sku for line in lines if _short(line.sku, line.quantity)]
    return OutOfStock(short) if short else InventoryContention(message)


def _short(sku: str, quantity: int) -> bool:
    """Whether the SKU's counters hold fewer than ``quantity`` units, on every read of them."""
    return _first_read_that_fits(sku, lambda units: True if total_available(units) >= quantity else None) is None


def _first_read_that_fits[Fit](sku: str, fits: Callable[[dict[int, int]], Fit | None]) -> Fit | None:
    """``fits`` of the SKU's units by shard as read; while it is None (short), of each read after it
    (``stock.reread_shards``). None only if every read was short: a Query that a reshard or another
    order's gather commits through shows part of the units, and a refusal (OUT_OF_STOCK, final for
    the order) must not rest on one. Before, it did: a reshard 4 -> 1 during the read cancelled an
    order of 15 with 40 units there (a helper's probe)."""
    first = stock.shards(sku, busy=InventoryContention)
    found = fits(units_by_shard(first))
    if found is not None:
        return found
    for read in stock.reread_shards(sku, first, busy=InventoryContention):
        found = fits(units_by_shard(read))
        if found is not None:
            return found
    return None


# The saga's release adds one action to the reservation's: the condition on its claim of the order.
RELEASE_CONDITION_ACTIONS = 1


def transaction_actions(line_count: int, limited_line_count: int) -> int:
    """The actions of a reservation that takes each line from one shard: its Put, a take per line and
    a purchase count per limited line. Its release has as many, and the saga's the claim's condition."""
    return 1 + line_count + limited_line_count


def fits_one_transaction(line_count: int, limited_line_count: int) -> bool:
    """Whether an order of these lines can be reserved and released, its claim's condition included, in
    one transaction each (placement refuses one that cannot)."""
    return transaction_actions(line_count, limited_line_count) + RELEASE_CONDITION_ACTIONS <= MAX_TRANSACTION_ACTIONS


def _gather_until_it_fits(
    plan: dict[str, list[ShardTake]], quantities: Mapping[str, int], limited_count: int, rng: random.Random | None
) -> None:
    """Bring ``plan`` within one transaction by gathering lines spread over several shards.

    A line is spread when no single shard held its quantity (stock evenly over many shards: 100
    units over 50 shards is 2 a shard, and an order of 100 takes from all 50). Each gather moves the
    widest line's units onto one of its shards in a transaction of its own, which changes no total
    (``gather_stock``), so the reservation then takes that line from one shard. A gather refused by
    a concurrent sale reads that SKU's shards again; OutOfStock if they no longer hold its quantity.
    """
    # Room for the release's condition on the claim, unless the order was placed when none was kept
    # (lines and limited lines up to 99): its release then goes without it (``_release``).
    most = MAX_TRANSACTION_ACTIONS - (
        RELEASE_CONDITION_ACTIONS if fits_one_transaction(len(plan), limited_count) else 0
    )
    for _ in range(_GATHER_ATTEMPTS):
        actions = transaction_actions(len(plan), limited_count) + sum(len(takes) - 1 for takes in plan.values())
        if actions <= most:
            return
        sku, takes = max(plan.items(), key=lambda entry: (len(entry[1]), entry[0]))
        if len(takes) < 2:
            break  # one shard a line already: the lines and limited lines alone are too many
        target = max(takes, key=lambda take: (take.quantity, -take.shard))
        sources = [take for take in takes if take.shard != target.shard]
        if repository.gather_stock(sku, sources, target.shard):
            plan[sku] = [ShardTake(shard=target.shard, quantity=quantities[sku])]
            logger().info("gathered a line's stock onto one shard", sku=sku, shard=target.shard, shards=len(takes))
        elif _replan(plan, {sku: quantities[sku]}, rng):
            raise OutOfStock([sku])
    raise InventoryContention("the order's stock is spread over too many shards for one transaction; retry")


def _replan(plan: dict[str, list[ShardTake]], wanted: Mapping[str, int], rng: random.Random | None) -> list[str]:
    """Plan each of ``wanted`` (SKU -> quantity) over the shards that have units now; the SKUs whose
    shards together are short (none of them changes ``plan``)."""
    short = []
    for sku, quantity in wanted.items():
        takes = _first_read_that_fits(sku, functools.partial(stock_shards.plan_takes, quantity=quantity, rng=rng))
        if takes is None:
            short.append(sku)
        else:
            plan[sku] = takes
    return short


def commit(reservation_id: str) -> ReservationResult:
    """RESERVED -> COMMITTED (the stock is sold); committing again changes nothing.

    Raises ReservationExpired if it was released first, ReservationNotFound if it never existed.
    """
    attempt = repository.commit_reservation(reservation_id, iso_now())
    current = attempt.current
    if current is None:
        raise ReservationNotFound(f"no reservation {reservation_id}", reservation_id=reservation_id)
    if attempt.committed or current.status == "COMMITTED":
        return ReservationResult.of(current)
    # Only RESERVED can be committed, and the condition said it was not: RELEASED is all that is left.
    raise ReservationExpired(
        f"reservation {reservation_id} was released before it was committed", reservation_id=reservation_id
    )


def _returns(reservation: Reservation, existing: Mapping[str, set[int]]) -> list[tuple[str, int, int]]:
    """Where each line's units go back: the shard they came from, or shard 0 when ``existing``
    (the SKU's shards as read after a release failed) no longer has it; one action per shard."""
    returns: dict[tuple[str, int], int] = {}
    for line in reservation.lines:
        for take in line.shard_takes():
            known = existing.get(line.sku)
            shard = take.shard if known is None or take.shard in known else 0
            returns[(line.sku, shard)] = returns.get((line.sku, shard), 0) + take.quantity
    return [(sku, shard, quantity) for (sku, shard), quantity in returns.items()]


def _release(
    reservation_id: str,
    *,
    only_if_reserved: bool,
    now: int,
    frees_purchase_units: bool = True,
    claim: SagaClaim | None = None,
) -> tuple[ReservationResult, bool]:
    """Release and return stock (and, with ``frees_purchase_units``, the counted units); True if this call did it.

    With a saga's ``claim``, the transaction is conditioned on it still owning the order (the
    reservation's id is the order's): a takeover landing after the step's check refuses the
    release (SagaClaimLost) instead of returning stock the new owner may have sold.
    """
    existing: dict[str, set[int]] = {}  # the shards of SKUs whose return failed, as read since
    for _ in range(_ATTEMPTS):
        current = repository.get_reservation(reservation_id)
        if current is None:
            return ReservationResult.not_found(reservation_id), False
        if current.status == "RELEASED" or (only_if_reserved and current.status != "RESERVED"):
            return ReservationResult.of(current), False
        stamp = iso_now()
        purge_at = now + RELEASED_RETENTION_SECONDS
        freed = current.limited_lines if frees_purchase_units else []
        returns = _returns(current, existing)
        fence = None
        if claim is not None:
            if 1 + len(returns) + len(freed) + RELEASE_CONDITION_ACTIONS <= MAX_TRANSACTION_ACTIONS:
                fence = orders_repository.still_claimed(reservation_id, claim)
            else:
                # Reserved when orders could fill a transaction (placed before the condition was
                # kept): no room for it, so the step's check before the release is all there is.
                logger().warning("a release too large for its claim's condition", reservation_id=reservation_id)
        try:
            repository.release_reservation(
                current,
                expected=current.status,
                updated_at=stamp,
                purge_at=purge_at,
                returns=returns,
                frees_purchase_units=frees_purchase_units,
                fence=fence,
            )
        except repository.TransactionCancelled as cancelled:
            verdict = classify_cancellation(
                cancelled.reasons,
                [sku for sku, _, _ in returns],
                [line.sku for line in freed],
                fenced=fence is not None,
            )
            if verdict.claim_lost:
                raise SagaClaimLost(f"order {reservation_id} was taken over by another execution of its saga") from None
            if verdict.reservation_failed:
                continue  # its status moved on (a racing release or commit): decide again
            if verdict.contention:
                raise InventoryContention("stock is being changed concurrently; retry") from None
            if verdict.failed_skus:
                missing = [sku for sku in verdict.failed_skus if 0 in existing.get(sku, {0})]
                if not missing:
                    # Products are deactivated, never deleted, and shard 0 never goes: a data error to look at.
                    raise ReservationConflict(
                        f"cannot return stock to missing products: {', '.join(verdict.failed_skus)}",
                        reservation_id=reservation_id,
                    ) from None
                # A reshard removed a shard the units came from: learn which exist and go again.
                for sku in verdict.failed_skus:
                    existing[sku] = set(stock.shards(sku, busy=InventoryContention))
                continue
            if verdict.over_limit_skus:
                # Only this release takes units off a counter: one without them is out of step.
                raise ReservationConflict(
                    f"purchase counters do not hold this reservation's units: {', '.join(verdict.over_limit_skus)}",
                    reservation_id=reservation_id,
                ) from None
            if "ValidationError" in verdict.unexpected:
                # DynamoDB refused a write for an attribute's type: a counter the shop did not write.
                raise StoredItemUnusable(
                    f"reservation {reservation_id}: a stock counter it returns units to is not a number"
                ) from None
            raise StockTransactionRefused(f"release cancelled unexpectedly: {verdict.unexpected}") from None
        released = current.model_copy(update={"status": "RELEASED", "updated_at": stamp, "purge_at": purge_at})
        return ReservationResult.of(released), True
    raise InventoryContention(f"reservation {reservation_id} kept changing; retry")


def release(
    reservation_id: str,
    *,
    frees_purchase_units: bool = True,
    now: int | None = None,
    claim: SagaClaim | None = None,
    failure: Failure | None = None,
) -> ReservationResult:
    """Return a reservation's stock (RESERVED or COMMITTED -> RELEASED); with a saga's ``claim``, only
    while it still owns the order (SagaClaimLost), whose id is the reservation's.

    ``frees_purchase_units``: the order ends CANCELLED, so its limited lines stop counting against
    the customer's purchase limits (in the same transaction). The refund saga passes False: a
    REFUNDED order still counts. Releasing again, or releasing a reservation that does not exist
    (compensation after a failed reserve), changes nothing; the latter answers with status NOT_FOUND.
    ``failure``: why the checkout saga compensates, recorded on the order first (``compensating``).
    """
    if claim is not None:
        # Checked here too, not only in the transaction: a run taken over after the new owner's
        # release (which writes nothing more) must still stop as NotTheOwner.
        orders_repository.ensure_claimed_compensating(reservation_id, claim, failure)
    result, _ = _release(
        reservation_id,
        only_if_reserved=False,
        now=_now() if now is None else now,
        frees_purchase_units=frees_purchase_units,
        claim=claim,
    )
    return result


def release_expired(
    now: int,
    *,
    limit: int = SWEEP_LIMIT,
    examine: int = SWEEP_EXAMINE_LIMIT,
    time_left_ms: Callable[[], int] | None = None,
) -> SweepResult:
    """Release every reservation still RESERVED whose hold expired at or before ``now``.

    A commit racing the sweeper wins: the release is conditional on the reservation still being
    RESERVED. Its order ends CANCELLED (the saga finds the hold lost), so the limited lines' units
    stop counting too. A reservation that cannot be released now is left for the next run; one whose
    item is not a Reservation (written behind the shop's back, or by a version this one cannot read),
    or whose units would go back to a counter that is not one, is left for an operator, as the
    reconciliation reports such items. None holds up the others: the sweep goes oldest first, and
    one that stopped it would stop every run at the same hold. Nor do many of them: ``limit`` counts
    the holds the run dealt with, not those left for an operator, which it reads past (up to
    ``examine`` ids, and while ``time_left_ms`` leaves a margin). Before, 500 such holds, a busy
    SKU's after one hand-edited counter, took every run's whole limit, and no hold behind them was
    ever released (a helper's probe).
    """
    released = dealt_with = examined = 0
    for reservation_id in repository.held_expired_ids(now):
        if dealt_with >= limit or examined >= examine:
            break
        if time_left_ms is not None and time_left_ms() < SWEEP_TIME_MARGIN_MS:
            break
        examined += 1
        try:
            _, did_release = _release(reservation_id, only_if_reserved=True, now=now)
        except (InventoryContention, ReservationConflict) as error:
            # Busy now (the next run tries it again, and it counts), or a purchase counter out of step,
            # which the books check reports (left, not counted).
            dealt_with += int(isinstance(error, InventoryContention))
            logger().warning("expired reservation not released", reservation_id=reservation_id, error=str(error))
            continue
        except ValidationError as error:
            logger().error(
                "an expired hold's item is not a Reservation; left for an operator",
                reservation_id=reservation_id,
                errors=error.error_count(),
            )
            continue
        except ShopError as error:  # StoredItemUnusable, or a cancellation no release expects
            logger().error(
                "an expired hold could not be released; left for an operator",
                reservation_id=reservation_id,
                error=type(error).__name__,
                detail=str(error),
            )
            continue
        dealt_with += 1
        released += int(did_release)
    return SweepResult(released=released)
