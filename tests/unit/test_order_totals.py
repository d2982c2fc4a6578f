"""The money limit on a cart's or an order's totals (shop.domain.totals), and each caller's wording of it."""

from __future__ import annotations

import pytest

from shop.domain import catalog, orders, totals
from shop.errors import OrderTotalTooLarge
from shop.models.catalog import ProductInfo
from shop.models.common import Line
from shop.models.money import MAX_AMOUNT, Money

P = totals.PricedQuantity


def _checked(lines: list[totals.PricedQuantity]) -> int:
    return totals.checked_total(
        lines, line_message=lambda line: f"line {line.quantity}", total_message="total", detail="detail"
    )


def test_the_total_is_the_sum_of_the_line_totals_and_the_maximum_itself_is_allowed() -> None:
    assert _checked([]) == 0
    assert _checked([P(250, 2), P(5, 1)]) == 505
    assert _checked([P(MAX_AMOUNT - 1, 1), P(1, 1)]) == MAX_AMOUNT


def test_every_line_over_the_maximum_is_named_and_then_not_the_total() -> None:
    with pytest.raises(OrderTotalTooLarge) as refused:
        _checked([P(1, 1), P(MAX_AMOUNT, 2), P(MAX_AMOUNT // 2 + 1, 2)])

    assert refused.value.detail == "detail"
    assert refused.value.extensions["errors"] == [
        {"field": "items.1.quantity", "message": "line 2"},
        {"field": "items.2.quantity", "message": "line 2"},
    ]


def test_the_total_is_named_when_only_the_sum_exceeds_the_maximum() -> None:
    with pytest.raises(OrderTotalTooLarge) as refused:
        _checked([P(MAX_AMOUNT, 1), P(1, 1)])

    assert refused.value.extensions["errors"] == [{"field": "items", "message": "total"}]


def _info(sku: str, price: int) -> ProductInfo:
    return ProductInfo(
        sku=sku,
        name=sku,
        description="",
        category="test",
        price=Money(amount=price),
        active=True,
        created_at="2026-01-01T00:00:00.000Z",
        updated_at="2026-01-01T00:00:00.000Z",
    )


def test_an_order_words_the_limit_as_it_always_has(monkeypatch: pytest.MonkeyPatch) -> None:
    products = {"TOP": _info("TOP", MAX_AMOUNT), "ONE": _info("ONE", 1)}
    monkeypatch.setattr(catalog, "get_products_for_sale", lambda skus: {sku: products[sku] for sku in skus})

    with pytest.raises(OrderTotalTooLarge) as line_too_large:
        orders._priced_order("o-1", "c-1", [Line(sku="TOP", quantity=2)])
    assert line_too_large.value.detail == f"the order total may be at most {MAX_AMOUNT} (minor units)"
    assert line_too_large.value.extensions["errors"] == [
        {"field": "items.0.quantity", "message": f"2 x {MAX_AMOUNT} exceeds the maximum line total, {MAX_AMOUNT}"}
    ]

    with pytest.raises(OrderTotalTooLarge) as order_too_large:
        orders._priced_order("o-1", "c-1", [Line(sku="TOP", quantity=1), Line(sku="ONE", quantity=1)])
    assert order_too_large.value.extensions["errors"] == [
        {"field": "items", "message": f"the order total exceeds the maximum, {MAX_AMOUNT}"}
    ]
