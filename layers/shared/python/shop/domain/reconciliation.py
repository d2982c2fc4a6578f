"""The invariants of the books, as pure checks over a snapshot of the tables and the provider.

Nothing here reads or writes: ``shop.domain.reconciliation_job`` takes the snapshot (through
``shop.repositories.audit`` and the provider's ``lookup``), runs ``check`` and acts on what it
finds. Each check returns ``Discrepancy`` records; an empty list means the books agree.

Stock. A product's ``available`` (the sum of its stock shards) only moves in transactions that
also write a reservation or a stock-ledger entry (a reshard moves units between shards and
keeps the sum), so for every SKU

    initial + Σ adjustments = available + Σ RESERVED + Σ COMMITTED

(a RELEASED reservation took its lines and gave them back: it counts on neither side, which is
why purging released reservations by TTL changes nothing). ``initial`` is the stock the product
was created with (``initial_stock`` on the product item).

Purchase limits. A customer's counter of a limited SKU moves only in the transactions that reserve
(take) and release (give back) an order's limited lines, so once every order of the customer has
settled, for every limited SKU

    counter = Σ units of the customer's COMPLETED orders, and of those REFUNDED after completion

(an order cancelled, or refunded before it completed, gave its units back when its stock was
released; a return still counts against the limit). The limited lines are those the order
recorded a limit for when it was placed (``purchase_limits``).

Orders are checked only once settled: last changed before ``settled_before``. A saga moves an
order in progress within seconds, so the production job looks only at orders unchanged for a
while, and a quiescent run (every saga finished) passes ``settled_before`` = now.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from shop.models.base import zoned_instant
from shop.models.inventory import PurchaseCount, Reservation
from shop.models.orders import IDEMPOTENCY_TTL_SECONDS, SAGA_IN_PROGRESS, SETTLED, DeadLetter, Order, ResumePoint
from shop.models.payments import CAPTURED_STATUSES, Payment
from shop.models.reconciliation import Discrepancy, DiscrepancyKind, UnreadableItem
from shop.payments.provider import ProviderOperation
from shop.payments.simulator import SimulatorLedger
from shop.saga_terms import Step

# The one discrepancy the job repairs itself (``PaymentService.reconcile``): our ledger has not
# recorded an outcome the provider reports under the operation's idempotency key.
LEDGER_BEHIND: DiscrepancyKind = "payment_ledger_behind_provider"
OPEN_DEAD_LETTER = frozenset({"OPEN", "REDRIVING"})


@dataclass(frozen=True)
class StockRecord:
    """A product's stock as read. ``initial`` is None for a product stored before it was recorded;
    ``stable`` is False when the product changed between the reads that bracket the snapshot
    (its reservations and adjustments may then be from another moment than ``available``);
    ``every_counter_read`` is False when one of its counters is an item the shop cannot read
    (reported as such: ``available`` leaves it out, so the stock equation is not judged)."""

    sku: str
    available: int
    initial: int | None
    stable: bool = True
    every_counter_read: bool = True


@dataclass(frozen=True)
class ProviderView:
    """What the provider did for one order: the answer to ``lookup`` for each of its keys, and the
    provider's own ledger of the authorization when it keeps one (the simulator does)."""

    authorize: ProviderOperation | None = None
    capture: ProviderOperation | None = None
    void: ProviderOperation | None = None
    refunds: Mapping[str, ProviderOperation] = field(default_factory=dict)
    ledger: SimulatorLedger | None = None

    @property
    def operations(self) -> int:
        found = [self.authorize, self.capture, self.void]
        return sum(operation is not None for operation in found) + len(self.refunds)


@dataclass(frozen=True)
class Snapshot:
    products: Mapping[str, StockRecord]
    adjustments: Mapping[str, int]
    reservations: Mapping[str, Reservation]
    orders: Sequence[Order]
    payments: Mapping[str, Payment]
    dead_letters: Mapping[str, DeadLetter]
    provider: Mapping[str, ProviderView]
    # Items of the audited tables their models refused (reported; their orders are not judged).
    unreadable: Sequence[UnreadableItem] = ()
    # Read before the orders: a counter taken after this read belongs to an order the orders' read
    # finds in progress, so its customer is not judged.
    purchase_counts: Sequence[PurchaseCount] = ()


def _approved(operation: ProviderOperation | None) -> bool:
    return operation is not None and operation.approved and operation.reference is not None


