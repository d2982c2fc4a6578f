"""The cart's pure rules (shop.domain.carts): quantities, caps, merge, totals, expiry, checkout removal, tokens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from shop import signing
from shop.auth import Principal
from shop.domain import carts
from shop.errors import CartFull, FieldError, OrderTotalTooLarge
from shop.models.carts import MAX_CART_AMOUNT, MAX_CART_LINES, CartMoney, CartView, SetCartItemRequest, StoredCart
from shop.models.catalog import Product
from shop.models.common import Line
from shop.models.money import MAX_AMOUNT, Money
from shop.models.orders import Order, OrderLine, PlaceOrderRequest
from tests.conftest import forge_signature

SECRET = "unit-test-cart-secret-" + "z" * 16
NOW = 1_800_000_000


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(signing, "pagination_key", lambda: SECRET)
    yield


def lines(*pairs: tuple[str, int]) -> list[Line]:
    return [Line(sku=sku, quantity=quantity) for sku, quantity in pairs]


def pairs(found: list[Line] | None) -> list[tuple[str, int]] | None:
    return None if found is None else [(line.sku, line.quantity) for line in found]


def product(sku: str, price: int, *, available: int = 10, active: bool = True) -> Product:
    return Product(
        sku=sku,
        name=f"Product {sku}",
        description="",
        category="test",
        price=Money(amount=price),
        active=active,
        created_at="2026-01-01T00:00:00.000Z",
        updated_at="2026-01-01T00:00:00.000Z",
        available=available,
    )


# ---------------------------------------------------------------------------- quantities and caps
def test_setting_a_quantity_adds_changes_and_removes_lines_in_place() -> None:
    cart = lines(("A", 1), ("B", 2))

    assert pairs(carts.with_quantity(cart, "C", 3)) == [("A", 1), ("B", 2), ("C", 3)]
    assert pairs(carts.with_quantity(cart, "A", 5)) == [("A", 5), ("B", 2)]
    assert pairs(carts.with_quantity(cart, "A", 0)) == [("B", 2)]


def test_a_quantity_that_changes_nothing_writes_nothing() -> None:
    cart = lines(("A", 1))

    assert carts.with_quantity(cart, "A", 1) is None
    assert carts.with_quantity(cart, "Z", 0) is None  # removing a line that is not there


def test_a_cart_holds_at_most_fifty_lines_but_a_full_cart_still_changes_and_removes() -> None:
    full = lines(*((f"S{index}", 1) for index in range(MAX_CART_LINES)))

    with pytest.raises(CartFull):
        carts.with_quantity(full, "ONE-MORE", 1)
    assert pairs(carts.with_quantity(full, "S0", 7))[0] == ("S0", 7)  # type: ignore[index]
    assert len(carts.with_quantity(full, "S0", 0) or []) == MAX_CART_LINES - 1


@pytest.mark.parametrize("quantity", [-1, 101, True, 1.0, "2"])
def test_a_quantity_outside_0_to_100_or_not_an_integer_is_refused(quantity: object) -> None:
    with pytest.raises(ValidationError):
        SetCartItemRequest.model_validate({"quantity": quantity})


# ---------------------------------------------------------------------------- merge
def test_merge_sums_quantities_caps_them_at_100_and_appends_new_lines_in_order() -> None:
    customer = lines(("A", 60), ("B", 1))
    anonymous = lines(("C", 2), ("A", 70), ("B", 4))

    assert pairs(carts.merged(customer, anonymous)) == [("A", 100), ("B", 5), ("C", 2)]


def test_merge_takes_new_lines_only_while_the_cart_has_room() -> None:
    customer = lines(*((f"S{index}", 1) for index in range(MAX_CART_LINES - 1)))
    anonymous = lines(("NEW-1", 1), ("S0", 2), ("NEW-2", 1))

    result = carts.merged(customer, anonymous)

    assert len(result) == MAX_CART_LINES
    assert pairs(result)[-1] == ("NEW-1", 1)  # type: ignore[index]
    assert pairs(result)[0] == ("S0", 3)  # type: ignore[index]  # a SKU already there still sums


def test_merging_into_an_empty_cart_is_the_anonymous_cart() -> None:
    assert pairs(carts.merged([], lines(("A", 2)))) == [("A", 2)]


# ---------------------------------------------------------------------------- totals and availability
def test_a_cart_shows_current_prices_totals_and_availability() -> None:
    products = {
        "A": product("A", 250),
        "B": product("B", 1000, available=1),
        "C": product("C", 5, active=False),
    }

    shown = carts.priced(lines(("A", 2), ("B", 2), ("C", 1)), products, NOW)

    assert [(item.sku, item.line_total.amount, item.available) for item in shown.items] == [
        ("A", 500, True),
        ("B", 2000, False),  # 1 in stock, 2 wanted
        ("C", 5, False),  # inactive
    ]
    assert shown.total == CartMoney(amount=2505)
    assert shown.items[0].unit_price == Money(amount=250) and shown.items[0].name == "Product A"
    assert shown.expires_at == "2027-01-15T08:00:00Z"


def test_an_empty_cart_has_a_zero_total_and_no_expiry() -> None:
    assert carts.priced([], {}, NOW) == CartView(items=[], total=CartMoney(amount=0), expires_at=None)


def test_a_total_beyond_what_an_order_may_total_is_shown_but_not_orderable_naming_the_line_or_the_cart() -> None:
    over_a_line = (lines(("A", 100)), {"A": product("A", MAX_AMOUNT // 10)})
    assert carts.priced(*over_a_line, NOW).total == CartMoney(amount=10 * MAX_AMOUNT)
    with pytest.raises(OrderTotalTooLarge) as line_too_large:
        carts.check_orderable_total(*over_a_line)
    assert line_too_large.value.extensions["errors"][0]["field"] == "items.0.quantity"

    with pytest.raises(OrderTotalTooLarge) as cart_too_large:
        carts.check_orderable_total(lines(("A", 1), ("B", 1)), {"A": product("A", MAX_AMOUNT), "B": product("B", 1)})
    assert cart_too_large.value.extensions["errors"] == [
        {"field": "items", "message": f"the cart total would exceed the maximum, {MAX_AMOUNT}"}
    ]


def test_the_largest_cart_there_can_be_is_shown_exactly() -> None:
    largest = [Line(sku=f"S{n}", quantity=100) for n in range(MAX_CART_LINES)]
    shown = carts.priced(largest, {line.sku: product(line.sku, MAX_AMOUNT) for line in largest}, NOW)
    assert shown.total.amount == MAX_CART_AMOUNT < 2**53  # a JSON number any client reads exactly


# ---------------------------------------------------------------------------- expiry
def test_an_expired_cart_reads_empty_before_ttl_deletes_it() -> None:
    stored = StoredCart(cart_id="customer#c", lines=lines(("A", 1)), version=3, updated_at="x", expires_at=NOW)

    assert carts.current_lines(stored, NOW - 1) == lines(("A", 1))
    assert carts.current_lines(stored, NOW) == []
    assert carts.current_lines(None, NOW) == []


# ---------------------------------------------------------------------------- checkout removal
def _without(
    cart: list[Line], ordered: list[Line], units: dict[str, list[tuple[int, int]]], placed_at: int
) -> list[tuple[str, int]]:
    remaining, left = carts.without_ordered(cart, ordered, units, placed_at)
    found = [(line.sku, line.quantity) for line in remaining]
    assert {sku: sum(count for _, count in entries) for sku, entries in left.items()} == dict(found)
    return found


def test_a_completed_order_takes_its_quantities_and_leaves_what_was_added_since() -> None:
    cart = lines(("A", 3), ("B", 1), ("NEW", 2))  # A raised from 2 to 3 and NEW added after placing
    ordered = lines(("A", 2), ("B", 1))
    units = {"A": [(1, 2), (4, 1)], "B": [(2, 1)], "NEW": [(4, 2)]}

    assert _without(cart, ordered, units, 3) == [("A", 1), ("NEW", 2)]
    # A line lowered below what was ordered goes; a SKU the shopper removed stays removed.
    assert _without(lines(("A", 1)), lines(("A", 2), ("B", 1)), {"A": [(1, 1)]}, 3) == []


def test_a_completed_order_leaves_a_line_added_again_after_it_read_the_cart() -> None:
    # B was removed and added again at version 5, after the order read the cart at version 3.
    cart = lines(("A", 2), ("B", 1))

    assert _without(cart, lines(("A", 2), ("B", 1)), {"A": [(1, 2)], "B": [(5, 1)]}, 3) == [("B", 1)]
    # A line with no recorded version (a cart stored before them) counts as there all along.
    assert _without(cart, lines(("A", 2), ("B", 1)), {"A": [(0, 2)], "B": [(0, 1)]}, 3) == []


def test_units_added_after_the_order_read_the_cart_stay_however_the_line_moved() -> None:
    """A helper's probes: the cart knew only which version added a line, so any later quantity counted
    as there when the order read it."""
    # Lowered from 2 to 1 at version 2, raised to 3 at 3, after an order of 2 read the cart at 1.
    units = carts.units_after_write({"A": [(1, 2)]}, lines(("A", 1)), 2)
    units = carts.units_after_write(units, lines(("A", 3)), 3)
    assert units == {"A": [(1, 1), (3, 2)]}
    assert _without(lines(("A", 3)), lines(("A", 2)), units, 1) == [("A", 2)]
    # Two orders of 2 that read the cart at version 1, the line raised to 3 at 2: the first takes the
    # two units there then, the second finds none left, and the unit added since stays.
    remaining, left = carts.without_ordered(lines(("A", 3)), lines(("A", 2)), {"A": [(1, 2), (2, 1)]}, 1)
    assert _without(remaining, lines(("A", 2)), left, 1) == [("A", 1)]


def test_a_line_raised_a_unit_at_a_time_keeps_a_few_versions_erring_on_leaving_units() -> None:
    units: dict[str, list[tuple[int, int]]] = {}
    for version in range(1, 21):
        units = carts.units_after_write(units, lines(("A", version)), version)
    assert len(units["A"]) == carts.MAX_VERSIONS_A_LINE and sum(count for _, count in units["A"]) == 20
    assert units["A"][-1] == (20, 1)
    # An order of 5 placed at version 5 finds fewer units that old (merged under later versions): it
    # leaves some in the cart rather than take one added after it.
    assert _without(lines(("A", 20)), lines(("A", 5)), units, 5)[0][1] >= 15


def test_a_cart_written_before_units_were_kept_counts_a_line_whole_at_its_version() -> None:
    stored = StoredCart(
        cart_id="customer#c",
        lines=lines(("A", 2), ("B", 1)),
        version=5,
        updated_at="x",
        expires_at=NOW,
        added_in_version={"A": 3},
        units_by_version={"B": [(4, 2)]},  # out of step with its line (the code before wrote B down to 1)
    )
    assert carts.held_units(stored, stored.lines) == {"A": [(3, 2)], "B": [(0, 1)]}
    assert carts.held_units(None, lines(("A", 1))) == {"A": [(0, 1)]}


def test_an_order_without_a_cart_version_leaves_a_cart_emptied_the_moment_it_was_placed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An order stored before orders kept ``cart_version`` falls back to the clocks: a cart emptied at its
    ``created_at`` (the same millisecond) may have been emptied after it, so its lines are left alone."""
    placed = "2030-01-01T00:00:00.000Z"
    line = OrderLine(sku="A", name="A", quantity=1, unit_price=Money(amount=500), line_total=Money(amount=500))
    order = Order(
        order_id="order-1",
        customer_id="c",
        status="COMPLETED",
        items=[line],
        total=Money(amount=500),
        history=[],
        created_at=placed,
        updated_at=placed,
        cart_id="customer#c",
    )
    stored = StoredCart(
        cart_id="customer#c", lines=lines(("A", 1)), version=7, updated_at=placed, expires_at=NOW, cleared_at=placed
    )
    written: list[StoredCart] = []
    monkeypatch.setattr(carts.repository, "get", lambda cart_id, **_: stored)
    monkeypatch.setattr(carts.repository, "put", lambda cart, **_: written.append(cart))
    monkeypatch.setattr(carts, "_now", lambda: NOW - 1)

    carts.remove_ordered_lines(order)

    assert written == []


