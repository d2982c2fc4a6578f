"""The reconciliation over real sagas: clean books give a clean report; then one corruption at a time.

Each test runs real checkouts and refunds to the end (polling for the execution's end, never
sleeping), then runs the checker (quiescent: every saga has finished) or the deployed scheduled
function, and reads the report back through ``GET /admin/reconciliation``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.local import lambda_runtime
from shop import aws
from shop.domain import inventory as inventory_domain
from shop.domain import payments as payment_domain
from shop.domain import reconciliation_job, recovery
from shop.models.base import iso_now
from shop.models.common import CheckoutLine
from shop.models.money import Money
from shop.models.orders import HistoryEntry
from shop.models.reconciliation import ReconciliationReport
from shop.repositories import audit, dead_letters
from shop.repositories import inventory as inventory_repository
from shop.repositories import orders as order_repository
from shop.repositories.payments import PaymentsRepository
from shop.saga_terms import Step
from tests.conftest import WORKFLOW_TYPES, LocalAws
from tests.service.faults import StepFaults
from tests.service.orders_helpers import PauseAt, Shop, available, open_reconciliation_letter, open_shop, seed_product

PRICE = 1250
STOCK = 10


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=PRICE, stock=STOCK)
    with open_shop(local_aws) as opened:
        yield opened


def completed(shop: Shop, quantity: int = 1) -> str:
    order_id: str = shop.place_ok([("MUG-1", quantity)])["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    shop.wait_status(order_id, "COMPLETED")
    return order_id


def report_via_api(shop: Shop) -> dict[str, Any]:
    response = shop.client.http.get("/admin/reconciliation", headers=shop.headers("admin"))
    assert response.status_code == 200, response.body
    return response.json_body


def kinds(report: ReconciliationReport) -> list[tuple[str, str]]:
    return sorted((d.kind, d.action) for d in report.discrepancies)


def test_real_sagas_leave_books_without_a_discrepancy(shop: Shop) -> None:
    missing = shop.client.http.get("/admin/reconciliation", headers=shop.headers("admin"))
    assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/problem+json"
    assert shop.client.http.get("/admin/reconciliation", headers=shop.headers("alice")).status_code == 403

    done = completed(shop, 2)
    declined = shop.place_ok([("MUG-1", 1)], token="tok_chargeDeclined")["order_id"]
    refunded = completed(shop, 3)
    assert shop.cancel(refunded).status_code == 202
    assert shop.wait_checkout(declined) == "SUCCEEDED" and shop.wait_refund(refunded) == "SUCCEEDED"
    shop.wait_status(declined, "CANCELLED")
    shop.wait_status(refunded, "REFUNDED")

    # The production run leaves alone orders changed in the last 15 minutes: a saga may move them.
    recent = reconciliation_job.run()
    assert recent.discrepancies == [] and recent.checked.orders == 0 and recent.checked.products == 1

    report = reconciliation_job.run(quiescent=True)
    assert report.discrepancies == []
    assert report.checked.orders == 3 and report.checked.payments == 3 and report.checked.reservations == 3
    # authorize + capture (done); authorize (declined); authorize + capture + refund (refunded)
    assert report.checked.provider_operations == 6
    body = report_via_api(shop)
    assert body["discrepancies"] == [] and body["started_at"] == report.started_at
    stored = audit.orders().records
    assert {done, declined, refunded} == {order.order_id for order in stored}
    assert all(order.idempotency_key for order in stored)  # kept, so duplicates would be found


def test_a_payment_ledger_behind_the_provider_is_repaired(shop: Shop, local_aws: LocalAws) -> None:
    order_id = completed(shop)
    # Our record of the capture is lost: the ledger still says AUTHORIZED, the provider captured.
    aws.dynamodb().update_item(
        TableName=local_aws.table("PaymentsTable"),
        Key={"order_id": {"S": order_id}},
        UpdateExpression="SET #status = :authorized, captured_amount = :zero REMOVE capture_ref",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":authorized": {"S": "AUTHORIZED"}, ":zero": {"N": "0"}},
    )

    report = reconciliation_job.run(quiescent=True)

    assert kinds(report) == [("payment_ledger_behind_provider", "repaired")]
    assert report.discrepancies[0].order_id == order_id
    payment = PaymentsRepository().get(order_id)
    assert payment is not None and (payment.status, payment.captured_amount) == ("CAPTURED", PRICE)
    assert shop.dead_letter(order_id) is None
    assert reconciliation_job.run(quiescent=True).discrepancies == []  # the books agree again
    assert report_via_api(shop)["discrepancies"] == []


def _set_status(local_aws: LocalAws, table: str, key: dict[str, str], status: str) -> None:
    """An item's status changed behind the shop's back."""
    aws.dynamodb().update_item(
        TableName=local_aws.table(table),
        Key={name: {"S": value} for name, value in key.items()},
        UpdateExpression="SET #status = :status",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":status": {"S": status}},
    )


def test_items_no_version_of_the_shop_wrote_are_reported_and_the_rest_is_still_checked(
    shop: Shop, local_aws: LocalAws
) -> None:
    judged = completed(shop)
    unjudged = completed(shop)
    # Written behind the shop's back: an order item that is not an Order, and a payment item of a
    # completed order that is not a Payment.
    aws.dynamodb().put_item(
        TableName=local_aws.table("OrdersTable"), Item={"order_id": {"S": "hand-written"}, "status": {"S": "SHIPPED"}}
    )
    _set_status(local_aws, "PaymentsTable", {"order_id": unjudged}, "SHIPPED")
    # A discrepancy the run must still find on a readable order: its reservation was never committed.
    _set_status(local_aws, "ReservationsTable", {"reservation_id": judged}, "RESERVED")

    report = reconciliation_job.run(quiescent=True)

    unreadable = {
        (d.order_id, d.detail.split(" item ")[0]) for d in report.discrepancies if d.kind == "record_unreadable"
    }
    assert unreadable == {("hand-written", "OrdersTable"), (unjudged, "PaymentsTable")}
    assert all(d.action == "reported" for d in report.discrepancies if d.kind == "record_unreadable")
    # The order whose payment cannot be read is not judged (every check would find its payment missing),
    # nor dead-lettered; the readable one is judged as ever.
    assert {d.order_id for d in report.discrepancies if d.kind != "record_unreadable"} == {judged}
    assert shop.dead_letter(unjudged) is None
    assert report.checked.orders == 2
    assert [d["kind"] for d in report_via_api(shop)["discrepancies"]].count("record_unreadable") == 2


def _drift_stock(local_aws: LocalAws, units: int) -> None:
    """Stock changed behind the ledgers' back: no reservation, no audited adjustment."""
    aws.dynamodb().update_item(
        TableName=local_aws.table("StockTable"),
        Key={"sku": {"S": "MUG-1"}, "shard": {"N": "0"}},
        UpdateExpression="SET available = available + :units",
        ExpressionAttributeValues={":units": {"N": str(units)}},
    )


