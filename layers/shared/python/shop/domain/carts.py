"""Carts: who owns which cart, the rules for changing one, and what a cart shows.

A customer's cart is keyed by identity (``customer#<sub>``); anyone else's by a random id that
only the holder of its signed ``X-Cart-Token`` can name (``anonymous#<id>``; the token is signed
like the pagination tokens, ``shop.signing``). A cart stores (sku, quantity) lines only: names,
prices and availability are the catalog's current ones, read each time the cart is shown.

Every change reads the cart, applies a pure rule below and writes the whole cart back on the
condition that its version is unchanged (``shop.repositories.carts``); the loser of a race reads
again and re-applies its own change, so two tabs editing one cart never lose an update. A cart
expires 7 days after its last change: DynamoDB's TTL deletes it some time later, and until then
every read treats it as empty.

An order placed from the cart records the cart's id and the version it read; its lines are the
cart's lines at that version. When the order COMPLETES, the saga's completion step removes exactly
those quantities from the cart (``remove_ordered_lines``), once: the cart remembers the ids of the
last orders it removed. It takes them only from lines the cart held at that version (the cart
records the version that added each line's units), so what the shopper added after that read — a new
line, more of one, a line removed and added again, lines after emptying the cart — stays, and two
orders placed at one version take those units once. Versions, not clocks:
the emptying and the order's timestamp come from different machines.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from shop import signing
from shop.auth import Principal
from shop.domain import catalog, totals
from shop.errors import (
    CartContention,
    CartEmpty,
    CartFull,
    FieldError,
    OrderContention,
    ProductUnavailable,
    StoredItemUnusable,
)
from shop.models.base import iso_now
from shop.models.carts import (
    CART_LIFETIME_SECONDS,
    CART_TOKEN_HEADER,
    MAX_CART_LINES,
    MAX_CART_QUANTITY,
    CartLineView,
    CartMoney,
    CartView,
    StoredCart,
)
from shop.models.catalog import Product
from shop.models.common import Line
from shop.models.money import MAX_AMOUNT
from shop.models.orders import Order
from shop.repositories import carts as repository
from shop.repositories.carts import CartVersionConflict

CUSTOMER_CART = "customer#"
ANONYMOUS_CART = "anonymous#"
_TOKEN_PURPOSE = "cart"
# Two tabs rarely collide more than once; more means something is wrong (CartContention, 503).
MAX_WRITE_ATTEMPTS = 8
# How many completed orders a cart remembers having removed: a completion step delivered again
# (Step Functions and Lambda are at-least-once) comes within seconds, a customer has at most a few
# orders in progress at once, and an operator's redrive of a completion is rare.
REMEMBERED_CHECKOUTS = 20


def _now() -> int:
    """Epoch seconds (a seam for tests)."""
    return int(time.time())


# ---------------------------------------------------------------------------- owners and tokens
@dataclass(frozen=True)
class CartOwner:
    """Whose cart a request is about. ``issued_token`` is set when the request started a new anonymous
    cart: the answer carries it in ``X-Cart-Token``."""

    cart_id: str
    issued_token: str | None = None


def customer_cart_id(subject: str) -> str:
    return f"{CUSTOMER_CART}{subject}"


def _invalid_token(message: str) -> FieldError:
    return FieldError("the cart token is not valid", [{"field": CART_TOKEN_HEADER, "message": message}])


def issue_token(anonymous_id: str) -> str:
    return str(signing.serializer(_TOKEN_PURPOSE).dumps(anonymous_id))


def anonymous_cart_id(token: str) -> str:
    """The cart an ``X-Cart-Token`` names; FieldError (400) for a token this API did not issue."""
    anonymous_id = signing.load(_TOKEN_PURPOSE, token, _invalid_token("was altered or was not issued by this API"))
    if not isinstance(anonymous_id, str) or len(anonymous_id) != 32:
        raise _invalid_token("is malformed")
    return f"{ANONYMOUS_CART}{anonymous_id}"


def owner(principal: Principal | None, token: str | None, *, start_new: bool = False) -> CartOwner | None:
    """The caller's cart: a customer's own (a token sent too must still be valid), else the token's.

    With neither, a new anonymous cart when ``start_new`` (its token issued), else None.
    """
    token_cart = anonymous_cart_id(token) if token is not None else None
    if principal is not None:
        return CartOwner(customer_cart_id(principal.subject))
    if token_cart is not None:
        return CartOwner(token_cart)
    if start_new:
        anonymous_id = uuid.uuid4().hex
        return CartOwner(f"{ANONYMOUS_CART}{anonymous_id}", issued_token=issue_token(anonymous_id))
    return None


# ---------------------------------------------------------------------------- pure rules
def current_lines(cart: StoredCart | None, now: int) -> list[Line]:
    """The cart's lines, none once it has expired (TTL deletes it later)."""
    if cart is None or cart.expires_at <= now:
        return []
    return list(cart.lines)


