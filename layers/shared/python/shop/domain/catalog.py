"""Catalog rules: list, read, create and change products; audited stock adjustments; resharding.

Plain functions over pydantic models, used by the HTTP API (chalicelib/catalog.py), the demo
seeder (``create_product``) and order placement (``get_products_for_sale``, a batch read).

A SKU's stock is the sum of its ``stock_shards`` counters (``shop.repositories.stock``): a
reshard moves the units onto the new count in one transaction conditioned on every counter's
version, an adjustment adds to the emptiest counters or takes from the fullest.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import model_validator

from shop.domain import search, stock_shards
from shop.errors import (
    ProductNotFound,
    SearchMatchesTooMany,
    StockWouldExceedMaximum,
    StockWouldGoNegative,
    TransientError,
)
from shop.models.base import StrictModel, iso_now
from shop.models.catalog import (
    MAX_STOCK,
    CreateProductRequest,
    Product,
    ProductInfo,
    ProductListQuery,
    ProductPage,
    StockAdjustmentRequest,
    StockLedgerEntry,
    UpdateProductRequest,
)
from shop.models.inventory import total_available, units_by_shard
from shop.observability import logger
from shop.pagination import decode_position, decode_token, encode_position, encode_token
from shop.repositories import catalog as repository
from shop.repositories import search_index, stock
from shop.repositories.catalog import LISTING_ACTIVE, ConditionFailed
from shop.repositories.dynamodb import UNREADABLE_ITEM_ERRORS

LISTING = "products"
# Search pages have their own tokens: a listing's token is refused by a search and the other way round.
SEARCH_LISTING = "product-search"

# A conditional write loses only to a concurrent change of the same product (a reservation, an
# admin edit); each retry re-reads, so a handful always settles outside a pathological burst.
_ATTEMPTS = 5


def list_products(query: ProductListQuery) -> ProductPage:
    """Active products ordered by SKU, optionally of one category, or with ``q`` the products
    matching it best first (``search_products``); 400 for a bad next_token."""
    if query.q is not None:
        return search_products(query)
    binding = {"category": query.category}
    start = decode_token(LISTING, query.next_token, binding)
    products, last_key = repository.query_active(query.category, query.limit, start)
    return ProductPage(items=products, next_token=encode_token(LISTING, last_key, binding))


class _SearchPosition(StrictModel):
    """A search page's last result: the next page starts after it (best first, then by SKU)."""

    score: int
    sku: str

    @model_validator(mode="before")
    @classmethod
    def _issued_before_positions(cls, value: Any) -> Any:
        # Tokens issued before positions were models carry DynamoDB's form ({"score": {"N": "7"}, ...});
        # they never expire, so a client paging through a search across a deploy still has one.
        if isinstance(value, dict) and isinstance(value.get("score"), dict) and isinstance(value.get("sku"), dict):
            try:
                return {"score": int(value["score"]["N"]), "sku": value["sku"]["S"]}
            except (KeyError, TypeError, ValueError):
                return value
        return value


def search_products(query: ProductListQuery) -> ProductPage:
    """Active products matching every word of ``query.q`` (``shop.domain.search``), best first,
    optionally of one category; paged after the previous page's last result (score, SKU).

    SearchTooBroad (422) for more than ``search.MAX_QUERY_WORDS`` words, SearchMatchesTooMany (422)
    when they begin more than ``search.MAX_INDEX_HITS_PER_SEARCH`` index items; 400 for a bad next_token.
    """
    assert query.q is not None
    words = search.query_words(query.q)
    binding = {"category": query.category, "q": " ".join(words)}
    position = decode_position(SEARCH_LISTING, query.next_token, binding, _SearchPosition)
    after = search.Ranked.of(position.score, position.sku) if position is not None else None
    matches_by_word: dict[str, dict[str, list[search.TermMatch]]] = {}
    budget = search.MAX_INDEX_HITS_PER_SEARCH
    for word in search.reading_order(words):
        hits = search_index.hits(word, at_most=budget)
        if len(hits) > budget:
            raise SearchMatchesTooMany(
                f"the words of this search begin more than {search.MAX_INDEX_HITS_PER_SEARCH} indexed terms",
                errors=[{"field": "q", "message": "too many terms begin with these words; use longer words"}],
            )
        budget -= len(hits)
        by_sku: dict[str, list[search.TermMatch]] = {}
        for hit in hits:
            if query.category is None or hit.category == query.category:
                by_sku.setdefault(hit.sku, []).append(search.TermMatch(hit.term, hit.fields))
        if not by_sku:
            return ProductPage(items=[], next_token=None)  # this word matches nothing: neither does the query
        matches_by_word[word] = by_sku
    page, more = search.page_after(search.rank(matches_by_word), after, query.limit)
    infos = repository.get_product_infos(entry.sku for entry in page)
    # The index holds active products only; one deactivated since the index was read is left out.
    listed = [infos[entry.sku] for entry in page if entry.sku in infos and infos[entry.sku].active]
    last = _SearchPosition(score=page[-1].score, sku=page[-1].sku) if more else None
    return ProductPage(
        items=repository.with_stock(listed, consistent=False),
        next_token=encode_position(SEARCH_LISTING, last, binding),
    )