def stock_letters(shop: Shop) -> list[dict[str, Any]]:
    response = shop.client.http.get("/admin/stock-discrepancies", headers=shop.headers("admin"))
    assert response.status_code == 200, response.body
    return response.json_body["items"]


def test_stock_changed_behind_the_ledgers_back_opens_a_stock_letter_until_it_is_consistent_again(
    shop: Shop, local_aws: LocalAws
) -> None:
    completed(shop, 2)
    assert stock_letters(shop) == []
    _drift_stock(local_aws, 3)

    response = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function("ReconcileBooksFunction"),
        Payload=json.dumps({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}),
    )
    assert "FunctionError" not in response, response["Payload"].read()
    assert json.loads(response["Payload"].read())["discrepancies"] == 1

    body = report_via_api(shop)
    assert [(d["kind"], d["sku"], d["order_id"], d["action"]) for d in body["discrepancies"]] == [
        ("stock_mismatch", "MUG-1", None, "dead_lettered")
    ]
    detail = body["discrepancies"][0]["detail"]
    assert f"initial {STOCK} + adjustments 0 = {STOCK}" in detail and f"= {STOCK + 3}" in detail
    assert body["checked"]["products"] == 1
    [letter] = stock_letters(shop)
    assert (letter["sku"], letter["status"], letter["kinds"], letter["runs_seen"]) == (
        "MUG-1",
        "OPEN",
        ["stock_mismatch"],
        1,
    )
    assert letter["detail"] == detail and letter["resolved_at"] is None

    # The next run finds it still open: one letter, seen twice.
    again = reconciliation_job.run(quiescent=True)
    assert [(d.kind, d.action) for d in again.discrepancies] == [("stock_mismatch", "dead_letter_already_open")]
    [letter] = stock_letters(shop)
    assert (letter["status"], letter["runs_seen"], letter["first_seen_at"]) == ("OPEN", 2, body["started_at"])

    # The operator found the cause and undid it: the next run resolves the letter.
    _drift_stock(local_aws, -3)
    assert reconciliation_job.run(quiescent=True).discrepancies == []
    [letter] = stock_letters(shop)
    assert letter["status"] == "RESOLVED" and letter["resolved_at"] is not None
    assert shop.client.http.get("/admin/stock-discrepancies", headers=shop.headers("alice")).status_code == 403
    bad = shop.client.http.get("/admin/stock-discrepancies?limit=0", headers=shop.headers("admin"))
    assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/problem+json"


def test_needs_attention_without_a_dead_letter_is_dead_lettered_and_the_redrive_settles_it(shop: Shop) -> None:
    order_id = completed(shop)
    # The order is flagged as a failed compensation would flag it, but its dead letter was never written.
    flag = HistoryEntry(step=Step.NEEDS_ATTENTION, status="NEEDS_ATTENTION", at=iso_now())
    order_repository.update(
        order_id,
        lambda order: order.model_copy(update={"status": "NEEDS_ATTENTION", "history": [*order.history, flag]}),
    )

    report = reconciliation_job.run(quiescent=True)

    assert kinds(report) == [("attention_without_dead_letter", "dead_lettered")]
    letter = shop.dead_letter(order_id)
    assert letter is not None and (letter.status, letter.resume) == ("OPEN", "compensate")
    assert letter.cause is not None and "attention_without_dead_letter" in letter.cause
    listed = report_via_api(shop)["discrepancies"]
    assert [(d["order_id"], d["kind"], d["action"]) for d in listed] == [
        (order_id, "attention_without_dead_letter", "dead_lettered")
    ]
    # With its dead letter open, the order satisfies the invariant.
    assert reconciliation_job.run(quiescent=True).discrepancies == []

    # The operator's redrive resumes from the truth (captured, committed) and completes the order.
    redriven = shop.redrive(order_id)
    assert redriven.status_code == 202
    assert shop.wait_execution("CheckoutStateMachine", redriven.json_body["redrive_execution"]) == "SUCCEEDED"
    shop.wait_dead_letter(order_id, "RESOLVED")
    shop.wait_status(order_id, "COMPLETED")
    assert reconciliation_job.run(quiescent=True).discrepancies == []


