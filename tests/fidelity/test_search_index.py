"""Product search against a real DynamoDB engine and against moto: the same tests on both.

The search index (SearchIndexTable) is written in the product's own transactions and read with
``begins_with`` on its sort key; these check, through the catalog's domain functions, that a
search finds what the contract says (accents, prefixes, categories), never an inactive product,
forgets a renamed product's old terms at once, pages with the signed tokens (the listing's exact last
page with none), and that the largest product write (every term replaced and the stock resharded)
still fits in one transaction.
"""

from __future__ import annotations

from typing import Any

import pytest

from shop import signing
from shop.domain import catalog, search
from shop.errors import FieldError, SearchMatchesTooMany, SearchTooBroad
from shop.models.catalog import CreateProductRequest, ProductListQuery, StockAdjustmentRequest, UpdateProductRequest
from shop.models.common import MAX_STOCK_SHARDS
from shop.models.money import Money
from shop.repositories import search_index
from tests.fidelity.conftest import Backend


def create(sku: str, name: str, *, description: str = "", category: str = "kitchen", stock: int = 5) -> None:
    catalog.create_product(
        CreateProductRequest(
            sku=sku, name=name, description=description, category=category, price=Money(amount=1000), stock=stock
        )
    )


def found(q: str, **query: Any) -> list[str]:
    page = catalog.list_products(ProductListQuery(q=q, **query))
    return [product.sku for product in page.items]


def index_items(backend: Backend) -> list[dict[str, Any]]:
    pages = backend.client.get_paginator("scan").paginate(
        TableName=backend.table("SearchIndexTable"), ConsistentRead=True
    )
    return [item for page in pages for item in page["Items"]]


def indexed_terms(backend: Backend, sku: str) -> set[str]:
    return {item["term"]["S"] for item in index_items(backend) if item["sku"]["S"] == sku}


@pytest.fixture
def shop_catalog(backend: Backend) -> Backend:
    create("MUG-STONE", "Stoneware mug", description="Glazed by hand, 350 ml.")
    create("BOWL-STONE", "Serving bowl", description="Stoneware bowl for salads.")
    create("CAFE-CREME", "Café crème blend", description="Whole beans, roasted in Zürich.", category="coffee")
    create("MUSEUM-MAP", "Map of the museum", description="Folded paper map.", category="books")
    create("TEA-MUG", "Tea mug", description="Porcelain.", category="tea")
    return backend


def test_every_word_matches_as_the_beginning_of_a_term(shop_catalog: Backend) -> None:
    assert found("ston mu") == ["MUG-STONE"]  # the contract's example
    assert found("stoneware mug") == ["MUG-STONE"]
    assert found("mu") == ["MUG-STONE", "MUSEUM-MAP", "TEA-MUG"]  # each a prefix of a name term: by SKU
    assert found("zzz") == []
    assert found("stone zzz") == []  # one word matching nothing: no results


def test_case_and_accents_do_not_matter(shop_catalog: Backend) -> None:
    assert found("CAFE CREME") == ["CAFE-CREME"]
    assert found("café") == ["CAFE-CREME"]
    assert found("zurich") == ["CAFE-CREME"]  # in the description
    assert found("ZÜR") == ["CAFE-CREME"]


def test_name_matches_rank_above_description_matches_above_category(shop_catalog: Backend) -> None:
    create("KETTLE", "Kettle", description="For the kitchen.", category="appliances")
    # BOWL-STONE has "stoneware" in its description only, MUG-STONE in its name.
    assert found("stoneware") == ["MUG-STONE", "BOWL-STONE"]
    # "kitchen": the category of the kitchen products, the description of KETTLE.
    assert found("kitchen") == ["KETTLE", "BOWL-STONE", "MUG-STONE"]
    # "tea": TEA-MUG's name and category beat nothing else; a whole word beats a prefix.
    create("TEAPOT", "Teapot", category="tea")
    assert found("tea") == ["TEA-MUG", "TEAPOT"]


def test_a_category_narrows_the_search(shop_catalog: Backend) -> None:
    assert found("mug", category="tea") == ["TEA-MUG"]
    assert found("mug", category="kitchen") == ["MUG-STONE"]
    assert found("mug", category="books") == []
    assert found("kitchen", category="kitchen") == ["BOWL-STONE", "MUG-STONE"]


