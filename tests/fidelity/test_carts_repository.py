"""Carts against a real DynamoDB engine and against moto: the same tests on both.

Every cart write is conditional on the version read (or on there being no cart), and a merge is
one transaction of two conditional Puts (the anonymous cart written empty, never deleted): these
check that both engines refuse a stale write and change nothing, and that the race between two
writers ends with both changes.
"""

from __future__ import annotations

from typing import Any

import pytest

from shop.domain import carts
from shop.errors import StoredItemUnusable
from shop.models.carts import StoredCart
from shop.models.common import Line
from shop.models.money import Money
from shop.models.orders import HistoryEntry, Order, OrderLine
from shop.repositories import carts as repository
from shop.repositories.carts import CartVersionConflict
from tests.fidelity.conftest import Backend

EXPIRES = 4_000_000_000


def cart(cart_id: str, version: int, *pairs: tuple[str, int], checked_out: list[str] | None = None) -> StoredCart:
    return StoredCart(
        cart_id=cart_id,
        lines=[Line(sku=sku, quantity=quantity) for sku, quantity in pairs],
        version=version,
        updated_at="2026-01-01T00:00:00.000Z",
        expires_at=EXPIRES,
        checked_out=checked_out or [],
    )


def stored(backend: Backend, cart_id: str) -> dict[str, Any] | None:
    item = backend.client.get_item(
        TableName=backend.table("CartsTable"), Key={"cart_id": {"S": cart_id}}, ConsistentRead=True
    ).get("Item")
    return dict(item) if item else None