def with_quantity(lines: Sequence[Line], sku: str, quantity: int) -> list[Line] | None:
    """``lines`` with ``sku`` set to ``quantity`` (0 removes it; a new line goes last), or None if
    that changes nothing. CartFull (422) for a new line beyond ``MAX_CART_LINES``."""
    existing = next((line for line in lines if line.sku == sku), None)
    if existing is None:
        if quantity == 0:
            return None
        if len(lines) >= MAX_CART_LINES:
            raise CartFull(f"a cart holds at most {MAX_CART_LINES} lines; remove one first")
        return [*lines, Line(sku=sku, quantity=quantity)]
    if existing.quantity == quantity:
        return None
    if quantity == 0:
        return [line for line in lines if line.sku != sku]
    return [Line(sku=sku, quantity=quantity) if line.sku == sku else line for line in lines]


def merged(customer: Sequence[Line], anonymous: Sequence[Line]) -> list[Line]:
    """The anonymous cart's lines added to the customer's: quantities of a SKU in both summed and capped at
    ``MAX_CART_QUANTITY``; new SKUs appended in their order while the cart has room (``MAX_CART_LINES``)."""
    quantities = {line.sku: line.quantity for line in customer}
    order = [line.sku for line in customer]
    for line in anonymous:
        if line.sku in quantities:
            quantities[line.sku] = min(quantities[line.sku] + line.quantity, MAX_CART_QUANTITY)
        elif len(order) < MAX_CART_LINES:
            quantities[line.sku] = line.quantity
            order.append(line.sku)
    return [Line(sku=sku, quantity=quantities[sku]) for sku in order]


def added_in_versions(
    held: Sequence[Line], known: Mapping[str, int], lines: Sequence[Line], version: int
) -> dict[str, int]:
    """For the cart's new ``lines`` written at ``version``: the version that added each. A line the cart
    ``held`` keeps its own (``known``; 0 when the cart predates them), any other was added now."""
    held_skus = {line.sku for line in held}
    return {line.sku: known.get(line.sku, 0) if line.sku in held_skus else version for line in lines}


UnitsByVersion = dict[str, list[tuple[int, int]]]
# The most versions a line keeps its units under: a line raised one unit at a time would otherwise
# keep up to 100, and a cart of 50 such lines would cost dozens of write units a change. Past it the
# two oldest merge under the later version, so the line may count a unit as newer than it is: a
# completion then leaves it in the cart, never takes one the shopper added.
MAX_VERSIONS_A_LINE = 8


def held_units(cart: StoredCart | None, held: Sequence[Line]) -> UnitsByVersion:
    """Each of the ``held`` lines' units by the version that added them, oldest first. A line the cart
    keeps no units for, or whose units do not add up to its quantity (written by the code before
    them), has them all at the version ``added_in_version`` says (0 when the cart predates that too)."""
    known = cart.units_by_version if cart is not None else {}
    added = cart.added_in_version if cart is not None else {}
    units: UnitsByVersion = {}
    for line in held:
        entries = [(version, count) for version, count in known.get(line.sku, [])]
        if sum(count for _, count in entries) != line.quantity:
            entries = [(added.get(line.sku, 0), line.quantity)]
        units[line.sku] = entries
    return units


