"""Cart routes: a customer's cart by identity, anyone else's by its signed ``X-Cart-Token``."""

from __future__ import annotations

from chalice import Blueprint, Response

from chalicelib import http
from chalicelib.openapi import OptionalHeader
from shop.auth import Principal
from shop.domain import carts as domain
from shop.models.carts import CART_TOKEN_HEADER, CartToken, CartView, SetCartItemRequest
from shop.models.catalog import Sku

carts = Blueprint(__name__)

_TAGS = ("carts",)
_OPTIONAL_TOKEN = {CART_TOKEN_HEADER: CartToken | None}
_WHO = (
    "With a bearer token, the customer's own cart (an `X-Cart-Token` sent too must still be valid); "
    "otherwise the anonymous cart of `X-Cart-Token`."
)
_PRICES = (
    "Prices are the catalog's current ones; a line is `available` while its product is active and has at least "
    "the line's quantity in stock. A cart expires 7 days after its last change (`expires_at`); an expired cart "
    "is empty. A price raised since may take a line or the cart past what one order may total: the cart is "
    "still shown, and lowering a line always works."
)
# What PUT and merge refuse (and POST /orders of the cart): the reads never do.
_RAISING = (
    "A change that would take a line total or the cart's total past what one order may total is 422 "
    "`order-total-too-large`, nothing changed."
)


@http.route(
    carts,
    "/cart",
    "GET",
    summary="Read your cart",
    description=f"{_WHO} Empty when there is none. {_PRICES}",
    auth="optional",
    headers=_OPTIONAL_TOKEN,
    responses={200: CartView},
    tags=_TAGS,
)
def get_cart(principal: Principal | None, headers: dict[str, str | None]) -> Response:
    return http.json_response(domain.read_cart(principal, headers[CART_TOKEN_HEADER]))


@http.route(
    carts,
    "/cart/items/{sku}",
    "PUT",
    summary="Set a line's quantity in your cart (0 removes it)",
    description=(
        f"{_WHO} A caller with neither gets a new anonymous cart, whose token is in the `{CART_TOKEN_HEADER}` "
        "response header: send it with every later cart request. A cart holds at most 50 lines (a new one beyond "
        "is 422 `cart-full`). An unknown SKU, or a positive quantity of an inactive product, is 422 "
        f"`product-unavailable`; nothing changes on any refusal. {_RAISING} {_PRICES}"
    ),
    auth="optional",
    path_params={"sku": Sku},
    headers=_OPTIONAL_TOKEN,
    body=SetCartItemRequest,
    responses={200: CartView},
    response_headers={
        200: {
            CART_TOKEN_HEADER: OptionalHeader(
                "The new anonymous cart's token: sent when the request had neither a bearer token nor "
                f"`{CART_TOKEN_HEADER}`."
            )
        }
    },
    errors=(422,),
    tags=_TAGS,
)
def set_cart_item(
    sku: str, body: SetCartItemRequest, principal: Principal | None, headers: dict[str, str | None]
) -> Response:
    changed = domain.set_line(principal, headers[CART_TOKEN_HEADER], sku, body.quantity)
    issued = {CART_TOKEN_HEADER: changed.issued_token} if changed.issued_token is not None else {}
    return http.json_response(changed.cart, headers=issued)


@http.route(
    carts,
    "/cart",
    "DELETE",
    summary="Empty your cart",
    description=f"{_WHO} Its lines are removed; emptying a cart that does not exist (or expired) is fine too, "
    "and so is emptying a cart the shop cannot read (every other cart route answers it with 500 "
    "`stored-item-unusable`).",
    auth="optional",
    headers=_OPTIONAL_TOKEN,
    responses={204: None},
    tags=_TAGS,
)
def delete_cart(principal: Principal | None, headers: dict[str, str | None]) -> Response:
    domain.delete_cart(principal, headers[CART_TOKEN_HEADER])
    return Response(body="", status_code=204)


@http.route(
    carts,
    "/cart/merge",
    "POST",
    summary="Add an anonymous cart to yours (at sign-in)",
    description=(
        f"The lines of the `{CART_TOKEN_HEADER}` cart are added to the customer's: a SKU in both gets the sum of "
        "the quantities, at most 100; new SKUs follow while the cart has fewer than 50 lines (the rest are not "
        "taken). The anonymous cart is then emptied, in the same transaction, so repeating the request changes "
        f"nothing. {_RAISING} {_PRICES}"
    ),
    auth="customer",
    headers={CART_TOKEN_HEADER: CartToken},
    responses={200: CartView},
    errors=(422,),
    tags=_TAGS,
)
def merge_cart(principal: Principal, headers: dict[str, str | None]) -> Response:
    return http.json_response(domain.merge(principal, str(headers[CART_TOKEN_HEADER])))