def _dead_lettered_then_redriven(shop: Shop, order_id: str, kind: str, *, resume: str) -> None:
    """The reconciliation finds ``kind`` on the order alone and dead-letters it; an operator redrives it."""
    _letters_alone(order_id, kind)
    letter = shop.dead_letter(order_id)
    assert letter is not None and (letter.status, letter.resume) == ("OPEN", resume)
    redriven = shop.redrive(order_id)
    assert redriven.status_code == 202, redriven.body
    assert shop.wait_execution("CheckoutStateMachine", redriven.json_body["redrive_execution"]) == "SUCCEEDED"


def test_a_completed_order_whose_stock_was_never_committed_is_dead_lettered_and_its_redrive_resolves_it(
    shop: Shop, local_aws: LocalAws
) -> None:
    """A letter the reconciliation opened for an order that never needed attention: the redrive's run
    settles the order, and must resolve the letter too (it stayed REDRIVING for good)."""
    order_id = completed(shop, quantity=2)
    _set_status(local_aws, "ReservationsTable", {"reservation_id": order_id}, "RESERVED")  # the commit was lost

    _dead_lettered_then_redriven(shop, order_id, "completed_reservation_not_committed", resume="complete")

    assert shop.wait_dead_letter(order_id, "RESOLVED").redrive_count == 1
    reservation = inventory_repository.get_reservation(order_id)
    assert reservation is not None and reservation.status == "COMMITTED"
    assert shop.order(order_id).status == "COMPLETED" and available("MUG-1") == STOCK - 2
    payment = PaymentsRepository().get(order_id)
    assert payment is not None and (payment.status, payment.captured_amount) == ("CAPTURED", 2 * PRICE)
    assert reconciliation_job.run(quiescent=True).discrepancies == []


def test_a_cancelled_order_whose_release_was_lost_is_dead_lettered_and_its_redrive_returns_the_stock(
    shop: Shop, local_aws: LocalAws
) -> None:
    order_id = shop.place_ok([("MUG-1", 2)], token="tok_chargeDeclined")["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    assert shop.order(order_id).status == "CANCELLED" and available("MUG-1") == STOCK
    # As if the release had never happened: the hold still RESERVED and its units still out of stock.
    _set_status(local_aws, "ReservationsTable", {"reservation_id": order_id}, "RESERVED")
    aws.dynamodb().update_item(
        TableName=local_aws.table("StockTable"),
        Key={"sku": {"S": "MUG-1"}, "shard": {"N": "0"}},
        UpdateExpression="SET available = available - :two",
        ExpressionAttributeValues={":two": {"N": "2"}},
    )

    _dead_lettered_then_redriven(shop, order_id, "cancelled_stock_not_returned", resume="compensate")

    shop.wait_dead_letter(order_id, "RESOLVED")
    reservation = inventory_repository.get_reservation(order_id)
    assert reservation is not None and reservation.status == "RELEASED"
    assert (shop.order(order_id).status, shop.order(order_id).failure_reason) == ("CANCELLED", "PAYMENT_DECLINED")
    assert available("MUG-1") == STOCK
    assert reconciliation_job.run(quiescent=True).discrepancies == []


@pytest.mark.parametrize("stock_returned", [True, False], ids=["released", "still-committed"])
def test_a_cancelled_order_that_was_charged_is_refunded_by_its_redrive(
    shop: Shop, local_aws: LocalAws, stock_returned: bool
) -> None:
    """The order says CANCELLED, the payment is captured (an order item restored from a backup, an
    operator's edit): the letter resumed at the compensation, which found nothing to void or release,
    so every redrive failed and the customer stayed charged."""
    order_id = completed(shop, quantity=2)
    if stock_returned:
        inventory_domain.release(order_id)
    order_repository.update(
        order_id, lambda o: o.model_copy(update={"status": "CANCELLED", "failure_reason": "PAYMENT_UNAVAILABLE"})
    )

    report = reconciliation_job.run(quiescent=True)
    assert ("cancelled_but_captured", "dead_lettered") in [(d.kind, d.action) for d in report.discrepancies]
    letter = shop.dead_letter(order_id)
    assert letter is not None and (letter.status, letter.resume) == ("OPEN", "refund")
    redriven = shop.redrive(order_id)
    assert redriven.status_code == 202, redriven.body
    assert shop.wait_execution("RefundStateMachine", redriven.json_body["redrive_execution"]) == "SUCCEEDED"

    assert shop.wait_dead_letter(order_id, "RESOLVED").redrive_count == 1
    order = shop.order(order_id)
    assert (order.status, order.failure_reason) == ("REFUNDED", None)
    payment = PaymentsRepository().get(order_id)
    assert payment is not None and (payment.status, payment.refunded_amount) == ("REFUNDED", 2 * PRICE)
    provider = payment_domain.simulator().ledger(payment.authorization_ref or "")
    assert provider is not None and len(provider.of_kind("refund")) == 1
    reservation = inventory_repository.get_reservation(order_id)
    assert reservation is not None and reservation.status == "RELEASED"
    assert available("MUG-1") == STOCK
    assert reconciliation_job.run(quiescent=True).discrepancies == []


def test_a_ledger_that_lost_the_void_is_repaired_from_the_provider(shop: Shop, local_aws: LocalAws) -> None:
    pause = PauseAt(local_aws.function("RecordProgressFunction"), when=lambda e: e.get("step") == "authorize_payment")
    lambda_runtime.faults.before_invoke = pause
    order_id = shop.place_ok([("MUG-1", 2)])["order_id"]
    pause.wait_reached()
    assert shop.cancel(order_id).status_code == 202
    pause.released.set()
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    voided = PaymentsRepository().get(order_id)
    assert shop.order(order_id).status == "CANCELLED" and voided is not None and voided.status == "VOIDED"
    # Our record of the void is lost: the ledger still says AUTHORIZED; the provider voided.
    aws.dynamodb().update_item(
        TableName=local_aws.table("PaymentsTable"),
        Key={"order_id": {"S": order_id}},
        UpdateExpression="SET #status = :authorized REMOVE void_ref",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":authorized": {"S": "AUTHORIZED"}},
    )

    report = reconciliation_job.run(quiescent=True)

    assert [(d.order_id, d.kind, d.action) for d in report.discrepancies] == [
        (order_id, "payment_ledger_behind_provider", "repaired")
    ]
    repaired = PaymentsRepository().get(order_id)
    assert repaired is not None and repaired.status == "VOIDED"
    assert shop.dead_letter(order_id) is None
    assert reconciliation_job.run(quiescent=True).discrepancies == []


