"""Purchase limits: how many units of a SKU one customer may hold across orders that are not CANCELLED.

An admin sets ``purchase_limit`` on a product. Placing an order checks it here first (the
request alone, then with the units the customer's counter holds) so a client gets its 422 at
once; the reserve step enforces it atomically with the stock (shop.domain.inventory), which
catches the race between two of the customer's orders that this check cannot see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shop.errors import PurchaseLimitExceeded
from shop.models.common import Line
from shop.repositories import purchases as repository


def check_within_limits(customer_id: str, lines: Sequence[Line], limits: Mapping[str, int]) -> None:
    """Raise PurchaseLimitExceeded (422) naming each line over its SKU's limit; ``limits`` holds the limited SKUs.

    A line over the limit by itself is refused without reading the counters; the counters are
    read (one batch) only for the other limited lines.
    """
    problems: dict[int, dict[str, str]] = {}
    to_count: dict[int, Line] = {}
    for index, line in enumerate(lines):
        limit = limits.get(line.sku)
        if limit is None:
            continue
        if line.quantity > limit:
            problems[index] = {
                "field": f"items.{index}.quantity",
                "message": f"at most {limit} of {line.sku} per customer",
            }
        else:
            to_count[index] = line
    if to_count:
        held = repository.counted_units(customer_id, [line.sku for line in to_count.values()])
        for index, line in to_count.items():
            limit = limits[line.sku]
            if held[line.sku] + line.quantity > limit:
                problems[index] = {
                    "field": f"items.{index}.quantity",
                    "message": f"at most {limit} of {line.sku} per customer; your orders not cancelled hold "
                    f"{held[line.sku]}, so at most {max(limit - held[line.sku], 0)} more",
                }
    if problems:
        ordered = [problems[index] for index in sorted(problems)]
        raise PurchaseLimitExceeded([lines[index].sku for index in sorted(problems)], errors=ordered)
