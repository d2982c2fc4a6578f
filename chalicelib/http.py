"""The HTTP edge shared by every route: problem+json errors, request parsing, auth, routing.

Declare a route with ``route`` (on a Blueprint or the app); it authenticates, validates and
parses before the view runs, passes the results as keyword arguments, documents the route in
``GET /openapi.json`` and turns any exception into problem+json::

    orders = Blueprint(__name__)

    @http.route(orders, "/orders/{order_id}", "GET", summary="Read an order", auth="customer",
                path_params={"order_id": OrderId}, responses={200: Order}, errors=(404,))
    def get_order(order_id: str, principal: Principal) -> Response:
        return http.json_response(domain.get_order(order_id, principal))

The view receives: each path parameter by name (validated against ``path_params``; a bad value
is 400 with ``errors[].field`` = the parameter name), ``principal`` when ``auth`` is
"customer" (any valid token) or "admin" (401 without a valid token, 403 for non-admins), or
"optional" (None without a token; a token sent must be valid: 401),
``query`` when ``query=Model`` (unknown or repeated parameters are 400) and ``body`` when
``body=Model`` (see ``parse_body``). A route without ``query`` rejects any query string (400).
``headers={"Idempotency-Key": IdempotencyKey}`` requires each header and validates it against its
annotation (400 naming the header) and passes them, validated, as ``headers``; a header annotated
``T | None`` is optional (None when absent); ``backend=False`` marks a route
that reaches no data store or service (its document then lists no 503). The checks run in that
order: auth, path, query, headers, body. The ``Operation`` each route carries is what the OpenAPI
document says of it, so whatever the route enforces here is declared there too.

Errors are mapped by exception type, here only (``problem_response``): a ``shop.errors.ShopError``
answers its own status/title/slug (``FieldError``, raised for invalid request input, adds
``errors``), anything else is a 500 without internals (logged) — including a pydantic
``ValidationError`` from the server's own data or configuration, which is never the caller's fault.
The middleware (``install``) rewrites Chalice's own error answers (405, 415, bad requests, 500)
into problem+json too, and ``install`` answers every unsupported method of a known path with
405 + ``Allow`` from the function itself, so it is a 405 on API Gateway as well (where a missing
method would otherwise be the gateway's "Missing Authentication Token"); any other method that
reaches the function (HEAD, or TRACE through the local server) gets the same 405.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Annotated, Any

from chalice import Blueprint, Chalice, Response
from chalice.app import ChaliceViewError, Request
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from chalicelib.openapi import PROBLEM_JSON, Auth, Operation, Problem, ResponseHeaderDoc, describe, optional_inner
from shop import auth
from shop.auth import Principal
from shop.config import api_settings
from shop.errors import (
    BadRequest,
    FieldError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RetryLater,
    ShopError,
    Unauthorized,
    UnsupportedMediaType,
)
from shop.models.base import field_errors
from shop.observability import bind_request_ids, clear_request_ids, logger, metrics

PROBLEM_TYPE_PREFIX = "urn:shop:problem:"
JSON = "application/json"
# Methods a known path answers 405 for when it does not implement them (HEAD stays the
# gateway's: a HEAD answer has no body to carry a problem).
FALLBACK_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

View = Callable[..., Response | BaseModel | Mapping[str, Any]]

# Status codes Chalice answers by itself, to the error they stand for.
_ERROR_BY_STATUS: dict[int, type[ShopError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


# ---------------------------------------------------------------------------- problems
Headers = Mapping[str, str | list[str]]


def _problem(
    status: int,
    title: str,
    slug: str,
    detail: str,
    extensions: Mapping[str, Any] | None = None,
    headers: Headers | None = None,
) -> Response:
    body = {"type": f"{PROBLEM_TYPE_PREFIX}{slug}", "title": title, "status": status, "detail": detail}
    body.update({key: value for key, value in (extensions or {}).items() if key not in body})
    all_headers: dict[str, str | list[str]] = {
        key: value for key, value in (headers or {}).items() if key.lower() != "content-type"
    }
    all_headers["Content-Type"] = PROBLEM_JSON
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", "Bearer")
    if status == 503:
        all_headers.setdefault("Retry-After", "1")
    return Response(body=json.dumps(body, separators=(",", ":")), status_code=status, headers=all_headers)


def validation_error(error: ValidationError, root: str = "body") -> FieldError:
    """A FieldError (400) naming each invalid field of ``error``; ``root`` names the whole input."""
    return FieldError("the request has invalid fields", field_errors(error, root))


def problem_response(error: BaseException, headers: Headers | None = None) -> Response:
    """The one mapping from an exception to its problem+json answer.

    Request input is validated by ``parse_body``/``parse_query``/path parsing, which raise
    ``FieldError`` (400). A pydantic ``ValidationError`` that gets here was raised by the server's
    own data or configuration (a missing setting, a malformed stored record): a 500, never the
    caller's fault.
    """
    if isinstance(error, RetryLater):
        # Not a failure (an operator's switch, a customer's limit): Retry-After says when asking
        # again may succeed.
        headers = {**(headers or {}), "Retry-After": str(error.retry_after_seconds)}
        return _problem(error.status, error.title, error.slug, error.detail, error.extensions, headers)
    if isinstance(error, ShopError):
        status = error.status
        if status >= 500:
            logger().warning("request failed", extra={"error": type(error).__name__, "detail": str(error)})
        return _problem(status, error.title, error.slug, error.detail, error.extensions, headers)
    if isinstance(error, ChaliceViewError) and 400 <= error.STATUS_CODE < 500:
        known = _ERROR_BY_STATUS.get(error.STATUS_CODE)
        title, slug = (known.title, known.slug) if known else _generic(error.STATUS_CODE)
        return _problem(error.STATUS_CODE, title, slug, str(error) or title, headers=headers)
    logger().exception("unhandled error")
    return _problem(500, ShopError.title, ShopError.slug, "the request could not be completed", headers=headers)


def _generic(status: int) -> tuple[str, str]:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return phrase, re.sub(r"[^a-z0-9]+", "-", phrase.lower()).strip("-")


def _as_problem(response: Response) -> Response:
    """Chalice's own error answers (``{"Code", "Message"}``) rewritten as problem+json."""
    headers = {key.lower(): value for key, value in response.headers.items()}
    if response.status_code < 400 or str(headers.get("content-type", "")).startswith(PROBLEM_JSON):
        return response
    status = response.status_code
    known = _ERROR_BY_STATUS.get(status)
    title, slug = (known.title, known.slug) if known else _generic(status)
    detail = title
    if status < 500 and isinstance(response.body, dict) and isinstance(response.body.get("Message"), str):
        detail = response.body["Message"]
    if status >= 500:
        title, slug = ShopError.title, ShopError.slug
    return _problem(status, title, slug, detail, headers=response.headers)