def test_a_letter_the_reconciliation_opened_is_resolved_by_a_refund_the_customer_asks_for_first(
    shop: Shop, local_aws: LocalAws
) -> None:
    """The refund saga's run is no redrive: the order's mark is what tells its last step to resolve."""
    order_id = completed(shop, quantity=2)
    _set_status(local_aws, "ReservationsTable", {"reservation_id": order_id}, "RESERVED")
    reconciliation_job.run(quiescent=True)
    assert shop.wait_dead_letter(order_id, "OPEN").resume == "complete"

    assert shop.cancel(order_id).status_code == 202
    assert shop.wait_refund(order_id) == "SUCCEEDED"

    assert shop.wait_dead_letter(order_id, "RESOLVED").redrive_count == 0
    payment = PaymentsRepository().get(order_id)
    assert shop.order(order_id).status == "REFUNDED" and available("MUG-1") == STOCK
    assert payment is not None and payment.refunded_amount == 2 * PRICE
    assert reconciliation_job.run(quiescent=True).discrepancies == []


@pytest.mark.parametrize("workflow_type", WORKFLOW_TYPES, indirect=True)
def test_a_redrive_asked_while_the_customers_refund_runs_is_refused_and_the_refund_settles_the_letter(
    shop: Shop, local_aws: LocalAws, workflow_type: str
) -> None:
    """A redrive is a takeover: it took the order from the running refund, whose last step then lost its claim;
    the order stayed REFUNDING with no saga (on STANDARD no second refund-<id> can start) and the letter REDRIVING."""
    order_id = completed(shop, quantity=2)
    _set_status(local_aws, "ReservationsTable", {"reservation_id": order_id}, "RESERVED")
    reconciliation_job.run(quiescent=True)
    assert shop.wait_dead_letter(order_id, "OPEN").resume == "complete"
    pause = PauseAt(local_aws.function("RefundPaymentFunction"))
    lambda_runtime.faults.before_invoke = pause
    assert shop.cancel(order_id).status_code == 202
    pause.wait_reached()

    refused = shop.redrive(order_id)
    pause.released.set()

    assert refused.status_code == 409, refused.body
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert json.loads(refused.body)["type"] == "urn:shop:problem:saga-still-running"
    assert shop.wait_refund(order_id) == "SUCCEEDED"
    letter = shop.wait_dead_letter(order_id, "RESOLVED")
    assert letter.redrive_count == 0 and letter.redrive_execution is None
    payment = PaymentsRepository().get(order_id)
    assert shop.order(order_id).status == "REFUNDED" and available("MUG-1") == STOCK
    assert payment is not None and payment.refunded_amount == 2 * PRICE
    assert reconciliation_job.run(quiescent=True).discrepancies == []


# ---------------------------------------------------------------------------- redrives of settled orders
def _provider_books(order_id: str) -> tuple[str, int, int] | None:
    """The provider's side: the authorization's status, its captures and its voids."""
    simulator = payment_domain.simulator()
    authorization = simulator.lookup(f"{order_id}:authorize")
    ledger = simulator.ledger(authorization.reference) if authorization and authorization.reference else None
    if ledger is None:
        return None
    return ledger.authorization.status, len(ledger.of_kind("capture")), len(ledger.of_kind("void"))


def _letters_alone(order_id: str, kind: str) -> None:
    """The reconciliation finds ``kind`` on the order alone and dead-letters it."""
    report = reconciliation_job.run(quiescent=True)
    assert [(d.order_id, d.kind, d.action) for d in report.discrepancies] == [(order_id, kind, "dead_lettered")]