def test_inactive_products_never_appear_and_come_back_when_reactivated(shop_catalog: Backend) -> None:
    catalog.update_product("TEA-MUG", UpdateProductRequest(active=False))
    assert found("mug") == ["MUG-STONE"]
    assert indexed_terms(shop_catalog, "TEA-MUG") == set()

    catalog.update_product("TEA-MUG", UpdateProductRequest(active=True))
    assert found("mug") == ["MUG-STONE", "TEA-MUG"]


def test_a_renamed_product_loses_its_old_terms_at_once(shop_catalog: Backend) -> None:
    catalog.update_product("TEA-MUG", UpdateProductRequest(name="Porcelain teacup"))

    assert found("mug") == ["MUG-STONE"]
    assert found("teacup") == ["TEA-MUG"]
    assert "mug" not in indexed_terms(shop_catalog, "TEA-MUG")
    assert indexed_terms(shop_catalog, "TEA-MUG") == set(search.index_terms("Porcelain teacup", "Porcelain.", "tea"))


def test_a_changed_category_moves_every_index_item(shop_catalog: Backend) -> None:
    catalog.update_product("TEA-MUG", UpdateProductRequest(category="gifts"))

    assert found("mug", category="tea") == []
    assert found("mug", category="gifts") == ["TEA-MUG"]
    assert found("gifts") == ["TEA-MUG"]
    assert found("tea") == ["TEA-MUG"]  # still its name
    assert {item["category"]["S"] for item in index_items(shop_catalog) if item["sku"]["S"] == "TEA-MUG"} == {"gifts"}


def test_stock_writes_leave_the_index_alone(shop_catalog: Backend) -> None:
    before = index_items(shop_catalog)
    catalog.adjust_stock("MUG-STONE", StockAdjustmentRequest(delta=7, reason="restock"), actor="ops")
    catalog.update_product("MUG-STONE", UpdateProductRequest(price=Money(amount=1200)))
    assert sorted(map(str, index_items(shop_catalog))) == sorted(map(str, before))
    (product,) = catalog.list_products(ProductListQuery(q="stoneware mug")).items
    assert (product.available, product.price.amount) == (12, 1200)