def _index_terms(name: str, description: str, category: str, active: bool) -> dict[str, int]:
    return search.index_terms(name, description, category) if active else {}


def _product_read[T](sku: str, read: Callable[[str], T | None]) -> T:
    """What ``read`` found of the product; ProductNotFound (404) if nothing. An item that is not a
    product (written behind the shop's back) is an unknown SKU here too, as in the listings; it is
    logged, and the books check reports it. Its read answered 500 before."""
    try:
        found = read(sku)
    except UNREADABLE_ITEM_ERRORS as error:
        logger().error(
            "an item is not a product; answered as an unknown SKU", extra={"sku": sku, "error": type(error).__name__}
        )
        raise ProductNotFound(f"no product with SKU {sku}") from error
    if found is None:
        raise ProductNotFound(f"no product with SKU {sku}")
    return found


def get_product(sku: str) -> Product:
    return _product_read(sku, repository.get_product)


def get_products(skus: Iterable[str]) -> dict[str, Product]:
    """The existing products among ``skus`` by SKU, active or not (the caller decides), with their stock."""
    return repository.get_products(skus)


def get_products_for_sale(skus: Iterable[str]) -> dict[str, ProductInfo]:
    """``get_products`` without the stock: order placement prices lines and reads no counter, so a
    flash sale's placements do not read the hot SKU's shards (the reservation finds out)."""
    return repository.get_product_infos(skus)


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
    terms = search.index_terms(product.name, product.description, product.category)
    index_actions = search_index.changes(product.sku, {}, product.category, terms, product.category)
    repository.insert_product(product, index_actions=index_actions)
    return product


def _listing_changes(current: ProductInfo, active: bool, category: str) -> tuple[dict[str, Any], list[str]]:
    """The listing attributes that keep the sparse indexes in step with ``active`` and ``category``."""
    if not active:
        return {}, ["listing", "listing_category"] if current.active else []
    if current.active and current.category == category:
        return {}, []
    return {"listing": LISTING_ACTIVE, "listing_category": category}, []


def update_product(sku: str, request: UpdateProductRequest) -> Product:
    """Apply a PATCH; deactivating takes the product off the listings; ``stock_shards`` moves the
    stock onto that many counters in the same transaction. ProductNotFound (404)."""
    changes = request.changes()
    for _ in range(_ATTEMPTS):
        current, version = _product_read(sku, repository.get_product_info_and_version)
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
        index_actions = _index_changes(current, changes)
        # Only what the listing attributes, the search index items (and the shard count) were
        # derived from must be unchanged; stock moves by the inventory service meanwhile do not
        # matter to a PATCH.
        expect = {
            "active": current.active,
            "category": current.category,
            "name": current.name,
            "description": current.description,
        }
        try:
            if changes.get("stock_shards", current.stock_shards) == current.stock_shards:
                repository.update_product(
                    sku, set_values=set_values, remove=remove, expect=expect, index_actions=index_actions
                )
            else:
                _reshard(
                    sku, changes["stock_shards"], set_values, remove, {**expect, "version": version}, index_actions
                )
        except ConditionFailed:
            continue  # the product or a counter changed since the read: decide again
        return get_product(sku)
    raise TransientError(f"product {sku} is changing too often to update; retry")


def _index_changes(current: ProductInfo, changes: dict[str, Any]) -> list[dict[str, Any]]:
    """The search index actions that follow the product from ``current`` to ``current`` + ``changes``."""
    name = changes.get("name", current.name)
    description = changes.get("description", current.description)
    category = changes.get("category", current.category)
    return search_index.changes(
        current.sku,
        _index_terms(current.name, current.description, current.category, current.active),
        current.category,
        _index_terms(name, description, category, changes.get("active", current.active)),
        category,
    )


