"""Order routes: place (idempotent), read, list and cancel; the checkout saga does the rest."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.request import parse_http_list

from chalice import Blueprint, Response
from pydantic import Field

from chalicelib import http
from shop.auth import Principal
from shop.domain import orders as domain
from shop.models.base import StrictModel
from shop.models.common import DEFAULT_PAGE_LIMIT, NextToken, OrderId, PageLimit
from shop.models.orders import MAX_IDEMPOTENCY_KEY, IdempotencyKey, OrderPage, OrderView, PlaceOrderRequest

orders = Blueprint(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
PREFER_HEADER = "Prefer"
# The longest a request waits for its saga (`Prefer: wait=N`).
MAX_WAIT_SECONDS = 10
# RFC 7240's preferences: the route honours `wait`; a server must ignore the preferences it does
# not know or cannot honour, not refuse the request.
Preferences = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        description=(
            "RFC 7240 preferences, comma-separated; this operation honours `wait=N` (N whole seconds): it "
            f"answers 201 with the final order if the saga settles it within N seconds (at most "
            f"{MAX_WAIT_SECONDS}: a larger N waits {MAX_WAIT_SECONDS}), else 202 with the order as it stands. "
            "Other preferences, a repeated `wait` after the first, and a `wait` that is not a whole number of "
            "seconds above 0 are ignored, as RFC 7240 asks."
        ),
    ),
]
_WHOLE_SECONDS = re.compile(r"[0-9]+")


def wait_preference(prefer: str | None) -> int | None:
    """The seconds a ``Prefer`` header asks ``POST /orders`` to wait (RFC 7240 ``wait``), at most
    MAX_WAIT_SECONDS; None when it asks for no wait this route can honour.

    Preferences are comma-separated (a quoted value may hold a comma), each ``name[=value]`` and its
    own ``;``-parameters; names compare case-insensitively and only a preference's first
    occurrence counts.
    """
    for preference in parse_http_list(prefer or ""):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        seconds = value.strip().removeprefix('"').removesuffix('"')
        if not _WHOLE_SECONDS.fullmatch(seconds) or int(seconds) == 0:
            return None
        return min(int(seconds), MAX_WAIT_SECONDS)
    return None


_TAGS = ("orders",)
_ORDER_ID = {"order_id": OrderId}


class OrderListQuery(StrictModel):
    """``GET /orders`` query string."""

    limit: PageLimit = DEFAULT_PAGE_LIMIT
    next_token: NextToken | None = None


@http.route(
    orders,
    "/orders",
    "POST",
    summary="Place an order",
    description=(
        f"Requires the header `{IDEMPOTENCY_HEADER}` (1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters, scoped "
        "to the caller). "
        'Prices come from the catalog. The lines are `items`, or with `"cart": true` the lines of the customer\'s '
        "cart as they are now (an empty cart is 422 `cart-empty`); the cart is emptied of them only when the order "
        "COMPLETES. The same key and body answer the first response again; the same key "
        "with another body is 422 (a key is remembered for 24 hours; after that, another body places a new order); "
        "while the first request is still being processed, 409. The order is "
        "PENDING until the checkout saga settles it. While the shop is not accepting new orders (an operator's "
        "runtime switch), a new order is 503 `orders-paused` with `Retry-After`: nothing is stored; a replay of an "
        "order placed before still answers it, and orders already placed finish as usual. A line over its "
        "product's `purchase_limit`, alone or with the units of that SKU in the "
        "customer's orders that are not CANCELLED, is 422 `purchase-limit-exceeded` (`errors` names each line) and "
        "nothing is placed; two of the customer's orders racing for the last units end the later one CANCELLED with "
        "`failure_reason` PURCHASE_LIMIT_EXCEEDED. Lines and lines with a purchase limit together may "
        "number at most 98 (one transaction reserves them and one releases them: 50 lines may have at most 48 limited "
        "ones); more is 422 "
        "`too-many-limited-lines` and nothing is placed. With `Prefer: wait=N`, the answer waits up to N seconds "
        "for the saga: 201 with the final order and `Preference-Applied` if it settled, else 202 with the order as it "
        "stands (a replay of the key then answers the current state too). A customer who already has the most "
        "orders in progress the shop allows (template parameter MaxOrdersInProgress, default 5) gets 429 "
        "`too-many-orders-in-progress` with `Retry-After`, and nothing is stored."
    ),
    auth="customer",
    body=PlaceOrderRequest,
    headers={IDEMPOTENCY_HEADER: IdempotencyKey, PREFER_HEADER: Preferences | None},
    responses={201: OrderView, 202: OrderView},
    response_headers={
        201: {"Location": "/orders/{order_id}", "Preference-Applied": "`wait=N`: the wait applied (N at most 10)."},
        202: {"Location": "/orders/{order_id}"},
    },
    errors=(409, 422, 503),
    tags=_TAGS,
)
def place_order(body: PlaceOrderRequest, principal: Principal, headers: dict[str, str | None]) -> Response:
    key = str(headers[IDEMPOTENCY_HEADER])  # validated as IdempotencyKey by the route declaration
    wait_seconds = wait_preference(headers[PREFER_HEADER])
    order, settled = domain.place_order_and_wait(
        principal, key, body, wait_seconds=wait_seconds, lambda_context=orders.lambda_context
    )
    location = {"Location": f"/orders/{order.order_id}"}
    if settled:
        applied = {"Preference-Applied": f"wait={wait_seconds}"}
        return http.json_response(order, status=201, headers={**location, **applied})
    return http.json_response(order, status=202, headers=location)


@http.route(
    orders,
    "/orders",
    "GET",
    summary="List your orders, newest first",
    description=(
        "Pass `next_token` from the previous page to continue. A page holds at most "
        f"{domain.MAX_ORDERS_PER_PAGE} orders whatever `limit` "
        "asks (the largest orders would take a page of 100 past what the API may answer); a `next_token` follows "
        "while more remain."
    ),
    auth="customer",
    query=OrderListQuery,
    responses={200: OrderPage},
    tags=_TAGS,
)
def list_orders(query: OrderListQuery, principal: Principal) -> Response:
    return http.json_response(domain.list_orders(principal, limit=query.limit, next_token=query.next_token))


@http.route(
    orders,
    "/orders/{order_id}",
    "GET",
    summary="Read an order (its owner or an admin)",
    auth="customer",
    path_params=_ORDER_ID,
    responses={200: OrderView},
    errors=(404,),
    tags=_TAGS,
)
def get_order(order_id: str, principal: Principal) -> Response:
    return http.json_response(domain.get_order(order_id, principal))


@http.route(
    orders,
    "/orders/{order_id}/cancel",
    "POST",
    summary="Cancel an order (its owner or an admin)",
    description=(
        "A pending order is cancelled (CANCELLED_BY_CUSTOMER) by the checkout saga; a completed one is refunded "
        "in full and its stock returned (REFUNDED). Asking again changes nothing."
    ),
    auth="customer",
    path_params=_ORDER_ID,
    responses={202: OrderView},
    errors=(404,),
    tags=_TAGS,
)
def cancel_order(order_id: str, principal: Principal) -> Response:
    return http.json_response(domain.request_cancellation(order_id, principal), status=202)