def test_pages_follow_the_ranking_with_signed_tokens(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    # The signing key lives in Secrets Manager, which this tier does not deploy.
    monkeypatch.setattr(signing, "pagination_key", lambda: "fidelity-tier-signing-key")
    for number in range(7):
        create(f"LAMP-{number}", "Desk lamp" if number % 2 else "Lamp", description="A lamp.")
    seen: list[str] = []
    page = catalog.list_products(ProductListQuery(q="lamp", limit=3))
    pages = 1
    while page.next_token is not None:
        seen += [product.sku for product in page.items]
        assert len(page.items) == 3
        page = catalog.list_products(ProductListQuery(q="LAMP", limit=3, next_token=page.next_token))
        pages += 1
    seen += [product.sku for product in page.items]
    assert pages == 3
    assert seen == found("lamp", limit=100)
    assert sorted(seen) == [f"LAMP-{number}" for number in range(7)]

    # A token belongs to its query: another q, another category or the plain listing refuse it.
    first = catalog.list_products(ProductListQuery(q="lamp", limit=3))
    assert first.next_token is not None
    for other in (
        ProductListQuery(q="desk", limit=3, next_token=first.next_token),
        ProductListQuery(q="lamp", category="kitchen", limit=3, next_token=first.next_token),
        ProductListQuery(limit=3, next_token=first.next_token),
    ):
        with pytest.raises(FieldError):
            catalog.list_products(other)


def test_the_listings_exact_last_page_hands_out_no_token(
    shop_catalog: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DynamoDB Local (as DynamoDB) answers a Query that stopped at its Limit with a LastEvaluatedKey even
    when nothing follows, moto does not: passed on, a listing that ends exactly on a page's last product
    handed out a token to an empty page. The listing reads one product more than its page."""
    monkeypatch.setattr(signing, "pagination_key", lambda: "fidelity-tier-signing-key")
    first = catalog.list_products(ProductListQuery(limit=3))
    assert [product.sku for product in first.items] == ["BOWL-STONE", "CAFE-CREME", "MUG-STONE"]
    assert first.next_token is not None
    last = catalog.list_products(ProductListQuery(limit=2, next_token=first.next_token))
    assert [product.sku for product in last.items] == ["MUSEUM-MAP", "TEA-MUG"] and last.next_token is None
    assert catalog.list_products(ProductListQuery(limit=5)).next_token is None
    by_category = catalog.list_products(ProductListQuery(category="kitchen", limit=2))
    assert [product.sku for product in by_category.items] == ["BOWL-STONE", "MUG-STONE"]
    assert by_category.next_token is None


def test_too_many_words_are_refused_before_any_read(backend: Backend) -> None:
    with pytest.raises(SearchTooBroad):
        found("a b c d e f g h i")
    assert found("!!!") == []


def test_the_index_is_read_no_further_than_one_item_past_the_bound(shop_catalog: Backend) -> None:
    # Terms beginning with "m": mug twice, ml, map, museum.
    assert len(search_index.hits("m", at_most=10)) == 5
    assert len(search_index.hits("m", at_most=2)) == 3
    assert len(search_index.hits("m", at_most=0)) == 1
    assert {hit.sku for hit in search_index.hits("mu", at_most=3)} == {"MUG-STONE", "TEA-MUG", "MUSEUM-MAP"}


def test_a_search_reading_more_index_items_than_its_bound_is_refused(
    shop_catalog: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound is the whole search's, its words together, longest first."""
    monkeypatch.setattr(search, "MAX_INDEX_HITS_PER_SEARCH", 3)
    assert sorted(found("mu")) == ["MUG-STONE", "MUSEUM-MAP", "TEA-MUG"]
    with pytest.raises(SearchMatchesTooMany) as refused:
        found("m")
    assert [error["field"] for error in refused.value.extensions["errors"]] == ["q"]
    # "stone" reads its 2 items first; "mu" would need 3 more.
    with pytest.raises(SearchMatchesTooMany):
        found("mu stone")
    # A longest word that matches nothing ends the search before the short one is read.
    assert found("m zzzz") == []


def test_the_largest_product_write_is_one_transaction(backend: Backend) -> None:
    many = " ".join(f"old{number}" for number in range(60))
    create("BIG", "Big thing", description=many)
    catalog.update_product("BIG", UpdateProductRequest(stock_shards=MAX_STOCK_SHARDS))
    assert len(indexed_terms(backend, "BIG")) == search.MAX_INDEXED_TERMS

    # Every indexed term replaced and the stock moved from 50 counters onto 1, in one PATCH.
    renamed = " ".join(f"new{number}" for number in range(60))
    catalog.update_product(
        "BIG", UpdateProductRequest(name="Renamed", category="other", description=renamed, stock_shards=1)
    )

    terms = indexed_terms(backend, "BIG")
    assert len(terms) == search.MAX_INDEXED_TERMS and not any(term.startswith("old") for term in terms)
    assert backend.shards("BIG") == {0: 5}
    assert found("new0") == ["BIG"] and found("old0") == []


def test_a_rebuilds_index_write_holds_while_the_products_text_is_as_read(backend: Backend) -> None:
    """The rebuild's condition (``write_index_while_unchanged``): a price change or restock since the read
    lets it write, a rename refuses it, and a product item written without a description reads as ""
    and is still matched as read (an attribute_not_exists branch both engines must take alike)."""
    from shop.repositories import catalog as catalog_repository

    create("MUG-STONE", "Stoneware mug")
    read = catalog_repository.get_product_info("MUG-STONE")
    assert read is not None
    catalog.update_product("MUG-STONE", UpdateProductRequest(price=Money(amount=1200)))
    catalog.adjust_stock("MUG-STONE", StockAdjustmentRequest(delta=2, reason="restock"), actor="admin")
    terms = search.index_terms(read.name, read.description, read.category)
    puts = search_index.changes("MUG-STONE", {}, read.category, terms, read.category)
    catalog_repository.write_index_while_unchanged("MUG-STONE", read, puts)  # price and stock are not its text

    backend.client.update_item(
        TableName=backend.table("ProductsTable"), Key={"sku": {"S": "MUG-STONE"}}, UpdateExpression="REMOVE description"
    )
    catalog_repository.write_index_while_unchanged("MUG-STONE", read, puts)  # "" as read: absent matches it
    catalog.update_product("MUG-STONE", UpdateProductRequest(name="Porcelain cup"))
    with pytest.raises(catalog_repository.ConditionFailed):
        catalog_repository.write_index_while_unchanged("MUG-STONE", read, puts)
    assert found("porcelain") == ["MUG-STONE"]
