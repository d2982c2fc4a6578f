"""Types and limits shared by every boundary, declared once.

A (sku, quantity) ``Line`` means the same in a POST /orders body, the checkout saga's input and
a reservation request; ids that travel through the sagas are printable ASCII.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from shop.models.base import StrictModel

SKU_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# Visible ASCII, no spaces: ids and tokens that end up in keys, execution names and logs.
PRINTABLE_PATTERN = r"^[\x21-\x7e]+$"

# The HTTP contract's limits for an order (1-50 lines, quantity 1-100); they also keep one
# reservation (a Put plus one Update per SKU) well inside TransactWriteItems' 100-item limit.
MAX_LINES = 50
MAX_QUANTITY = 100
# The most units of one SKU a customer may hold across orders that are not CANCELLED, when the
# product sets one (the HTTP contract's "Fair sales": 1-100).
MAX_PURCHASE_LIMIT = 100
# The contract's bound on a SKU's stock counters ("Hot products"); a reshard's transaction writes
# the product and at most this many counters, inside TransactWriteItems' 100-item limit.
MAX_STOCK_SHARDS = 50

Sku = Annotated[str, Field(pattern=SKU_PATTERN, description="1-64 characters of A-Z a-z 0-9 - _")]
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY)]
StockShards = Annotated[int, Field(ge=1, le=MAX_STOCK_SHARDS)]
# Order ids come from the API (UUIDs); the saga passes them to every step, the reservation's id included.
OrderId = Annotated[str, Field(min_length=1, max_length=128, pattern=PRINTABLE_PATTERN)]
PurchaseLimit = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_PURCHASE_LIMIT,
        description=f"Most units one customer may hold across orders not CANCELLED; 1-{MAX_PURCHASE_LIMIT}.",
    ),
]
CustomerId = Annotated[str, Field(min_length=1, max_length=128, pattern=PRINTABLE_PATTERN)]
ExecutionName = Annotated[str, Field(min_length=1, max_length=256)]
PaymentToken = Annotated[str, Field(min_length=1, max_length=255, pattern=PRINTABLE_PATTERN)]


class Line(StrictModel):
    """One SKU and how many of it."""

    sku: Sku
    quantity: Quantity


class CheckoutLine(Line):
    """A line as the checkout saga carries it: with its product's purchase limit and the SKU's
    stock shard count when the order was placed.

    Both are snapshotted at placement (which reads the products anyway): the reserve step counts
    the customer's units and picks a shard without reading the product again; a stale shard count
    (the SKU was resharded since) only costs the fallback's read of the SKU's shards.
    """

    purchase_limit: PurchaseLimit | None = None
    stock_shards: StockShards = 1


# ---------------------------------------------------------------------------- listings' query strings
DEFAULT_PAGE_LIMIT = 20
MAX_PAGE_LIMIT = 100


def _whole_number(value: Any) -> Any:
    # Query strings are text; accept plain digits only (no sign, spaces, "1_0" or "2.0").
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,9}", value):
            raise ValueError("must be a whole number")
        return int(value)
    return value


PageLimit = Annotated[int, Field(ge=1, le=MAX_PAGE_LIMIT), BeforeValidator(_whole_number)]
# What ``shop.pagination`` issued for the previous page, opaque to the client.
NextToken = Annotated[str, Field(min_length=1, max_length=2048)]