def _reshard(
    sku: str,
    shards: int,
    set_values: dict[str, Any],
    remove: list[str],
    expect: dict[str, Any],
    index_actions: list[dict[str, Any]],
) -> None:
    """Move the SKU's units onto ``shards`` counters with the PATCH's other changes, all or nothing.

    Each counter's new value is written on the condition that its version is still the one read,
    and a counter left as it was is checked too: a sale or release in between cancels the
    transaction, so the total moved is exactly the total read. Removed counters are deleted.
    ``expect`` holds the product's version as read before the counters: a counter another reshard
    deleted and created again starts at version 1 again, so only the product's version tells that
    the counters were reshaped since (N -> M -> N shards) and that this plan is stale.
    """
    counters = repository.stock_shards(sku)
    target = stock_shards.reshard(units_by_shard(counters), shards)
    actions: list[dict[str, Any]] = []
    for number, units in target.items():
        existing = counters.get(number)
        if existing is None:
            actions.append(stock.create(sku, number, units))
        elif existing.available == units:
            actions.append(stock.unchanged(sku, existing))
        else:
            actions.append(stock.replace(sku, existing, units))
    actions += [stock.remove(sku, shard) for number, shard in sorted(counters.items()) if number not in target]
    repository.update_product_and_stock(
        sku,
        set_values={**set_values, "stock_shards": shards},
        remove=remove,
        expect=expect,
        stock_actions=actions,
        index_actions=index_actions,
    )


def _entry_id(at: str) -> str:
    # Sorts by time; the random suffix keeps two adjustments in the same millisecond apart.
    return f"{at}#{uuid.uuid4().hex}"


def adjust_stock(sku: str, request: StockAdjustmentRequest, *, actor: str) -> Product:
    """Add ``delta`` to ``available`` and audit it in the stock ledger, in one transaction.

    An increase goes to the emptiest shards, a decrease comes from the fullest (each conditioned on
    the units being there), so a restock during a flash sale does not wait for the sale to pause.
    StockWouldGoNegative (409) if ``available`` would drop below zero, StockWouldExceedMaximum
    (409) if an increase would take it above ``MAX_STOCK``: nothing changes then.
    ProductNotFound (404) for an unknown SKU.
    """
    for _ in range(_ATTEMPTS):
        info, version = _product_read(sku, repository.get_product_info_and_version)
        read = repository.stock_shards(sku)
        counters = units_by_shard(read)
        if not counters or max(counters) >= info.stock_shards:
            # A reshard moved the units since the product was read (no counter yet, or more of them
            # than it said): a total of what was read would be a part of the stock. Read again.
            continue
        available = total_available(counters)
        resulting = available + request.delta
        if _refused(resulting, request.delta) and not all(
            _refused(total_available(units_by_shard(again)) + request.delta, request.delta)
            for again in stock.reread_shards(sku, read)
        ):
            # A read after it would not refuse: a reshard or a gather committed through this one (it
            # showed part of the units, or some twice). A 409 rests only on every read refusing.
            continue
        if resulting < 0:
            raise StockWouldGoNegative(f"{available} available; a change of {request.delta} would leave {resulting}")
        # Only increases are refused: stock returned by released reservations may have taken
        # ``available`` above the maximum, and bringing it down must stay possible.
        if request.delta > 0 and resulting > MAX_STOCK:
            raise StockWouldExceedMaximum(
                f"{available} available; a change of {request.delta} would make {resulting}, "
                f"more than the maximum {MAX_STOCK}",
                errors=[{"field": "delta", "message": f"at most {max(MAX_STOCK - available, 0)} here"}],
            )
        if request.delta > 0:
            actions = [
                stock.give(sku, number, units)
                for number, units in stock_shards.plan_increase(counters, request.delta).items()
            ]
        else:
            decrease = stock_shards.plan_decrease(counters, -request.delta)
            assert decrease is not None  # resulting >= 0: the counters hold at least -delta
            actions = [stock.take(sku, number, units) for number, units in decrease.items()]
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
            repository.record_stock_adjustment(
                entry, stock_shards=info.stock_shards, stock_actions=actions, updated_at=at, version=version
            )
        except ConditionFailed:
            # A sale emptied a counter, or another adjustment or a reshard changed the product since the
            # read (two racing restocks each judged the maximum on the same total): decide again.
            continue
        return Product.of(info.model_copy(update={"updated_at": at}), resulting)
    raise TransientError(f"stock of {sku} is changing too often to adjust; retry")


def _refused(resulting: int, delta: int) -> bool:
    """Below zero, or an increase past the maximum (a decrease may leave more: released reservations
    can have taken ``available`` above it, and bringing it down must stay possible)."""
    return resulting < 0 or (delta > 0 and resulting > MAX_STOCK)


def stock_ledger(sku: str) -> list[StockLedgerEntry]:
    """The audit trail of a product's stock adjustments, oldest first."""
    return repository.stock_ledger(sku)