def test_the_table_expires_carts_by_ttl(backend: Backend) -> None:
    description = backend.client.describe_time_to_live(TableName=backend.table("CartsTable"))
    assert description["TimeToLiveDescription"]["AttributeName"] == "expires_at"
    assert description["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"


def test_a_cart_round_trips_and_a_new_cart_is_written_only_if_there_is_none(backend: Backend) -> None:
    first = cart("customer#c", 1, ("A", 2), ("B", 1), checked_out=["o-1"])
    repository.put(first, expected_version=None)

    assert repository.get("customer#c") == first
    assert stored(backend, "customer#c")["expires_at"] == {"N": str(EXPIRES)}  # type: ignore[index]
    with pytest.raises(CartVersionConflict):
        repository.put(cart("customer#c", 1, ("Z", 1)), expected_version=None)
    assert repository.get("customer#c") == first
    assert repository.get("customer#nobody") is None


def test_a_write_from_a_stale_read_is_refused_and_changes_nothing(backend: Backend) -> None:
    repository.put(cart("customer#c", 1, ("A", 1)), expected_version=None)
    repository.put(cart("customer#c", 2, ("A", 2)), expected_version=1)

    with pytest.raises(CartVersionConflict):
        repository.put(cart("customer#c", 2, ("A", 9)), expected_version=1)
    assert repository.get("customer#c") == cart("customer#c", 2, ("A", 2))


@pytest.mark.parametrize(
    ("version", "seen", "next_version"), [({"N": "4"}, "4", 5), ({"N": "2.5"}, "2.5", 3), ({"S": "four"}, None, 99)]
)
def test_an_unreadable_cart_is_replaced_only_as_it_was_read(
    backend: Backend, version: dict[str, str], seen: str | None, next_version: int
) -> None:
    """DELETE /cart's way out of a cart that is not one: its version is read as a number when it is
    one, and the replacement is refused once the item changed (a number written in place of a
    non-number, or the number moved on)."""
    item = {"cart_id": {"S": "customer#c"}, "lines": {"S": "not a list"}, "version": version}
    backend.client.put_item(TableName=backend.table("CartsTable"), Item=item)
    with pytest.raises(StoredItemUnusable):
        repository.get("customer#c")

    unreadable = repository.unreadable_version("customer#c")

    assert unreadable == repository.UnreadableCart("customer#c", seen)
    assert unreadable.next_version(when_unknown=99) == next_version
    backend.client.update_item(
        TableName=backend.table("CartsTable"),
        Key={"cart_id": {"S": "customer#c"}},
        UpdateExpression="SET version = :moved",
        ExpressionAttributeValues={":moved": {"N": "5"}},
    )
    with pytest.raises(CartVersionConflict):
        repository.replace_unreadable(unreadable, cart("customer#c", 6))
    moved = repository.unreadable_version("customer#c")
    assert moved == repository.UnreadableCart("customer#c", "5")
    repository.replace_unreadable(moved, cart("customer#c", 6))
    assert repository.get("customer#c") == cart("customer#c", 6)
    assert repository.unreadable_version("customer#nobody") is None


def test_an_unreadable_cart_gone_since_it_was_read_is_not_written_again(backend: Backend) -> None:
    """A cart whose version is not a number is replaced only while it is still there: one that expired
    (or was replaced and deleted) since it was read gets CartVersionConflict, not a new cart. A mutation
    run dropped ``attribute_exists(cart_id)`` and every test passed."""
    item = {"cart_id": {"S": "customer#c"}, "lines": {"S": "not a list"}, "version": {"S": "four"}}
    backend.client.put_item(TableName=backend.table("CartsTable"), Item=item)
    unreadable = repository.unreadable_version("customer#c")
    assert unreadable == repository.UnreadableCart("customer#c", None)
    backend.client.delete_item(TableName=backend.table("CartsTable"), Key={"cart_id": {"S": "customer#c"}})

    with pytest.raises(CartVersionConflict):
        repository.replace_unreadable(unreadable, cart("customer#c", 99))
    assert stored(backend, "customer#c") is None


def test_a_merge_writes_both_carts_or_neither_and_the_emptied_one_refuses_a_stale_write(backend: Backend) -> None:
    repository.put(cart("customer#c", 1, ("A", 1)), expected_version=None)
    anonymous = cart("anonymous#x", 3, ("B", 2))
    repository.put(anonymous, expected_version=None)
    emptied = cart("anonymous#x", 4)

    # The anonymous cart changed since it was read: neither write happens.
    with pytest.raises(CartVersionConflict):
        repository.merge(
            cart("customer#c", 2, ("A", 1), ("B", 2)), expected_version=1, emptied=emptied, emptied_expected_version=2
        )
    # The customer's cart changed since it was read: neither either.
    with pytest.raises(CartVersionConflict):
        repository.merge(
            cart("customer#c", 2, ("A", 1), ("B", 2)), expected_version=7, emptied=emptied, emptied_expected_version=3
        )
    assert repository.get("customer#c") == cart("customer#c", 1, ("A", 1))
    assert repository.get("anonymous#x") == anonymous

    repository.merge(
        cart("customer#c", 2, ("A", 1), ("B", 2)), expected_version=1, emptied=emptied, emptied_expected_version=3
    )
    assert repository.get("customer#c") == cart("customer#c", 2, ("A", 1), ("B", 2))
    assert repository.get("anonymous#x") == emptied
    assert stored(backend, "anonymous#x")["expires_at"] == {"N": str(EXPIRES)}  # type: ignore[index]
    # A tab's write from its read before the merge, or as a new cart, lands on nothing.
    for stale_read in (3, None):
        with pytest.raises(CartVersionConflict):
            repository.put(cart("anonymous#x", 4, ("B", 2), ("C", 1)), expected_version=stale_read)
    assert repository.get("anonymous#x") == emptied


def test_two_writers_interleaved_both_land(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer 1 reads, writer 2 reads and writes, writer 1's write fails its condition on the real engine,
    and writer 1 re-applies its change to what writer 2 wrote."""
    backend.put_product("A", 10)
    backend.put_product("B", 10)
    owner = carts.CartOwner("customer#c")
    monkeypatch.setattr(carts, "_now", lambda: 1_800_000_000)
    first = carts.first_version(1_800_000_000)
    carts.set_quantity(owner, "A", 1)
    real_put = repository.put
    refused: list[int | None] = []

    def writer_two_first(new: StoredCart, *, expected_version: int | None, **kwargs: Any) -> None:
        if not refused:
            refused.append(None)
            monkeypatch.setattr(repository, "put", real_put)
            carts.set_quantity(owner, "B", 4)  # writer 2, start to finish
            monkeypatch.setattr(repository, "put", writer_two_first)
        try:
            real_put(new, expected_version=expected_version, **kwargs)
        except CartVersionConflict:
            refused.append(expected_version)
            raise

    monkeypatch.setattr(repository, "put", writer_two_first)
    carts.set_quantity(owner, "A", 3)  # writer 1

    assert refused == [None, first]  # writer 1's first write, made from the first version, was refused
    found = repository.get("customer#c")
    assert found is not None and found.version == first + 2
    assert [(line.sku, line.quantity) for line in found.lines] == [("A", 3), ("B", 4)]


def completed_order(cart_version: int | None = None) -> Order:
    return Order(
        order_id="o-9",
        customer_id="c",
        status="COMPLETED",
        items=[
            OrderLine(sku="A", name="A", quantity=2, unit_price=Money(amount=1), line_total=Money(amount=2)),
            OrderLine(sku="B", name="B", quantity=1, unit_price=Money(amount=1), line_total=Money(amount=1)),
        ],
        total=Money(amount=3),
        history=[HistoryEntry(step="order_placed", status="PENDING", at="2026-01-01T00:00:00.000Z")],
        cart_id="customer#c",
        cart_version=cart_version,
        created_at="2026-01-01T00:00:00.000Z",
        updated_at="2026-01-01T00:00:00.000Z",
    )


def test_a_completed_orders_lines_are_removed_once(backend: Backend) -> None:
    """An order and a cart stored before either kept versions (no ``cart_version``, no ``added_in_version``)."""
    repository.put(cart("customer#c", 4, ("A", 3), ("B", 1)), expected_version=None)
    order = completed_order()

    carts.remove_ordered_lines(order)
    carts.remove_ordered_lines(order)  # delivered again

    found = repository.get("customer#c")
    assert found is not None
    assert ([(line.sku, line.quantity) for line in found.lines], found.checked_out, found.version) == (
        [("A", 1)],
        ["o-9"],
        5,
    )


def test_a_completed_order_takes_only_from_lines_the_cart_held_when_it_was_placed(backend: Backend) -> None:
    """Placed at version 4; since then B was removed and added again (version 6): only A gives up units,
    and the versions of what stays are kept."""
    placed = cart("customer#c", 6, ("A", 3), ("B", 1)).model_copy(update={"added_in_version": {"A": 2, "B": 6}})
    repository.put(placed, expected_version=None)
    order = completed_order(cart_version=4)

    carts.remove_ordered_lines(order)
    carts.remove_ordered_lines(order)  # delivered again

    found = repository.get("customer#c")
    assert found is not None
    assert ([(line.sku, line.quantity) for line in found.lines], found.added_in_version, found.version) == (
        [("A", 1), ("B", 1)],
        {"A": 2, "B": 6},
        7,
    )
