"""Catalog routes: public reads, admin writes and audited stock adjustments."""

from __future__ import annotations

from chalice import Blueprint, Response

from chalicelib import http
from shop.auth import Principal
from shop.domain import catalog as domain
from shop.models.catalog import (
    CreateProductRequest,
    Product,
    ProductListQuery,
    ProductPage,
    Sku,
    StockAdjustmentRequest,
    UpdateProductRequest,
)

catalog = Blueprint(__name__)

_TAGS = ("catalog",)
_SKU = {"sku": Sku}


@http.route(
    catalog,
    "/products",
    "GET",
    summary="List active products",
    description="Ordered by SKU. Pass `next_token` from the previous page (with the same `category`) to continue.",
    query=ProductListQuery,
    responses={200: ProductPage},
    tags=_TAGS,
)
def list_products(query: ProductListQuery) -> Response:
    return http.json_response(domain.list_products(query))


@http.route(
    catalog,
    "/products/{sku}",
    "GET",
    summary="Read a product",
    path_params=_SKU,
    responses={200: Product},
    errors=(404,),
    tags=_TAGS,
)
def get_product(sku: str) -> Response:
    return http.json_response(domain.get_product(sku))


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
    description="Any of name, description, category, price, active. Deactivating takes it off the listings.",
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
    description="Adds `delta` to `available` and records it in the stock ledger; 409 if it would go below 0.",
    auth="admin",
    path_params=_SKU,
    body=StockAdjustmentRequest,
    responses={200: Product},
    errors=(404, 409),
    tags=_TAGS,
)
def adjust_stock(sku: str, body: StockAdjustmentRequest, principal: Principal) -> Response:
    return http.json_response(domain.adjust_stock(sku, body, actor=principal.subject))
