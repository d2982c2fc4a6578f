"""GET /products?q= through Chalice's test client over the deployed (moto) stack.

What the search finds is the fidelity tier's (tests/fidelity/test_search_index.py, on moto and
DynamoDB Local); here the HTTP side: the query's bounds and refusals (problem+json, nothing
written), paging with next_token, caching, and the admin routes keeping the index in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import pytest
from chalice.test import Client

from app import app
from shop import signing
from shop.domain import search
from shop.models.catalog import MAX_QUERY_WORDS, MAX_SEARCH_LENGTH, ProductInfo
from tests.conftest import LocalAws
from tests.service.test_catalog_api import Api, assert_problem


class SearchApi(Api):
    def search(self, q: str, **params: str) -> tuple[int, dict[str, str], object]:
        query = "&".join([f"q={quote(q)}", *(f"{name}={quote(value)}" for name, value in params.items())])
        reply = self.request("GET", f"/products?{query}")
        return reply.status, reply.headers, reply.body

    def found(self, q: str, **params: str) -> list[str]:
        status, _, body = self.search(q, **params)
        assert status == 200, body
        assert isinstance(body, dict)
        return [item["sku"] for item in body["items"]]

    def tables_with_index(self) -> dict[str, list[dict[str, object]]]:
        snapshot = self.tables()
        items = self.aws.client("dynamodb").scan(TableName=self.aws.table("SearchIndexTable"), ConsistentRead=True)
        snapshot["SearchIndexTable"] = sorted(items["Items"], key=str)
        return snapshot


@pytest.fixture
def api(local_aws: LocalAws) -> Iterator[SearchApi]:
    with Client(app, stage_name="prod") as client:
        yield SearchApi(client, local_aws)


def create(api: SearchApi, sku: str, name: str, *, description: str = "", category: str = "kitchen") -> None:
    body = {
        "sku": sku,
        "name": name,
        "description": description,
        "category": category,
        "price": {"amount": 1000, "currency": "USD"},
        "stock": 3,
    }
    reply = api.request("POST", "/products", body, token=api.admin)
    assert reply.status == 201, reply.body


def test_a_search_answers_a_product_page_best_first(api: SearchApi) -> None:
    create(api, "MUG-STONE", "Stoneware mug", description="Glazed by hand.")
    create(api, "BOWL", "Serving bowl", description="Stoneware, for salads.")
    create(api, "CAFE", "Café crème", category="coffee")

    status, headers, body = api.search("ston mu")
    assert status == 200 and headers["content-type"] == "application/json"
    assert isinstance(body, dict) and body["next_token"] is None
    (item,) = body["items"]
    assert item["sku"] == "MUG-STONE" and item["available"] == 3 and item["name"] == "Stoneware mug"

    assert api.found("stoneware") == ["MUG-STONE", "BOWL"]
    assert api.found("CAFE creme") == ["CAFE"]
    assert api.found("cafe", category="coffee") == ["CAFE"]
    assert api.found("cafe", category="kitchen") == []
    assert api.found("?!") == []  # no letter or digit: nothing matches


def test_admin_changes_are_searchable_at_once(api: SearchApi) -> None:
    create(api, "MUG", "Stoneware mug")
    assert api.request("PATCH", "/products/MUG", {"name": "Porcelain cup"}, token=api.admin).status == 200
    assert api.found("mug") == []
    assert api.found("porcelain") == ["MUG"]

    assert api.request("PATCH", "/products/MUG", {"active": False}, token=api.admin).status == 200
    assert api.found("porcelain") == []
    assert api.request("PATCH", "/products/MUG", {"active": True}, token=api.admin).status == 200
    assert api.found("porcelain") == ["MUG"]


def test_search_pages_carry_their_own_tokens(api: SearchApi) -> None:
    for number in range(5):
        create(api, f"LAMP-{number}", "Lamp")
    status, _, first = api.search("lamp", limit="2")
    assert status == 200 and isinstance(first, dict) and first["next_token"]
    skus = [item["sku"] for item in first["items"]]
    token = first["next_token"]
    while token:
        status, _, page = api.search("lamp", limit="2", next_token=token)
        assert status == 200 and isinstance(page, dict)
        skus += [item["sku"] for item in page["items"]]
        token = page["next_token"]
    assert skus == [f"LAMP-{number}" for number in range(5)]

    # The token belongs to this search: not to another q, another category or the plain listing.
    for params in ({"q": "lam"}, {"q": "lamp", "category": "kitchen"}):
        q = params.pop("q")
        status, _, problem = api.search(q, limit="2", next_token=first["next_token"], **params)
        assert status == 400 and isinstance(problem, dict)
        assert {error["field"] for error in problem["errors"]} == {"next_token"}
    listing = api.request("GET", f"/products?limit=2&next_token={first['next_token']}")
    assert_problem(listing, 400, "next_token")


def test_a_search_token_issued_before_positions_were_models_still_pages(api: SearchApi) -> None:
    # A search's position used to be signed in DynamoDB's form; tokens never expire, so one issued before
    # the change must still page (the first version of the change answered it 400: the diff's reviewer).
    for number in range(5):
        create(api, f"LAMP-{number}", "Lamp")
    status, _, first = api.search("lamp", limit="2")
    assert status == 200 and isinstance(first, dict)
    signed = signing.serializer("pagination.product-search")
    payload = signed.loads(first["next_token"])
    position = payload["k"]
    older = signed.dumps(
        {"k": {"score": {"N": str(position["score"])}, "sku": {"S": position["sku"]}}, "q": payload["q"]}
    )

    status, _, page = api.search("lamp", limit="2", next_token=older)

    assert status == 200 and isinstance(page, dict)
    assert [item["sku"] for item in page["items"]] == ["LAMP-2", "LAMP-3"]


def test_a_search_is_cacheable_and_revalidates_when_a_result_changes(api: SearchApi) -> None:
    create(api, "MUG", "Stoneware mug")
    first = api.request("GET", "/products?q=mug")
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "public, max-age=30"
    assert api.request("GET", "/products?q=mug").headers["etag"] == etag
    again = api.request("GET", "/products?q=mug", headers={"If-None-Match": etag})
    assert (again.status, again.body) == (304, None)

    api.request("PATCH", "/products/MUG", {"price": {"amount": 1500, "currency": "USD"}}, token=api.admin)
    repriced = api.request("GET", "/products?q=mug", headers={"If-None-Match": etag})
    assert repriced.status == 200 and repriced.body["items"][0]["price"]["amount"] == 1500
    create(api, "MUG-2", "Tea mug")
    grown = api.request("GET", "/products?q=mug", headers={"If-None-Match": repriced.headers["etag"]})
    assert grown.status == 200 and [item["sku"] for item in grown.body["items"]] == ["MUG", "MUG-2"]


def test_bad_searches_are_4xx_problems_and_change_nothing(api: SearchApi) -> None:
    create(api, "MUG", "Stoneware mug")
    before = api.tables_with_index()
    too_many = " ".join(f"w{number}" for number in range(MAX_QUERY_WORDS + 1))
    cases = {
        "empty": ("/products?q=", 400),
        "too long": (f"/products?q={'a' * (MAX_SEARCH_LENGTH + 1)}", 400),
        "repeated": ("/products?q=mug&q=cup", 400),
        "too many words": (f"/products?q={quote(too_many)}", 422),
        "bad limit": ("/products?q=mug&limit=0", 400),
        "forged token": ("/products?q=mug&next_token=abc", 400),
    }
    for name, (path, status) in cases.items():
        reply = api.request("GET", path)
        assert_problem(reply, status, "q" if name != "bad limit" and name != "forged token" else None)
        assert reply.body["status"] == status, name
    too_many_reply = api.request("GET", f"/products?q={quote(too_many)}")
    assert too_many_reply.body["type"] == "urn:shop:problem:search-too-many-words"
    assert api.tables_with_index() == before


def test_a_search_beginning_too_many_terms_is_422_and_changes_nothing(
    api: SearchApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anonymous one-letter words would read a large share of the index on every request."""
    monkeypatch.setattr(search, "MAX_INDEX_HITS_PER_SEARCH", 2)
    create(api, "MUG", "Stoneware mug")
    create(api, "MAP", "Museum map")
    before = api.tables_with_index()
    reply = api.request("GET", "/products?q=m")
    assert_problem(reply, 422, "q")
    assert reply.body["type"] == "urn:shop:problem:search-matches-too-many"
    assert api.found("mug") == ["MUG"]
    assert api.tables_with_index() == before