def _redriven(shop: Shop, order_id: str) -> str:
    response = shop.redrive(order_id)
    assert response.status_code == 202, response.body
    return shop.wait_execution("CheckoutStateMachine", response.json_body["redrive_execution"])


def _completed_without_capture(shop: Shop, local_aws: LocalAws, faults: StepFaults) -> str:
    """An order COMPLETED whose payment the provider never captured (its item restored from a backup,
    or edited by hand), with the letter its saga left (resume=compensate) still OPEN."""
    # The saga dead-letters with the payment AUTHORIZED at both ends and the stock committed ...
    faults.fail("CapturePaymentFunction")
    faults.fail("VoidPaymentFunction")
    order_id: str = shop.place_ok([("MUG-1", 2)])["order_id"]
    assert shop.wait_checkout(order_id) == "FAILED"
    shop.wait_status(order_id, "NEEDS_ATTENTION")
    faults.heal()
    local_aws.deliver_events()
    assert shop.wait_dead_letter(order_id, "OPEN").resume == "compensate"
    # ... and the order item then says COMPLETED.
    order_repository.update(order_id, lambda order: order.model_copy(update={"status": "COMPLETED"}))
    return order_id


def _nothing_moved(shop: Shop, order_id: str, *, redrives: int) -> None:
    """Flagged again, and the goods, the hold and the authorization are where they were."""
    letter = shop.wait_dead_letter(order_id, "OPEN")
    assert (letter.resume, letter.redrive_count, letter.error) == ("complete", redrives, "NothingCaptured")
    assert shop.order(order_id).status == "COMPLETED"
    payment = PaymentsRepository().get(order_id)
    assert payment is not None and (payment.status, payment.captured_amount) == ("AUTHORIZED", 0)
    assert _provider_books(order_id) == ("AUTHORIZED", 0, 0)
    reservation = inventory_repository.get_reservation(order_id)
    assert reservation is not None and reservation.status == "COMMITTED"
    assert available("MUG-1") == STOCK - 2


def test_a_completed_order_the_provider_never_captured_is_flagged_by_its_redrive_and_keeps_its_goods_and_hold(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """The reconciliation letters a COMPLETED order without a capture with resume=complete. Its redrive
    used to find nothing captured and compensate: the payment voided and the sold units back on sale,
    under an order still COMPLETED. Now nothing moves and the letter is open again, redrive after redrive."""
    order_id = _completed_without_capture(shop, local_aws, faults)
    dead_letters.resolve(order_id, now=iso_now())

    _letters_alone(order_id, "completed_not_captured")
    for number in (1, 2):
        assert _redriven(shop, order_id) == "FAILED"
        local_aws.deliver_events()
        _nothing_moved(shop, order_id, redrives=number)


def test_a_compensate_letter_never_compensates_a_completed_order(
    shop: Shop, local_aws: LocalAws, faults: StepFaults
) -> None:
    """Whatever its letter says, a COMPLETED order's redrive completes it or flags it."""
    order_id = _completed_without_capture(shop, local_aws, faults)

    assert _redriven(shop, order_id) == "FAILED"
    local_aws.deliver_events()
    _nothing_moved(shop, order_id, redrives=1)


@pytest.mark.parametrize("workflow_type", WORKFLOW_TYPES, indirect=True)
def test_a_completed_order_whose_sold_stock_was_released_stays_lettered_through_every_redrive(
    shop: Shop, local_aws: LocalAws, workflow_type: str
) -> None:
    """Its redrive cannot commit a released hold and must not refund a sale nobody cancelled: it flags.
    The flag step used to refuse the COMPLETED order, so the execution failed outside its catches and,
    on EXPRESS (no status event), the letter stayed REDRIVING for good, out of the operators' sight."""
    order_id = completed(shop, quantity=2)
    # A stray release of the sold units (a misdirected invocation of the saga's own compensation).
    released = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function("ReleaseReservationFunction"),
        Payload=json.dumps({"order_id": order_id, "execution_name": "stray"}),
    )
    assert "FunctionError" not in released
    assert available("MUG-1") == STOCK

    _letters_alone(order_id, "completed_reservation_not_committed")
    for number in (1, 2):
        assert _redriven(shop, order_id) == "FAILED"
        local_aws.deliver_events()
        letter = shop.wait_dead_letter(order_id, "OPEN")
        assert (letter.resume, letter.redrive_count) == ("complete", number)
        assert shop.order(order_id).status == "COMPLETED"
        payment = PaymentsRepository().get(order_id)
        assert payment is not None and (payment.status, payment.captured_amount) == ("CAPTURED", 2 * PRICE)
        assert _provider_books(order_id) == ("CAPTURED", 1, 0)
        assert available("MUG-1") == STOCK  # unchanged: taking the units out again is the operator's call


