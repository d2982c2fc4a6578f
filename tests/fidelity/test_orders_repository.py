"""The order's blind forward writes (``orders.advance``) against the read-then-write path they
shortcut, on moto and on DynamoDB Local: for the case their condition describes both must store the
same item, and outside it the blind write must change nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shop.domain import order_lifecycle as lifecycle
from shop.domain import order_saga
from shop.errors import OrderNotFound
from shop.models.money import Money
from shop.models.orders import DeadLetter, HistoryEntry, Order, OrderLine, OrderStatus, SagaClaim
from shop.repositories import dead_letters
from shop.repositories import orders as repository
from shop.saga_terms import Step
from tests.fidelity.conftest import Backend

NOW = "2026-11-30T01:00:00.000Z"


def stored_order(order_id: str, status: OrderStatus, *, cancel_requested: bool = False) -> Order:
    history = [HistoryEntry(step="place_order", status="PENDING", at="2026-11-30T00:59:59.000Z")]
    if status != "PENDING":
        history.append(HistoryEntry(step=Step.RESERVE_STOCK, status="SUCCEEDED", at="2026-11-30T00:59:59.500Z"))
    if status == "PAYMENT_AUTHORIZED":
        history.append(HistoryEntry(step=Step.AUTHORIZE_PAYMENT, status="SUCCEEDED", at="2026-11-30T00:59:59.700Z"))
    order = Order(
        order_id=order_id,
        customer_id="cust-1",
        status=status,
        items=[
            OrderLine(
                sku="MUG-1",
                name="Mug",
                quantity=2,
                unit_price=Money(amount=1250, currency="USD"),
                line_total=Money(amount=2500, currency="USD"),
            )
        ],
        total=Money(amount=2500, currency="USD"),
        history=history,
        cancel_requested=cancel_requested,
        payment_token="tok_visa",
        idempotency_key="key-1",
        created_at="2026-11-30T00:59:59.000Z",
        updated_at="2026-11-30T00:59:59.700Z",
        version=3,
    )
    return repository.create(order)


def raw(backend: Backend, order_id: str) -> dict[str, Any]:
    item = backend.client.get_item(
        TableName=backend.table("OrdersTable"), Key={"order_id": {"S": order_id}}, ConsistentRead=True
    )["Item"]
    if "outcome" in item:
        # The index partition is the order's own shard; orders compared here differ in id only.
        status = item["outcome"]["S"].split("#")[0]
        assert item["outcome"]["S"] == repository.outcome_key(status, order_id)
        item["outcome"] = {"S": status}
    return {key: value for key, value in item.items() if key not in ("order_id", "created_key")}


CASES: list[tuple[str, lifecycle.Advance, Callable[[Order], Order | None]]] = [
    (
        "reserve",
        lifecycle.PROGRESS_ADVANCES[Step.RESERVE_STOCK],
        lambda o: lifecycle.progressed(o, Step.RESERVE_STOCK, NOW),
    ),
    (
        "authorize",
        lifecycle.PROGRESS_ADVANCES[Step.AUTHORIZE_PAYMENT],
        lambda o: lifecycle.progressed(o, Step.AUTHORIZE_PAYMENT, NOW),
    ),
    ("complete", lifecycle.COMPLETE_ADVANCE, lambda o: lifecycle.completed(o, NOW)),
]


def blind(order_id: str, advance: lifecycle.Advance) -> Order | None:
    return order_saga.apply_advance(order_id, advance, NOW)


@pytest.mark.parametrize(("name", "advance", "transition"), CASES, ids=[case[0] for case in CASES])
def test_a_blind_forward_write_stores_what_the_read_then_write_path_stores(
    backend: Backend, name: str, advance: lifecycle.Advance, transition: Callable[[Order], Order | None]
) -> None:
    stored_order(f"{name}-blind", advance.from_status)
    stored_order(f"{name}-read", advance.from_status)

    written = blind(f"{name}-blind", advance)
    updated, changed = repository.update(f"{name}-read", transition)

    assert written is not None and changed
    assert written.model_dump(exclude={"order_id"}) == updated.model_dump(exclude={"order_id"})
    assert raw(backend, f"{name}-blind") == raw(backend, f"{name}-read")  # the index key too


@pytest.mark.parametrize(("name", "advance", "transition"), CASES, ids=[case[0] for case in CASES])
def test_a_blind_forward_write_changes_nothing_outside_its_case(
    backend: Backend, name: str, advance: lifecycle.Advance, transition: Callable[[Order], Order | None]
) -> None:
    moved_on = stored_order(f"{name}-done", "COMPLETED")
    assert blind(moved_on.order_id, advance) is None
    assert repository.get(moved_on.order_id) == moved_on
    assert blind("never-placed", advance) is None
    if advance.unless_cancel_requested:
        asked = stored_order(f"{name}-cancel", advance.from_status, cancel_requested=True)
        assert blind(asked.order_id, advance) is None
        assert repository.get(asked.order_id) == asked


def test_the_sparse_indexes_follow_an_order_from_open_to_settled(backend: Backend) -> None:
    """OrdersInProgress holds exactly the open orders, by customer; OrdersByOutcome exactly the
    settled ones, by status; the listings read the orders behind both, newest first."""
    from shop.models.orders import OrderFilter

    def placed(order_id: str, customer: str, minute: int, status: OrderStatus = "PENDING") -> Order:
        order = stored_order(f"tmp-{order_id}", status)
        return repository.create(
            order.model_copy(
                update={
                    "order_id": order_id,
                    "customer_id": customer,
                    "created_at": f"2026-11-30T00:{minute:02d}:00.000Z",
                }
            )
        )

    placed("a-1", "cust-a", 1)
    placed("a-2", "cust-a", 2, "STOCK_RESERVED")
    placed("a-3", "cust-a", 3)
    placed("b-1", "cust-b", 4, "PAYMENT_AUTHORIZED")
    assert sorted(repository.open_order_ids("cust-a")) == ["a-1", "a-2", "a-3"]

    # a-2 completes (the saga's blind write), a-3 is cancelled (the read-then-write path).
    assert order_saga.apply_advance("a-2", lifecycle.PROGRESS_ADVANCES[Step.AUTHORIZE_PAYMENT], NOW) is not None
    assert order_saga.apply_advance("a-2", lifecycle.COMPLETE_ADVANCE, NOW) is not None
    repository.update("a-3", lambda o: o.model_copy(update={"status": "CANCELLED", "failure_reason": "OUT_OF_STOCK"}))

    assert sorted(repository.open_order_ids("cust-a")) == ["a-1"]
    assert repository.in_progress_since("2026-11-30T00:30:00.000Z", limit=10)[:2] == ["a-1", "b-1"]
    assert repository.in_progress_since("2026-11-30T00:02:00.000Z", limit=10) == ["a-1"]

    def listed(**criteria: Any) -> list[str]:
        orders, _ = repository.list_filtered(OrderFilter(**criteria), limit=50, start_key=None)
        return [order.order_id for order in orders if order.order_id[:2] in ("a-", "b-")]

    assert listed(status="COMPLETED") == ["a-2"]
    assert listed(status="CANCELLED", reason="OUT_OF_STOCK") == ["a-3"]
    assert listed(status="CANCELLED", reason="PAYMENT_DECLINED") == []
    assert listed(status="PENDING") == ["a-1"]
    assert listed(status="PAYMENT_AUTHORIZED") == ["b-1"]
    assert listed(customer="cust-a") == ["a-3", "a-2", "a-1"]
    assert listed(customer="cust-a", since="2026-11-30T00:02:00.000Z") == ["a-3", "a-2"]
    assert listed(customer="cust-a", status="PENDING") == ["a-1"]
    assert listed() == ["b-1", "a-3", "a-2", "a-1"]
    mine, _ = repository.list_for_customer("cust-a", limit=2, start_key=None)
    assert [order.order_id for order in mine] == ["a-3", "a-2"]


def test_a_settled_status_is_listed_newest_first_across_every_outcome_shard(backend: Backend) -> None:
    """OrdersByOutcome spreads a status over ``OUTCOME_SHARDS`` partitions (a flash sale's CANCELLED
    orders would overrun one); the listing merges them newest first, page by page, with nothing
    lost or repeated, an order stored before the sharding (bare status) included."""
    from shop.models.orders import OrderFilter

    settled = [f"s-{number:02d}" for number in range(9)]
    for minute, order_id in enumerate(settled):
        order = stored_order(f"tmp-{order_id}", "PENDING").model_copy(
            update={
                "order_id": order_id,
                "status": "CANCELLED",
                "failure_reason": "OUT_OF_STOCK",
                "created_at": f"2026-12-01T00:{minute:02d}:00.000Z",
            }
        )
        repository.create(order)
    shards = {repository.outcome_key("CANCELLED", order_id) for order_id in settled}
    assert len(shards) > 1  # the orders really are spread
    legacy = "s-legacy"
    repository.create(
        stored_order(f"tmp-{legacy}", "PENDING").model_copy(
            update={"order_id": legacy, "status": "CANCELLED", "created_at": "2026-12-01T00:30:00.000Z"}
        )
    )
    backend.client.update_item(
        TableName=backend.table("OrdersTable"),
        Key={"order_id": {"S": legacy}},
        UpdateExpression="SET outcome = :bare",
        ExpressionAttributeValues={":bare": {"S": "CANCELLED"}},
    )
    newest_first = [legacy, *reversed(settled)]

    def pages(**criteria: Any) -> list[list[str]]:
        found, start, listed = OrderFilter(status="CANCELLED", **criteria), None, []
        while True:
            orders, start = repository.list_filtered(found, limit=4, start_key=start)
            listed.append([order.order_id for order in orders if order.order_id.startswith("s-")])
            if start is None:
                return listed

    every = pages(since="2026-12-01T00:00:00.000Z")
    assert [order_id for page in every for order_id in page] == newest_first
    assert every[0] == newest_first[:4]
    window = pages(since="2026-12-01T00:02:00.000Z", until="2026-12-01T00:06:00.000Z")
    assert [order_id for page in window for order_id in page] == ["s-06", "s-05", "s-04", "s-03", "s-02"]
    assert (
        repository.list_filtered(
            OrderFilter(status="COMPLETED", since="2026-12-01T00:00:00.000Z"), limit=4, start_key=None
        )[0]
        == []
    )


def test_a_customers_last_page_of_orders_hands_out_no_token(backend: Backend) -> None:
    """DynamoDB answers a Query that stopped at its Limit with a LastEvaluatedKey even when nothing follows: a
    customer with exactly a page of orders was handed a token that led to an empty page."""
    for number in range(3):
        stored_order(f"page-{number}", "PENDING")

    first, token = repository.list_for_customer("cust-1", limit=2, start_key=None)
    assert [order.order_id for order in first] == ["page-2", "page-1"] and token is not None
    last, end = repository.list_for_customer("cust-1", limit=2, start_key=token)
    assert [order.order_id for order in last] == ["page-0"] and end is None
    whole, none_after = repository.list_for_customer("cust-1", limit=3, start_key=None)
    assert len(whole) == 3 and none_after is None


def test_a_whole_order_write_from_an_older_version_is_refused_and_changes_nothing(backend: Backend) -> None:
    """``save`` lands only on the version its writer read: a writer that read version 3 after another
    wrote version 4 gets VersionConflict (and re-reads), never overwrites the newer order. A mutation run
    turned ``=`` into ``>=`` (a stale writer's put lands on any newer order) and every test passed."""
    read = stored_order("stale-write", "PENDING")
    cancel_asked = read.model_copy(update={"cancel_requested": True, "version": read.version + 1})
    repository.save(cancel_asked, expected_version=read.version)
    reserved = read.model_copy(update={"status": "STOCK_RESERVED", "version": read.version + 1})

    with pytest.raises(repository.VersionConflict):
        repository.save(reserved, expected_version=read.version)
    assert repository.get("stale-write") == cancel_asked


def test_a_letter_resolved_from_an_earlier_read_stays_open_if_it_or_its_order_moved_since(backend: Backend) -> None:
    """``resolve_as_read`` with ``unchanged_since`` resolves a letter only while both the letter and its
    order are as the books check read them: either one written since leaves the letter OPEN. The
    service test moves both at once, so a mutation run dropped either condition (or turned the order's
    ``#version =`` into ``>=``) and every test passed."""

    def letter(order_id: str, now: str) -> DeadLetter:
        return dead_letters.record(
            order_id=order_id,
            resume="refund",
            failed_step="RefundPayment",
            failure=None,
            error="States.TaskFailed",
            cause=None,
            execution_name="refund-1",
            now=now,
        )

    # The order moved on since it was read (a refund began: version 3 -> 4); the letter did not.
    order = stored_order("moved-order", "PENDING")
    read = letter("moved-order", "2026-11-30T01:00:00.000Z")
    repository.save(order.model_copy(update={"cancel_requested": True, "version": 4}), expected_version=3)
    assert not dead_letters.resolve_as_read(
        read, order_unchanged=repository.unchanged_since("moved-order", order.version), now=NOW
    )
    assert dead_letters.get("moved-order") == read

    # The letter was written again since it was read (a refund flagged anew); the order did not move.
    order = stored_order("flagged-again", "PENDING")
    read = letter("flagged-again", "2026-11-30T01:00:00.000Z")
    again = letter("flagged-again", "2026-11-30T01:00:05.000Z")
    assert not dead_letters.resolve_as_read(
        read, order_unchanged=repository.unchanged_since("flagged-again", order.version), now=NOW
    )
    assert dead_letters.get("flagged-again") == again

    # A redrive began in the millisecond the letter was read at: its status moved, its time did not.
    order = stored_order("redriving", "PENDING")
    read = letter("redriving", "2026-11-30T01:00:00.000Z")
    started = dead_letters.start_redrive(
        "redriving", expected_count=0, execution_name="redrive-1", epoch=2, now="2026-11-30T01:00:00.000Z"
    )
    assert started is not None and started.updated_at == read.updated_at
    assert not dead_letters.resolve_as_read(
        read, order_unchanged=repository.unchanged_since("redriving", order.version), now=NOW
    )
    assert dead_letters.get("redriving") == started

    # Both as read: resolved.
    assert dead_letters.resolve_as_read(
        again, order_unchanged=repository.unchanged_since("flagged-again", order.version), now=NOW
    )
    resolved = dead_letters.get("flagged-again")
    assert resolved is not None and (resolved.status, resolved.updated_at) == ("RESOLVED", NOW)


def test_a_claim_on_an_order_that_does_not_exist_writes_nothing(backend: Backend) -> None:
    """``claim`` is an UpdateItem, which creates the item it does not find unless its condition says
    otherwise: on a missing order it raises OrderNotFound and leaves no half order behind (an item of a
    claim alone, which ``to_order`` cannot read). A mutation run dropped ``attribute_exists(order_id)``
    and every test passed."""
    token = SagaClaim(execution="arn:aws:states:us-east-1:123456789012:execution:CheckoutStateMachine:gone", epoch=1)

    with pytest.raises(OrderNotFound):
        repository.claim("no-such-order", token)
    assert "Item" not in backend.client.get_item(
        TableName=backend.table("OrdersTable"), Key={"order_id": {"S": "no-such-order"}}, ConsistentRead=True
    )


def test_creating_an_order_that_exists_returns_the_stored_one_and_changes_nothing(backend: Backend) -> None:
    """A placement retried after its saga moved the order on gets the stored order back: ``create``'s put
    never replaces an order (it would reset a reserved order to PENDING under its saga). A mutation run
    dropped ``attribute_not_exists(order_id)`` and every test passed."""
    placed = stored_order("placed-twice", "PENDING")
    reserved = placed.model_copy(update={"status": "STOCK_RESERVED", "version": placed.version + 1})
    repository.save(reserved, expected_version=placed.version)

    assert repository.create(placed) == reserved
    assert repository.get("placed-twice") == reserved