def test_the_longest_search_is_accepted(api: SearchApi) -> None:
    create(api, "MUG", "Stoneware mug")
    assert api.found("m" * MAX_SEARCH_LENGTH) == []
    assert api.found("mug " + "x" * (MAX_SEARCH_LENGTH - 4)) == []
    assert api.found("M") == ["MUG"]


def test_words_of_scripts_with_vowel_signs_are_searched_whole(api: SearchApi) -> None:
    """ "किताब" was indexed and queried as "क", "त", "ब": it found every product with terms beginning with
    those letters, and a four-word Hindi name was 422 search-too-many-words."""
    create(api, "BOOK", "पुरानी हिंदी किताब सेट")
    create(api, "OTHER", "कमल तरबूज बत्तख")

    assert api.found("किताब") == ["BOOK"]
    assert api.found("पुरानी हिंदी किताब सेट") == ["BOOK"]
    assert api.found("कमल") == ["OTHER"]


def test_letters_with_a_stroke_are_found_typed_plainly(api: SearchApi) -> None:
    create(api, "LODZ", "Łódź souvenir")
    create(api, "AERO", "Ærø mug")

    assert api.found("lodz") == ["LODZ"] and api.found("ŁÓDŹ") == ["LODZ"]
    assert api.found("aero") == ["AERO"]


