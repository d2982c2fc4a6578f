"""Conditional catalog reads over real sockets: what a browser or a CDN in front of the API sees."""

from __future__ import annotations

import requests

from tests.http.conftest import RunningStack
from tests.http.test_checkout_http import create_product


def test_a_product_revalidates_to_a_bodiless_304_until_it_changes(stack: RunningStack) -> None:
    sku = create_product(stack, stock=10)
    first = requests.get(stack.url(f"/products/{sku}"), timeout=10)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and first.headers["Cache-Control"] == "public, max-age=30"

    same = requests.get(stack.url(f"/products/{sku}"), headers={"If-None-Match": etag}, timeout=10)
    assert same.status_code == 304
    assert same.content == b""
    assert (same.headers["ETag"], same.headers["Cache-Control"]) == (etag, "public, max-age=30")

    patched = requests.patch(
        stack.url(f"/products/{sku}"), headers=stack.auth("admin"), json={"name": "Renamed"}, timeout=10
    )
    assert patched.status_code == 200, patched.text
    changed = requests.get(stack.url(f"/products/{sku}"), headers={"If-None-Match": etag}, timeout=10)
    assert changed.status_code == 200 and changed.json()["name"] == "Renamed"
    assert changed.headers["ETag"] != etag