def _found(
    kind: DiscrepancyKind,
    detail: str,
    *,
    order_id: str | None = None,
    sku: str | None = None,
    customer_id: str | None = None,
) -> Discrepancy:
    return Discrepancy(kind=kind, order_id=order_id, sku=sku, customer_id=customer_id, detail=detail)


# ---------------------------------------------------------------------------- stock
def check_stock(
    products: Mapping[str, StockRecord], adjustments: Mapping[str, int], reservations: Iterable[Reservation]
) -> list[Discrepancy]:
    """Per SKU: never negative, and initial + adjustments = available + held + committed."""
    held: Counter[str] = Counter()
    committed: Counter[str] = Counter()
    for reservation in reservations:
        into = held if reservation.status == "RESERVED" else committed if reservation.status == "COMMITTED" else None
        if into is not None:
            for line in reservation.lines:
                into[line.sku] += line.quantity
    found = []
    for sku, product in sorted(products.items()):
        if product.available < 0:
            found.append(_found("stock_negative", f"available is {product.available}", sku=sku))
        if product.initial is None or not product.stable or not product.every_counter_read:
            continue
        expected = product.initial + adjustments.get(sku, 0)
        actual = product.available + held[sku] + committed[sku]
        if expected != actual:
            found.append(
                _found(
                    "stock_mismatch",
                    f"initial {product.initial} + adjustments {adjustments.get(sku, 0)} = {expected}, but "
                    f"available {product.available} + held {held[sku]} + committed {committed[sku]} = {actual}",
                    sku=sku,
                )
            )
    return found


def check_reservations(reservations: Iterable[Reservation], *, expired_before: int) -> list[Discrepancy]:
    """No reservation still holds stock past its expiry (the sweeper runs every minute)."""
    return [
        _found(
            "reservation_held_past_expiry",
            f"reservation {reservation.reservation_id} is RESERVED, expired at {reservation.expires_at}",
            order_id=reservation.order_id,
        )
        for reservation in reservations
        if reservation.status == "RESERVED" and reservation.expires_at < expired_before
    ]


# ---------------------------------------------------------------------------- purchase limits
def counted_purchases(order: Order) -> Counter[str]:
    """The units a settled order holds against its customer's purchase limits, by SKU."""
    limits = order.purchase_limits or {}
    counts = order.status == "COMPLETED" or (order.status == "REFUNDED" and order.was_completed)
    counted: Counter[str] = Counter()
    if counts:
        for line in order.items:
            if line.sku in limits:
                counted[line.sku] += line.quantity
    return counted


def check_purchase_counts(
    counts: Iterable[PurchaseCount], orders: Iterable[Order], *, settled_before: str, unjudged: Collection[str]
) -> tuple[list[Discrepancy], int]:
    """Each customer's purchase counters against their orders (the equation in this module's doc),
    and how many counters were judged.

    A customer is judged only when every order of theirs is settled (COMPLETED, CANCELLED or
    REFUNDED, and unchanged since ``settled_before``): a saga, a refund or a sweeper may be moving
    a counter of theirs otherwise. ``unjudged`` names customers left alone besides (an order of
    theirs with a discrepancy of its own, a counter that cannot be read).
    """
    orders_of: defaultdict[str, list[Order]] = defaultdict(list)
    for order in orders:
        orders_of[order.customer_id].append(order)
    counters_of: defaultdict[str, dict[str, int]] = defaultdict(dict)
    for count in counts:
        counters_of[count.customer_id][count.sku] = count.units
    found: list[Discrepancy] = []
    judged = 0
    for customer in sorted(orders_of.keys() | counters_of.keys()):
        theirs = orders_of.get(customer, [])
        if customer in unjudged or any(
            order.status not in SETTLED or not settled(order, settled_before) for order in theirs
        ):
            continue
        expected: Counter[str] = Counter()
        for order in theirs:
            expected.update(counted_purchases(order))
        counters = counters_of.get(customer, {})
        judged += len(counters)
        for sku in sorted(counters.keys() | expected.keys()):
            counted = counters.get(sku, 0)
            if counted != expected[sku]:
                found.append(
                    _found(
                        "purchase_count_mismatch",
                        f"customer {customer} is counted {counted} units of {sku}; their settled orders hold "
                        f"{expected[sku]}",
                        sku=sku,
                        customer_id=customer,
                    )
                )
    return found, judged