# ---------------------------------------------------------------------------- rebuilding the index
def reindex(api: SearchApi) -> list[dict[str, Any]]:
    """Every call of a whole rebuild, as an operator's loop makes them."""
    steps: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        path = "/admin/search/reindex" + (f"?next_token={quote(token)}" if token else "")
        reply = api.request("POST", path, token=api.admin)
        assert reply.status == 200, reply.body
        assert isinstance(reply.body, dict)
        steps.append(reply.body)
        token = reply.body["next_token"]
        if token is None:
            return steps


def _index_items(api: SearchApi) -> list[dict[str, object]]:
    return api.tables_with_index()["SearchIndexTable"]


def _put_term(api: SearchApi, sku: str, term: str) -> None:
    """A term the index holds though the current rules make no such term of the product (older rules)."""
    api.aws.client("dynamodb").put_item(
        TableName=api.aws.table("SearchIndexTable"),
        Item={
            "pk": {"S": term[0]},
            "sk": {"S": f"{term}#{sku}"},
            "sku": {"S": sku},
            "term": {"S": term},
            "fields": {"N": "1"},
            "category": {"S": "kitchen"},
        },
    )


def test_a_rebuild_writes_the_terms_the_rules_make_and_prunes_the_rest(
    api: SearchApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Products saved before a change to the text rules kept the old rules' terms until saved again:
    the README said there was no backfill."""
    from shop.domain import search_reindex

    monkeypatch.setattr(search_reindex, "PRODUCTS_PER_CALL", 2)  # several pages of each stage
    monkeypatch.setattr(search_reindex, "INDEX_ITEMS_PER_CALL", 3)
    create(api, "MUG-STONE", "Stoneware mug", description="Glazed by hand.")
    create(api, "BOWL", "Serving bowl")
    create(api, "CAFE", "Café crème", category="coffee")
    create(api, "OLD", "Retired teapot")
    assert api.request("PATCH", "/products/OLD", {"active": False}, token=api.admin).status == 200
    sound = _index_items(api)
    # What an upgrade of the rules leaves: a product's terms lost (indexed by rules that made others),
    # old terms of products, of an inactive one and of one that is gone.
    table = api.aws.table("SearchIndexTable")
    for item in sound:
        if item["sku"] == {"S": "BOWL"}:
            api.aws.client("dynamodb").delete_item(TableName=table, Key={"pk": item["pk"], "sk": item["sk"]})
    for sku, term in (("MUG-STONE", "stonewaremug"), ("OLD", "teapot"), ("GONE", "gone")):
        _put_term(api, sku, term)
    assert api.found("serving") == [] and api.found("stonewaremug") == ["MUG-STONE"]

    steps = reindex(api)

    stages = [step["stage"] for step in steps]
    assert stages == ["terms"] * stages.count("terms") + ["prune"] * stages.count("prune"), stages
    assert stages.count("terms") >= 2
    assert stages.count("prune") >= 3  # 11 index items, 3 a page
    assert sum(step["products_indexed"] for step in steps) == 3  # the active ones
    assert sum(step["terms_deleted"] for step in steps) == 3
    assert all(step["changed_meanwhile"] == [] for step in steps)
    assert _index_items(api) == sound
    assert api.found("serving") == ["BOWL"] and api.found("stonewaremug") == [] and api.found("teapot") == []
    # Again: nothing more to delete, the same index.
    again = reindex(api)
    assert sum(step["terms_deleted"] for step in again) == 0 and _index_items(api) == sound


def test_a_price_change_during_a_rebuild_does_not_stop_it_writing_the_products_terms(
    api: SearchApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The product's terms lost (what an upgrade of the rules leaves), and an admin reprices it while
    the rebuild's first call runs: conditioned on the item's version, the rebuild left it out and it
    stayed unfindable after the whole rebuild (a helper's probe). A price is not what terms come from."""
    from shop.repositories import catalog

    create(api, "BOWL", "Serving bowl")
    table = api.aws.table("SearchIndexTable")
    for item in _index_items(api):
        api.aws.client("dynamodb").delete_item(TableName=table, Key={"pk": item["pk"], "sk": item["sk"]})
    assert api.found("serving") == []
    read_page = catalog.scan_product_infos

    def repriced_after_the_read(limit: int, start: object) -> object:
        page = read_page(limit, start)  # type: ignore[arg-type]
        price = {"price": {"amount": 1200, "currency": "USD"}}
        assert api.request("PATCH", "/products/BOWL", price, token=api.admin).status == 200
        return page

    monkeypatch.setattr(catalog, "scan_product_infos", repriced_after_the_read)
    steps = reindex(api)

    assert [step["changed_meanwhile"] for step in steps] == [[], []]
    assert api.found("serving") == ["BOWL"]


def test_a_restock_during_the_prune_does_not_keep_an_older_rules_term(
    api: SearchApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shop.repositories import catalog

    create(api, "MUG-STONE", "Stoneware mug")
    _put_term(api, "MUG-STONE", "stonewaremug")  # an older rule's term
    read = catalog.get_product_infos_and_versions  # what the prune's read of the products comes to

    def restocked_after_the_read(skus: object) -> object:
        found = read(skus)  # type: ignore[arg-type]
        restock = {"delta": 5, "reason": "restock"}
        assert api.request("POST", "/products/MUG-STONE/stock-adjustments", restock, token=api.admin).status == 200
        return found

    monkeypatch.setattr(catalog, "get_product_infos_and_versions", restocked_after_the_read)
    steps = reindex(api)

    assert [step["changed_meanwhile"] for step in steps] == [[], []]
    assert api.found("stonewaremug") == [] and api.found("stoneware") == ["MUG-STONE"]


@pytest.mark.parametrize(
    ("change", "old_word", "new_word"),
    [
        ({"name": "Porcelain cup"}, "stoneware", "porcelain"),
        ({"description": "Porcelain."}, "glazed", "porcelain"),
        ({"category": "gifts"}, "kitchen", "gifts"),
    ],
)
def test_a_product_changed_during_a_rebuild_keeps_the_terms_its_own_write_made(
    api: SearchApi, monkeypatch: pytest.MonkeyPatch, change: dict[str, str], old_word: str, new_word: str
) -> None:
    """The rebuild's write holds only while every field the terms come from (name, description, category)
    is as read: else it puts back the terms read before the change, or every term under the old category."""
    from shop.repositories import catalog

    create(api, "MUG-STONE", "Stoneware mug", description="Glazed by hand.")
    read_page = catalog.scan_product_infos

    def changed_after_the_read(
        limit: int, start: Mapping[str, Any] | None
    ) -> tuple[list[ProductInfo], dict[str, Any] | None]:
        page = read_page(limit, start)
        assert api.request("PATCH", "/products/MUG-STONE", change, token=api.admin).status == 200
        return page

    monkeypatch.setattr(catalog, "scan_product_infos", changed_after_the_read)
    first = api.request("POST", "/admin/search/reindex", token=api.admin)

    assert first.status == 200, first.body
    assert isinstance(first.body, dict)
    assert (first.body["changed_meanwhile"], first.body["terms_written"]) == (["MUG-STONE"], 0)
    assert api.found(old_word) == [] and api.found(new_word) == ["MUG-STONE"]
    assert api.found(new_word, category=change.get("category", "kitchen")) == ["MUG-STONE"]


def _prune_read_then(api: SearchApi, monkeypatch: pytest.MonkeyPatch, write: Callable[[], None]) -> None:
    """Run ``write`` once, right after the prune has read the products of its page of index items."""
    from shop.repositories import catalog

    read = catalog.get_product_infos_and_versions  # what the prune's read of the products comes to
    pending = [write]

    def written_after_the_read(skus: Iterable[str]) -> dict[str, tuple[ProductInfo, int]]:
        found = read(skus)
        while pending:
            pending.pop()()
        return found

    monkeypatch.setattr(catalog, "get_product_infos_and_versions", written_after_the_read)


def test_a_prune_keeps_the_terms_of_a_product_created_during_it(
    api: SearchApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A term of no product when the prune read it, made current by a create meanwhile: deleting it
    (the condition that the product is still missing) left the new product unfindable by that word."""
    _put_term(api, "LAMP", "lamp")  # a leftover of a product once gone

    def created() -> None:
        create(api, "LAMP", "Desk lamp")

    _prune_read_then(api, monkeypatch, created)
    steps = reindex(api)

    assert [step["changed_meanwhile"] for step in steps] == [[], ["LAMP"]]
    assert api.found("lamp") == ["LAMP"] and api.found("desk lamp") == ["LAMP"]


def test_a_prune_keeps_the_terms_of_a_product_reactivated_during_it(
    api: SearchApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An inactive product's leftover term, made current by a reactivation meanwhile: the prune's write
    must hold only while the product is still inactive, or the reactivated product loses the word."""
    create(api, "OLD", "Retired teapot")
    assert api.request("PATCH", "/products/OLD", {"active": False}, token=api.admin).status == 200
    _put_term(api, "OLD", "teapot")  # left behind (older rules)

    def reactivated() -> None:
        assert api.request("PATCH", "/products/OLD", {"active": True}, token=api.admin).status == 200

    _prune_read_then(api, monkeypatch, reactivated)
    steps = reindex(api)

    assert [step["changed_meanwhile"] for step in steps] == [[], ["OLD"]]
    assert api.found("teapot") == ["OLD"] and api.found("retired") == ["OLD"]


def test_a_rebuild_is_the_admins_and_refuses_a_token_it_did_not_issue(api: SearchApi) -> None:
    create(api, "MUG-STONE", "Stoneware mug")
    create(api, "BOWL", "Serving bowl")
    listing = api.request("GET", "/admin/stock?limit=1", token=api.admin)
    assert isinstance(listing.body, dict) and listing.body["next_token"]
    borrowed = quote(str(listing.body["next_token"]))  # a listing's token is not a reindex's
    _put_term(api, "GONE", "gone")  # what a rebuild would delete
    before = api.tables_with_index()

    assert_problem(api.request("POST", "/admin/search/reindex"), 401)
    assert_problem(api.request("POST", "/admin/search/reindex", token=api.customer), 403)
    for token in ("x", "eyJzdGFnZSI6InBydW5lIn0", "a" * 2049, borrowed):
        assert_problem(api.request("POST", f"/admin/search/reindex?next_token={token}", token=api.admin), 400)
    assert api.tables_with_index() == before
