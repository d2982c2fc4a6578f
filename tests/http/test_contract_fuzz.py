"""The contract, fuzzed: property-based tests generated from the served ``/openapi.json`` (schemathesis).

Every operation of the document runs against the running stack, once with a customer's token and
once with an admin's, with every schemathesis check on: no 5xx, every answer conforming to the
document (status, content type, schema, headers), schema-valid requests accepted and invalid ones
rejected, a missing required header or credential refused, an undeclared method answered 405.
schemathesis's phases run for each operation: the document's examples, the coverage phase
(boundaries, each kind of invalid input, undeclared methods such as TRACE) and the fuzzing phase
(``MAX_EXAMPLES`` drawn examples, positive and negative). Generation is derandomized and seeded and
nothing is shrunk, so a run is repeatable and bounded.

The fuzzer acts as principals of its own (``fuzz-customer``, ``fuzz-admin``, tokens signed with the
stack's dev key), so the orders it places never mix with the demo customers' that other tests count,
and it aims some of its requests at products it seeds (``FUZZ_SKUS``), so reads, updates, stock
adjustments and orders also meet real data.

What JSON Schema cannot state is in the document's description, and shapes the test where a
positive (schema-valid) example meets such a rule (``documented_refusal``): the answer must then be
that rule's problem, and only the positive-acceptance check is skipped for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import requests
import schemathesis
from schemathesis import Case, CheckFunction, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from infra.local.identity import DevIdentityProvider
from shop.domain import search
from shop.errors import SearchTooBroad
from shop.models.catalog import MAX_QUERY_WORDS
from tests.http.conftest import RunningStack

SEED = 20260706
# Drawn examples per operation and generation mode in the fuzzing phase (the coverage phase adds
# its own, deterministic set).
MAX_EXAMPLES = 25
FUZZ_SKUS = ("FUZZ-A", "FUZZ-B", "FUZZ-C")
PROBLEM = "application/problem+json"


# ---------------------------------------------------------------------------- principals and data
@pytest.fixture(scope="session")
def fuzz_tokens(stack: RunningStack) -> dict[str, str]:
    """Tokens of the fuzzer's own customer and admin, signed like the stack's dev tokens."""
    issuer = jwt.decode(stack.tokens["admin"], options={"verify_signature": False})["iss"]
    identity = DevIdentityProvider.create(stack.state_dir / "dev-idp")
    return {
        "customer": identity.token("fuzz-customer", issuer=issuer),
        "admin": identity.token("fuzz-admin", groups=["admin"], issuer=issuer),
    }


@pytest.fixture(scope="session")
def seeded_products(stack: RunningStack, fuzz_tokens: dict[str, str]) -> tuple[str, ...]:
    for index, sku in enumerate(FUZZ_SKUS):
        product = {
            "sku": sku,
            "name": f"Fuzz product {index}",
            "category": "fuzz",
            "price": {"amount": 100 + index},
            "stock": 10**6,
        }
        response = requests.post(
            stack.url("/products"),
            json=product,
            headers={"Authorization": f"Bearer {fuzz_tokens['admin']}"},
            timeout=10,
        )
        assert response.status_code in (201, 409), response.text
    return FUZZ_SKUS


def _schema(stack: RunningStack, token: str) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "no-shrink": True,
                "database": "none",
            },
            "auth": {"openapi": {"bearerAuth": {"bearer": token}}},
            "request-timeout": 30,
        }
    )
    return schemathesis.openapi.from_url(stack.url("/openapi.json"), config=config)


@pytest.fixture(scope="session")
def customer_schema(stack: RunningStack, fuzz_tokens: dict[str, str], seeded_products: tuple[str, ...]) -> Any:
    return _schema(stack, fuzz_tokens["customer"])


@pytest.fixture(scope="session")
def admin_schema(stack: RunningStack, fuzz_tokens: dict[str, str], seeded_products: tuple[str, ...]) -> Any:
    return _schema(stack, fuzz_tokens["admin"])


@pytest.fixture(autouse=True)
def _schemathesis_node_id(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's fixture-loaded schemas read ``Node._nodeid``, which pytest 9.2 no longer
    # has (the id is ``Node.nodeid``); it only renames the node for its reports.
    if not hasattr(request.node, "_nodeid"):
        setattr(request.node, "_nodeid", request.node.nodeid)  # noqa: B010


# ---------------------------------------------------------------------------- shaping positive examples
def _is_positive(case: Case) -> bool:
    return case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE


def _stable_index(value: str) -> int:
    # Not hash(): string hashes change with PYTHONHASHSEED, and the run must be repeatable.
    return sum(value.encode("utf-8"))


def aim_at_seeded_products(case: Case) -> None:
    """Point some positive examples at the seeded products (a drawn SKU almost never exists)."""
    if not _is_positive(case):
        return
    sku = case.path_parameters.get("sku") if case.path_parameters else None
    if isinstance(sku, str) and _stable_index(sku) % 2 == 0:
        case.path_parameters["sku"] = FUZZ_SKUS[_stable_index(sku) % len(FUZZ_SKUS)]
    if case.operation.path == "/orders" and case.method == "POST" and isinstance(case.body, dict):
        items = case.body.get("items")
        if isinstance(items, list) and len(items) <= len(FUZZ_SKUS) and _stable_index(str(items)) % 2 == 0:
            for item, sku in zip(items, FUZZ_SKUS, strict=False):
                if isinstance(item, dict):
                    item["sku"] = sku


def _integer_literals(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integer_literals(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integer_literals(item) for item in value]
    return value


def write_integers_as_integers(case: Case) -> None:
    """JSON Schema's ``integer`` admits ``12.0``; the API wants integer literals (the document says so).

    A positive example's integral floats are written as the integers they stand for; ``12.0`` being
    400 is asserted by the service tier (tests/service/test_catalog_api.py and the model tests).
    """
    if _is_positive(case) and isinstance(case.body, dict | list):
        case.body = _integer_literals(case.body)


# ---------------------------------------------------------------------------- rules JSON Schema cannot state
@dataclass(frozen=True)
class Refusal:
    """A documented refusal: its status, the problem types it may have, the input it names (if any)."""

    status: int
    problem_types: frozenset[str]
    reason: str
    field: str | None = None


def documented_refusal(case: Case) -> Refusal | None:
    """The documented rule (beyond the schemas) that lets a schema-valid request be refused, if any."""
    if not _is_positive(case):
        return None
    # Checked before the page token, so it may be the reason whether or not a next_token came too.
    if case.operation.path == "/admin/orders" and case.query and {"since", "until"} & set(case.query):
        return Refusal(
            400,
            frozenset({"urn:shop:problem:validation-error"}),
            "since must not be after until, and each must be an instant within years 1-9999 in UTC",
        )
    # Checked before the page token: a search refuses its words before it reads the token.
    q = case.query.get("q") if case.operation.path == "/products" and case.method == "GET" and case.query else None
    if isinstance(q, str) and _too_many_words(q):
        return Refusal(
            422,
            frozenset({"urn:shop:problem:search-too-many-words"}),
            f"a search has at most {MAX_QUERY_WORDS} different words",
            field="q",
        )
    if case.query and "next_token" in case.query:
        return Refusal(
            400,
            frozenset({"urn:shop:problem:validation-error"}),
            "a next_token is opaque: only the previous page's value is accepted",
            field="next_token",
        )
    if case.headers and "X-Cart-Token" in case.headers:
        return Refusal(
            400,
            frozenset({"urn:shop:problem:validation-error"}),
            "a cart token is opaque: only a value the API issued is accepted",
            field="X-Cart-Token",
        )
    if case.operation.path.startswith("/cart"):
        return Refusal(
            422,
            frozenset(
                {
                    "urn:shop:problem:product-unavailable",
                    "urn:shop:problem:cart-full",
                    "urn:shop:problem:order-total-too-large",
                }
            ),
            "a cart line's SKU must exist (and be active to add), a cart holds 50 lines, its total within the limit",
        )
    if case.operation.path == "/orders" and case.method == "POST" and isinstance(case.body, dict):
        if case.body.get("cart") is True:
            return Refusal(
                422,
                frozenset(
                    {
                        "urn:shop:problem:cart-empty",
                        "urn:shop:problem:product-unavailable",
                        "urn:shop:problem:order-total-too-large",
                        "urn:shop:problem:idempotency-key-reused",
                    }
                ),
                "an order from the cart needs lines in the cart, each for sale, within the limit, its key not reused",
            )
        items = case.body.get("items")
        skus = [item.get("sku") for item in items if isinstance(item, dict)] if isinstance(items, list) else []
        if len(set(skus)) != len(skus):
            return Refusal(
                400, frozenset({"urn:shop:problem:validation-error"}), "an order names each SKU once", field="items"
            )
        return Refusal(
            422,
            frozenset(
                {
                    "urn:shop:problem:product-unavailable",
                    "urn:shop:problem:order-total-too-large",
                    "urn:shop:problem:idempotency-key-reused",
                }
            ),
            "an order's SKUs must exist and be active, its total within the limit, its key not reused",
        )
    return None


def _too_many_words(q: str) -> bool:
    try:
        search.query_words(q)
    except SearchTooBroad:
        return True
    return False


# ---------------------------------------------------------------------------- the tests
def exercise(case: Case) -> None:
    aim_at_seeded_products(case)
    write_integers_as_integers(case)
    response = case.call()
    refusal = documented_refusal(case)
    excluded: list[CheckFunction] = []
    if refusal is not None and response.status_code == refusal.status:
        # Refused by a rule the schemas cannot state: it must be exactly that rule's problem.
        assert response.headers.get("content-type", [""])[0].startswith(PROBLEM), response.text
        problem = response.json()
        assert problem["type"] in refusal.problem_types, (refusal.reason, response.text)
        if refusal.field is not None:
            assert {issue["field"] for issue in problem["errors"]} == {refusal.field}, (refusal.reason, response.text)
        excluded.append(positive_data_acceptance)
    case.validate_response(response, excluded_checks=excluded)


# Every operation: schemathesis leaves out the one that served the document unless a filter names it.
as_customer = schemathesis.pytest.from_fixture("customer_schema").include(path_regex="^/")
as_admin = schemathesis.pytest.from_fixture("admin_schema").include(path_regex="^/")


@as_customer.parametrize()
def test_every_operation_keeps_the_contract_for_a_customer(case: Case) -> None:
    exercise(case)


@as_admin.parametrize()
def test_every_operation_keeps_the_contract_for_an_admin(case: Case) -> None:
    exercise(case)