# ---------------------------------------------------------------------------- payments
def ledger_behind(payment: Payment | None, provider: ProviderView) -> str | None:
    """Why our ledger lags the provider in a way ``PaymentService.reconcile`` repairs; None if it does not."""
    if payment is None:
        return None
    if payment.status == "PENDING" and provider.authorize is not None:
        outcome = "approved" if provider.authorize.approved else "declined"
        return f"the provider {outcome} the authorization; our ledger is PENDING"
    if payment.status == "AUTHORIZED" and _approved(provider.capture):
        return "the provider captured; our ledger is AUTHORIZED"
    if payment.status == "AUTHORIZED" and _approved(provider.void):
        return "the provider voided; our ledger is AUTHORIZED"
    return None


def _provider_refunded(provider: ProviderView) -> int:
    if provider.ledger is not None:
        return provider.ledger.authorization.refunded_amount
    return sum(refund.amount.amount for refund in provider.refunds.values() if refund.approved)


def check_payment(order_id: str, payment: Payment | None, provider: ProviderView) -> list[Discrepancy]:
    """Our payments ledger equals the provider's for every operation; nothing applied twice."""
    behind = ledger_behind(payment, provider)
    if behind is not None:
        return [_found(LEDGER_BEHIND, behind, order_id=order_id)]
    found = [_found("payment_ledger_mismatch", detail, order_id=order_id) for detail in _mismatches(payment, provider)]
    found += [
        _found("provider_operation_duplicated", detail, order_id=order_id) for detail in _duplicates(provider.ledger)
    ]
    return found


def _mismatches(payment: Payment | None, provider: ProviderView) -> list[str]:
    authorized = _approved(provider.authorize)
    if payment is None:
        return ["the provider authorized; our ledger has no payment"] if authorized else []
    details = []
    if payment.authorization_ref is not None:
        auth = provider.authorize
        if not authorized or auth is None:
            details.append(f"our ledger holds authorization {payment.authorization_ref}; the provider has none")
        elif (auth.reference, auth.amount.amount) != (payment.authorization_ref, payment.authorized_amount):
            details.append(
                f"authorization: ours {payment.authorization_ref} for {payment.authorized_amount}, "
                f"the provider's {auth.reference} for {auth.amount.amount}"
            )
    elif authorized and payment.status != "VOIDED":
        details.append(f"the provider authorized; our ledger is {payment.status} with no authorization")
    captured = _approved(provider.capture)
    if payment.status in CAPTURED_STATUSES:
        capture = provider.capture
        if not captured or capture is None:
            details.append(f"our ledger is {payment.status}; the provider captured nothing")
        elif (capture.reference, capture.amount.amount) != (payment.capture_ref, payment.captured_amount):
            details.append(
                f"capture: ours {payment.capture_ref} for {payment.captured_amount}, "
                f"the provider's {capture.reference} for {capture.amount.amount}"
            )
    elif captured:
        details.append(f"the provider captured; our ledger is {payment.status}")
    if payment.status == "VOIDED" and payment.authorization_ref is not None and not _approved(provider.void):
        details.append("our ledger is VOIDED; the provider voided nothing")
    refunded = _provider_refunded(provider)
    if refunded != payment.refunded_amount:
        details.append(f"refunded: ours {payment.refunded_amount}, the provider's {refunded}")
    for key, entry in sorted(payment.refunds.items()):
        refund = provider.refunds.get(key)
        if refund is None or not refund.approved or refund.amount.amount != entry.amount:
            details.append(f"refund {key} of {entry.amount} is not the provider's")
    ledger = provider.ledger
    if ledger is not None:
        expected = _expected_provider_status(payment)
        if expected is not None and ledger.authorization.status != expected:
            details.append(
                f"the provider's authorization is {ledger.authorization.status}; our ledger ({payment.status}) "
                f"means {expected}"
            )
    return details


def _expected_provider_status(payment: Payment) -> str | None:
    if payment.status == "AUTHORIZED":
        return "AUTHORIZED"
    if payment.status in CAPTURED_STATUSES:
        return "CAPTURED"
    if payment.status == "VOIDED":
        # A fenced-off late authorization must have been released too.
        return "VOIDED"
    return None


def _duplicates(ledger: SimulatorLedger | None) -> list[str]:
    if ledger is None:
        return []
    details = []
    for kind in ("capture", "void"):
        count = len(ledger.of_kind(kind))
        if count > 1:
            details.append(f"the provider applied {count} {kind}s to authorization {ledger.authorization.reference}")
    keys = Counter(entry.idempotency_key for entry in ledger.entries)
    details += [f"the provider applied key {key} {count} times" for key, count in sorted(keys.items()) if count > 1]
    refunds = sum(entry.amount for entry in ledger.of_kind("refund"))
    captures = sum(entry.amount for entry in ledger.of_kind("capture"))
    if refunds > captures:
        details.append(f"the provider refunded {refunds}, more than the {captures} it captured")
    return details


