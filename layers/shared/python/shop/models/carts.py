"""Carts: the HTTP bodies, the Cart clients see and the stored cart.

A cart holds (sku, quantity) lines only; names, prices and availability are the catalog's
current ones, added when the cart is shown (``shop.domain.carts.priced``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shop.models.base import Record, StrictModel
from shop.models.common import MAX_LINES, MAX_QUANTITY, Line
from shop.models.money import MAX_AMOUNT, Currency, Money

# 7 days without a change, then DynamoDB's TTL deletes the cart (a read treats it as empty at once).
CART_LIFETIME_SECONDS = 7 * 24 * 3600
# The contract's limits: a cart line is what an order line may be, and a cart what an order may hold.
MAX_CART_LINES = MAX_LINES
MAX_CART_QUANTITY = MAX_QUANTITY

# What a cart can add up to at the catalog's current prices: more than an order may (MAX_AMOUNT), and
# still exact in any JSON number (below 2**53).
MAX_CART_AMOUNT = MAX_AMOUNT * MAX_CART_QUANTITY * MAX_CART_LINES


class CartMoney(BaseModel):
    """A cart line's total or the cart's total, in minor units. A cart shows what its lines cost now:
    prices raised since a line was added can take it past what one order may total (``Money``), and
    the cart is still shown; placing the order is what is refused (422 order-total-too-large)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    amount: int = Field(ge=0, le=MAX_CART_AMOUNT)
    currency: Currency = "USD"


CART_TOKEN_HEADER = "X-Cart-Token"
# What the API issues (itsdangerous' URL-safe payload.signature); anything else cannot be one.
CartToken = Annotated[
    str,
    Field(
        min_length=1,
        max_length=512,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description=(
            "An anonymous cart's token, as issued in the `X-Cart-Token` response header of `PUT /cart/items/{sku}`. "
            "Opaque and signed: a token that was altered or not issued by this API is 400."
        ),
    ),
]
CartQuantity = Annotated[
    int,
    Field(ge=0, le=MAX_CART_QUANTITY, description=f"0 removes the line; 1-{MAX_CART_QUANTITY} sets its quantity."),
]


class SetCartItemRequest(StrictModel):
    """``PUT /cart/items/{sku}``."""

    quantity: CartQuantity


class CartLineView(Record):
    """A cart line at the catalog's current price; ``available`` is false when the catalog cannot fill it
    now (the product is inactive, or fewer units are in stock than the line's quantity)."""

    sku: str
    name: str
    quantity: int
    unit_price: Money
    line_total: CartMoney
    available: bool


class CartView(Record):
    """The Cart of the HTTP contract. ``expires_at`` is null while the cart has no lines."""

    items: list[CartLineView]
    total: CartMoney
    expires_at: str | None = Field(
        json_schema_extra={"format": "date-time"},
        description="When the cart expires unless it changes again (7 days after the last change); "
        "null for an empty cart.",
    )


class StoredCart(Record):
    """The item in CartsTable.

    ``cart_id`` is ``customer#<sub>`` or ``anonymous#<random id>``. ``version`` guards every write
    (two tabs editing one cart serialize on it). ``expires_at`` (epoch seconds) is the table's TTL
    attribute; DynamoDB deletes an expired cart lazily, so readers judge it themselves.
    ``checked_out`` holds the ids of the last orders whose lines were removed from the cart when
    they completed, newest last: their completion step may run twice and must remove them once.
    Emptying the cart (``DELETE /cart``, or a merge emptying an anonymous one) keeps the item (an
    empty one, its version moved on), so a tab that read it before can never overwrite a cart
    started afresh at the same version.
    """

    cart_id: str
    lines: list[Line] = Field(default_factory=list)
    version: int = 0
    updated_at: str
    expires_at: int
    checked_out: list[str] = Field(default_factory=list)
    # When the shopper last emptied the cart (DELETE /cart): an order stored without ``cart_version``
    # (placed before orders kept it) and placed before then has no lines of its own left to remove.
    cleared_at: str | None = None
    # Each line's SKU -> the cart version whose write added the line (it was absent before). An order
    # placed from the cart at version v takes its quantities only from lines added at v or before: a line
    # added later, removed and added again, or added after an emptying is the shopper's new one. A SKU
    # missing here (a cart stored before this was kept) counts as added at 0. Kept on the cart, not on
    # each line: a line refuses unknown fields, and a cart must stay readable by the code before this.
    added_in_version: dict[str, int] = Field(default_factory=dict)
    # Each line's units by the cart version whose write added them, oldest first ([version, units]
    # pairs summing to the line's quantity): an order placed at version v takes only units added at v
    # or before, and uses them up, so units added since (raising a line, even one lowered first) stay,
    # and a second order placed at the same version finds them gone. A line missing here, or out of
    # step with its quantity (written by the code before this), has all its units at
    # ``added_in_version``'s version, which is still written for that code.
    units_by_version: dict[str, list[tuple[int, int]]] = Field(default_factory=dict)
