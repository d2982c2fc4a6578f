"""Catalog routes: public reads, admin writes and audited stock adjustments."""

from __future__ import annotations

from chalice import Blueprint, Response

from chalicelib import http
from shop.auth import Principal
from shop.domain import catalog as domain
from shop.domain.search import MAX_INDEX_HITS_PER_SEARCH
from shop.models.catalog import (
    MAX_QUERY_WORDS,
    MAX_STOCK,
    CreateProductRequest,
    Product,
    ProductListQuery,
    ProductPage,
    Sku,
    StockAdjustmentRequest,
    UpdateProductRequest,
)
from shop.models.common import MAX_STOCK_SHARDS

catalog = Blueprint(__name__)

_TAGS = ("catalog",)
_SKU = {"sku": Sku}
# Catalog reads may be served by a browser or CDN cache this long without asking; a client that
# revalidates (If-None-Match) sees an admin's change at once. Checkout never reads through a
# cache: its price snapshot is read from the table (shop.domain.orders).
CATALOG_MAX_AGE_SECONDS = 30
_CONDITIONAL = {"If-None-Match": http.IfNoneMatch | None}
_CACHEABLE = {200: http.CACHE_HEADERS, 304: http.CACHE_HEADERS}


@http.route(
    catalog,
    "/products",
    "GET",
    summary="List or search active products",
    description=(
        "Without `q`: ordered by SKU. With `q`: the products with a term beginning with each of its words in their "
        "name, description or category (case and accents do not matter), best matches first (a match in the name "
        "above one in the description above one in the category, a whole word above a prefix), then by SKU; 422 "
        f"`search-too-many-words` for more than {MAX_QUERY_WORDS} different words, 422 `search-matches-too-many` "
        f"when its words begin more than {MAX_INDEX_HITS_PER_SEARCH} indexed terms together (a letter or two in a "
        "large catalog: longer words narrow it). Pass `next_token` from the "
        "previous page (with the same `q` and `category`) to continue."
    ),
    query=ProductListQuery,
    headers=_CONDITIONAL,
    responses={200: ProductPage, 304: None},
    response_headers=_CACHEABLE,
    errors=(422,),
    tags=_TAGS,
)
def list_products(query: ProductListQuery, headers: dict[str, str | None]) -> Response:
    return http.cacheable_response(domain.list_products(query), headers["If-None-Match"], CATALOG_MAX_AGE_SECONDS)


@http.route(
    catalog,
    "/products/{sku}",
    "GET",
    summary="Read a product",
    path_params=_SKU,
    headers=_CONDITIONAL,
    responses={200: Product, 304: None},
    response_headers=_CACHEABLE,
    errors=(404,),
    tags=_TAGS,
)
def get_product(sku: str, headers: dict[str, str | None]) -> Response:
    return http.cacheable_response(domain.get_product(sku), headers["If-None-Match"], CATALOG_MAX_AGE_SECONDS)


@http.route(
    catalog,
    "/products",
    "POST",
    summary="Create a product (admin)",
    auth="admin",
    body=CreateProductRequest,
    responses={201: Product},
    response_headers={201: {"Location": "/products/{sku}"}},
    errors=(409,),
    tags=_TAGS,
)
def create_product(body: CreateProductRequest, principal: Principal) -> Response:
    product = domain.create_product(body)
    return http.json_response(product, status=201, headers={"Location": f"/products/{product.sku}"})


@http.route(
    catalog,
    "/products/{sku}",
    "PATCH",
    summary="Change a product (admin)",
    description=(
        "Any of name, description, category, price, active, purchase_limit, stock_shards. Deactivating takes it "
        "off the listings. `purchase_limit` (1-100, or null for none) is the most units of this SKU one customer "
        "may hold across orders that are not CANCELLED; it applies to orders placed from then on. `stock_shards` "
        f"(1-{MAX_STOCK_SHARDS}) spreads the SKU's units over that many counters, moved in one transaction: "
        "nothing is lost or created, and `available` stays the sum (a hot product takes more sales a second)."
    ),
    auth="admin",
    path_params=_SKU,
    body=UpdateProductRequest,
    responses={200: Product},
    errors=(404,),
    tags=_TAGS,
)
def update_product(sku: str, body: UpdateProductRequest, principal: Principal) -> Response:
    return http.json_response(domain.update_product(sku, body))


@http.route(
    catalog,
    "/products/{sku}/stock-adjustments",
    "POST",
    summary="Adjust stock (admin)",
    description=(
        "Adds `delta` to `available` and records it in the stock ledger; 409 if it would go below 0 or above "
        f"{MAX_STOCK}, and nothing changes."
    ),
    auth="admin",
    path_params=_SKU,
    body=StockAdjustmentRequest,
    responses={200: Product},
    errors=(404, 409),
    tags=_TAGS,
)
def adjust_stock(sku: str, body: StockAdjustmentRequest, principal: Principal) -> Response:
    return http.json_response(domain.adjust_stock(sku, body, actor=principal.subject))
