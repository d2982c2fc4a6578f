"""The catalog's inbound models reject what the contract does not allow (JSON mode, as the API parses)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from shop.models.catalog import (
    CreateProductRequest,
    ProductListQuery,
    StockAdjustmentRequest,
    UpdateProductRequest,
)

VALID: dict[str, Any] = {
    "sku": "MUG-01_a",
    "name": "Blue mug",
    "description": "Holds coffee.\nDishwasher safe.",
    "category": "kitchen",
    "price": {"amount": 1299, "currency": "USD"},
    "stock": 7,
}


def _fields(error: ValidationError) -> set[str]:
    return {".".join(str(part) for part in issue["loc"]) for issue in error.errors()}


def _create(**changes: Any) -> CreateProductRequest:
    return CreateProductRequest.model_validate_json(json.dumps({**VALID, **changes}))


def test_a_valid_create_request() -> None:
    request = _create()
    assert request.price.amount == 1299 and request.stock == 7


def test_description_is_optional() -> None:
    body = {key: value for key, value in VALID.items() if key != "description"}
    assert CreateProductRequest.model_validate_json(json.dumps(body)).description == ""


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sku": ""}, "sku"),
        ({"sku": "a" * 65}, "sku"),
        ({"sku": "has space"}, "sku"),
        ({"sku": "slash/es"}, "sku"),
        ({"sku": "ünï"}, "sku"),
        ({"sku": "A-1\n"}, "sku"),
        ({"sku": 12}, "sku"),
        ({"name": ""}, "name"),
        ({"name": " padded"}, "name"),
        ({"name": "bell\u0007"}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"description": "nul\u0000"}, "description"),
        ({"description": "x" * 2001}, "description"),
        ({"category": ""}, "category"),
        ({"category": "two\nlines"}, "category"),
        ({"price": {"amount": -1, "currency": "USD"}}, "price.amount"),
        ({"price": {"amount": 10**12 + 1, "currency": "USD"}}, "price.amount"),
        ({"price": {"amount": 2**64 + 1, "currency": "USD"}}, "price.amount"),
        ({"price": {"amount": 12.5, "currency": "USD"}}, "price.amount"),
        ({"price": {"amount": 12.0, "currency": "USD"}}, "price.amount"),
        ({"price": {"amount": "1299", "currency": "USD"}}, "price.amount"),
        ({"price": {"amount": True, "currency": "USD"}}, "price.amount"),
        ({"price": {"amount": 1, "currency": "EUR"}}, "price.currency"),
        ({"price": {"amount": 1, "currency": "USD", "tax": 0}}, "price.tax"),
        ({"price": 1299}, "price"),
        ({"stock": -1}, "stock"),
        ({"stock": 10**9 + 1}, "stock"),
        ({"stock": 10**30}, "stock"),
        ({"stock": None}, "stock"),
        ({"active": True}, "active"),
        ({"available": 3}, "available"),
    ],
)
def test_invalid_create_requests_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        _create(**changes)
    assert field in _fields(raised.value)


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(ValidationError) as raised:
        CreateProductRequest.model_validate_json("{}")
    assert {"sku", "name", "category", "price", "stock"} <= _fields(raised.value)


def test_a_patch_keeps_exactly_the_fields_sent() -> None:
    patch = UpdateProductRequest.model_validate_json('{"active": false, "price": {"amount": 5}}')
    assert set(patch.changes()) == {"active", "price"}
    assert patch.changes()["active"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("{}", ""),
        ('{"name": null}', "name"),
        ('{"active": "false"}', "active"),
        ('{"active": 0}', "active"),
        ('{"stock": 5}', "stock"),
        ('{"sku": "OTHER"}', "sku"),
    ],
)
def test_invalid_patches(body: str, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        UpdateProductRequest.model_validate_json(body)
    assert field in _fields(raised.value)


@pytest.mark.parametrize("delta", [1, -1, 10**9, -(10**9)])
def test_stock_adjustment_deltas(delta: int) -> None:
    body = json.dumps({"delta": delta, "reason": "cycle count"})
    assert StockAdjustmentRequest.model_validate_json(body).delta == delta


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"delta": 0, "reason": "x"}, "delta"),
        ({"delta": 10**9 + 1, "reason": "x"}, "delta"),
        ({"delta": -(2**70), "reason": "x"}, "delta"),
        ({"delta": 1.0, "reason": "x"}, "delta"),
        ({"delta": 1, "reason": ""}, "reason"),
        ({"delta": 1}, "reason"),
        ({"delta": 1, "reason": "x", "actor": "me"}, "actor"),
    ],
)
def test_invalid_stock_adjustments(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        StockAdjustmentRequest.model_validate_json(json.dumps(body))
    assert field in _fields(raised.value)


def test_the_list_query_defaults_and_parses_strings() -> None:
    assert ProductListQuery.model_validate({}).limit == 20
    query = ProductListQuery.model_validate({"category": "books", "limit": "5", "next_token": "abc"})
    assert (query.category, query.limit, query.next_token) == ("books", 5, "abc")


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "101"}, {"limit": "ten"}, {"category": ""}, {"next_token": ""}, {"sort": "name"}],
)
def test_invalid_list_queries(params: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        ProductListQuery.model_validate(params)