def units_after_write(held: UnitsByVersion, lines: Sequence[Line], version: int) -> UnitsByVersion:
    """The units of the cart's new ``lines`` written at ``version``: more of a line are added at
    ``version``; fewer come off its newest units; a line not held before is all new."""
    units: UnitsByVersion = {}
    for line in lines:
        entries = list(held.get(line.sku, []))
        have = sum(count for _, count in entries)
        if line.quantity > have:
            entries.append((version, line.quantity - have))
            while len(entries) > MAX_VERSIONS_A_LINE:
                (_, oldest), (later, next_oldest) = entries[0], entries[1]
                entries[:2] = [(later, oldest + next_oldest)]
        excess = max(have - line.quantity, 0)
        while excess:
            added_at, count = entries.pop()
            if count > excess:
                entries.append((added_at, count - excess))
            excess -= min(count, excess)
        units[line.sku] = entries
    return units


def without_ordered(
    lines: Sequence[Line], ordered: Iterable[Line], held: UnitsByVersion, placed_at_version: int
) -> tuple[list[Line], UnitsByVersion]:
    """``lines`` (and their ``held`` units) less the quantities of an order placed from the cart at
    ``placed_at_version``, taken only from units added at that version or before, oldest first, and
    used up: a line left with nothing goes. What the shopper added since stays: a new line, more of a
    SKU (even after lowering it), a line removed and added again."""
    left = {sku: list(entries) for sku, entries in held.items()}
    for item in ordered:
        wanted, kept = item.quantity, []
        for added_at, count in left.get(item.sku, []):
            taken = min(count, wanted) if added_at <= placed_at_version else 0
            wanted -= taken
            if count > taken:
                kept.append((added_at, count - taken))
        left[item.sku] = kept
    quantities = [(line.sku, sum(count for _, count in left.get(line.sku, []))) for line in lines]
    remaining = [Line(sku=sku, quantity=quantity) for sku, quantity in quantities if quantity > 0]
    return remaining, {sku: units for sku, units in left.items() if units}


def expiry_text(expires_at: int) -> str:
    return datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_orderable_total(lines: Sequence[Line], products: Mapping[str, Product]) -> None:
    """OrderTotalTooLarge (422) when a line total or the total would exceed ``MAX_AMOUNT``, what one
    order may total, naming the line (``items.N.quantity``) or the cart (``items``)."""
    totals.checked_total(
        [
            totals.PricedQuantity(products[line.sku].price.amount, line.quantity)
            for line in lines
            if line.sku in products
        ],
        line_message=lambda _: f"the line total would exceed the maximum, {MAX_AMOUNT}",
        total_message=f"the cart total would exceed the maximum, {MAX_AMOUNT}",
        detail=f"a cart's total may be at most {MAX_AMOUNT} (minor units)",
    )


def priced(lines: Sequence[Line], products: Mapping[str, Product], expires_at: int | None) -> CartView:
    """The cart as clients see it, at the catalog's current prices.

    A line is ``available`` while its product is active and has at least the line's quantity in
    stock. A line whose product no longer exists is left out (products are never deleted). Never
    refused for its total: a price raised since can take the cart past what one order may total
    (``check_orderable_total``), and the cart is shown all the same, so its owner can see and lower it.
    """
    shown = [(line, products[line.sku]) for line in lines if line.sku in products]
    items = [
        CartLineView(
            sku=line.sku,
            name=product.name,
            quantity=line.quantity,
            unit_price=product.price,
            line_total=CartMoney(amount=product.price.amount * line.quantity),
            available=product.active and product.available >= line.quantity,
        )
        for line, product in shown
    ]
    return CartView(
        items=items,
        total=CartMoney(amount=sum(item.line_total.amount for item in items)),
        expires_at=expiry_text(expires_at) if items and expires_at is not None else None,
    )


