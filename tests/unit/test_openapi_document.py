"""The OpenAPI document: a valid OpenAPI 3.1 document that says what the server enforces.

The HTTP tier fuzzes the served document against the running stack (tests/http/test_contract_fuzz.py);
these are the properties that need no server.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
from openapi_spec_validator import validate
from pydantic import TypeAdapter, ValidationError

from app import api_document, app
from chalicelib import openapi
from infra import api_document as committed_document
from shop.models.catalog import (
    MAX_QUERY_WORDS,
    MULTI_LINE_PATTERN,
    SINGLE_LINE_PATTERN,
    CreateProductRequest,
    ProductListQuery,
    StockAdjustmentRequest,
    UpdateProductRequest,
)
from shop.models.orders import IdempotencyKey

PROBLEM = "application/problem+json"
# What the route validates the Idempotency-Key header with, and what the document states.
IDEMPOTENCY_KEY: TypeAdapter[str] = TypeAdapter(IdempotencyKey)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return api_document()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)  # openapi-spec-validator: raises on the first error


def test_the_committed_openapi_json_is_the_served_document(document: dict[str, Any]) -> None:
    # Readers of a clone (and client generators) read the file; it must say what the server says.
    committed = committed_document.DOCUMENT_PATH.read_text(encoding="utf-8")
    assert committed == committed_document.render(document), "openapi.json is out of date: run make schemas"


def test_every_error_is_a_problem_whose_status_is_the_answers(document: dict[str, Any]) -> None:
    for path, method, operation in _operations(document):
        responses = operation["responses"]
        assert {"400", "500", "502", "504", "429"} <= set(responses), (path, method)
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"][PROBLEM]["schema"]
                assert schema["$ref"] == "#/components/schemas/Problem"
                assert schema["properties"]["status"] == {"const": int(status)}, (path, method, status)
        if "401" in responses:
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
        if "503" in responses:
            assert responses["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 0}
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert problem["properties"]["errors"]["type"] == "array"  # absent when unused, never null


def test_routes_with_a_token_declare_it_and_their_401(document: dict[str, Any]) -> None:
    for path, method, operation in _operations(document):
        registered = app.routes[path][method.upper()].view_function
        declared = openapi.operation_of(registered)
        assert declared is not None
        if declared.auth == "public":
            assert "security" not in operation and "401" not in operation["responses"], (path, method)
        elif declared.auth == "optional":
            # Anyone may call it; a token sent must be valid (the empty requirement: none needed).
            assert operation["security"] == [{}, {"bearerAuth": []}], (path, method)
            assert "401" in operation["responses"] and "503" in operation["responses"]
        else:
            assert operation["security"] == [{"bearerAuth": []}], (path, method)
            assert "401" in operation["responses"] and "503" in operation["responses"]
        assert ("403" in operation["responses"]) == (declared.auth == "admin"), (path, method)


def test_placing_an_order_declares_its_idempotency_key(document: dict[str, Any]) -> None:
    place = document["paths"]["/orders"]["post"]
    (header,) = [parameter for parameter in place["parameters"] if parameter["name"] == "Idempotency-Key"]
    assert (header["in"], header["required"]) == ("header", True)
    assert (header["schema"]["minLength"], header["schema"]["maxLength"]) == (1, 255)
    assert {"202", "409", "422", "413", "415"} <= set(place["responses"])
    assert place["responses"]["202"]["headers"]["Location"]["required"] is True


@pytest.mark.parametrize("key", ["k", "x" * 255, "order 1", "a-b_c.d~e!#$%&'*+^`|"])
def test_a_valid_idempotency_key(key: str) -> None:
    assert IDEMPOTENCY_KEY.validate_python(key, strict=True) == key


@pytest.mark.parametrize("key", ["", "x" * 256, " lead", "trail ", "tab\tinside", "é", "nul\x00"])
def test_an_invalid_idempotency_key(key: str) -> None:
    with pytest.raises(ValidationError):
        IDEMPOTENCY_KEY.validate_python(key, strict=True)


def test_optional_inputs_are_absent_never_null(document: dict[str, Any]) -> None:
    for path, method, operation in _operations(document):
        for parameter in operation.get("parameters", []):
            schema = parameter["schema"]
            assert "anyOf" not in schema and schema.get("default", "") is not None, (path, method, parameter)
    update = document["components"]["schemas"]["UpdateProductRequest"]
    assert update["minProperties"] == 1
    for name, prop in update["properties"].items():
        if name != "purchase_limit":  # null clears the limit (next test)
            assert "anyOf" not in prop and "default" not in prop, name
    with pytest.raises(ValidationError):
        UpdateProductRequest.model_validate_json('{"name": null}')
    with pytest.raises(ValidationError):
        UpdateProductRequest.model_validate_json("{}")


def test_a_purchase_limit_is_1_to_100_or_null_in_the_document_as_on_the_server(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    limit = schemas["UpdateProductRequest"]["properties"]["purchase_limit"]
    assert "default" not in limit
    integer, null = limit["anyOf"]
    assert (integer["type"], integer["minimum"], integer["maximum"], null) == ("integer", 1, 100, {"type": "null"})
    assert UpdateProductRequest.model_validate_json('{"purchase_limit": null}').changes() == {"purchase_limit": None}
    assert UpdateProductRequest.model_validate_json('{"purchase_limit": 100}').changes() == {"purchase_limit": 100}
    for bad in ("0", "101", '"5"', "2.5", "true"):
        with pytest.raises(ValidationError):
            UpdateProductRequest.model_validate_json(f'{{"purchase_limit": {bad}}}')
    product = schemas["Product"]
    assert "purchase_limit" in product["required"]
    assert {variant["type"] for variant in product["properties"]["purchase_limit"]["anyOf"]} == {"integer", "null"}


def test_the_bounds_the_validators_enforce_are_in_the_schemas(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["StockAdjustmentRequest"]["properties"]["delta"]["not"] == {"const": 0}
    with pytest.raises(ValidationError):
        StockAdjustmentRequest.model_validate_json('{"delta": 0, "reason": "x"}')
    items = schemas["PlaceOrderRequest"]["properties"]["items"]
    assert items["uniqueItems"] is True and "SKU" in items["description"]
    create = schemas["CreateProductRequest"]["properties"]
    assert create["name"]["pattern"] == create["category"]["pattern"] == SINGLE_LINE_PATTERN
    assert create["description"]["pattern"] == MULTI_LINE_PATTERN
    assert schemas["StockAdjustmentRequest"]["properties"]["reason"]["pattern"] == SINGLE_LINE_PATTERN


def _accepted(field: str, value: str) -> bool:
    body = {"sku": "A", "name": "n", "category": "c", "price": {"amount": 1}, "stock": 0, field: value}
    try:
        CreateProductRequest.model_validate(body)
    except ValidationError:
        return False
    return True


def _code_points() -> Iterator[str]:
    # Every code point the Cc and whitespace categories use (all below U+3100), then a sample of
    # the rest (lone surrogates excluded: the pattern cannot state them; the body parser refuses them).
    for point in range(0x3100):
        yield chr(point)
    for point in range(0x3100, 0x110000, 97):
        if unicodedata.category(chr(point)) != "Cs":
            yield chr(point)


@pytest.mark.parametrize(("field", "pattern"), [("name", SINGLE_LINE_PATTERN), ("description", MULTI_LINE_PATTERN)])
def test_the_documented_text_patterns_agree_with_the_validators(field: str, pattern: str) -> None:
    # JSON Schema patterns are unanchored ECMA-262 regexes; fullmatch is what ^...$ means there.
    compiled = re.compile(pattern)
    for char in _code_points():
        for text in (char, f"a{char}", f"{char}a", f"a{char}b"):
            assert bool(compiled.fullmatch(text)) == _accepted(field, text), (field, hex(ord(char)), text)


@pytest.mark.parametrize("path", ["/products", "/products/{sku}"])
def test_catalog_reads_declare_their_conditional_request_and_the_bodiless_304(
    document: dict[str, Any], path: str
) -> None:
    operation = document["paths"][path]["get"]
    [header] = [parameter for parameter in operation["parameters"] if parameter["in"] == "header"]
    assert (header["name"], header["required"], header["schema"]["type"]) == ("If-None-Match", False, "string")
    assert header["schema"]["maxLength"] == 2048
    for status in ("200", "304"):
        assert set(operation["responses"][status]["headers"]) == {"ETag", "Cache-Control"}
    assert "content" not in operation["responses"]["304"]


def test_placing_an_order_declares_the_wait_preference_and_both_answers(document: dict[str, Any]) -> None:
    operation = document["paths"]["/orders"]["post"]
    prefer = next(p for p in operation["parameters"] if p["in"] == "header" and p["name"] == "Prefer")
    assert prefer["required"] is False
    assert (prefer["schema"]["type"], prefer["schema"]["minLength"], prefer["schema"]["maxLength"]) == (
        "string",
        1,
        2048,
    )
    assert "`wait=N`" in prefer["description"]
    assert set(operation["responses"]["201"]["headers"]) == {"Location", "Preference-Applied", "Cache-Control"}
    assert set(operation["responses"]["202"]["headers"]) == {"Location", "Cache-Control"}


def test_the_shard_count_is_declared_with_its_bounds_and_shown_on_products(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    shards = schemas["UpdateProductRequest"]["properties"]["stock_shards"]
    assert (shards["type"], shards["minimum"], shards["maximum"]) == ("integer", 1, 50)
    assert "anyOf" not in shards and "default" not in shards
    product = schemas["Product"]
    assert product["properties"]["stock_shards"]["type"] == "integer"
    assert {"stock_shards", "available"} <= set(product["required"])
    for bad in ('{"stock_shards": 0}', '{"stock_shards": 51}', '{"stock_shards": null}', '{"stock_shards": "2"}'):
        with pytest.raises(ValidationError):
            UpdateProductRequest.model_validate_json(bad)
    assert UpdateProductRequest.model_validate_json('{"stock_shards": 50}').changes() == {"stock_shards": 50}


def test_a_search_is_1_to_100_characters_and_its_422_is_declared(document: dict[str, Any]) -> None:
    listing = document["paths"]["/products"]["get"]
    (q,) = [parameter for parameter in listing["parameters"] if parameter["name"] == "q"]
    assert not q["required"]
    assert (q["schema"]["type"], q["schema"]["minLength"], q["schema"]["maxLength"]) == ("string", 1, 100)
    assert f"At most {MAX_QUERY_WORDS} different words" in q["schema"]["description"]
    assert "422" in listing["responses"]
    for bad in ("", "x" * 101):
        with pytest.raises(ValidationError):
            ProductListQuery.model_validate({"q": bad})
    assert ProductListQuery.model_validate({"q": "x" * 100}).q == "x" * 100
