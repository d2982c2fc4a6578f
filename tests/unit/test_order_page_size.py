"""A page of orders always fits in what Lambda may answer API Gateway (6 MB), the largest orders included.

The response crosses two JSON encoders: Chalice writes the body with every non-ASCII character
escaped (``\\u00e9``: 6 bytes), and Lambda's runtime writes the response around it, escaping that
backslash again (7 bytes; an emoji, a surrogate pair, is 14). A page of 100 orders of 50 lines with
200-character names came to 8 MB in Latin letters with accents and 15 MB in emoji: on AWS, a 502.
"""

from __future__ import annotations

import json

from chalicelib import http
from shop.domain.orders import MAX_ORDERS_PER_PAGE
from shop.models.common import MAX_LINES, MAX_QUANTITY
from shop.models.money import MAX_AMOUNT, Money
from shop.models.orders import HistoryEntry, OrderLine, OrderPage, OrderView, PaymentView

LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024
LONGEST_NAME = 200
LONGEST_SKU = 64
AT = "2026-12-01T00:00:00.000Z"


def largest_order(number: int, character: str) -> OrderView:
    price = Money(amount=MAX_AMOUNT // (MAX_LINES * MAX_QUANTITY))
    lines = [
        OrderLine(
            sku=f"{line:02d}".ljust(LONGEST_SKU, "S"),
            name=character * LONGEST_NAME,
            quantity=MAX_QUANTITY,
            unit_price=price,
            line_total=price.times(MAX_QUANTITY),
        )
        for line in range(MAX_LINES)
    ]
    total = price.times(MAX_QUANTITY * MAX_LINES)
    return OrderView(
        order_id=f"00000000-0000-0000-0000-{number:012d}",
        customer_id="c" * 128,
        status="REFUNDED",
        failure_reason=None,
        cancel_requested=True,
        items=lines,
        total=total,
        payment=PaymentView(status="REFUNDED", authorized=total, captured=total, refunded=total),
        # More history than any order gathers: every step, a cancel, a refund and redrives.
        history=[HistoryEntry(step="payment_authorized" * 2, status="NEEDS_ATTENTION", at=AT)] * 40,
        created_at=AT,
        updated_at=AT,
    )


def lambda_response_bytes(page: OrderPage) -> int:
    """The bytes Lambda's runtime returns for the route's answer (API Gateway's proxy format)."""
    response = http.json_response(page).to_dict()
    return len(json.dumps(response).encode())


def test_a_full_page_of_the_largest_orders_fits_in_a_lambda_response() -> None:
    for character in ("a", "é", "\N{GRINNING FACE}"):  # 1, 7 and 14 bytes each in the response
        page = OrderPage(
            items=[largest_order(number, character) for number in range(MAX_ORDERS_PER_PAGE)], next_token="t" * 600
        )
        assert lambda_response_bytes(page) < LAMBDA_RESPONSE_LIMIT, character


def test_the_page_bound_is_what_it_must_be_a_page_of_100_would_not_fit() -> None:
    page = OrderPage(items=[largest_order(number, "\N{GRINNING FACE}") for number in range(100)], next_token=None)
    assert lambda_response_bytes(page) > LAMBDA_RESPONSE_LIMIT
