"""Rebuilding the search index from the products, a page per call (``POST /admin/search/reindex``).

The index is written with each product, by the text rules of the version that wrote it: a product
saved before a change to the rules (``shop.domain.search``) keeps the terms of the old rules, and a
term the old rules made and the new ones do not (a word once split in three, say) stays behind. A
rebuild runs in two stages, each a page per call so a call stays far inside the API's time limit:

1. ``terms``: every product, each active one's terms written as the current rules make them;
2. ``prune``: every index item, deleted when no product has that term now (an inactive product, a
   product that is gone, a term of older rules).

Each product's writes are one transaction conditioned on what its terms come from (name,
description, category, active) as read: a product whose text changed during the call is left alone
(its own write kept its terms in step) and named in the answer. A price or stock change meanwhile
does not stop it (the rebuild was conditioned on the item's version before, and a restock during a
rebuild left the product's lost terms missing). Puts and deletes are idempotent, so a call repeated,
or a rebuild run twice, is harmless.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from shop import signing
from shop.domain import search
from shop.errors import FieldError
from shop.models.catalog import ProductInfo, SearchReindexStep
from shop.pagination import TOKEN_FIELD
from shop.repositories import catalog, search_index

# A page of products writes at most 24 terms each, in one transaction per product.
PRODUCTS_PER_CALL = 25
INDEX_ITEMS_PER_CALL = 200
_TOKEN_PURPOSE = "search-reindex"

Stage = Literal["terms", "prune"]


class _Position(BaseModel):
    """Where a rebuild stands: the stage, and the last key read in it (None: its beginning)."""

    stage: Stage
    key: dict[str, dict[Literal["S", "N"], str]] | None = None


def _invalid(message: str) -> FieldError:
    return FieldError("the reindex token is not valid", [{"field": TOKEN_FIELD, "message": message}])


def _encode(position: _Position) -> str:
    return str(signing.serializer(_TOKEN_PURPOSE).dumps(position.model_dump()))


def _decode(token: str | None) -> _Position:
    if token is None:
        return _Position(stage="terms")
    payload = signing.load(_TOKEN_PURPOSE, token, _invalid("was altered or was not issued by a reindex"))
    try:
        return _Position.model_validate(payload)
    except ValidationError:
        raise _invalid("is malformed") from None


def _terms(product: ProductInfo | None) -> dict[str, int]:
    if product is None or not product.active:
        return {}
    return search.index_terms(product.name, product.description, product.category)


def reindex_search(next_token: str | None) -> SearchReindexStep:
    """One call of the rebuild: the page after ``next_token`` (the first page of products without one)."""
    position = _decode(next_token)
    if position.stage == "terms":
        return _write_terms(position.key)
    return _prune(position.key)


def _write_terms(start: dict[str, Any] | None) -> SearchReindexStep:
    page, last_key = catalog.scan_product_infos(PRODUCTS_PER_CALL, start)
    indexed = written = 0
    changed: list[str] = []
    for product in sorted(page, key=lambda product: product.sku):
        terms = _terms(product)
        if not terms:
            continue  # an inactive product has no terms: the prune stage deletes any it still has
        puts = search_index.changes(product.sku, {}, product.category, terms, product.category)
        try:
            catalog.write_index_while_unchanged(product.sku, product, puts)
        except catalog.ConditionFailed:
            changed.append(product.sku)
            continue
        indexed += 1
        written += len(puts)
    following = _Position(stage="terms", key=last_key) if last_key else _Position(stage="prune")
    return SearchReindexStep(
        stage="terms",
        products_indexed=indexed,
        terms_written=written,
        terms_deleted=0,
        changed_meanwhile=changed,
        next_token=_encode(following),
    )


def _prune(start: dict[str, Any] | None) -> SearchReindexStep:
    hits, last_key = search_index.scan_page(INDEX_ITEMS_PER_CALL, start)
    by_sku: defaultdict[str, list[search_index.IndexHit]] = defaultdict(list)
    for hit in hits:
        by_sku[hit.sku].append(hit)
    products = catalog.get_product_infos(by_sku)
    deleted = 0
    changed: list[str] = []
    for sku, found in sorted(by_sku.items()):
        product = products.get(sku)
        kept = _terms(product)
        stale = {hit.term: hit.fields for hit in found if hit.term not in kept}
        if not stale:
            continue
        deletes = search_index.changes(sku, stale, "", {}, "")
        try:
            catalog.write_index_while_unchanged(sku, product, deletes)
        except catalog.ConditionFailed:
            changed.append(sku)
            continue
        deleted += len(deletes)
    return SearchReindexStep(
        stage="prune",
        products_indexed=0,
        terms_written=0,
        terms_deleted=deleted,
        changed_meanwhile=changed,
        next_token=_encode(_Position(stage="prune", key=last_key)) if last_key else None,
    )