def test_each_line_keeps_the_version_that_added_it_and_a_line_added_again_gets_a_new_one() -> None:
    held = lines(("A", 1), ("B", 2))

    # B removed at version 4: A keeps its own.
    assert carts.added_in_versions(held, {"A": 2, "B": 3}, lines(("A", 1)), 4) == {"A": 2}
    # Then B added again at 5 (not held any more), A raised, C new; an unrecorded held line counts as 0.
    assert carts.added_in_versions(lines(("A", 1)), {}, lines(("A", 5), ("B", 1), ("C", 1)), 5) == {
        "A": 0,
        "B": 5,
        "C": 5,
    }


# ---------------------------------------------------------------------------- tokens and owners
def test_a_cart_token_names_its_cart_and_any_other_token_is_400() -> None:
    issued = carts.owner(None, None, start_new=True)
    assert issued is not None and issued.issued_token is not None
    assert carts.owner(None, issued.issued_token) == carts.CartOwner(issued.cart_id)

    payload, signature = issued.issued_token.rsplit(".", 1)
    other_purpose = signing.serializer("pagination.orders").dumps(issued.cart_id.removeprefix("anonymous#"))
    for tampered in (forge_signature(issued.issued_token), f"x{payload}.{signature}", "abc", other_purpose):
        with pytest.raises(FieldError) as raised:
            carts.owner(None, tampered)
        assert raised.value.errors[0]["field"] == "X-Cart-Token"


