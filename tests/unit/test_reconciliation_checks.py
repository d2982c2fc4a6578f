"""The reconciliation's invariants as pure checks: a clean case and a violation of each, on hand-built snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from shop.domain import reconciliation as checks
from shop.domain.reconciliation import ProviderView, Snapshot, StockRecord
from shop.models.inventory import PurchaseCount, Reservation, StoredLine
from shop.models.money import Money
from shop.models.orders import DeadLetter, HistoryEntry, Order, OrderLine
from shop.models.payments import Payment, RefundEntry
from shop.models.reconciliation import UnreadableItem
from shop.payments.provider import ProviderOperation
from shop.payments.simulator import LedgerAuthorization, LedgerEntry, SimulatorLedger

OID = "order-1"
TOTAL = 2500
AT = "2026-01-01T00:00:00.000Z"
LATER = "2026-01-01T01:00:00.000Z"
AUTH_REF, CAPTURE_REF, VOID_REF = "sim_auth_1", "sim_cap_1", "sim_void_1"
REFUND_KEY = f"{OID}:refund:full"


def order(status: str, **changes: Any) -> Order:
    line = OrderLine(
        sku="MUG", name="Mug", quantity=2, unit_price=Money(amount=TOTAL // 2), line_total=Money(amount=TOTAL)
    )
    fields: dict[str, Any] = {
        "order_id": OID,
        "customer_id": "alice",
        "status": status,
        "items": [line],
        "total": Money(amount=TOTAL),
        "history": [HistoryEntry(step="order_placed", status="PENDING", at=AT)],
        "created_at": AT,
        "updated_at": AT,
    }
    return Order.model_validate({**fields, **changes})


def payment(status: str, **changes: Any) -> Payment:
    fields: dict[str, Any] = {
        "order_id": OID,
        "status": status,
        "provider": "simulator",
        "created_at": AT,
        "updated_at": AT,
    }
    if status != "PENDING":
        fields |= {"authorization_ref": AUTH_REF, "authorized_amount": TOTAL}
    if status in ("CAPTURED", "REFUNDED"):
        fields |= {"capture_ref": CAPTURE_REF, "captured_amount": TOTAL}
    if status == "REFUNDED":
        fields |= {"refunded_amount": TOTAL, "refunds": {REFUND_KEY: RefundEntry(ref="r1", amount=TOTAL, at=AT)}}
    if status == "VOIDED":
        fields |= {"void_ref": VOID_REF}
    return Payment.model_validate({**fields, **changes})


def operation(kind: str, key: str, reference: str | None, amount: int = TOTAL, approved: bool = True) -> Any:
    return ProviderOperation(
        idempotency_key=key,
        operation=kind,
        approved=approved,
        reference=reference,
        authorization_ref=AUTH_REF,
        amount=Money(amount=amount),
    )


def ledger(status: str, entries: list[tuple[str, str, int]] = ()) -> SimulatorLedger:  # type: ignore[assignment]
    captured = sum(amount for kind, _, amount in entries if kind == "capture")
    refunded = sum(amount for kind, _, amount in entries if kind == "refund")
    return SimulatorLedger(
        authorization=LedgerAuthorization(
            reference=AUTH_REF,
            token="tok_visa",
            amount=TOTAL,
            status=status,
            captured_amount=captured,
            refunded_amount=refunded,
            refundable_amount=captured - refunded,
            created_at=AT,
            updated_at=AT,
        ),
        entries=[
            LedgerEntry(kind=kind, reference=f"{kind}-{index}", amount=amount, idempotency_key=key, created_at=AT)
            for index, (kind, key, amount) in enumerate(entries)
        ],
    )


def provider(status: str) -> ProviderView:
    """The provider's side of a payment in ``status``, as a healthy saga leaves it."""
    authorize = operation("authorize", f"{OID}:authorize", AUTH_REF)
    if status == "AUTHORIZED":
        return ProviderView(authorize=authorize, ledger=ledger("AUTHORIZED"))
    if status == "VOIDED":
        void = operation("void", f"{OID}:void", VOID_REF, amount=0)
        return ProviderView(authorize=authorize, void=void, ledger=ledger("VOIDED", [("void", f"{OID}:void", 0)]))
    capture = operation("capture", f"{OID}:capture", CAPTURE_REF)
    entries = [("capture", f"{OID}:capture", TOTAL)]
    refunds = {}
    if status == "REFUNDED":
        refunds = {REFUND_KEY: operation("refund", REFUND_KEY, "r1")}
        entries.append(("refund", REFUND_KEY, TOTAL))
    return ProviderView(authorize=authorize, capture=capture, refunds=refunds, ledger=ledger("CAPTURED", entries))


