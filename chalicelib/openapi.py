"""The OpenAPI 3.1 document, built from the routes the app really has.

Every route declared with ``chalicelib.http.route`` carries an ``Operation`` (its summary, who may
call it, its body/query/path/header models and its responses). ``document(app)`` walks
``app.routes`` — so only routes that are actually registered appear — and takes every schema from
the pydantic models (JSON Schema 2020-12, which OpenAPI 3.1 uses as is). Nothing is listed twice:
adding a route with ``http.route`` is all it takes to document it.

The document says what the server enforces, no more and no less: a request it describes as valid
is accepted (or refused only for a documented state or business reason), one it describes as
invalid is a 4xx, and each operation lists every status the function and the gateway in front of
it can answer, errors as ``application/problem+json`` (``Problem``). The HTTP tier fuzzes the
served document against the running stack (tests/http/test_contract_fuzz.py), and a unit test
validates it with openapi-spec-validator.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

from chalice import Chalice
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, SkipJsonSchema, models_json_schema

from shop.models.catalog import MAX_STOCK
from shop.models.common import MAX_LINES, MAX_QUANTITY
from shop.models.money import MAX_AMOUNT

# "optional": anyone, and a bearer token when sent must be valid (the route then knows the caller).
Auth = Literal["public", "optional", "customer", "admin"]

PROBLEM_JSON = "application/problem+json"
_OPERATION_ATTRIBUTE = "__shop_operation__"
_REF_TEMPLATE = "#/components/schemas/{model}"

# The bounds the server enforces that no single schema can state (the schemas carry the per-field
# ones: Money.amount, quantity, stock, delta), in the document's description.
LIMITS = (
    "Limits: every amount (`Money.amount`, in minor units) is an integer from 0 to "
    f"{MAX_AMOUNT}. That bounds unit prices and also what the server computes from the catalog: "
    f"each order line's total (quantity x unit price) and the order's total; an order beyond it is "
    "422 `order-total-too-large`, with `errors` naming the line (`items.N.quantity`) or the whole "
    f"order (`items`). An order has 1 to {MAX_LINES} lines, each of quantity 1 to {MAX_QUANTITY}, and "
    "names each SKU at most once (a repeated SKU is 400, `errors` naming `items`). "
    f"Stock: a new product's `stock` is 0 to {MAX_STOCK}; a stock adjustment's `delta` is non-zero "
    f"within -{MAX_STOCK} to {MAX_STOCK}, and is 409 if it would take `available` below 0 "
    f"(`insufficient-stock`) or, increasing it, above {MAX_STOCK} (`stock-limit-exceeded`)."
)
RULES = (
    "Requests: a JSON body must be `Content-Type: application/json` (UTF-8) and valid JSON without "
    "duplicate keys, NaN/Infinity or lone surrogate escapes; unknown fields, unknown or repeated "
    "query parameters and a query string on a route that takes none are 400, with `errors` naming "
    "each offending input. Text fields never contain control characters (descriptions may contain "
    "newlines and tabs) and single-line ones never start or end with whitespace. A `next_token` is "
    "opaque: only the value from the previous page of the same listing, with the same parameters, "
    "is accepted (anything else is 400). Errors are `application/problem+json` (RFC 9457), with "
    "`status` equal to the HTTP status; 429, 502 and 504 come from the API gateway."
)

# What each error status means on this API (one description for every operation that has it).
_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: a parameter, header or body the document does not allow (`errors` names each).",
    401: "No valid bearer token (missing, malformed, expired or not signed by the identity provider).",
    403: "The token is valid but not of the `admin` group.",
    404: "No such resource (another customer's order is not found either).",
    409: "Conflict with the current state.",
    413: "The body is larger than the API accepts.",
    415: "The body is not `Content-Type: application/json` (UTF-8).",
    422: "Well-formed, but not processable (see `type`).",
    429: (
        "Too many requests: throttled by the API gateway, or (`POST /orders`) the customer already has the most "
        "orders in progress allowed (`too-many-orders-in-progress`); retry after `Retry-After` seconds."
    ),
    500: "Unexpected failure (no internals are disclosed).",
    502: "The API gateway got no valid answer from the function.",
    503: "A dependency is busy or unavailable; retry after `Retry-After` seconds.",
    504: "The function did not answer in time (API gateway).",
}
# Statuses the API gateway in front of every route can answer by itself.
GATEWAY_STATUSES = frozenset({429, 502, 504})

_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
# Response headers the server always sends with an error status.
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The authentication scheme to use (`Bearer`).",
            "required": True,
            "schema": {"type": "string", "pattern": "^Bearer"},
        }
    },
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}


class FieldIssue(BaseModel):
    field: str = Field(description='Dotted path of the offending input, e.g. "items.0.quantity".')
    message: str


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every 4xx and 5xx answer (extension members may follow)."""

    type: str = Field(
        description='URI identifying the kind of problem, e.g. "urn:shop:problem:not-found".',
        json_schema_extra={"format": "uri"},
    )
    title: str
    status: int = Field(ge=400, le=599, description="The HTTP status of the answer.")
    detail: str
    # Absent unless the request had invalid fields (never null).
    errors: list[FieldIssue] | SkipJsonSchema[None] = Field(
        default=None,
        description="Present on validation errors: each offending input.",
        json_schema_extra=_without_default,
    )