def test_a_customer_has_their_own_cart_and_a_token_sent_along_must_still_be_valid() -> None:
    alice = Principal(subject="alice-sub", username="alice", groups=(), is_admin=False)
    token = carts.issue_token("0" * 32)

    assert carts.owner(alice, None) == carts.CartOwner("customer#alice-sub")
    assert carts.owner(alice, token) == carts.CartOwner("customer#alice-sub")
    with pytest.raises(FieldError):
        carts.owner(alice, token + "x")
    assert carts.owner(None, None) is None


# ---------------------------------------------------------------------------- the order body
def test_an_order_names_either_items_or_the_cart() -> None:
    payment = {"token": "tok_visa"}
    from_cart = PlaceOrderRequest.model_validate({"cart": True, "payment": payment})
    assert from_cart.items is None and from_cart.model_dump(mode="json") == {"cart": True, "payment": payment}
    # The form an order's id is derived from is unchanged for an order of items.
    items = {"items": [{"sku": "A", "quantity": 1}], "payment": payment}
    assert PlaceOrderRequest.model_validate(items).model_dump(mode="json") == items

    for body in (
        {"payment": payment},
        {"cart": False, "payment": payment},
        {"cart": None, "items": items["items"], "payment": payment},
        {"cart": True, "items": items["items"], "payment": payment},
        {"items": None, "cart": True, "payment": payment},
    ):
        with pytest.raises(ValidationError):
            PlaceOrderRequest.model_validate(body)
