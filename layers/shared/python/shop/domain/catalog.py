"""Catalog rules: list, read, create and change products; audited stock adjustments.

Plain functions over pydantic models, used by the HTTP API (chalicelib/catalog.py), the demo
seeder (``create_product``) and order placement (``get_products``, a batch read).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from shop.errors import ProductNotFound, StockWouldExceedMaximum, StockWouldGoNegative, TransientError
from shop.models.base import iso_now
from shop.models.catalog import (
    MAX_STOCK,
    CreateProductRequest,
    Product,
    ProductListQuery,
    ProductPage,
    StockAdjustmentRequest,
    StockLedgerEntry,
    UpdateProductRequest,
)
from shop.pagination import decode_token, encode_token
from shop.repositories import catalog as repository
from shop.repositories.catalog import LISTING_ACTIVE, ConditionFailed

LISTING = "products"

# A conditional write loses only to a concurrent change of the same product (a reservation, an
# admin edit); each retry re-reads, so a handful always settles outside a pathological burst.
_ATTEMPTS = 5


def list_products(query: ProductListQuery) -> ProductPage:
    """Active products ordered by SKU, optionally of one category; 400 for a bad next_token."""
    binding = {"category": query.category}
    start = decode_token(LISTING, query.next_token, binding)
    products, last_key = repository.query_active(query.category, query.limit, start)
    return ProductPage(items=products, next_token=encode_token(LISTING, last_key, binding))


def get_product(sku: str) -> Product:
    product = repository.get_product(sku)
    if product is None:
        raise ProductNotFound(f"no product with SKU {sku}")
    return product


def get_products(skus: Iterable[str]) -> dict[str, Product]:
    """The existing products among ``skus`` by SKU, active or not (the caller decides); one batch read."""
    return repository.get_products(skus)


def create_product(request: CreateProductRequest) -> Product:
    """A new, active product with ``request.stock`` available; ProductAlreadyExists (409) if the SKU is taken."""
    now = iso_now()
    product = Product(
        sku=request.sku,
        name=request.name,
        description=request.description,
        category=request.category,
        price=request.price,
        available=request.stock,
        active=True,
        created_at=now,
        updated_at=now,
    )
    repository.insert_product(product)
    return product


def _listing_changes(current: Product, active: bool, category: str) -> tuple[dict[str, Any], list[str]]:
    """The listing attributes that keep the sparse indexes in step with ``active`` and ``category``."""
    if not active:
        return {}, ["listing", "listing_category"] if current.active else []
    if current.active and current.category == category:
        return {}, []
    return {"listing": LISTING_ACTIVE, "listing_category": category}, []


def update_product(sku: str, request: UpdateProductRequest) -> Product:
    """Apply a PATCH; deactivating takes the product off the listings. ProductNotFound (404)."""
    changes = request.changes()
    for _ in range(_ATTEMPTS):
        current = get_product(sku)
        set_values: dict[str, Any] = {"updated_at": iso_now()}
        for name in ("name", "description", "category", "active"):
            if name in changes:
                set_values[name] = changes[name]
        if "price" in changes:
            set_values["price_amount"] = changes["price"].amount
            set_values["price_currency"] = changes["price"].currency
        listing, remove = _listing_changes(
            current, changes.get("active", current.active), changes.get("category", current.category)
        )
        set_values.update(listing)
        if "purchase_limit" in changes:
            # Absent on the item means no limit: clearing removes it, so unlimited products store nothing more.
            if changes["purchase_limit"] is None:
                remove = [*remove, "purchase_limit"]
            else:
                set_values["purchase_limit"] = changes["purchase_limit"]
        try:
            # Only what the listing attributes were derived from must be unchanged; stock moves
            # by the inventory service meanwhile do not matter to a PATCH.
            return repository.update_product(
                sku,
                set_values=set_values,
                remove=remove,
                expect={"active": current.active, "category": current.category},
            )
        except ConditionFailed:
            continue
    raise TransientError(f"product {sku} is changing too often to update; retry")


def _entry_id(at: str) -> str:
    # Sorts by time; the random suffix keeps two adjustments in the same millisecond apart.
    return f"{at}#{uuid.uuid4().hex}"


def adjust_stock(sku: str, request: StockAdjustmentRequest, *, actor: str) -> Product:
    """Add ``delta`` to ``available`` and audit it in the stock ledger, in one transaction.

    StockWouldGoNegative (409) if ``available`` would drop below zero, StockWouldExceedMaximum
    (409) if an increase would take it above ``MAX_STOCK``: nothing changes then.
    ProductNotFound (404) for an unknown SKU.
    """
    for _ in range(_ATTEMPTS):
        current = get_product(sku)
        resulting = current.available + request.delta
        if resulting < 0:
            raise StockWouldGoNegative(
                f"{current.available} available; a change of {request.delta} would leave {resulting}"
            )
        # Only increases are refused: stock returned by released reservations may have taken
        # ``available`` above the maximum, and bringing it down must stay possible.
        if request.delta > 0 and resulting > MAX_STOCK:
            raise StockWouldExceedMaximum(
                f"{current.available} available; a change of {request.delta} would make {resulting}, "
                f"more than the maximum {MAX_STOCK}",
                errors=[{"field": "delta", "message": f"at most {max(MAX_STOCK - current.available, 0)} here"}],
            )
        at = iso_now()
        entry = StockLedgerEntry(
            sku=sku,
            entry_id=_entry_id(at),
            actor=actor,
            at=at,
            delta=request.delta,
            reason=request.reason,
            available=resulting,
        )
        try:
            repository.record_stock_adjustment(entry, expected_available=current.available, updated_at=at)
        except ConditionFailed:
            continue  # stock moved (or the product vanished) since the read: decide again
        return current.model_copy(update={"available": resulting, "updated_at": at})
    raise TransientError(f"stock of {sku} is changing too often to adjust; retry")


def stock_ledger(sku: str) -> list[StockLedgerEntry]:
    """The audit trail of a product's stock adjustments, oldest first."""
    return repository.stock_ledger(sku)