# ---------------------------------------------------------------------------- what the API does
def _shown(lines: Sequence[Line], expires_at: int | None) -> CartView:
    return priced(lines, catalog.get_products(line.sku for line in lines) if lines else {}, expires_at)


@dataclass(frozen=True)
class ChangedCart:
    """A cart after a change, and the token of the anonymous cart the change started (if it did)."""

    cart: CartView
    issued_token: str | None


def read_cart(principal: Principal | None, token: str | None) -> CartView:
    """``GET /cart``: the caller's cart (see ``owner``), empty if there is none."""
    return view(owner(principal, token))


def set_line(principal: Principal | None, token: str | None, sku: str, quantity: int) -> ChangedCart:
    """``PUT /cart/items/{sku}``: ``set_quantity`` on the caller's cart, a new anonymous one if they have none."""
    cart_owner = owner(principal, token, start_new=True)
    assert cart_owner is not None  # start_new: a caller without a cart gets a new one
    return ChangedCart(set_quantity(cart_owner, sku, quantity), cart_owner.issued_token)


def delete_cart(principal: Principal | None, token: str | None) -> None:
    """``DELETE /cart``: ``clear`` the caller's cart."""
    clear(owner(principal, token))


def view(cart_owner: CartOwner | None) -> CartView:
    """The cart (empty when there is none, or it expired)."""
    if cart_owner is None:
        return _shown([], None)
    stored = repository.get(cart_owner.cart_id)
    lines = current_lines(stored, _now())
    return _shown(lines, stored.expires_at if stored is not None and lines else None)


def first_version(now: int) -> int:
    """The version a cart starts at when it has no item (never had one, or TTL purged it): its clock
    in thousandths of a second, never 1.

    An order placed from a cart keeps the cart's version, and its completion removes its lines only
    from lines added at that version or before. A purged cart restarting at 1 would hand a late
    completion (an operator's redrive days later) the new cart's lines: it emptied them. A cart is
    purged at least CART_LIFETIME_SECONDS after its last write, and one item takes at most 1,000
    writes a second (DynamoDB's limit per partition), so the old cart's last version is below
    ``1000 * its first write's time + 1000 * its lifetime`` <= the new cart's first version.
    """
    return max(now, 0) * 1000


def _stored(cart_id: str, previous: StoredCart | None, lines: list[Line], now: int) -> StoredCart:
    version = previous.version + 1 if previous is not None else first_version(now)
    known = previous.added_in_version if previous is not None else {}
    held = current_lines(previous, now)
    return StoredCart(
        cart_id=cart_id,
        lines=lines,
        version=version,
        updated_at=iso_now(),
        expires_at=now + CART_LIFETIME_SECONDS,
        checked_out=previous.checked_out if previous is not None else [],
        cleared_at=previous.cleared_at if previous is not None else None,
        added_in_version=added_in_versions(held, known, lines, version),
        units_by_version=units_after_write(held_units(previous, held), lines, version),
    )


