"""The README's "HTTP API" table names every route the app serves, and only those.

A clone's reader learns the API from the README and openapi.json (which test_openapi_document.py keeps
equal to the served document); a route added without a line here, or a line left after its route went,
fails this test.
"""

from __future__ import annotations

import re
from pathlib import Path

from app import api_document

README = Path(__file__).resolve().parents[2] / "README.md"
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_ROUTE = re.compile(rf"`(?:({'|'.join(_METHODS)}) )?(/[^`?\s]*)(?:\?[^`]*)?`")


def _api_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## HTTP API\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def readme_routes() -> set[tuple[str, str]]:
    """(method, path) of each route in the table's first column; a bare path takes the method before it."""
    routes: set[tuple[str, str]] = set()
    for line in _api_section().splitlines():
        if not line.startswith("| `"):
            continue
        first_column = line.split(" | ")[0]
        method = ""
        for named_method, path in _ROUTE.findall(first_column):
            method = named_method or method
            assert method, f"a path without a method before it: {first_column}"
            routes.add((method, path))
    return routes


def served_routes() -> set[tuple[str, str]]:
    # The document's operations: the routes declared with http.route (not the 405 answers http.install adds).
    paths = api_document()["paths"]
    return {(method.upper(), path) for path, operations in paths.items() for method in operations}


def test_the_readme_lists_every_route_the_app_serves() -> None:
    assert served_routes() - readme_routes() == set()


def test_the_readme_lists_no_route_the_app_does_not_serve() -> None:
    assert readme_routes() - served_routes() == set()


def test_a_route_in_a_cell_with_others_takes_the_method_named_before_it() -> None:
    # The admin row names several GET paths after one method; the parser must not drop them.
    assert ("GET", "/admin/reconciliation") in readme_routes()
    assert ("POST", "/admin/dead-letters/{order_id}/redrive") in readme_routes()