def reservation(status: str, quantity: int = 2, expires_at: int = 1000) -> Reservation:
    return Reservation(
        reservation_id=OID,
        order_id=OID,
        lines=[StoredLine(sku="MUG", quantity=quantity)],
        status=status,
        expires_at=expires_at,
        created_at=AT,
        updated_at=AT,
    )


def letter(status: str) -> DeadLetter:
    return DeadLetter(
        order_id=OID, status=status, resume="compensate", failed_step="void_payment", created_at=AT, updated_at=AT
    )


def kinds(found: list[Any]) -> list[str]:
    return sorted(discrepancy.kind for discrepancy in found)


def judge(the_order: Order, the_payment: Payment | None, view: ProviderView, **kwargs: Any) -> list[str]:
    return kinds(
        checks.check_order(
            the_order,
            payment=the_payment,
            provider=view,
            reservation=kwargs.get("reservation"),
            dead_letter=kwargs.get("dead_letter"),
        )
    )


# ---------------------------------------------------------------------------- stock
def test_stock_equation_holds_with_held_committed_released_and_adjustments() -> None:
    products = {"MUG": StockRecord(sku="MUG", available=14, initial=20)}
    reservations = [reservation("RESERVED", 3), reservation("COMMITTED", 5), reservation("RELEASED", 7)]
    assert checks.check_stock(products, {"MUG": 2}, reservations) == []


def test_stock_changed_behind_the_ledgers_back_is_a_mismatch() -> None:
    products = {"MUG": StockRecord(sku="MUG", available=15, initial=20)}
    found = checks.check_stock(products, {"MUG": 2}, [reservation("RESERVED", 3), reservation("COMMITTED", 5)])
    assert kinds(found) == ["stock_mismatch"]
    assert found[0].sku == "MUG" and "= 22" in found[0].detail and "= 23" in found[0].detail


def test_negative_stock_is_reported_and_unstable_or_legacy_products_skip_the_equation() -> None:
    products = {
        "NEG": StockRecord(sku="NEG", available=-1, initial=None),
        "MOVING": StockRecord(sku="MOVING", available=3, initial=20, stable=False),
    }
    assert kinds(checks.check_stock(products, {}, [])) == ["stock_negative"]


def test_a_hold_past_its_expiry_is_reported() -> None:
    assert checks.check_reservations([reservation("RESERVED", expires_at=1000)], expired_before=1000) == []
    late = checks.check_reservations([reservation("RESERVED", expires_at=999)], expired_before=1000)
    assert kinds(late) == ["reservation_held_past_expiry"] and late[0].order_id == OID
    assert checks.check_reservations([reservation("COMMITTED", expires_at=1)], expired_before=1000) == []


# ---------------------------------------------------------------------------- orders: clean cases
@pytest.mark.parametrize(
    ("status", "pay", "held"),
    [("COMPLETED", "CAPTURED", "COMMITTED"), ("CANCELLED", "VOIDED", "RELEASED"), ("REFUNDED", "REFUNDED", "RELEASED")],
)
def test_a_settled_order_whose_books_agree_has_no_discrepancy(status: str, pay: str, held: str) -> None:
    assert judge(order(status), payment(pay), provider(pay), reservation=reservation(held)) == []


def test_declined_and_out_of_stock_cancellations_have_no_discrepancy() -> None:
    declined = operation("authorize", f"{OID}:authorize", None, approved=False)
    assert (
        judge(order("CANCELLED"), payment("DECLINED", authorization_ref=None), ProviderView(authorize=declined)) == []
    )
    assert judge(order("CANCELLED"), None, ProviderView()) == []


# ---------------------------------------------------------------------------- orders: violations
def test_completed_without_capture_or_commit() -> None:
    found = judge(
        order("COMPLETED"), payment("AUTHORIZED"), provider("AUTHORIZED"), reservation=reservation("RELEASED")
    )
    assert found == ["completed_not_captured", "completed_reservation_not_committed"]


def test_completed_for_less_than_its_total() -> None:
    short = payment("CAPTURED", captured_amount=TOTAL - 1)
    view = provider("CAPTURED")
    view = ProviderView(
        authorize=view.authorize, capture=operation("capture", f"{OID}:capture", CAPTURE_REF, TOTAL - 1)
    )
    assert judge(order("COMPLETED"), short, view, reservation=reservation("COMMITTED")) == ["completed_not_captured"]


