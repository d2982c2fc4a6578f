"""Products (ProductsTable), their stock (StockTable) and the stock ledger (StockLedgerTable), in DynamoDB.

A product item carries the listing attributes ``listing`` ("ACTIVE") and ``listing_category``
only while it is active, so the sparse indexes ActiveProducts and ActiveProductsByCategory hold
exactly the listable products, ordered by SKU. ``version`` is bumped by every writer of the item.
The stock is not on the product item: a sale would rewrite it and both index copies. It is the
sum of the SKU's ``stock_shards`` counters in StockTable (``shop.repositories.stock``), which the
inventory service writes; reads here add it up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from shop.config import table_settings
from shop.errors import ProductAlreadyExists, TransientError
from shop.models.catalog import Product, ProductInfo, StockLedgerEntry
from shop.models.inventory import total_available, units_by_shard
from shop.models.money import Money
from shop.repositories import stock
from shop.repositories.dynamodb import (
    batch_get,
    call,
    cancellation_codes,
    error_code,
    is_condition_failure,
    listable,
    marshal,
    serialize,
    unmarshal,
)

LISTING_ACTIVE = "ACTIVE"
ACTIVE_PRODUCTS = "ActiveProducts"
ACTIVE_PRODUCTS_BY_CATEGORY = "ActiveProductsByCategory"


_T = TypeVar("_T")


class ConditionFailed(Exception):
    """A conditional write found the item changed or missing, or a transaction met another writing
    the same item (TransactionConflict: a sale taking from the counter being restocked); the caller
    re-reads and decides again. Before, a conflict answered the operator 503 at once."""


class WriteConflict(ConditionFailed):
    """The transaction met another one writing the same item at that moment (TransactionConflict)."""


def _call(operation: str, **request: Any) -> Any:
    """One catalog request: a failed condition or a conflict, alone or in a transaction, is ConditionFailed."""
    try:
        return call(operation, busy=TransientError, **request)
    except ClientError as error:
        if is_condition_failure(error):
            raise ConditionFailed(error_code(error)) from error
        if error_code(error) == "TransactionCanceledException":
            codes = cancellation_codes(error)
            if "ConditionalCheckFailed" in codes:
                raise ConditionFailed(", ".join(codes)) from error
            if "TransactionConflict" in codes:
                raise WriteConflict(", ".join(codes)) from error
            raise TransientError("the catalog is busy; retry") from error
        raise


def _int(value: Any) -> int:
    if not isinstance(value, Decimal) or value != value.to_integral_value():
        raise ValueError(f"expected an integral number, got {value!r}")
    return int(value)


# What a product item written without these attributes reads as (items of the shop's first
# versions). A write conditioned on the value read accepts the attribute's absence for it too:
# "= :value" alone never matches a missing attribute, and every PATCH of such an item failed.
READ_DEFAULTS: dict[str, Any] = {"description": "", "stock_shards": 1, "version": 0}


def unchanged_condition(name: str, value: str, attribute: str, read: Any) -> str:
    """The condition that ``attribute`` (``name``, its placeholder; ``value``, its value's) is still ``read``."""
    if attribute in READ_DEFAULTS and read == READ_DEFAULTS[attribute]:
        return f"(attribute_not_exists({name}) OR {name} = {value})"
    return f"{name} = {value}"


def to_product_info(item: Mapping[str, Any]) -> ProductInfo:
    """The product (without its stock) from a low-level (typed) DynamoDB item."""
    plain = unmarshal(item)
    return ProductInfo(
        sku=plain["sku"],
        name=plain["name"],
        description=plain.get("description", READ_DEFAULTS["description"]),
        category=plain["category"],
        price=Money(amount=_int(plain["price_amount"]), currency=plain["price_currency"]),
        active=bool(plain["active"]),
        purchase_limit=_int(plain["purchase_limit"]) if "purchase_limit" in plain else None,
        stock_shards=_int(plain.get("stock_shards", Decimal(READ_DEFAULTS["stock_shards"]))),
        created_at=plain["created_at"],
        updated_at=plain["updated_at"],
    )


def _listable(items: Iterable[Mapping[str, Any]]) -> list[ProductInfo]:
    """The products of a listing's (or a batch read's) items; one that is not a product is left out
    (``listable``), so it never takes the storefront down, and nobody can buy it (an unknown SKU)."""
    return listable(items, to_product_info, key="sku")


def with_stock(infos: Iterable[ProductInfo], *, consistent: bool) -> list[Product]:
    """The products with ``available`` added up from their shards (one BatchGetItem per 100 shards)."""
    listed = list(infos)
    available = stock.totals({info.sku: info.stock_shards for info in listed}, consistent=consistent)
    return [Product.of(info, available[info.sku]) for info in listed]


def product_item(product: Product) -> dict[str, Any]:
    """The stored item of a new product (version 1, listing attributes while active)."""
    item: dict[str, Any] = {
        "sku": product.sku,
        "name": product.name,
        "description": product.description,
        "category": product.category,
        "price_amount": product.price.amount,
        "price_currency": product.price.currency,
        # What the product was created with: the reconciliation job's stock equation starts here.
        "initial_stock": product.available,
        "stock_shards": product.stock_shards,
        "active": product.active,
        "created_at": product.created_at,
        "updated_at": product.updated_at,
        "version": 1,
    }
    if product.purchase_limit is not None:
        item["purchase_limit"] = product.purchase_limit
    if product.active:
        item["listing"] = LISTING_ACTIVE
        item["listing_category"] = product.category
    return marshal(item)


def insert_product(product: Product, *, index_actions: list[dict[str, Any]]) -> None:
    """Store a new product, its stock (all of it on shard 0) and its search index items
    (``shop.repositories.search_index``) in one transaction; ProductAlreadyExists (409) if the SKU is taken."""
    if product.stock_shards != 1:
        raise ValueError("a new product starts with one stock shard")
    try:
        _call(
            "transact_write_items",
            TransactItems=[
                {
                    "Put": {
                        "TableName": table_settings().products_table,
                        "Item": product_item(product),
                        "ConditionExpression": "attribute_not_exists(sku)",
                    }
                },
                stock.create(product.sku, 0, product.available),
                *index_actions,
            ],
        )
    except WriteConflict:
        raise TransientError(f"product {product.sku} is being written by another request; retry") from None
    except ConditionFailed:
        raise ProductAlreadyExists(f"a product with SKU {product.sku} already exists") from None


def get_product_info(sku: str) -> ProductInfo | None:
    read = get_product_info_and_version(sku)
    return read[0] if read else None


def get_product_info_and_version(sku: str) -> tuple[ProductInfo, int] | None:
    """The product and its item's ``version`` (which every writer of the item bumps), strongly consistent."""
    response = _call(
        "get_item",
        TableName=table_settings().products_table,
        Key={"sku": {"S": sku}},
        ConsistentRead=True,
    )
    item = response.get("Item")
    if not item:
        return None
    return _with_version(item)


def get_product(sku: str) -> Product | None:
    info = get_product_info(sku)
    if info is None:
        return None
    return Product.of(info, total_available(units_by_shard(stock_shards(sku))))


def stock_shards(sku: str) -> dict[int, stock.Shard]:
    """The SKU's stock counters as they stand, by shard number."""
    return stock.shards(sku)


def get_products(skus: Iterable[str]) -> dict[str, Product]:
    """Every existing product among ``skus`` (active or not) with its stock, by SKU; strongly consistent."""
    return {product.sku: product for product in with_stock(get_product_infos(skus).values(), consistent=True)}


def get_product_infos(skus: Iterable[str]) -> dict[str, ProductInfo]:
    """Every existing product among ``skus`` (active or not) without its stock, by SKU; strongly consistent."""
    return {sku: info for sku, (info, _) in get_product_infos_and_versions(skus).items()}


def _with_version(item: Mapping[str, Any]) -> tuple[ProductInfo, int]:
    return to_product_info(item), int(item.get("version", {"N": str(READ_DEFAULTS["version"])})["N"])


def get_product_infos_and_versions(skus: Iterable[str]) -> dict[str, tuple[ProductInfo, int]]:
    """Every existing product among ``skus`` with its item's ``version``, by SKU; strongly consistent."""
    wanted = list(dict.fromkeys(skus))  # BatchGetItem rejects duplicate keys
    items = batch_get(table_settings().products_table, [{"sku": {"S": sku}} for sku in wanted], busy=TransientError)
    return {product.sku: (product, version) for product, version in listable(items, _with_version, key="sku")}


def _listing_key(category: str | None, sku: str) -> dict[str, Any]:
    if category is None:
        return {"listing": {"S": LISTING_ACTIVE}, "sku": {"S": sku}}
    return {"listing_category": {"S": category}, "sku": {"S": sku}}


def query_active(
    category: str | None, limit: int, start_key: Mapping[str, Any] | None
) -> tuple[list[Product], dict[str, Any] | None]:
    """One page of active products by SKU, and the key to continue after (None on the last page).

    One extra item is read so the last page says so, instead of handing out a token that only
    leads to an empty page. The page's stock is read eventually consistent, as the index is.
    """
    request: dict[str, Any] = {
        "TableName": table_settings().products_table,
        "Limit": limit + 1,
    }
    if category is None:
        request["IndexName"] = ACTIVE_PRODUCTS
        request["KeyConditionExpression"] = "listing = :value"
        request["ExpressionAttributeValues"] = {":value": {"S": LISTING_ACTIVE}}
    else:
        request["IndexName"] = ACTIVE_PRODUCTS_BY_CATEGORY
        request["KeyConditionExpression"] = "listing_category = :value"
        request["ExpressionAttributeValues"] = {":value": {"S": category}}
    if start_key:
        request["ExclusiveStartKey"] = dict(start_key)
    response = _call("query", **request)
    items = response.get("Items", [])
    if len(items) > limit:
        items = items[:limit]
        return with_stock(_listable(items), consistent=False), _listing_key(category, items[-1]["sku"]["S"])
    # Fewer than asked but a key: DynamoDB stopped at its 1 MB page size, so continue from there.
    return with_stock(_listable(items), consistent=False), response.get("LastEvaluatedKey")


def scan_products(limit: int, start_key: Mapping[str, Any] | None) -> tuple[list[Product], dict[str, Any] | None]:
    """One page of every product, active or not (no index holds the inactive ones), in no order."""
    request: dict[str, Any] = {"TableName": table_settings().products_table, "Limit": limit}
    if start_key:
        request["ExclusiveStartKey"] = dict(start_key)
    response = _call("scan", **request)
    return with_stock(_listable(response.get("Items", [])), consistent=True), response.get("LastEvaluatedKey")


def scan_product_infos(
    limit: int, start_key: Mapping[str, Any] | None
) -> tuple[list[ProductInfo], dict[str, Any] | None]:
    """One page of every product without its stock, active or not (strongly consistent), in no order."""
    request: dict[str, Any] = {"TableName": table_settings().products_table, "Limit": limit, "ConsistentRead": True}
    if start_key:
        request["ExclusiveStartKey"] = dict(start_key)
    response = _call("scan", **request)
    return _listable(response.get("Items", [])), response.get("LastEvaluatedKey")


# What a product's search terms are made of: a write of its index items holds while these are as read.
INDEXED_ATTRIBUTES = ("name", "description", "category", "active")


def indexed_values(product: ProductInfo) -> dict[str, Any]:
    """The product's attributes its search terms come from, as read."""
    return {attribute: getattr(product, attribute) for attribute in INDEXED_ATTRIBUTES}


def _expected(expect: Mapping[str, Any]) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """The conditions that each attribute of ``expect`` still has its value, with their names and values."""
    conditions, names, values = [], {}, {}
    for index, (attribute, value) in enumerate(expect.items()):
        names[f"#e{index}"] = attribute
        values[f":e{index}"] = serialize(value)
        conditions.append(unchanged_condition(f"#e{index}", f":e{index}", attribute, value))
    return conditions, names, values


def write_index_while_unchanged(sku: str, product: ProductInfo | None, index_actions: list[dict[str, Any]]) -> None:
    """Apply search index actions (``shop.repositories.search_index``) in one transaction that holds
    only while what the product's terms come from is as read (``product``; None: while there is no
    such product). A price or stock change meanwhile does not matter: it leaves the terms as they were.

    ConditionFailed if the product changed meanwhile (its own write kept its index in step then).
    """
    check: dict[str, Any] = {"TableName": table_settings().products_table, "Key": {"sku": {"S": sku}}}
    if product is None:
        check.update(ConditionExpression="attribute_not_exists(#sku)", ExpressionAttributeNames={"#sku": "sku"})
    else:
        conditions, names, values = _expected(indexed_values(product))
        check.update(
            ConditionExpression=" AND ".join(["attribute_exists(#sku)", *conditions]),
            ExpressionAttributeNames={"#sku": "sku", **names},
            ExpressionAttributeValues=values,
        )
    _call("transact_write_items", TransactItems=[{"ConditionCheck": check}, *index_actions])


def _product_update(
    sku: str, *, set_values: Mapping[str, Any], remove: Iterable[str], expect: Mapping[str, Any]
) -> dict[str, Any]:
    """The UpdateItem parameters that set and remove attributes if ``expect`` still holds; bumps ``version``."""
    names: dict[str, str] = {"#sku": "sku", "#version": "version"}
    values: dict[str, Any] = {":one": {"N": "1"}}
    assignments = []
    for index, (attribute, value) in enumerate(set_values.items()):
        names[f"#s{index}"] = attribute
        values[f":s{index}"] = serialize(value)
        assignments.append(f"#s{index} = :s{index}")
    removals = []
    for index, attribute in enumerate(remove):
        names[f"#r{index}"] = attribute
        removals.append(f"#r{index}")
    expected, expected_names, expected_values = _expected(expect)
    conditions = ["attribute_exists(#sku)", *expected]
    names.update(expected_names)
    values.update(expected_values)
    expression = "ADD #version :one"
    if assignments:
        expression = f"SET {', '.join(assignments)} {expression}"
    if removals:
        expression = f"{expression} REMOVE {', '.join(removals)}"
    return {
        "TableName": table_settings().products_table,
        "Key": {"sku": {"S": sku}},
        "UpdateExpression": expression,
        "ConditionExpression": " AND ".join(conditions),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def update_product(
    sku: str,
    *,
    set_values: Mapping[str, Any],
    remove: Iterable[str],
    expect: Mapping[str, Any],
    index_actions: list[dict[str, Any]],
) -> None:
    """Set and remove attributes of an existing product if it still has the ``expect`` values, and
    apply the search index's actions (``shop.repositories.search_index``) in the same transaction.

    Raises ConditionFailed if the product is gone or one of ``expect`` changed meanwhile (nothing
    is written then). Bumps ``version``.
    """
    update = _product_update(sku, set_values=set_values, remove=remove, expect=expect)
    if not index_actions:
        _call("update_item", **update)
        return
    _call("transact_write_items", TransactItems=[{"Update": update}, *index_actions])


def update_product_and_stock(
    sku: str,
    *,
    set_values: Mapping[str, Any],
    remove: Iterable[str],
    expect: Mapping[str, Any],
    stock_actions: list[dict[str, Any]],
    index_actions: list[dict[str, Any]],
) -> None:
    """``update_product`` and the stock shards' actions (``shop.repositories.stock``) in one transaction.

    A reshard: the product's ``stock_shards`` changes with the counters, and ``expect`` holds the
    product's ``version`` as read before the counters: a concurrent sale (which changes a counter's
    version) or another reshard or adjustment (which changes the product's) cancels it.
    ConditionFailed then.
    """
    _call(
        "transact_write_items",
        TransactItems=[
            {"Update": _product_update(sku, set_values=set_values, remove=remove, expect=expect)},
            *stock_actions,
            *index_actions,
        ],
    )


def record_stock_adjustment(
    entry: StockLedgerEntry,
    *,
    stock_shards: int,
    stock_actions: list[dict[str, Any]],
    updated_at: str,
    version: int,
) -> None:
    """Apply the adjustment's shard actions and write the ledger entry, atomically.

    The product must exist (its ``updated_at`` is set) at the ``version`` read, so with the
    ``stock_shards`` the actions were planned on (a reshard since moved the units) and no other
    adjustment since (each judged the maximum, and wrote the ledger's ``available``, from the total
    it read), and every shard action's condition hold; otherwise ConditionFailed and nothing is
    written. Sales never write the product item: a restock does not wait for a sale.
    """
    tables = table_settings()
    # An item written before items had a version has none: it reads as version 0.
    unchanged = "#version = :version" if version else "attribute_not_exists(#version)"
    same_shards = unchanged_condition("#stock_shards", ":shards", "stock_shards", stock_shards)
    values = {":version": {"N": str(version)}} if version else {}
    _call(
        "transact_write_items",
        TransactItems=[
            {
                "Update": {
                    "TableName": tables.products_table,
                    "Key": {"sku": {"S": entry.sku}},
                    "UpdateExpression": "SET #updated_at = :at ADD #version :one",
                    "ConditionExpression": f"attribute_exists(#sku) AND {same_shards} AND {unchanged}",
                    "ExpressionAttributeNames": {
                        "#sku": "sku",
                        "#updated_at": "updated_at",
                        "#version": "version",
                        "#stock_shards": "stock_shards",
                    },
                    "ExpressionAttributeValues": {
                        ":at": {"S": updated_at},
                        ":one": {"N": "1"},
                        ":shards": {"N": str(stock_shards)},
                        **values,
                    },
                }
            },
            *stock_actions,
            {
                "Put": {
                    "TableName": tables.stock_ledger_table,
                    "Item": marshal(entry.model_dump(mode="python")),
                    "ConditionExpression": "attribute_not_exists(entry_id)",
                }
            },
        ],
    )


def stock_ledger(sku: str) -> list[StockLedgerEntry]:
    """Every ledger entry of a product, oldest first."""
    entries: list[StockLedgerEntry] = []
    request: dict[str, Any] = {
        "TableName": table_settings().stock_ledger_table,
        "KeyConditionExpression": "sku = :sku",
        "ExpressionAttributeValues": {":sku": {"S": sku}},
        "ConsistentRead": True,
    }
    while True:
        response = _call("query", **request)
        for item in response.get("Items", []):
            plain = unmarshal(item)
            plain["delta"], plain["available"] = _int(plain["delta"]), _int(plain["available"])
            entries.append(StockLedgerEntry.model_validate(plain))
        if not response.get("LastEvaluatedKey"):
            return entries
        request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