# ---------------------------------------------------------------------------- orders
def resume_point(order: Order, kinds: Collection[str] = ()) -> ResumePoint:
    """Where an operator's redrive of this order should resume (a dead letter's ``resume``), given
    the ``kinds`` of discrepancy found. A cancelled order that was charged is refunded: compensating
    it again would find nothing to void or release, and the charge would stay."""
    if order.status in ("REFUNDING", "REFUNDED") or order.has_recorded(Step.START_REFUND, "REFUNDING"):
        return "refund"
    if order.status == "CANCELLED" and "cancelled_but_captured" in kinds:
        return "refund"
    if order.status == "COMPLETED":
        return "complete"
    return "compensate"


def check_order(
    order: Order,
    *,
    payment: Payment | None,
    provider: ProviderView,
    reservation: Reservation | None,
    dead_letter: DeadLetter | None,
) -> list[Discrepancy]:
    """Every rule of a settled order: its status, its payment, its stock and its dead letter."""
    oid, total = order.order_id, order.total.amount
    found = check_payment(oid, payment, provider)
    reservation_status = reservation.status if reservation is not None else "none"
    captured = payment.captured_amount if payment is not None and payment.status in CAPTURED_STATUSES else 0
    if order.status in SAGA_IN_PROGRESS:
        found.append(_found("order_not_settled", f"{order.status} since {order.updated_at}", order_id=oid))
    elif order.status == "COMPLETED":
        if payment is None or payment.status != "CAPTURED" or captured != total:
            state = f"{payment.status}, captured {captured}" if payment else "no payment"
            found.append(_found("completed_not_captured", f"total {total}; payment {state}", order_id=oid))
        if reservation_status != "COMMITTED":
            found.append(
                _found("completed_reservation_not_committed", f"reservation is {reservation_status}", order_id=oid)
            )
    elif order.status == "CANCELLED":
        if captured:
            found.append(_found("cancelled_but_captured", f"captured {captured}", order_id=oid))
        if _authorization_outstanding(provider):
            found.append(
                _found("cancelled_authorization_not_voided", "the provider still holds the authorization", order_id=oid)
            )
        if reservation is not None and reservation.status != "RELEASED":
            found.append(_found("cancelled_stock_not_returned", f"reservation is {reservation.status}", order_id=oid))
    elif order.status == "REFUNDED":
        refunded = payment.refunded_amount if payment is not None else 0
        if payment is None or refunded != captured or payment.status != "REFUNDED":
            state = f"{payment.status}, captured {captured}" if payment else "no payment"
            found.append(_found("refunded_amount_mismatch", f"refunded {refunded}; payment {state}", order_id=oid))
        if reservation is not None and reservation.status != "RELEASED":
            found.append(_found("refunded_stock_not_returned", f"reservation is {reservation.status}", order_id=oid))
    elif order.status == "NEEDS_ATTENTION" and (dead_letter is None or dead_letter.status not in OPEN_DEAD_LETTER):
        state = dead_letter.status if dead_letter is not None else "none"
        found.append(_found("attention_without_dead_letter", f"dead letter: {state}", order_id=oid))
    return found


def _authorization_outstanding(provider: ProviderView) -> bool:
    """The provider holds an uncaptured, unvoided authorization of the order."""
    if not _approved(provider.authorize):
        return False
    if provider.ledger is not None:
        return provider.ledger.authorization.status == "AUTHORIZED"
    return not _approved(provider.void) and not _approved(provider.capture)


def check_idempotency(orders: Iterable[Order]) -> list[Discrepancy]:
    """At most one order per (customer, Idempotency-Key) within the time the key is remembered.

    A key is remembered for IDEMPOTENCY_TTL_SECONDS: after that, the same key with another body is a
    new order, as the API says. Two orders of one key placed further apart than that are not a fault
    (before, every later run reported them, for good).
    """
    placed: defaultdict[tuple[str, str], list[Order]] = defaultdict(list)
    for order in orders:
        if order.idempotency_key is not None:
            placed[(order.customer_id, order.idempotency_key)].append(order)
    found = []
    for (customer, key), keyed in sorted(placed.items()):
        order_ids = _placed_while_remembered(keyed)
        if len(order_ids) > 1:
            found += [
                _found(
                    "duplicate_idempotency_key",
                    f"customer {customer} placed {len(order_ids)} orders with Idempotency-Key {key!r}: "
                    f"{', '.join(sorted(order_ids))}",
                    order_id=order_id,
                )
                for order_id in sorted(order_ids)
            ]
    return found