def test_cancelled_but_captured_at_both_ends() -> None:
    found = judge(order("CANCELLED"), payment("CAPTURED"), provider("CAPTURED"), reservation=reservation("RELEASED"))
    assert found == ["cancelled_but_captured"]


def test_cancelled_with_the_authorization_still_held_and_the_stock_not_returned() -> None:
    voided_ours = payment("VOIDED")
    found = judge(order("CANCELLED"), voided_ours, provider("AUTHORIZED"), reservation=reservation("RESERVED"))
    assert "cancelled_authorization_not_voided" in found and "cancelled_stock_not_returned" in found
    assert "payment_ledger_mismatch" in found  # ours says VOIDED, the provider voided nothing


def test_refunded_short_of_the_capture_and_stock_kept() -> None:
    partial = payment("CAPTURED").model_copy(update={"status": "PARTIALLY_REFUNDED", "refunded_amount": TOTAL - 100})
    view = provider("CAPTURED")
    found = judge(order("REFUNDED"), partial, view, reservation=reservation("COMMITTED"))
    assert found == ["payment_ledger_mismatch", "refunded_amount_mismatch", "refunded_stock_not_returned"]


def test_needs_attention_needs_an_open_dead_letter() -> None:
    attention = order("NEEDS_ATTENTION")
    assert judge(attention, payment("AUTHORIZED"), provider("AUTHORIZED"), dead_letter=letter("OPEN")) == []
    assert judge(attention, payment("AUTHORIZED"), provider("AUTHORIZED"), dead_letter=letter("REDRIVING")) == []
    for dead_letter in (None, letter("RESOLVED")):
        found = judge(attention, payment("AUTHORIZED"), provider("AUTHORIZED"), dead_letter=dead_letter)
        assert found == ["attention_without_dead_letter"]


def test_an_order_still_in_progress_is_not_settled() -> None:
    assert judge(order("PAYMENT_AUTHORIZED"), payment("AUTHORIZED"), provider("AUTHORIZED")) == ["order_not_settled"]


# ---------------------------------------------------------------------------- payments against the provider
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("PENDING", "AUTHORIZED"), ("AUTHORIZED", "CAPTURED"), ("AUTHORIZED", "VOIDED")],
)
def test_a_ledger_behind_the_provider_is_the_repairable_kind(ours: str, theirs: str) -> None:
    found = checks.check_payment(OID, payment(ours), provider(theirs))
    assert kinds(found) == [checks.LEDGER_BEHIND]


def test_a_ledger_ahead_of_the_provider_is_a_mismatch() -> None:
    found = checks.check_payment(OID, payment("CAPTURED"), provider("AUTHORIZED"))
    assert kinds(found) == ["payment_ledger_mismatch"] * 2  # no capture there; its authorization is uncaptured


def test_amounts_or_references_that_differ_are_mismatches() -> None:
    view = provider("CAPTURED")
    other = ProviderView(
        authorize=operation("authorize", f"{OID}:authorize", "sim_auth_other"),
        capture=view.capture,
        ledger=view.ledger,
    )
    assert kinds(checks.check_payment(OID, payment("CAPTURED"), other)) == ["payment_ledger_mismatch"]
    refunded_there = provider("REFUNDED")
    assert kinds(checks.check_payment(OID, payment("CAPTURED"), refunded_there)) == ["payment_ledger_mismatch"]


def test_a_provider_operation_applied_twice_is_reported() -> None:
    twice = ledger("CAPTURED", [("capture", f"{OID}:capture", TOTAL), ("capture", f"{OID}:capture", TOTAL)])
    view = provider("CAPTURED")
    view = ProviderView(authorize=view.authorize, capture=view.capture, ledger=twice)
    found = checks.check_payment(OID, payment("CAPTURED"), view)
    assert set(kinds(found)) == {"provider_operation_duplicated"} and len(found) == 2  # two captures; key twice


def test_check_judges_only_settled_orders() -> None:
    moving = order("PENDING", updated_at=LATER)
    snapshot = Snapshot(
        products={},
        adjustments={},
        reservations={},
        orders=[moving],
        payments={},
        dead_letters={},
        provider={},
    )
    assert checks.check(snapshot, settled_before=LATER, expired_before=0) == []
    assert kinds(checks.check(snapshot, settled_before="2026-01-01T02:00:00.000Z", expired_before=0)) == [
        "order_not_settled"
    ]


