"""Product search over real sockets against the running local stack (its demo catalog included).

Other tests share this stack and its catalog, so the products made here carry a word of their own
(``tag``) and every search names it.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import requests

from tests.http.conftest import RunningStack

PROBLEM = "application/problem+json"


@pytest.fixture
def tag() -> str:
    return f"srch{secrets.token_hex(4)}"


def create(stack: RunningStack, sku: str, name: str, description: str, category: str) -> None:
    response = requests.post(
        stack.url("/products"),
        headers=stack.auth("admin"),
        json={
            "sku": sku,
            "name": name,
            "description": description,
            "category": category,
            "price": {"amount": 900},
            "stock": 4,
        },
        timeout=10,
    )
    assert response.status_code == 201, response.text


def search(stack: RunningStack, **params: str) -> requests.Response:
    return requests.get(stack.url("/products"), params=params, timeout=10)


def skus(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return [item["sku"] for item in body["items"]]


def test_the_demo_catalog_is_searchable(stack: RunningStack) -> None:
    assert "MUG-STONE-350" in skus(search(stack, q="ston mu"))
    assert "BOOK-DDIA" in skus(search(stack, q="DATA intensive", category="books"))


def test_accents_prefixes_ranking_categories_and_renames(stack: RunningStack, tag: str) -> None:
    upper = tag.upper()
    create(stack, f"{upper}-A", f"Grès {tag} bowl", "Hand thrown.", "kitchen")
    create(stack, f"{upper}-B", "Serving platter", f"Matches the gres {tag} bowl.", "kitchen")
    create(stack, f"{upper}-C", f"Crème {tag} brûlée dish", "Oven safe.", "bakeware")

    # The name's match ranks above the description's; the accent and the case do not matter.
    assert skus(search(stack, q=f"GRÈS {upper[:-2]}")) == [f"{upper}-A", f"{upper}-B"]
    assert skus(search(stack, q=f"{tag} creme brul")) == [f"{upper}-C"]
    assert skus(search(stack, q=tag, category="bakeware")) == [f"{upper}-C"]

    renamed = requests.patch(
        stack.url(f"/products/{upper}-A"), headers=stack.auth("admin"), json={"name": f"Porcelain {tag}"}, timeout=10
    )
    assert renamed.status_code == 200, renamed.text
    assert skus(search(stack, q=f"gres {tag}")) == [f"{upper}-B"]
    assert skus(search(stack, q=f"porcelain {tag}")) == [f"{upper}-A"]

    off = requests.patch(
        stack.url(f"/products/{upper}-C"), headers=stack.auth("admin"), json={"active": False}, timeout=10
    )
    assert off.status_code == 200, off.text
    assert skus(search(stack, q=tag)) == [f"{upper}-A", f"{upper}-B"]


def test_search_pages_and_revalidates(stack: RunningStack, tag: str) -> None:
    upper = tag.upper()
    for number in range(3):
        create(stack, f"{upper}-{number}", f"Lantern {tag}", "", "outdoor")
    first = search(stack, q=tag, limit="2")
    token = first.json()["next_token"]
    assert skus(first) == [f"{upper}-0", f"{upper}-1"] and token
    second = search(stack, q=tag, limit="2", next_token=token)
    assert skus(second) == [f"{upper}-2"] and second.json()["next_token"] is None

    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "public, max-age=30"
    cached = requests.get(
        stack.url("/products"), params={"q": tag, "limit": "2"}, headers={"If-None-Match": etag}, timeout=10
    )
    assert cached.status_code == 304 and cached.content == b""


@pytest.mark.parametrize(
    ("q", "status", "problem"),
    [
        ("", 400, "validation-error"),
        ("x" * 101, 400, "validation-error"),
        ("one two three four five six seven eight nine", 422, "search-too-many-words"),
    ],
)
def test_bad_searches_are_problems(stack: RunningStack, q: str, status: int, problem: str) -> None:
    response = search(stack, q=q)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == f"urn:shop:problem:{problem}"
    assert {error["field"] for error in body["errors"]} == {"q"}
