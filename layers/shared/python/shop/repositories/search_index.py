"""The product search index (SearchIndexTable): one item per (term, active product), in DynamoDB.

Key: ``pk`` is the term's first character, ``sk`` is ``<term>#<sku>``. Every term beginning with
a word is then one Query, ``pk = word[0] AND begins_with(sk, word)``, that reads exactly the
items of those terms, for a word of any length (a two-character ``pk`` would need a Query per
possible second character for a one-letter word). An item carries the term, the SKU, the fields
the term occurs in (bits, ``shop.domain.search``) and the product's category, so a search ranks
and filters by category from the index alone and reads only the products of the page it answers.

Only active products have items. The catalog repository writes the actions built here in the same
TransactWriteItems as the product item (create, change, deactivate), so the index never disagrees
with a committed product: a renamed product's old terms are gone in the same instant. Stock
writes (StockTable) never touch it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shop.config import table_settings
from shop.errors import TransientError
from shop.repositories.dynamodb import call


@dataclass(frozen=True)
class IndexHit:
    """An index item: a product's term, the fields it occurs in, and the product's category."""

    sku: str
    term: str
    fields: int
    category: str


def _key(term: str, sku: str) -> dict[str, Any]:
    return {"pk": {"S": term[:1]}, "sk": {"S": f"{term}#{sku}"}}


def _put(sku: str, term: str, fields: int, category: str) -> dict[str, Any]:
    return {
        "Put": {
            "TableName": table_settings().search_index_table,
            "Item": {
                **_key(term, sku),
                "sku": {"S": sku},
                "term": {"S": term},
                "fields": {"N": str(fields)},
                "category": {"S": category},
            },
        }
    }


def _delete(sku: str, term: str) -> dict[str, Any]:
    return {"Delete": {"TableName": table_settings().search_index_table, "Key": _key(term, sku)}}


def changes(
    sku: str,
    before: Mapping[str, int],
    before_category: str,
    after: Mapping[str, int],
    after_category: str,
) -> list[dict[str, Any]]:
    """The transaction actions that take a product's index items from ``before`` to ``after``.

    ``before``/``after`` map each indexed term to its fields (empty for an inactive product).
    Terms gone are deleted; new terms, and terms whose fields or category changed, are put; the
    rest is left alone. Puts and deletes are unconditional, so applying them twice is harmless.
    """
    actions = [_delete(sku, term) for term in before if term not in after]
    category_changed = before_category != after_category
    actions += [
        _put(sku, term, fields, after_category)
        for term, fields in after.items()
        if category_changed or before.get(term) != fields
    ]
    return actions


def _hit(item: Mapping[str, Any]) -> IndexHit:
    return IndexHit(
        sku=item["sku"]["S"],
        term=item["term"]["S"],
        fields=int(item["fields"]["N"]),
        category=item["category"]["S"],
    )


def hits(prefix: str, at_most: int) -> list[IndexHit]:
    """The index items of terms beginning with ``prefix`` (non-empty), strongly consistent, every
    one of them if there are at most ``at_most``; otherwise ``at_most + 1`` of them, which tells the
    caller there are more without reading them.

    Strongly consistent so a search right after an admin's change already sees it (the index is a
    table, not a GSI, so it can be). Reads every page up to that bound: the ranking needs every
    candidate.
    """
    if not prefix:
        raise ValueError("a search prefix is never empty")
    request: dict[str, Any] = {
        "TableName": table_settings().search_index_table,
        "KeyConditionExpression": "pk = :first AND begins_with(sk, :prefix)",
        "ExpressionAttributeValues": {":first": {"S": prefix[:1]}, ":prefix": {"S": prefix}},
        "ConsistentRead": True,
    }
    found: list[IndexHit] = []
    while True:
        response = call("query", busy=TransientError, Limit=at_most + 1 - len(found), **request)
        found += [_hit(item) for item in response.get("Items", [])]
        if len(found) > at_most or not response.get("LastEvaluatedKey"):
            return found
        request["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def scan_page(limit: int, start_key: Mapping[str, Any] | None) -> tuple[list[IndexHit], dict[str, Any] | None]:
    """One page of every index item (strongly consistent), in no order; for rebuilding the index."""
    request: dict[str, Any] = {
        "TableName": table_settings().search_index_table,
        "Limit": limit,
        "ConsistentRead": True,
    }
    if start_key:
        request["ExclusiveStartKey"] = dict(start_key)
    response = call("scan", busy=TransientError, **request)
    return [_hit(item) for item in response.get("Items", [])], response.get("LastEvaluatedKey")