def problem_middleware(request: Request | None, get_response: Callable[[Request | None], Response]) -> Response:
    """HTTP middleware: body size limit, then problem+json for every error answer."""
    try:
        if request is not None:
            _check_size(request)
        response = get_response(request)
    except Exception as error:  # noqa: BLE001 - every failure becomes a problem answer
        return problem_response(error)
    return _as_problem(response)


# ---------------------------------------------------------------------------- requests
def _check_size(request: Request) -> None:
    limit = api_settings().max_body_bytes
    if len(request.raw_body) > limit:
        raise PayloadTooLarge(f"the body must not exceed {limit} bytes")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# An integral number written with a fraction or an exponent is read as an integer only below 10**20 (past
# every integer field's bound, 2**64 included): a few bytes of exponent never build a huge integer.
_INTEGRAL_DIGITS = 20


def _json_number(text: str) -> int | float:
    """A JSON number written with a fraction or an exponent. JSON Schema, so the OpenAPI document, counts
    4.0 and 1e3 as integers: they are read as such, so an integer field takes what the document says.
    Anything else is a float (infinity or 0.0 past a float's range), which every integer field refuses."""
    try:
        exact = Decimal(text)
        if exact.is_zero():
            return 0  # 0e999 too: adjusted() counts the exponent of a zero
        if exact.adjusted() < _INTEGRAL_DIGITS and exact == exact.to_integral_value():
            return int(exact)
    except InvalidOperation:  # an exponent past Decimal's own range: 1e99999999999999999999
        pass
    return float(text)