class OpenApiDocument(BaseModel):
    """An OpenAPI 3.1 document (this API's own, served at ``GET /openapi.json``)."""

    model_config = ConfigDict(extra="allow")

    openapi: str = Field(pattern=r"^3\.1\.\d+$")
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


# What a route's answer carries unless it documents its own Cache-Control (chalicelib.http.not_stored).
_NOT_STORED = "`no-store`: the answer is the caller's own, or changes; no cache may keep it."


@dataclass(frozen=True)
class OptionalHeader:
    """A response header the answer carries only sometimes (``description`` says when)."""

    description: str


ResponseHeaderDoc = str | OptionalHeader


@dataclass(frozen=True)
class Operation:
    """What the document says about one route (method + path).

    ``headers`` are the request headers the route requires (name -> annotation, like
    ``path_params``). ``backend`` says whether the route reaches a data store or another service
    (503 when it is busy); a route that checks a token always may (the identity provider's keys).
    """

    summary: str
    auth: Auth = "public"
    responses: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, Any] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()
    description: str | None = None
    # Name -> description of a header every such answer carries, or an OptionalHeader.
    response_headers: Mapping[int, Mapping[str, ResponseHeaderDoc]] = field(default_factory=dict)
    backend: bool = True
    hidden: bool = False

    def error_statuses(self) -> list[int]:
        """Declared errors plus those every route of this shape can answer.

        Every route answers 400 (a query string it does not take), 413 (a body over the limit,
        whether the route reads one or not), 500, and the gateway's own statuses; the others follow
        from the route's auth, body and dependencies.
        """
        implied = {400, 413, 500} | GATEWAY_STATUSES
        if self.auth != "public":
            implied.update({401, 503})
        if self.auth == "admin":
            implied.add(403)
        if self.body is not None:
            implied.add(415)
        if self.backend:
            implied.add(503)
        return sorted(implied | set(self.errors))


def describe(view: Callable[..., Any], operation: Operation) -> None:
    setattr(view, _OPERATION_ATTRIBUTE, operation)


