"""The money limit on what a cart or an order adds up to: every line total and the total at most ``MAX_AMOUNT``.

Quantities and prices are bounded (the request and the catalog), their products and sum are not:
they are checked here as plain integers before any Money is built, so a total too large for the
Money type is the caller's 422, never a 500. Pure: the cart and the order each say it in their own words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from shop.errors import OrderTotalTooLarge
from shop.models.money import MAX_AMOUNT


class PricedQuantity(NamedTuple):
    """One line of a cart or an order: its unit price (minor units) and quantity."""

    unit_price: int
    quantity: int


def checked_total(
    lines: Sequence[PricedQuantity],
    *,
    line_message: Callable[[PricedQuantity], str],
    total_message: str,
    detail: str,
) -> int:
    """The sum of the line totals, in minor units.

    OrderTotalTooLarge (422, ``detail``) naming every line whose total exceeds ``MAX_AMOUNT``
    (``items.N.quantity``, ``line_message``); only when none does, the total (``items``,
    ``total_message``) if it exceeds it.
    """
    too_large = [
        {"field": f"items.{index}.quantity", "message": line_message(line)}
        for index, line in enumerate(lines)
        if line.unit_price * line.quantity > MAX_AMOUNT
    ]
    total = sum(line.unit_price * line.quantity for line in lines)
    if not too_large and total > MAX_AMOUNT:
        too_large.append({"field": "items", "message": total_message})
    if too_large:
        raise OrderTotalTooLarge(detail, errors=too_large)
    return total