def test_resume_points_follow_the_order() -> None:
    assert checks.resume_point(order("COMPLETED")) == "complete"
    assert checks.resume_point(order("CANCELLED")) == "compensate"
    assert checks.resume_point(order("REFUNDED")) == "refund"
    refunding = order("NEEDS_ATTENTION", history=[HistoryEntry(step="start_refund", status="REFUNDING", at=AT)])
    assert checks.resume_point(refunding) == "refund"
    assert checks.resume_point(order("NEEDS_ATTENTION")) == "compensate"


def test_at_most_one_order_per_customer_and_idempotency_key() -> None:
    first = order("COMPLETED", idempotency_key="k-1")
    second = order("COMPLETED", order_id="order-2", idempotency_key="k-1")
    other_customer = order("COMPLETED", order_id="order-3", customer_id="bob", idempotency_key="k-1")
    legacy = order("COMPLETED", order_id="order-4")  # stored before keys were kept
    assert checks.check_idempotency([first, other_customer, legacy, legacy]) == []
    found = checks.check_idempotency([first, second, other_customer])
    assert [(d.kind, d.order_id) for d in found] == [
        ("duplicate_idempotency_key", OID),
        ("duplicate_idempotency_key", "order-2"),
    ]
    assert "'k-1'" in found[0].detail and "order-2" in found[0].detail


def test_a_key_used_again_after_it_was_forgotten_is_no_duplicate() -> None:
    """POST /orders remembers a key for 24 hours; after that the same key with another body is a new
    order, and the books check must not report the two for good."""
    first = order("COMPLETED", idempotency_key="k-1", created_at="2026-11-01T10:00:00.000Z")
    next_day = order("COMPLETED", order_id="order-2", idempotency_key="k-1", created_at="2026-11-02T10:00:00.000Z")
    within = order("COMPLETED", order_id="order-3", idempotency_key="k-1", created_at="2026-11-02T10:00:00.500Z")
    assert checks.check_idempotency([next_day, first]) == []
    found = checks.check_idempotency([first, next_day, within])
    assert [d.order_id for d in found] == ["order-2", "order-3"]


def test_a_placement_time_that_is_no_time_stops_nothing() -> None:
    """``created_at`` of an item written behind the shop's back: alone with its key it is judged as
    before; beside another order of its key, both are reported (nothing says they are far apart). A
    review's probe: the run failed on it, and reported nothing at all."""
    # Order's reader now refuses such a time (an unreadable record, reported apart); the check still takes
    # whatever it is handed.
    odd = order("COMPLETED", idempotency_key="k-1").model_copy(update={"created_at": "2026/11/01 10:00"})
    naive = order("COMPLETED", order_id="order-2", idempotency_key="k-1").model_copy(
        update={"created_at": "2026-11-03T10:00:00"}
    )
    aware = order("COMPLETED", order_id="order-3", idempotency_key="k-2", created_at="2026-11-01T10:00:00.000Z")
    far = order("COMPLETED", order_id="order-4", idempotency_key="k-1", created_at="2026-11-20T10:00:00.000Z")
    assert checks.check_idempotency([odd]) == checks.check_idempotency([aware]) == []
    reported = [d.order_id for d in checks.check_idempotency([odd, naive, aware, far])]
    assert reported == [OID, "order-2", "order-4"]  # every order of the key: nothing says which are apart


def test_a_running_execution_after_quiescence_names_its_order() -> None:
    assert checks.check_executions([]) == []
    # Continuations (the sweeper's Express runs, a refund's on STANDARD) too: before, only a redrive's
    # suffix came off, and `refund-<order>-continue-2` was reported as order `<order>-continue-2`.
    names = [OID, f"refund-{OID}-redrive-2", f"{OID}-redrive-10", f"refund-{OID}-continue-2", f"{OID}-continue-3"]
    found = checks.check_executions(names)
    assert [(d.kind, d.order_id) for d in found] == [("execution_running", OID)] * 5


# ---------------------------------------------------------------------------- purchase counters
COMPLETED_AT = HistoryEntry(step="complete_order", status="COMPLETED", at=AT)


def limited(status: str, order_id: str, *, who: str = "alice", completed: bool = False, **changes: Any) -> Order:
    """An order of 2 MUG (limit 5 when placed), completed at some point or not."""
    history = [HistoryEntry(step="order_placed", status="PENDING", at=AT), *([COMPLETED_AT] if completed else [])]
    return order(status, order_id=order_id, customer_id=who, purchase_limits={"MUG": 5}, history=history, **changes)


def counter(units: int, who: str = "alice", sku: str = "MUG") -> PurchaseCount:
    return PurchaseCount(customer_id=who, sku=sku, units=units)


