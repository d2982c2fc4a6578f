"""The OpenAPI 3.1 document, built from the routes the app really has.

Every route declared with ``chalicelib.http.route`` carries an ``Operation`` (its summary, who may
call it, its body/query/path models and its responses). ``document(app)`` walks ``app.routes`` —
so only routes that are actually registered appear — and takes every schema from the pydantic
models (JSON Schema 2020-12, which OpenAPI 3.1 uses as is). Nothing is listed twice: adding a
route with ``http.route`` is all it takes to document it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

from chalice import Chalice
from pydantic import BaseModel, Field, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shop.models.catalog import MAX_STOCK
from shop.models.money import MAX_AMOUNT
from shop.models.orders import MAX_LINES, MAX_QUANTITY

Auth = Literal["public", "customer", "admin"]

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
    f"order (`items`). An order has 1 to {MAX_LINES} lines, each of quantity 1 to {MAX_QUANTITY}. "
    f"Stock: a new product's `stock` is 0 to {MAX_STOCK}; a stock adjustment's `delta` is non-zero "
    f"within -{MAX_STOCK} to {MAX_STOCK}, and is 409 if it would take `available` below 0 "
    f"(`insufficient-stock`) or, increasing it, above {MAX_STOCK} (`stock-limit-exceeded`)."
)


class FieldIssue(BaseModel):
    field: str = Field(description='Dotted path of the offending input, e.g. "items.0.quantity".')
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every 4xx and 5xx answer."""

    type: str = Field(description="URI identifying the kind of problem.")
    title: str
    status: int
    detail: str
    errors: list[FieldIssue] | None = Field(default=None, description="Present on validation errors.")


@dataclass(frozen=True)
class Operation:
    """What the document says about one route (method + path)."""

    summary: str
    auth: Auth = "public"
    responses: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: Mapping[str, Any] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()
    description: str | None = None
    response_headers: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    hidden: bool = False

    def error_statuses(self) -> list[int]:
        """Declared errors plus those every route of this shape can answer."""
        implied = {500}
        if self.auth != "public":
            implied.add(401)
        if self.auth == "admin":
            implied.add(403)
        if self.body is not None:
            implied.update({400, 413, 415})
        if self.query is not None or self.path_params:
            implied.add(400)
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
    """A query parameter's schema: an optional parameter is absent, never JSON null."""
    schema = {key: value for key, value in prop.items() if key not in {"title", "description"}}
    variants = schema.get("anyOf")
    if isinstance(variants, list):
        present = [variant for variant in variants if variant != {"type": "null"}]
        if len(present) == 1:
            del schema["anyOf"]
            schema.update(present[0])
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


def _path_parameters(operation: Operation, path: str) -> list[dict[str, Any]]:
    parameters = []
    for name in re.findall(r"{(\w+)}", path):
        annotation = operation.path_params.get(name, str)
        schema = TypeAdapter(annotation).json_schema()
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return parameters


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
    parameters = _path_parameters(operation, path)
    if operation.query is not None:
        parameters += _query_parameters(operation.query, schemas)
    if parameters:
        result["parameters"] = parameters
    if operation.body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(operation.body, "validation")]}},
        }
    if operation.auth != "public":
        result["security"] = [{"bearerAuth": []}]
    responses: dict[str, Any] = {}
    for status, model in sorted(operation.responses.items()):
        entry: dict[str, Any] = {"description": _status_phrase(status)}
        if model is not None:
            entry["content"] = {"application/json": {"schema": refs[(model, "serialization")]}}
        headers = operation.response_headers.get(status)
        if headers:
            entry["headers"] = {
                name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()
            }
        responses[str(status)] = entry
    problem = {PROBLEM_JSON: {"schema": refs[(Problem, "serialization")]}}
    for status in operation.error_statuses():
        responses[str(status)] = {"description": _status_phrase(status), "content": problem}
    result["responses"] = responses
    return result


def document(app: Chalice, *, title: str, version: str, description: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every described, registered route of ``app``; ``LIMITS`` ends its description."""
    description = f"{description}\n\n{LIMITS}" if description else LIMITS
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