# ---------------------------------------------------------------------------- letters with nothing left to do
def test_a_letter_whose_books_an_operator_repaired_by_hand_is_resolved_by_the_next_run(
    shop: Shop, local_aws: LocalAws
) -> None:
    """No redrive can commit a hold the sweeper released under a COMPLETED order; once an operator has
    put the books right by hand, the next run finds nothing wrong and closes the letter."""
    order_id = completed(shop, quantity=2)
    _set_status(local_aws, "ReservationsTable", {"reservation_id": order_id}, "RESERVED")
    _letters_alone(order_id, "completed_reservation_not_committed")
    later = datetime.now(UTC) + timedelta(minutes=16)

    still = reconciliation_job.run(later)
    assert [(d.kind, d.action) for d in still.discrepancies] == [
        ("completed_reservation_not_committed", "dead_letter_already_open")
    ]
    assert still.resolved_dead_letters == [] and shop.wait_dead_letter(order_id, "OPEN")

    _set_status(local_aws, "ReservationsTable", {"reservation_id": order_id}, "COMMITTED")  # the operator's repair
    repaired = reconciliation_job.run(later)

    assert repaired.discrepancies == [] and repaired.resolved_dead_letters == [order_id]
    assert shop.wait_dead_letter(order_id, "RESOLVED").redrive_count == 0
    assert report_via_api(shop)["resolved_dead_letters"] == [order_id]