def purchase_check(counts: list[PurchaseCount], orders: list[Order], unjudged: set[str] | None = None) -> Any:
    return checks.check_purchase_counts(counts, orders, settled_before=LATER, unjudged=unjudged or set())


def test_a_counter_holds_the_units_of_completed_orders_and_of_those_returned_after_completion() -> None:
    orders = [
        limited("COMPLETED", "o-1", completed=True),
        limited("REFUNDED", "o-2", completed=True),  # a return still counts against the limit
        limited("REFUNDED", "o-3"),  # refunded before it completed: its release gave the units back
        limited("CANCELLED", "o-4"),
        order("COMPLETED", order_id="o-5"),  # placed before MUG had a limit: never counted
    ]
    assert purchase_check([counter(4)], orders) == ([], 1)


def test_a_counter_out_of_step_with_the_orders_is_reported_with_both_numbers() -> None:
    orders = [limited("COMPLETED", "o-1", completed=True), limited("CANCELLED", "o-2", who="bob")]
    found, judged = purchase_check([counter(3), counter(2, who="bob"), counter(1, who="carol")], orders)
    assert judged == 3
    assert [(d.kind, d.customer_id, d.sku, d.order_id) for d in found] == [
        ("purchase_count_mismatch", "alice", "MUG", None),
        ("purchase_count_mismatch", "bob", "MUG", None),
        ("purchase_count_mismatch", "carol", "MUG", None),  # counted units without any order
    ]
    assert "counted 3 units of MUG" in found[0].detail and "hold 2" in found[0].detail
    # A counter that was never written while an order holds units is out of step too.
    assert kinds(purchase_check([], orders)[0]) == ["purchase_count_mismatch"]


def test_a_customer_with_an_order_not_settled_or_left_unjudged_is_not_judged() -> None:
    done = limited("COMPLETED", "o-1", completed=True)
    moving = limited("PENDING", "o-2")  # its reservation may have taken its units already
    recent = limited("CANCELLED", "o-3", updated_at=LATER)  # its release may still be under way
    attention = limited("NEEDS_ATTENTION", "o-4")
    for other in (moving, recent, attention):
        assert purchase_check([counter(4)], [done, other]) == ([], 0)
    assert purchase_check([counter(9)], [done], unjudged={"alice"}) == ([], 0)


def test_the_books_check_leaves_a_customer_with_a_wrong_order_to_that_orders_letter() -> None:
    snapshot = Snapshot(
        products={},
        adjustments={},
        reservations={},
        orders=[limited("COMPLETED", OID, completed=True)],  # no capture, no reservation: its own letter
        payments={},
        dead_letters={},
        provider={},
        purchase_counts=[counter(0)],
    )
    found = checks.check(snapshot, settled_before=LATER, expired_before=0)
    assert "purchase_count_mismatch" not in kinds(found) and "completed_not_captured" in kinds(found)
    # An unreadable order may be anyone's: no counter is judged.
    sound = Snapshot(**{**snapshot.__dict__, "orders": [], "purchase_counts": [counter(3)]})
    assert kinds(checks.check(sound, settled_before=LATER, expired_before=0)) == ["purchase_count_mismatch"]
    unreadable = UnreadableItem(table="OrdersTable", key={"order_id": "x"}, error="ValidationError")
    blind = Snapshot(**{**sound.__dict__, "unreadable": [unreadable]})
    assert kinds(checks.check(blind, settled_before=LATER, expired_before=0)) == ["record_unreadable"]
    # One that says whose it is leaves only that customer alone.
    theirs = UnreadableItem(table="OrdersTable", key={"order_id": "x", "customer_id": "bob"}, error="e")
    found = checks.check(Snapshot(**{**sound.__dict__, "unreadable": [theirs]}), settled_before=LATER, expired_before=0)
    assert kinds(found) == ["purchase_count_mismatch", "record_unreadable"]
    theirs = UnreadableItem(table="OrdersTable", key={"order_id": "x", "customer_id": "alice"}, error="e")
    found = checks.check(Snapshot(**{**sound.__dict__, "unreadable": [theirs]}), settled_before=LATER, expired_before=0)
    assert kinds(found) == ["record_unreadable"]
    # An unreadable counter is reported with its customer, who is not judged.
    bad_counter = UnreadableItem(table="PurchaseCountsTable", key={"customer_id": "alice", "sku": "MUG"}, error="e")
    found = checks.check(
        Snapshot(**{**sound.__dict__, "unreadable": [bad_counter]}), settled_before=LATER, expired_before=0
    )
    assert [(d.kind, d.customer_id, d.sku) for d in found] == [("record_unreadable", "alice", "MUG")]