def _placed_while_remembered(orders: Sequence[Order]) -> list[str]:
    """The ids of the orders placed within IDEMPOTENCY_TTL_SECONDS of another one among ``orders``;
    all of them when a ``created_at`` is not a time with its zone (an item written behind the shop's
    back): nothing says they were placed far apart, and the run must go on."""
    if len(orders) < 2:
        return []
    ordered = sorted(orders, key=lambda order: order.created_at)
    times = [zoned_instant(order.created_at) for order in ordered]
    if None in times:
        return sorted(order.order_id for order in ordered)
    close = set()
    for index in range(1, len(ordered)):
        earlier, later = times[index - 1], times[index]
        if earlier is not None and later is not None and (later - earlier).total_seconds() < IDEMPOTENCY_TTL_SECONDS:
            close |= {ordered[index - 1].order_id, ordered[index].order_id}
    return sorted(close)


# A redrive's or a continuation's run (repositories.sagas names them): the order is the name before.
_RUN_SUFFIX = re.compile(r"(?:-(?:redrive|continue)-\d+)+$")


def check_executions(running: Iterable[str]) -> list[Discrepancy]:
    """After quiescence no saga execution is still running.

    Execution names: ``<order>``, ``refund-<order>``, either with ``-redrive-<n>`` or ``-continue-<n>``.
    """
    return [
        _found(
            "execution_running",
            f"execution {name} is still RUNNING",
            order_id=_RUN_SUFFIX.sub("", name).removeprefix("refund-"),
        )
        for name in sorted(running)
    ]


def settled(order: Order, settled_before: str) -> bool:
    """Last changed before the cutoff (ISO timestamps sort lexicographically)."""
    return order.updated_at < settled_before


def check(snapshot: Snapshot, *, settled_before: str, expired_before: int) -> list[Discrepancy]:
    """Every invariant over the snapshot: stock per SKU, reservations, and each settled order."""
    found = check_stock(snapshot.products, snapshot.adjustments, snapshot.reservations.values())
    found += check_reservations(snapshot.reservations.values(), expired_before=expired_before)
    found += check_idempotency(snapshot.orders)
    found += [
        _found(
            "record_unreadable",
            f"{item.table} item {item.key}: {item.error}",
            order_id=item.order_id,
            sku=item.sku,
            customer_id=item.customer_id,
        )
        for item in snapshot.unreadable
    ]
    # An order one of whose records cannot be read is not judged: every check would see it missing.
    unjudged = {item.order_id for item in snapshot.unreadable}
    for order in settled_orders(snapshot.orders, settled_before):
        if order.order_id in unjudged:
            continue
        found += check_order(
            order,
            payment=snapshot.payments.get(order.order_id),
            provider=snapshot.provider.get(order.order_id, ProviderView()),
            reservation=snapshot.reservations.get(order.order_id),
            dead_letter=snapshot.dead_letters.get(order.order_id),
        )
    found += check_snapshot_purchase_counts(snapshot, found, settled_before=settled_before)[0]
    return found


def check_snapshot_purchase_counts(
    snapshot: Snapshot, found: Iterable[Discrepancy], *, settled_before: str
) -> tuple[list[Discrepancy], int]:
    """``check_purchase_counts`` over the snapshot, leaving alone the customers whose books are wrong
    elsewhere (an order's discrepancy is that order's letter; its counter follows its redrive). An
    order that cannot be read is its customer's, if it says whose; if not, it may be anyone's, and
    no counter is judged."""
    if any(item.table == "OrdersTable" and item.customer_id is None for item in snapshot.unreadable):
        return [], 0
    troubled = {d.order_id for d in found if d.order_id is not None}
    unjudged = {order.customer_id for order in snapshot.orders if order.order_id in troubled}
    unjudged |= {item.customer_id for item in snapshot.unreadable if item.customer_id is not None}
    return check_purchase_counts(
        snapshot.purchase_counts, snapshot.orders, settled_before=settled_before, unjudged=unjudged
    )


def settled_orders(orders: Iterable[Order], settled_before: str) -> list[Order]:
    return [order for order in orders if settled(order, settled_before)]


def by_order(discrepancies: Iterable[Discrepancy]) -> dict[str, list[Discrepancy]]:
    grouped: defaultdict[str, list[Discrepancy]] = defaultdict(list)
    for discrepancy in discrepancies:
        if discrepancy.order_id is not None:
            grouped[discrepancy.order_id].append(discrepancy)
    return dict(grouped)