def _media_type(request: Request) -> tuple[str, dict[str, str]]:
    header = request.headers.get("content-type") or ""
    media, *parameters = (part.strip() for part in header.split(";"))
    params = {}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        params[name.strip().lower()] = value.strip().strip('"').lower()
    return media.lower(), params


def parse_body[Model: BaseModel](request: Request, model: type[Model]) -> Model:
    """The request's JSON body as ``model``.

    413 over ``ApiSettings.max_body_bytes``; 415 unless ``Content-Type: application/json``
    (charset, if any, utf-8); 400 for an empty body, bytes that are not UTF-8, malformed JSON,
    duplicate keys, NaN/Infinity, lone surrogates, and (with ``errors``) for every field the model
    rejects: wrong types, unknown fields, out-of-range numbers.
    """
    _check_size(request)
    media, params = _media_type(request)
    if media != JSON or params.get("charset", "utf-8") not in {"utf-8", "utf8"}:
        raise UnsupportedMediaType("send the body as Content-Type: application/json")
    raw = request.raw_body
    if not raw:
        raise BadRequest("a JSON body is required")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant, parse_float=_json_number
        )
        # Lone surrogates ("\ud800") parse, but cannot be stored or echoed as UTF-8.
        text = json.dumps(data, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeError:
        raise BadRequest("the body is not valid UTF-8 text") from None
    except (ValueError, RecursionError) as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        raise validation_error(error, "body") from None


def parse_query[Model: BaseModel](request: Request, model: type[Model]) -> Model:
    """The query string as ``model``: 400 for unknown, repeated or invalid parameters."""
    params = request.query_params
    data: dict[str, str] = {}
    repeated = []
    for name in params or ():
        values = params.getlist(name) if params is not None else []
        if len(values) != 1:
            repeated.append({"field": name, "message": "give this parameter once"})
        data[name] = values[-1]
    if repeated:
        raise FieldError("the query string has invalid parameters", repeated)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise validation_error(error, "query") from None


def _path_argument(name: str, adapter: TypeAdapter[Any], value: str | None) -> Any:
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as error:
        raise FieldError("the path has an invalid parameter", field_errors(error, name)) from None


def _header_argument(name: str, adapter: TypeAdapter[Any], value: str | None, optional: bool = False) -> Any:
    if value is None:
        if optional:
            return None
        raise FieldError("the request lacks a required header", [{"field": name, "message": "this header is required"}])
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as error:
        raise FieldError("the request has an invalid header", field_errors(error, name)) from None


def path_value(name: str, value: str | None, annotation: Any) -> Any:
    """A path parameter validated against ``annotation`` (e.g. ``Sku``); 400 naming it if invalid."""
    return _path_argument(name, TypeAdapter(annotation), value)


# ---------------------------------------------------------------------------- principals
def _authorization(request: Request) -> str | None:
    value = request.headers.get("authorization")
    return value if isinstance(value, str) else None


def require_customer(request: Request) -> Principal:
    """Any valid token (admins included); 401 otherwise."""
    return auth.authenticate(_authorization(request))


def require_admin(request: Request) -> Principal:
    """A valid token of the admin group: 401 without a valid token, 403 for anyone else."""
    return auth.authenticate_admin(_authorization(request))


def optional_principal(request: Request) -> Principal | None:
    """The caller if a token was sent (it must then be valid: 401), else None."""
    return auth.authenticate_optional(_authorization(request))


# ---------------------------------------------------------------------------- responses
def json_response(
    payload: BaseModel | Mapping[str, Any], status: int = 200, headers: Headers | None = None
) -> Response:
    body = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else dict(payload)
    return Response(body=body, status_code=status, headers={"Content-Type": JSON, **(headers or {})})


# Every answer but the catalog's cacheable reads: a 200 without Cache-Control is heuristically
# cacheable (RFC 9111 4.2.2), and a shared cache keys it on the URL alone. An anonymous cart (chosen by
# X-Cart-Token, no Authorization) would then be served to the next anonymous shopper.
NOT_STORED = "no-store"


def not_stored(response: Response) -> Response:
    """``response`` with ``Cache-Control: no-store`` unless it says how it may be cached."""
    if not any(name.lower() == "cache-control" for name in response.headers):
        response.headers["Cache-Control"] = NOT_STORED
    return response


# ---------------------------------------------------------------------------- conditional reads
IfNoneMatch = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        description="ETags of representations the caller holds (RFC 9110), or `*`: a match answers 304 without a body.",
    ),
]
# What a cacheable answer (200 or 304) carries, for the OpenAPI document.
CACHE_HEADERS = {
    "ETag": "The representation's entity tag: send it back in `If-None-Match` to revalidate.",
    "Cache-Control": "`public, max-age=<seconds>`: how long a cache may answer without revalidating.",
}