def set_quantity(cart_owner: CartOwner, sku: str, quantity: int) -> CartView:
    """Set a line's quantity (0 removes it). An unknown SKU is 422, and so is a positive quantity of an
    inactive product (a line whose product was deactivated can still be removed). Nothing changes on
    any refusal."""
    for _ in range(MAX_WRITE_ATTEMPTS):
        stored = None if cart_owner.issued_token is not None else repository.get(cart_owner.cart_id)
        now = _now()
        lines = current_lines(stored, now)
        # One read of the catalog for the cart's lines and the SKU being set.
        products = catalog.get_products({*(line.sku for line in lines), sku})
        product = products.get(sku)
        if product is None or (quantity > 0 and not product.active):
            raise ProductUnavailable(
                f"{sku} does not exist or is not for sale",
                errors=[{"field": "sku", "message": f"{sku} does not exist or is not for sale"}],
            )
        changed = with_quantity(lines, sku, quantity)
        if changed is None:
            return priced(lines, products, stored.expires_at if stored is not None and lines else None)
        if quantity > next((line.quantity for line in lines if line.sku == sku), 0):
            # More of a line may not take the cart past what an order may total; less always may.
            check_orderable_total(changed, products)
        cart = _stored(cart_owner.cart_id, stored, changed, now)
        shown = priced(changed, products, cart.expires_at)
        try:
            repository.put(cart, expected_version=stored.version if stored is not None else None)
        except CartVersionConflict:
            continue  # another tab changed the cart since the read: apply this change to what it wrote
        return shown
    raise CartContention(f"cart {cart_owner.cart_id} kept changing; retry")


def clear(cart_owner: CartOwner | None) -> None:
    """Empty the cart (none, or an expired one, is fine). It is written empty, not deleted: its version
    moves on, so a line added afterwards is newer than any order placed before (``without_ordered``).
    ``cleared_at`` is still written for an order stored without ``cart_version`` (placed before orders
    kept it, or by the code before it after a rollback), which compares it with its ``created_at``."""
    if cart_owner is None:
        return
    for _ in range(MAX_WRITE_ATTEMPTS):
        try:
            stored = repository.get(cart_owner.cart_id)
        except StoredItemUnusable:
            # The shopper's way out of a cart this shop cannot read (every other cart route answers
            # 500 on it): an empty cart at its next version, whatever the item held.
            if _replace_unreadable(cart_owner.cart_id):
                return
            continue
        if stored is None:
            return
        cart = _stored(cart_owner.cart_id, stored, [], _now()).model_copy(update={"cleared_at": iso_now()})
        try:
            repository.put(cart, expected_version=stored.version)
        except CartVersionConflict:
            continue
        return
    raise CartContention(f"cart {cart_owner.cart_id} kept changing; retry")


def _replace_unreadable(cart_id: str) -> bool:
    """Empty an unreadable cart; False when it changed since it was read (read it again)."""
    unreadable = repository.unreadable_version(cart_id)
    if unreadable is None:
        return True  # gone meanwhile (TTL): nothing to empty
    now = _now()
    emptied = StoredCart(
        cart_id=cart_id,
        version=unreadable.next_version(when_unknown=first_version(now)),
        updated_at=iso_now(),
        expires_at=now + CART_LIFETIME_SECONDS,
        cleared_at=iso_now(),
    )
    try:
        repository.replace_unreadable(unreadable, emptied)
    except CartVersionConflict:
        return False
    return True


def _emptied(absorbed: StoredCart) -> StoredCart:
    """The anonymous cart once merged: no lines at its next version, its expiry kept (TTL purges it then).

    Written, not deleted, as ``clear`` does: a cart deleted now would start again on the token's next
    ``PUT`` at the version of that moment's clock, which a stale tab's read may share (the same
    millisecond), and its write would land, bringing the merged lines back for a second merge to add."""
    return absorbed.model_copy(
        update={
            "lines": [],
            "added_in_version": {},
            "units_by_version": {},
            "version": absorbed.version + 1,
            "updated_at": iso_now(),
        }
    )


