"""The scheduled reconciliation: read the books, check every invariant, repair what is safe.

One run reads every table (``shop.repositories.audit``: parallel, consistent scans) and, for each
settled order, what the provider did under its idempotency keys; ``shop.domain.reconciliation``
checks the snapshot. Only one discrepancy is repaired here: a payments ledger behind the provider
(``PaymentService.reconcile``, the same conditional transitions the saga uses). Every other
discrepancy of an order opens the order's dead letter, so an operator sees it and can redrive it.
A SKU whose stock equation does not hold opens the SKU's stock discrepancy letter (no redrive
applies: an operator finds and undoes the cause), resolved by the first run that finds
the SKU consistent again. A customer's purchase counter out of step with their settled orders is
reported (no redrive applies: an operator sets the counter to the units the report names). A stuck
order or an expired hold belongs to the sweepers: reported only.
Each discrepancy kind is published as a metric and the report is stored for
``GET /admin/reconciliation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from aws_lambda_powertools.metrics import MetricUnit

from shop.domain import order_lifecycle as lifecycle
from shop.domain import payments as payment_domain
from shop.domain import reconciliation as checks
from shop.domain import recovery
from shop.domain.reconciliation import ProviderView, Snapshot, StockRecord
from shop.errors import ShopError
from shop.models.base import iso_now
from shop.models.orders import SETTLED, DeadLetter, Order
from shop.models.payments import Payment
from shop.models.reconciliation import CheckedCounts, Discrepancy, DiscrepancyAction, ReconciliationReport
from shop.observability import dimensioned_metric, logger, metrics
from shop.payments.provider import PaymentProvider
from shop.payments.simulator import SimulatorLedger
from shop.repositories import audit, dead_letters, sagas, stock_discrepancies
from shop.repositories import orders as order_repository

# An order unchanged for this long is settled: no saga is moving it any more (the orphan sweeper
# takes over an order in progress after a minute; retries and an open breaker last minutes).
SETTLE_AFTER = timedelta(minutes=15)
# The expired-reservation sweeper runs every minute; a hold expired longer ago than this is missed.
EXPIRY_GRACE = timedelta(minutes=15)
# Orders whose provider view is read at once: each view is a few lookups at the provider (a remote
# API), so a run over a busy day waits on round trips, not on this function's CPU.
PROVIDER_READERS = 16
# The stored report lists at most this many discrepancies, and as many letters resolved (the item
# stays far below 400 KB).
MAX_LISTED = 200
# Handled by the sweepers (or an operator's stock adjustment), not by a redrive.
# Two orders under one Idempotency-Key need an operator's decision (which one stands); no redrive makes it.
REPORT_ONLY = frozenset(
    {
        "order_not_settled",
        "execution_running",
        "reservation_held_past_expiry",
        "duplicate_idempotency_key",
        "record_unreadable",
        "purchase_count_mismatch",
    }
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def provider_view(order_id: str, payment: Payment | None, provider: PaymentProvider) -> ProviderView:
    """What the provider did for the order, by its idempotency keys (and its ledger, if it keeps one)."""
    key = payment_domain.idempotency_key
    authorize = provider.lookup(key(order_id, "authorize"))
    refund_keys = {key(order_id, "refund:full"), *(payment.refunds if payment is not None else ())}
    ledger: SimulatorLedger | None = None
    read_ledger = getattr(provider, "ledger", None)
    if authorize is not None and authorize.approved and authorize.reference and callable(read_ledger):
        ledger = read_ledger(authorize.reference)
        if ledger is not None:
            refund_keys |= {entry.idempotency_key for entry in ledger.of_kind("refund")}
    refunds = {k: found for k in sorted(refund_keys) if (found := provider.lookup(k)) is not None}
    return ProviderView(
        authorize=authorize,
        capture=provider.lookup(key(order_id, "capture")),
        void=provider.lookup(key(order_id, "void")),
        refunds=refunds,
        ledger=ledger,
    )


def read_snapshot(settled_before: str, provider: PaymentProvider) -> Snapshot:
    """The books as they stand. Products are read first and last: a SKU whose ``version`` moved in
    between changed while its reservations were read, so its stock equation is not judged."""
    first = audit.product_stock()
    adjustments = audit.adjustments()
    reservations = audit.reservations()
    counts = audit.purchase_counts()  # before the orders: see Snapshot.purchase_counts
    orders = audit.orders()
    payments_read = audit.payments()
    payments = {payment.order_id: payment for payment in payments_read.records}
    letters = _dead_letters()
    last = audit.product_stock()
    unreadable_counters = {item.sku for item in first.unreadable}
    products = {
        sku: StockRecord(
            sku=sku,
            available=available,
            initial=initial,
            stable=last.by_sku.get(sku) == (available, initial, v),
            every_counter_read=sku not in unreadable_counters,
        )
        for sku, (available, initial, v) in first.by_sku.items()
    }
    settled = checks.settled_orders(orders.records, settled_before)
    with ThreadPoolExecutor(max_workers=PROVIDER_READERS) as pool:
        views = pool.map(lambda order: provider_view(order.order_id, payments.get(order.order_id), provider), settled)
        provider_views = {order.order_id: view for order, view in zip(settled, views, strict=True)}
    return Snapshot(
        products=products,
        adjustments=adjustments,
        reservations={reservation.reservation_id: reservation for reservation in reservations.records},
        orders=orders.records,
        payments=payments,
        dead_letters=letters,
        provider=provider_views,
        unreadable=[
            *orders.unreadable,
            *payments_read.unreadable,
            *reservations.unreadable,
            *first.unreadable,
            *counts.unreadable,
        ],
        purchase_counts=counts.records,
    )


def _dead_letters() -> dict[str, DeadLetter]:
    letters: dict[str, DeadLetter] = {}
    start = None
    while True:
        page, start = dead_letters.list_page(limit=100, start_key=start)
        letters.update((letter.order_id, letter) for letter in page)
        if not start:
            return letters


def run(now: datetime | None = None, *, quiescent: bool = False) -> ReconciliationReport:
    """Check the books, repair what is safe, dead-letter the rest, publish and store the report.

    ``quiescent``: every saga has finished (a chaos run's final check), so every order is judged,
    one still in progress included, a hold is late as soon as it expired, and no execution of
    either saga may still be running (this needs the state machines' ARNs in the environment).
    """
    started_at = iso_now()
    moment = now or datetime.now(UTC)
    settled_before = _iso(moment if quiescent else moment - SETTLE_AFTER)
    expired_before = int((moment if quiescent else moment - EXPIRY_GRACE).timestamp())
    provider = payment_domain.provider()
    snapshot = read_snapshot(settled_before, provider)
    found = checks.check(snapshot, settled_before=settled_before, expired_before=expired_before)
    _, purchase_counters = checks.check_snapshot_purchase_counts(snapshot, found, settled_before=settled_before)
    if quiescent:
        machines = (sagas.checkout_state_machine_arn(), sagas.refund_state_machine_arn())
        found += checks.check_executions(name for machine in machines for name in sagas.running(machine))
    found = _repair_ledgers(found, snapshot, provider)
    found = _dead_letter(found, snapshot)
    found += [
        Discrepancy(
            kind="redrive_stalled",
            order_id=letter.order_id,
            detail=f"the redrive {letter.redrive_execution} stopped without settling the order; its letter is open",
            action="dead_lettered",
        )
        for letter in recovery.reopen_stalled_redrives(snapshot.dead_letters.values(), moment)
    ]
    resolved = _resolve_letters_of_sound_orders(snapshot, found, settled_before)
    open_letters = open_dead_letters(snapshot.dead_letters, found) - len(resolved)
    found = _letter_stock(found, snapshot, started_at)
    _publish(found, open_letters)
    settled = checks.settled_orders(snapshot.orders, settled_before)
    report = ReconciliationReport(
        started_at=started_at,
        finished_at=iso_now(),
        settled_before=settled_before,
        checked=CheckedCounts(
            products=len(snapshot.products),
            reservations=len(snapshot.reservations),
            orders=len(settled),
            payments=sum(order.order_id in snapshot.payments for order in settled),
            provider_operations=sum(view.operations for view in snapshot.provider.values()),
            dead_letters=len(snapshot.dead_letters),
            purchase_counters=purchase_counters,
        ),
        discrepancies=found[:MAX_LISTED],
        omitted=max(len(found) - MAX_LISTED, 0),
        resolved_dead_letters=resolved[:MAX_LISTED],
        resolved_dead_letters_omitted=max(len(resolved) - MAX_LISTED, 0),
    )
    audit.save_report(report)
    return report


def _repair_ledgers(found: list[Discrepancy], snapshot: Snapshot, provider: PaymentProvider) -> list[Discrepancy]:
    """Reconcile every ledger behind the provider, then judge those orders again from fresh reads."""
    behind = {d.order_id for d in found if d.kind == checks.LEDGER_BEHIND and d.order_id is not None}
    if not behind:
        return found
    orders = {order.order_id: order for order in snapshot.orders}
    result = [d for d in found if d.order_id not in behind or d.kind in REPORT_ONLY]
    service = payment_domain.payment_service()
    for order_id in sorted(behind):
        lagging = next(d for d in found if d.order_id == order_id and d.kind == checks.LEDGER_BEHIND)
        try:
            payment = service.reconcile(order_id)
        except ShopError as error:
            logger().warning("reconciling a payment failed", extra={"order_id": order_id, "error": str(error)})
            result += [d for d in found if d.order_id == order_id and d.kind not in REPORT_ONLY]
            continue
        result.append(lagging.model_copy(update={"action": "repaired"}))
        again = checks.check_order(
            orders[order_id],
            payment=payment,
            provider=provider_view(order_id, payment, provider),
            reservation=snapshot.reservations.get(order_id),
            dead_letter=snapshot.dead_letters.get(order_id),
        )
        result += [d for d in again if d.kind not in REPORT_ONLY]
    return result


def _dead_letter(found: list[Discrepancy], snapshot: Snapshot) -> list[Discrepancy]:
    """Open the dead letter of every order with a discrepancy a redrive can act on (one per order)."""
    orders = {order.order_id: order for order in snapshot.orders}
    actions: dict[str, DiscrepancyAction] = {}
    for order_id, discrepancies in checks.by_order(found).items():
        open_ = [d for d in discrepancies if d.action == "reported" and d.kind not in REPORT_ONLY]
        if not open_ or order_id not in orders:
            continue
        actions[order_id] = _open_dead_letter(orders[order_id], open_)
    return [
        d.model_copy(update={"action": actions[d.order_id]})
        if d.order_id in actions and d.action == "reported" and d.kind not in REPORT_ONLY
        else d
        for d in found
    ]


def _letter_stock(found: list[Discrepancy], snapshot: Snapshot, now: str) -> list[Discrepancy]:
    """Open the letter of every SKU with a stock discrepancy; resolve the open letter of every SKU
    judged consistent this run (a SKU that changed while it was read is not judged either way)."""
    by_sku: dict[str, list[Discrepancy]] = {}
    for discrepancy in found:
        # A purchase counter names its SKU too, but the SKU's stock is not what is wrong.
        if discrepancy.sku is not None and discrepancy.customer_id is None:
            by_sku.setdefault(discrepancy.sku, []).append(discrepancy)
    actions: dict[str, DiscrepancyAction] = {}
    for sku, discrepancies in sorted(by_sku.items()):
        opened = stock_discrepancies.open_letter(
            sku,
            kinds=sorted({d.kind for d in discrepancies}),
            detail="; ".join(d.detail for d in discrepancies),
            now=now,
        )
        actions[sku] = "dead_lettered" if opened else "dead_letter_already_open"
        if opened:
            logger().warning("stock discrepancy letter opened", extra={"sku": sku})
    for sku in stock_discrepancies.open_skus() - by_sku.keys():
        product = snapshot.products.get(sku)
        if product is not None and product.stable and stock_discrepancies.resolve(sku, now=now):
            logger().info("stock discrepancy resolved: the SKU is consistent again", extra={"sku": sku})
    return [
        d.model_copy(update={"action": actions[d.sku]}) if d.sku in actions and d.customer_id is None else d
        for d in found
    ]


def _open_dead_letter(order: Order, discrepancies: list[Discrepancy]) -> DiscrepancyAction:
    letter = dead_letters.get(order.order_id)
    if letter is not None and letter.status in checks.OPEN_DEAD_LETTER:
        return "dead_letter_already_open"
    current = order_repository.get(order.order_id)
    if current is None or current.version != order.version:
        # The order moved after the run read it (a customer's refund settling it while the run read
        # the payments, say): the discrepancy may be the run's own mix of two moments, and the
        # order's settlement would not see a letter written now. The next run judges it afresh.
        return "left_for_next_run"
    dead_letters.record(
        order_id=order.order_id,
        resume=checks.resume_point(order, {d.kind for d in discrepancies}),
        failed_step="reconciliation",
        failure=None,
        error="ReconciliationDiscrepancy",
        cause="; ".join(f"{d.kind}: {d.detail}" for d in discrepancies),
        execution_name=None,
        now=iso_now(),
    )
    # The order never recorded NEEDS_ATTENTION: marked, so the step that settles it (a redrive's,
    # or a refund the customer asks for meanwhile) resolves the letter.
    order_repository.update(order.order_id, lifecycle.dead_letter_marked)
    return "dead_lettered"


def _resolve_letters_of_sound_orders(snapshot: Snapshot, found: list[Discrepancy], settled_before: str) -> list[str]:
    """Resolve the OPEN letter of every settled order this run judged and found nothing wrong with.

    Such a letter has nothing left to redrive: an operator repaired the books by hand, or the letter
    was opened while the customer's refund settled the order, or a flag step opened it for an order
    whose own step had settled it. A redrive of it would only flag it again.
    """
    troubled = set(checks.by_order(found))
    resolved = []
    for order in checks.settled_orders(snapshot.orders, settled_before):
        letter = snapshot.dead_letters.get(order.order_id)
        if (
            order.status in SETTLED
            and letter is not None
            and letter.status == "OPEN"
            and order.order_id not in troubled
        ):
            # As read, letter and order: a refund flagged since writes the letter again (the order
            # moves too), and its letter must stay OPEN (a helper's probe: it was resolved).
            unchanged = order_repository.unchanged_since(order.order_id, order.version)
            if not dead_letters.resolve_as_read(letter, order_unchanged=unchanged, now=iso_now()):
                logger().info(
                    "dead letter left: it or its order changed since the run read them",
                    extra={"order_id": order.order_id},
                )
                continue
            logger().info(
                "dead letter resolved: its order is settled and its books agree", extra={"order_id": order.order_id}
            )
            resolved.append(order.order_id)
    return resolved


def open_dead_letters(letters: Mapping[str, DeadLetter], found: list[Discrepancy]) -> int:
    """The orders' dead letters an operator still has to act on: those OPEN when the run read them,
    plus those this run opened (a letter being redriven is in hand)."""
    opened = {d.order_id for d in found if d.action == "dead_lettered" and d.order_id is not None}
    return len({order_id for order_id, letter in letters.items() if letter.status == "OPEN"} | opened)


def _publish(found: list[Discrepancy], open_letters: int) -> None:
    counts: dict[str, int] = {}
    for discrepancy in found:
        counts[discrepancy.kind] = counts.get(discrepancy.kind, 0) + 1
    for kind, count in sorted(counts.items()):
        dimensioned_metric("ReconciliationDiscrepancies", MetricUnit.Count, count, kind=kind)
    # Levels, published every run (zero included), for the alarms: what is left for an operator
    # (a ledger the run repaired is not), and the orders' dead letters waiting for a redrive.
    outstanding = sum(discrepancy.action != "repaired" for discrepancy in found)
    metrics().add_metric(name="ReconciliationDiscrepanciesOutstanding", unit=MetricUnit.Count, value=outstanding)
    metrics().add_metric(name="DeadLettersOpen", unit=MetricUnit.Count, value=open_letters)
    if found:
        logger().warning("reconciliation found discrepancies", extra={"discrepancies": counts})


def last_report() -> ReconciliationReport | None:
    return audit.last_report()
