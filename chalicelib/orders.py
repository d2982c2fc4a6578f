"""Order routes: place (idempotent), read, list and cancel; the checkout saga does the rest."""

from __future__ import annotations

from chalice import Blueprint, Response

from chalicelib import http
from shop.auth import Principal
from shop.domain import orders as domain
from shop.models.base import StrictModel
from shop.models.common import OrderId
from shop.models.orders import MAX_IDEMPOTENCY_KEY, IdempotencyKey, OrderPage, OrderView, PlaceOrderRequest
from shop.pagination import NextToken, PageLimit

orders = Blueprint(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_TAGS = ("orders",)
_ORDER_ID = {"order_id": OrderId}


class OrderListQuery(StrictModel):
    """``GET /orders`` query string."""

    limit: PageLimit = 20
    next_token: NextToken | None = None


@http.route(
    orders,
    "/orders",
    "POST",
    summary="Place an order",
    description=(
        f"Requires the header `{IDEMPOTENCY_HEADER}` (1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters, scoped "
        "to the caller). "
        "Prices come from the catalog. The same key and body answer the first response again; the same key "
        "with another body is 422; while the first request is still being processed, 409. The order is "
        "PENDING until the checkout saga settles it. While the shop is not accepting new orders (an operator's "
        "runtime switch), 503 `orders-paused` with `Retry-After`: nothing is stored, and orders already placed "
        "finish as usual."
    ),
    auth="customer",
    body=PlaceOrderRequest,
    headers={IDEMPOTENCY_HEADER: IdempotencyKey},
    responses={202: OrderView},
    response_headers={202: {"Location": "/orders/{order_id}"}},
    errors=(409, 422, 503),
    tags=_TAGS,
)
def place_order(body: PlaceOrderRequest, principal: Principal, headers: dict[str, str]) -> Response:
    key = headers[IDEMPOTENCY_HEADER]  # validated as IdempotencyKey by the route declaration
    order = domain.place_order(principal, key, body, lambda_context=orders.lambda_context)
    return http.json_response(order, status=202, headers={"Location": f"/orders/{order.order_id}"})


@http.route(
    orders,
    "/orders",
    "GET",
    summary="List your orders, newest first",
    description="Pass `next_token` from the previous page to continue.",
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