def test_the_letters_a_run_resolves_are_listed_up_to_the_cap_and_the_rest_counted(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incident's repair can resolve thousands of letters in one run; the stored report is one item
    (400 KB), and 11,000 listed order ids passed it: the run resolved them and lost its report (a
    helper's fidelity probe). They are listed as the discrepancies are, up to MAX_LISTED."""
    monkeypatch.setattr(reconciliation_job, "MAX_LISTED", 1)  # stands for the 200 it is
    orders = [completed(shop, quantity=1) for _ in range(3)]
    for order_id in orders:
        open_reconciliation_letter(order_id, "read before an operator's repair")

    report = reconciliation_job.run(datetime.now(UTC) + timedelta(minutes=16))

    assert len(report.resolved_dead_letters) == 1 and report.resolved_dead_letters[0] in orders
    assert report.resolved_dead_letters_omitted == 2
    assert all(shop.wait_dead_letter(order_id, "RESOLVED") for order_id in orders)
    assert report_via_api(shop)["resolved_dead_letters_omitted"] == 2


def test_a_letter_opened_while_a_refund_settled_the_order_is_resolved_by_the_next_run(shop: Shop) -> None:
    """The run read the order COMPLETED, the customer's refund settled it, then the run wrote the
    letter: nothing marked the order in time, so the refund's last step could not resolve it."""
    order_id = completed(shop, quantity=2)
    assert shop.cancel(order_id).status_code == 202
    assert shop.wait_refund(order_id) == "SUCCEEDED"
    open_reconciliation_letter(order_id, "completed_reservation_not_committed: read before the refund")

    report = reconciliation_job.run(datetime.now(UTC) + timedelta(minutes=16))

    assert report.discrepancies == [] and report.resolved_dead_letters == [order_id]
    assert shop.wait_dead_letter(order_id, "RESOLVED")
    assert shop.order(order_id).status == "REFUNDED" and available("MUG-1") == STOCK


def test_a_letter_written_again_while_the_run_decides_stays_open(
    shop: Shop, faults: StepFaults, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run reads a sound COMPLETED order with a stale OPEN letter and decides to resolve it; before
    it writes, the customer's refund fails past its retries and the flag step writes the letter again
    (NEEDS_ATTENTION). That letter is the operator's only sign of a customer charged and not refunded:
    the run must leave it OPEN. Before, its resolve was conditioned on nothing it had read (a helper's
    probe)."""
    order_id = completed(shop)
    open_reconciliation_letter(order_id, "read before an operator repaired the books")
    faults.fail("RefundPaymentFunction")
    reopen = recovery.reopen_stalled_redrives

    def refund_fails_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # Runs after the run read the books and before it resolves letters.
        assert shop.cancel(order_id).status_code == 202
        assert shop.wait_refund(order_id) == "FAILED"
        shop.wait_status(order_id, "NEEDS_ATTENTION")
        return reopen(*args, **kwargs)

    monkeypatch.setattr(recovery, "reopen_stalled_redrives", refund_fails_meanwhile)
    report = reconciliation_job.run(datetime.now(UTC) + timedelta(minutes=16))

    assert report.resolved_dead_letters == []
    letter = dead_letters.get(order_id)
    assert letter is not None and (letter.status, letter.resume) == ("OPEN", "refund")
    payment = PaymentsRepository().get(order_id)
    assert payment is not None and (payment.captured_amount, payment.refunded_amount) == (PRICE, 0)
    faults.heal()
    assert shop.redrive(order_id).status_code == 202
    shop.wait_status(order_id, "REFUNDED")
    assert shop.wait_dead_letter(order_id, "RESOLVED")


def test_a_refund_settling_while_the_run_reads_opens_no_letter(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run reads the orders, then the payments: a refund settling in between shows it a COMPLETED
    order beside a REFUNDED payment. That is the run's own mix of two moments: it writes no letter (whose
    redrive would find the order REFUNDED and stall) and the next run, reading afresh, finds nothing."""
    order_id = completed(shop, quantity=2)
    read_payments = audit.payments

    def payments_after_the_refund() -> Any:
        assert shop.cancel(order_id).status_code == 202
        assert shop.wait_refund(order_id) == "SUCCEEDED"
        return read_payments()

    monkeypatch.setattr(audit, "payments", payments_after_the_refund)
    later = datetime.now(UTC) + timedelta(minutes=16)
    mixed = reconciliation_job.run(later)
    monkeypatch.setattr(audit, "payments", read_payments)

    assert mixed.discrepancies and {(d.order_id, d.action) for d in mixed.discrepancies} == {
        (order_id, "left_for_next_run")
    }
    assert dead_letters.get(order_id) is None and not shop.order(order_id).dead_lettered
    assert reconciliation_job.run(later).discrepancies == []
    assert shop.order(order_id).status == "REFUNDED" and available("MUG-1") == STOCK
    payment = PaymentsRepository().get(order_id)
    assert payment is not None and (payment.status, payment.refunded_amount) == ("REFUNDED", 2 * PRICE)


def _drift_purchase_count(local_aws: LocalAws, customer: str, units: int) -> None:
    """A purchase counter changed behind the shop's back (no reservation took or gave the units)."""
    aws.dynamodb().update_item(
        TableName=local_aws.table("PurchaseCountsTable"),
        Key={"customer_id": {"S": customer}, "sku": {"S": "MUG-1"}},
        UpdateExpression="ADD #units :units",
        ExpressionAttributeNames={"#units": "units"},
        ExpressionAttributeValues={":units": {"N": str(units)}},
    )


def test_a_purchase_counter_out_of_step_with_the_customers_orders_is_reported_until_it_agrees_again(
    shop: Shop, local_aws: LocalAws
) -> None:
    limited = shop.client.http.patch(
        "/products/MUG-1", headers=shop.headers("admin"), body=json.dumps({"purchase_limit": 5})
    )
    assert limited.status_code == 200, limited.body
    completed(shop, 2)
    returned = completed(shop, 1)  # refunded after completion: a return still counts
    assert shop.cancel(returned).status_code == 202 and shop.wait_refund(returned) == "SUCCEEDED"
    declined = shop.place_ok([("MUG-1", 2)], who="bob", token="tok_chargeDeclined")["order_id"]
    assert shop.wait_checkout(declined) == "SUCCEEDED"
    shop.wait_status(declined, "CANCELLED")

    clean = reconciliation_job.run(quiescent=True)
    assert clean.discrepancies == []
    assert clean.checked.purchase_counters == 2  # alice's 3 units, bob's 0 (his release gave them back)

    _drift_purchase_count(local_aws, "alice", 2)
    report = reconciliation_job.run(quiescent=True)

    assert [(d.kind, d.customer_id, d.sku, d.order_id, d.action) for d in report.discrepancies] == [
        ("purchase_count_mismatch", "alice", "MUG-1", None, "reported")
    ]
    assert "counted 5 units of MUG-1" in report.discrepancies[0].detail
    assert "hold 3" in report.discrepancies[0].detail
    [listed] = report_via_api(shop)["discrepancies"]
    assert (listed["kind"], listed["customer_id"]) == ("purchase_count_mismatch", "alice")
    # Not the SKU's stock, nor any order's: no letter of either kind.
    assert stock_letters(shop) == [] and shop.dead_letter(returned) is None

    _drift_purchase_count(local_aws, "alice", -2)  # the operator set it back
    assert reconciliation_job.run(quiescent=True).discrepancies == []


def test_an_order_is_judged_only_once_unchanged_for_the_settling_period(shop: Shop) -> None:
    """The 15 minutes an order must be left unchanged before it is judged (a saga, a sweeper or a
    retry may still move it) were pinned only at "just now": a minute passed every test."""
    completed(shop)
    now = datetime.now(UTC)

    early = reconciliation_job.run(now=now + timedelta(minutes=14))
    late = reconciliation_job.run(now=now + timedelta(minutes=16))

    assert (early.checked.orders, late.checked.orders) == (0, 1)
    assert late.discrepancies == []


def test_the_discrepancies_past_the_cap_are_counted(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report lists MAX_LISTED discrepancies; ``omitted`` counts the rest (only the resolved
    letters' count was pinned)."""
    monkeypatch.setattr(reconciliation_job, "MAX_LISTED", 1)  # stands for the 200 it is
    orders = [completed(shop) for _ in range(3)]
    for order_id in orders:
        _set_status(local_aws, "ReservationsTable", {"reservation_id": order_id}, "RESERVED")

    report = reconciliation_job.run(datetime.now(UTC) + timedelta(minutes=16))

    assert [d.kind for d in report.discrepancies] == ["completed_reservation_not_committed"]
    assert report.omitted == 2


def test_a_refund_only_the_providers_ledger_knows_is_read_and_counted(shop: Shop) -> None:
    """The provider's view takes the refund keys of the simulator's ledger as well as ours; without
    them a refund our ledger never recorded (the step stopped after the provider's answer) was not read,
    and the report counted one provider operation fewer."""
    order_id = completed(shop)
    payment = PaymentsRepository().get(order_id)
    assert payment is not None and payment.capture_ref is not None
    payment_domain.provider().refund(payment.capture_ref, Money(amount=100), f"{order_id}:refund:lost-run:100")

    report = reconciliation_job.run(quiescent=True)

    assert report.checked.provider_operations == 3  # authorize, capture, the refund
    assert [(d.kind, d.order_id) for d in report.discrepancies] == [("payment_ledger_mismatch", order_id)]
    assert "refunded: ours 0, the provider's 100" in report.discrepancies[0].detail


def test_every_page_of_dead_letters_is_read(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run reads the letters a page of 100 at a time; reading the first page only passed
    every test (none had more than 100 letters). One letter a page stands for the 100."""
    real = dead_letters.list_page

    def one_a_page(*, limit: int, start_key: Any) -> Any:
        return real(limit=1, start_key=start_key)

    monkeypatch.setattr(dead_letters, "list_page", one_a_page)
    for order_id in ("order-a", "order-b", "order-c"):
        open_reconciliation_letter(order_id, "read by the run")

    report = reconciliation_job.run(quiescent=True)

    assert report.checked.dead_letters == 3


def _run_with_a_hold_while_it_reads(monkeypatch: pytest.MonkeyPatch, quantity: int) -> ReconciliationReport:
    """A run during which a checkout's hold lands between its two reads of the products, before it
    reads the reservations: its first read of MUG-1 misses the hold's units, its read of the holds has them."""
    read_reservations = audit.reservations

    def reservations_after_a_hold() -> Any:
        with lambda_runtime.invoking("ReserveStockFunction"):  # a checkout's step, whatever it interrupts
            inventory_domain.reserve("hold-mid-read", [CheckoutLine(sku="MUG-1", quantity=quantity)])
        return read_reservations()

    monkeypatch.setattr(audit, "reservations", reservations_after_a_hold)
    report = reconciliation_job.run(quiescent=True)
    monkeypatch.setattr(audit, "reservations", read_reservations)
    return report


def test_a_sku_whose_stock_moves_while_the_run_reads_it_is_not_judged(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The products are read first and last, and a SKU whose version moved in between is left to the
    next run: its stock and its holds are from two moments. Judging it anyway (the two reads not compared)
    passed every test, and would open a stock letter on books that agree."""
    torn = _run_with_a_hold_while_it_reads(monkeypatch, 2)

    assert torn.discrepancies == [] and stock_letters(shop) == []
    assert available("MUG-1") == STOCK - 2
    assert reconciliation_job.run(quiescent=True).discrepancies == []  # read afresh, the books agree


def test_a_stock_letter_stays_open_through_a_run_that_read_its_sku_torn(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run resolves the stock letter of a SKU it judged consistent; one whose stock moved while it
    read was not judged at all, and its letter must stay open. Resolving it anyway passed every test: the
    drift the operator has not undone would lose its only sign until a later run opened it again."""
    _drift_stock(local_aws, 3)
    assert [(d.kind, d.action) for d in reconciliation_job.run(quiescent=True).discrepancies] == [
        ("stock_mismatch", "dead_lettered")
    ]
    torn = _run_with_a_hold_while_it_reads(monkeypatch, 2)

    assert torn.discrepancies == []
    [letter] = stock_letters(shop)
    assert (letter["status"], letter["runs_seen"], letter["resolved_at"]) == ("OPEN", 1, None)
    again = reconciliation_job.run(quiescent=True)  # read whole: the drift is still there
    assert [(d.kind, d.action) for d in again.discrepancies] == [("stock_mismatch", "dead_letter_already_open")]


def test_a_sku_one_of_whose_counters_cannot_be_read_is_reported_and_its_stock_not_judged(
    shop: Shop, local_aws: LocalAws
) -> None:
    """A stock counter the shop cannot read is left out of ``available``, so the SKU's stock equation
    would find its units missing: the counter is reported, the equation not judged. Judging it anyway
    passed every test, and reported a mismatch the books do not have."""
    aws.dynamodb().update_item(
        TableName=local_aws.table("StockTable"),
        Key={"sku": {"S": "MUG-1"}, "shard": {"N": "0"}},
        UpdateExpression="SET available = :text",
        ExpressionAttributeValues={":text": {"S": "ten"}},
    )

    report = reconciliation_job.run(quiescent=True)

    assert [(d.kind, d.sku, d.action) for d in report.discrepancies] == [
        ("record_unreadable", "MUG-1", "dead_lettered")
    ]
    assert "StockTable item" in report.discrepancies[0].detail
    [letter] = stock_letters(shop)
    assert (letter["sku"], letter["kinds"]) == ("MUG-1", ["record_unreadable"])


def test_a_repaired_ledger_keeps_the_report_only_findings_of_its_order(shop: Shop, local_aws: LocalAws) -> None:
    """The run judges a repaired order again and keeps the report-only findings of the first
    judgement (no re-check finds them: they are not about its payment). Dropping them passed every test:
    an order placed twice under one Idempotency-Key would vanish from the report once its ledger lagged."""
    first = completed(shop)
    second = completed(shop)
    key = shop.order(first).idempotency_key
    # The second order placed under the first one's key, and our record of its capture lost.
    aws.dynamodb().update_item(
        TableName=local_aws.table("OrdersTable"),
        Key={"order_id": {"S": second}},
        UpdateExpression="SET idempotency_key = :key",
        ExpressionAttributeValues={":key": {"S": key}},
    )
    aws.dynamodb().update_item(
        TableName=local_aws.table("PaymentsTable"),
        Key={"order_id": {"S": second}},
        UpdateExpression="SET #status = :authorized, captured_amount = :zero REMOVE capture_ref",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":authorized": {"S": "AUTHORIZED"}, ":zero": {"N": "0"}},
    )

    report = reconciliation_job.run(quiescent=True)

    assert sorted((d.order_id, d.kind, d.action) for d in report.discrepancies) == sorted(
        [
            (first, "duplicate_idempotency_key", "reported"),
            (second, "duplicate_idempotency_key", "reported"),
            (second, "payment_ledger_behind_provider", "repaired"),
        ]
    )
    assert shop.dead_letter(first) is None and shop.dead_letter(second) is None