def operation_of(view: Callable[..., Any]) -> Operation | None:
    found = getattr(view, _OPERATION_ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return str(status)


def _collect_models(operations: list[Operation]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(Problem, "serialization"): None}
    for operation in operations:
        if operation.body is not None:
            wanted[(operation.body, "validation")] = None
        for model in operation.responses.values():
            if model is not None:
                wanted[(model, "serialization")] = None
    return list(wanted)


def _parameter_schema(prop: Mapping[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: an optional parameter is absent, never JSON null (so no null default)."""
    schema = {key: value for key, value in prop.items() if key not in {"title", "description"}}
    variants = schema.get("anyOf")
    if isinstance(variants, list):
        present = [variant for variant in variants if variant != {"type": "null"}]
        if len(present) == 1:
            del schema["anyOf"]
            schema.update(present[0])
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation", ref_template=_REF_TEMPLATE)
    schemas.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _parameter_schema(prop),
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema.get("properties", {}).items()
    ]


def optional_inner(annotation: Any) -> Any | None:
    """For an optional parameter (``T | None``), ``T``: what it is when present. None otherwise."""
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType) or type(None) not in arguments:
        return None
    present = [argument for argument in arguments if argument is not type(None)]
    return present[0] if len(present) == 1 else None


def _annotated_parameter(name: str, location: str, annotation: Any) -> dict[str, Any]:
    inner = optional_inner(annotation)
    schema = TypeAdapter(annotation if inner is None else inner).json_schema()
    description = schema.pop("description", None)
    parameter = {"name": name, "in": location, "required": inner is None, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def _path_parameters(operation: Operation, path: str) -> list[dict[str, Any]]:
    return [
        _annotated_parameter(name, "path", operation.path_params.get(name, str))
        for name in re.findall(r"{(\w+)}", path)
    ]


def _header_parameters(operation: Operation) -> list[dict[str, Any]]:
    return [_annotated_parameter(name, "header", annotation) for name, annotation in operation.headers.items()]


def _problem_content(status: int, refs: Mapping[Any, Any]) -> dict[str, Any]:
    # The body's `status` is the answer's own.
    schema = {**refs[(Problem, "serialization")], "properties": {"status": {"const": status}}}
    return {PROBLEM_JSON: {"schema": schema}}


def _operation_object(
    operation: Operation,
    operation_id: str,
    path: str,
    refs: Mapping[Any, Any],
    schemas: dict[str, Any],
) -> dict[str, Any]:
    result: dict[str, Any] = {"operationId": operation_id, "summary": operation.summary}
    if operation.description:
        result["description"] = operation.description
    if operation.tags:
        result["tags"] = list(operation.tags)
    parameters = _path_parameters(operation, path) + _header_parameters(operation)
    if operation.query is not None:
        parameters += _query_parameters(operation.query, schemas)
    if parameters:
        result["parameters"] = parameters
    if operation.body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(operation.body, "validation")]}},
        }
    if operation.auth == "optional":
        result["security"] = [{}, {"bearerAuth": []}]
    elif operation.auth != "public":
        result["security"] = [{"bearerAuth": []}]
    responses: dict[str, Any] = {}
    for status, model in sorted(operation.responses.items()):
        entry: dict[str, Any] = {"description": _status_phrase(status)}
        if model is not None:
            entry["content"] = {"application/json": {"schema": refs[(model, "serialization")]}}
        headers = dict(operation.response_headers.get(status) or {})
        headers.setdefault("Cache-Control", _NOT_STORED)
        if headers:
            entry["headers"] = {
                name: {
                    "description": text.description if isinstance(text, OptionalHeader) else text,
                    "required": not isinstance(text, OptionalHeader),
                    "schema": {"type": "string", "minLength": 1},
                }
                for name, text in headers.items()
            }
        responses[str(status)] = entry
    for status in operation.error_statuses():
        entry = {
            "description": _ERROR_DESCRIPTIONS.get(status, _status_phrase(status)),
            "content": _problem_content(status, refs),
        }
        if status in _ERROR_HEADERS:
            entry["headers"] = _ERROR_HEADERS[status]
        responses[str(status)] = entry
    result["responses"] = responses
    return result


def document(app: Chalice, *, title: str, version: str, description: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every described, registered route of ``app``.

    ``LIMITS`` and ``RULES`` end its description.
    """
    notes = f"{LIMITS}\n\n{RULES}"
    description = f"{description}\n\n{notes}" if description else notes
    described: list[tuple[str, str, str, Operation]] = []
    for path, methods in sorted(app.routes.items()):
        for method, entry in sorted(methods.items()):
            operation = operation_of(entry.view_function)
            if operation is None:
                operation = Operation(summary=entry.view_name.replace("_", " "))
            if not operation.hidden:
                described.append((path, method, entry.view_name, operation))

    refs, definitions = models_json_schema(
        _collect_models([operation for *_, operation in described]), ref_template=_REF_TEMPLATE
    )
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    seen_ids: set[str] = set()
    for path, method, name, operation in described:
        operation_id = name if name not in seen_ids else f"{name}_{method.lower()}"
        seen_ids.add(operation_id)
        paths.setdefault(path, {})[method.lower()] = _operation_object(operation, operation_id, path, refs, schemas)

    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A Cognito ID token (locally: .local/dev-tokens.json). "
                    "Admin routes need a token of the `admin` group.",
                }
            },
        },
    }