def entity_tag(body: Any) -> str:
    """A strong ETag of a JSON body: any change to what the caller would read changes it (a product's
    name or price after an admin's edit, its `available` after a sale), so a revalidating client
    never keeps a stale copy, and the same content always has the same tag on every instance."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:32] + '"'


def _none_match(if_none_match: str, etag: str) -> bool:
    # RFC 9110 13.1.2: weak comparison (a W/ prefix is ignored). `*` alone matches any representation;
    # in a list it is no entity tag (the field is `"*" / #entity-tag`) and matches nothing.
    if if_none_match.strip() == "*":
        return True
    candidates = [candidate.strip() for candidate in if_none_match.split(",")]
    return any(candidate.removeprefix("W/") == etag for candidate in candidates)


def cacheable_response(payload: BaseModel, if_none_match: str | None, max_age_seconds: int) -> Response:
    """200 with ``ETag`` and ``Cache-Control``, or 304 without a body when ``If-None-Match`` matches."""
    body = payload.model_dump(mode="json")
    etag = entity_tag(body)
    headers: dict[str, str | list[str]] = {"ETag": etag, "Cache-Control": f"public, max-age={max_age_seconds}"}
    if if_none_match is not None and _none_match(if_none_match, etag):
        return Response(body="", status_code=304, headers=headers)
    return Response(body=body, status_code=200, headers={"Content-Type": JSON, **headers})


# ---------------------------------------------------------------------------- routes
def route(
    api: Chalice | Blueprint,
    path: str,
    method: str,
    *,
    summary: str,
    responses: Mapping[int, type[BaseModel] | None],
    auth: Auth = "public",
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    path_params: Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
    errors: Iterable[int] = (),
    tags: Iterable[str] = (),
    description: str | None = None,
    response_headers: Mapping[int, Mapping[str, ResponseHeaderDoc]] | None = None,
    backend: bool = True,
) -> Callable[[View], View]:
    """Register, document and guard a view; see the module docstring for what the view receives."""
    parameters = dict(path_params or {})
    placeholders = re.findall(r"{(\w+)}", path)
    if set(placeholders) != set(parameters):
        raise ValueError(f"{method} {path}: path_params must describe exactly {placeholders}")
    adapters = {name: TypeAdapter(annotation) for name, annotation in parameters.items()}
    header_adapters = {}
    for name, annotation in (headers or {}).items():
        present = optional_inner(annotation)  # `T | None`: optional, validated as T when sent
        header_adapters[name] = (TypeAdapter(annotation if present is None else present), present is not None)
    operation = Operation(
        summary=summary,
        auth=auth,
        responses=dict(responses),
        body=body,
        query=query,
        path_params=parameters,
        headers=dict(headers or {}),
        errors=tuple(errors),
        tags=tuple(tags),
        description=description,
        response_headers=dict(response_headers or {}),
        backend=backend,
    )

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def handler(**raw_path: str) -> Response:
            try:
                request = _current_request(api)
                arguments: dict[str, Any] = {}
                if auth == "admin":
                    arguments["principal"] = require_admin(request)
                elif auth == "customer":
                    arguments["principal"] = require_customer(request)
                elif auth == "optional":
                    arguments["principal"] = optional_principal(request)
                for name, adapter in adapters.items():
                    arguments[name] = _path_argument(name, adapter, raw_path.get(name))
                if query is not None:
                    arguments["query"] = parse_query(request, query)
                elif request.query_params:
                    raise FieldError(
                        "this route takes no query parameters",
                        [{"field": name, "message": "unknown parameter"} for name in request.query_params],
                    )
                if header_adapters:
                    arguments["headers"] = {
                        name: _header_argument(name, adapter, request.headers.get(name.lower()), optional)
                        for name, (adapter, optional) in header_adapters.items()
                    }
                if body is not None:
                    arguments["body"] = parse_body(request, body)
                result = view(**arguments)
            except Exception as error:  # noqa: BLE001 - mapped to problem+json in one place
                return not_stored(problem_response(error))
            return not_stored(result if isinstance(result, Response) else json_response(result))

        describe(handler, operation)
        # A route that takes no body ignores one: the Content-Type of a body it never reads is no reason
        # to refuse the request (Chalice answers 415 for a type the route does not list).
        api.route(path, methods=[method], content_types=[JSON] if body is not None else ["*/*"])(handler)
        return handler

    return decorator


def _current_request(api: Chalice | Blueprint) -> Request:
    request = api.current_request
    if request is None:
        raise RuntimeError("no request is being handled")
    return request


def install(app: Chalice) -> None:
    """Add the problem+json middleware and the 405 answers; call once, after every route is registered."""
    allowed_by_path = {path: sorted(methods) for path, methods in app.routes.items()}
    # Registered first, so it is the outermost: the problem middleware's log lines carry the ids too.
    app.register_middleware(_with_request_ids_and_metrics, "http")
    app.register_middleware(_with_method_check(allowed_by_path), "http")
    for path, methods in list(app.routes.items()):
        missing = [method for method in FALLBACK_METHODS if method not in methods]
        if missing:
            _register_method_not_allowed(app, path, allowed_by_path[path], missing)


def _with_request_ids_and_metrics(
    request: Request | None, get_response: Callable[[Request | None], Response]
) -> Response:
    """Every log line written while answering carries Lambda's request id and API Gateway's, and
    the metrics recorded are published before the answer leaves. Powertools prints its buffer only
    when flushed (the functions' ``log_metrics`` does it) or once a metric holds 100 values: the API
    buffered ``SagaStartsDeferred`` until then, late, and lost it with a recycled container."""
    if request is None:
        return get_response(request)
    bind_request_ids(request.lambda_context, request.context.get("requestId"))
    try:
        return get_response(request)
    finally:
        clear_request_ids()
        metrics().flush_metrics()


def _method_not_allowed(method: str, path: str, allowed: list[str]) -> Response:
    # no-store like every answer but the catalog's reads: a shared cache may keep a 405 by its URL.
    return not_stored(
        problem_response(
            MethodNotAllowed(f"{method} is not allowed on {path}; use {', '.join(allowed)}"),
            headers={"Allow": ", ".join(allowed)},
        )
    )


def _with_method_check(
    allowed_by_path: Mapping[str, list[str]],
) -> Callable[[Request | None, Callable[[Request | None], Response]], Response]:
    """``problem_middleware``, answering every method a path does not implement with the same 405.

    That is the methods of ``FALLBACK_METHODS`` (whose views exist so that API Gateway routes them
    to the function) and any other that reaches it (HEAD, or TRACE through the local server), which
    Chalice would otherwise answer with its own 405, listing the fallback views as allowed.
    """

    def middleware(request: Request | None, get_response: Callable[[Request | None], Response]) -> Response:
        def respond(request: Request | None) -> Response:
            path = request.context.get("resourcePath") if request is not None else None
            if request is not None and isinstance(path, str) and path in allowed_by_path:
                allowed = allowed_by_path[path]
                if request.method not in allowed:
                    return _method_not_allowed(request.method, path, allowed)
            return get_response(request)

        return problem_middleware(request, respond)

    return middleware


def _register_method_not_allowed(app: Chalice, path: str, allowed: list[str], missing: list[str]) -> None:
    def method_not_allowed(**_: str) -> Response:
        method = app.current_request.method if app.current_request is not None else "this method"
        return _method_not_allowed(method, path, allowed)

    method_not_allowed.__name__ = "method_not_allowed_" + (re.sub(r"\W+", "_", path).strip("_") or "root")
    describe(method_not_allowed, Operation(summary="Method not allowed", hidden=True))
    # Any Content-Type: the method is wrong whatever the body, so 405 must win over 415.
    app.route(path, methods=missing, content_types=["*/*"])(method_not_allowed)


__all__ = [
    "PROBLEM_JSON",
    "Problem",
    "install",
    "json_response",
    "optional_principal",
    "parse_body",
    "parse_query",
    "path_value",
    "problem_middleware",
    "problem_response",
    "require_admin",
    "require_customer",
    "route",
]