def merge(principal: Principal, token: str) -> CartView:
    """Add the anonymous cart's lines to the customer's (``merged``) and write the anonymous cart empty
    (``_emptied``), in one transaction. Repeating it changes nothing: the anonymous cart is empty (or
    gone, or expired).
    OrderTotalTooLarge (422), nothing changed, when what it adds would take a line or the cart past
    what one order may total, as ``set_line`` refuses raising a line."""
    customer_cart = customer_cart_id(principal.subject)
    anonymous_cart = anonymous_cart_id(token)
    for _ in range(MAX_WRITE_ATTEMPTS):
        anonymous = repository.get(anonymous_cart)
        mine = repository.get(customer_cart)
        now = _now()
        own_lines = current_lines(mine, now)
        own_expiry = mine.expires_at if mine is not None and own_lines else None
        incoming = current_lines(anonymous, now)
        if anonymous is None or not incoming:
            # None, emptied (by a merge before: a repeat changes nothing) or expired: nothing to add.
            return _shown(own_lines, own_expiry)
        lines = merged(own_lines, incoming)
        products = catalog.get_products(line.sku for line in lines)
        if lines != own_lines:
            check_orderable_total(lines, products)
        cart = _stored(customer_cart, mine, lines, now)
        shown = priced(cart.lines, products, cart.expires_at)
        try:
            repository.merge(
                cart,
                expected_version=mine.version if mine is not None else None,
                emptied=_emptied(anonymous),
                emptied_expected_version=anonymous.version,
            )
        except CartVersionConflict:
            continue
        return shown
    raise CartContention(f"cart {customer_cart} kept changing; retry")


# ---------------------------------------------------------------------------- checkout
class CartForCheckout(NamedTuple):
    """What an order placed from the cart takes: the cart's id, the version read and its lines at it."""

    cart_id: str
    version: int
    lines: list[Line]


def lines_for_checkout(customer_id: str) -> CartForCheckout:
    """The customer's cart as it is now, for an order placed from it; CartEmpty (422) without lines."""
    cart_id = customer_cart_id(customer_id)
    stored = repository.get(cart_id)
    lines = current_lines(stored, _now())
    if stored is None or not lines:
        raise CartEmpty("the cart has no lines to order")
    return CartForCheckout(cart_id, stored.version, lines)


def _placed_at_version(order: Order, cart: StoredCart) -> int | None:
    """The cart version the order's lines were read at; None when none of them can be in the cart any more.

    An order stored without ``cart_version`` (placed before orders kept it) falls back to the clocks it was
    placed under: nothing if the cart was emptied after the order's ``created_at``, else every line counts.
    """
    if order.cart_version is not None:
        return order.cart_version
    if cart.cleared_at is not None and cart.cleared_at >= order.created_at:
        return None
    return cart.version


def remove_ordered_lines(order: Order) -> None:
    """The order placed from a cart COMPLETED: remove its quantities from that cart, once.

    A saga step (complete_order): safe to run twice, as the cart records the order's id in the same
    conditional write. A busy table or a cart that keeps changing raises OrderContention (a
    TransientError); complete_order logs it and counts CartsNotEmptied instead of failing the
    completed order, so the lines stay in the cart for the shopper to tidy.
    """
    if order.cart_id is None:
        return
    ordered = [Line(sku=item.sku, quantity=item.quantity) for item in order.items]
    for _ in range(MAX_WRITE_ATTEMPTS):
        stored = repository.get(order.cart_id, busy=OrderContention)
        if stored is None or order.order_id in stored.checked_out:
            return  # no cart any more (expired and purged), or removed already
        placed_at_version = _placed_at_version(order, stored)
        if placed_at_version is None:
            return  # the shopper emptied the cart after placing: what is in it now came later
        held = current_lines(stored, _now())
        lines, units = without_ordered(held, ordered, held_units(stored, held), placed_at_version)
        cart = stored.model_copy(
            update={
                "lines": lines,
                "added_in_version": added_in_versions(held, stored.added_in_version, lines, stored.version + 1),
                "units_by_version": units,
                "version": stored.version + 1,
                "updated_at": iso_now(),
                "checked_out": [*stored.checked_out, order.order_id][-REMEMBERED_CHECKOUTS:],
            }
        )
        try:
            repository.put(cart, expected_version=stored.version, busy=OrderContention)
        except CartVersionConflict:
            continue
        return
    raise OrderContention(f"cart {order.cart_id} kept changing; retry")
