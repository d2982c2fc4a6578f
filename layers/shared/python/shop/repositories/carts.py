"""Carts in DynamoDB (CartsTable): one item per cart, each write conditional on its ``version``.

A change reads the cart, decides the new lines (``shop.domain.carts``) and puts the whole item
back only if ``version`` is still the one read (or, for a new cart, if there is none): two tabs
editing one cart serialize, the loser reads again and re-applies its change. A merge writes the
customer's cart and the anonymous one, emptied, in one transaction, each conditional on its version.
No cart is ever deleted here (TTL does that): a cart recreated at the version it started at would
take a stale tab's write made from that version read before. (A cart TTL purged starts again at its
clock's version, above any the purged one reached: ``shop.domain.carts.first_version``.)
Reads return an expired item as it is (TTL deletes lazily); the domain judges ``expires_at``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from botocore.exceptions import ClientError
from pydantic import ValidationError

from shop.config import table_settings
from shop.errors import CartContention, StoredItemUnusable, TransientError
from shop.models.carts import StoredCart
from shop.repositories.dynamodb import (
    call,
    cancellation_codes,
    error_code,
    is_condition_failure,
    marshal,
    unmarshal_plain,
)


class CartVersionConflict(Exception):
    """The cart changed (or appeared, or vanished) since it was read; read it again and re-decide."""


def to_cart(item: Mapping[str, Any]) -> StoredCart:
    """The stored cart; StoredItemUnusable for an item that is not one (written behind the shop's back,
    or by a version this one cannot read): retrying cannot help, and its caller decides what that costs."""
    try:
        return StoredCart.model_validate(unmarshal_plain(item))
    except ValidationError as error:
        cart_id = item.get("cart_id", {}).get("S", "?")
        raise StoredItemUnusable(
            f"cart {cart_id} cannot be read ({error.error_count()} invalid fields); DELETE /cart empties it"
        ) from error


def _key(cart_id: str) -> dict[str, Any]:
    return {"cart_id": {"S": cart_id}}


def _condition(expected_version: int | str | None) -> dict[str, Any]:
    """The cart is as it was read: absent (``None``), or still at ``expected_version`` (a number, or
    the text of one as DynamoDB stored it)."""
    if expected_version is None:
        return {"ConditionExpression": "attribute_not_exists(cart_id)"}
    return {
        "ConditionExpression": "#version = :expected",
        "ExpressionAttributeNames": {"#version": "version"},
        "ExpressionAttributeValues": {":expected": {"N": str(expected_version)}},
    }


def get(cart_id: str, *, busy: type[TransientError] = CartContention) -> StoredCart | None:
    """The stored cart, expired or not (strongly consistent); None if there is none."""
    response = call(
        "get_item", busy=busy, TableName=table_settings().carts_table, Key=_key(cart_id), ConsistentRead=True
    )
    item = response.get("Item")
    return to_cart(item) if item else None


def put(cart: StoredCart, *, expected_version: int | None, busy: type[TransientError] = CartContention) -> None:
    """Store ``cart`` whole if the stored one is still at ``expected_version`` (None: if there is none);
    else CartVersionConflict."""
    _put_if(cart, _condition(expected_version), busy)


def _put_if(cart: StoredCart, condition: dict[str, Any], busy: type[TransientError]) -> None:
    try:
        call(
            "put_item",
            busy=busy,
            TableName=table_settings().carts_table,
            Item=marshal(cart.model_dump(mode="json")),
            **condition,
        )
    except ClientError as error:
        if is_condition_failure(error):
            raise CartVersionConflict(cart.cart_id) from error
        raise


class UnreadableCart(NamedTuple):
    """A cart item ``to_cart`` refused, and its stored version when that is a number (as DynamoDB
    wrote it: it may be negative or have a fraction)."""

    cart_id: str
    version: str | None

    def next_version(self, *, when_unknown: int) -> int:
        """A version above the stored one (``when_unknown`` when there is none that is a number)."""
        return max(math.floor(Decimal(self.version)), 0) + 1 if self.version is not None else when_unknown


def unreadable_version(cart_id: str) -> UnreadableCart | None:
    """For a cart ``to_cart`` refused: its stored ``version`` when that is a number (else None), to
    replace it with ``replace_unreadable``; None when there is no item any more."""
    response = call(
        "get_item",
        busy=CartContention,
        TableName=table_settings().carts_table,
        Key=_key(cart_id),
        ConsistentRead=True,
        ProjectionExpression="#version",
        ExpressionAttributeNames={"#version": "version"},
    )
    item = response.get("Item")
    if item is None:
        return None
    return UnreadableCart(cart_id, item.get("version", {}).get("N"))


def replace_unreadable(unreadable: UnreadableCart, cart: StoredCart) -> None:
    """Put ``cart`` over the unreadable item if its version is still the one read (a number, or none
    that is one), else CartVersionConflict."""
    if unreadable.version is not None:
        condition = _condition(unreadable.version)
    else:
        condition = {
            "ConditionExpression": "attribute_exists(cart_id) AND "
            "(attribute_not_exists(#version) OR NOT attribute_type(#version, :number))",
            "ExpressionAttributeNames": {"#version": "version"},
            "ExpressionAttributeValues": {":number": {"S": "N"}},
        }
    _put_if(cart, condition, CartContention)


def _put_action(table: str, cart: StoredCart, expected_version: int | None) -> dict[str, Any]:
    return {"Put": {"TableName": table, "Item": marshal(cart.model_dump(mode="json")), **_condition(expected_version)}}


def merge(
    into: StoredCart, *, expected_version: int | None, emptied: StoredCart, emptied_expected_version: int
) -> None:
    """Store ``into`` and ``emptied`` (the anonymous cart with no lines, its version moved on) in one
    transaction: both must still be as they were read (``into`` at ``expected_version``, the anonymous
    cart at ``emptied_expected_version``), else CartVersionConflict."""
    table = table_settings().carts_table
    try:
        call(
            "transact_write_items",
            busy=CartContention,
            TransactItems=[
                _put_action(table, into, expected_version),
                _put_action(table, emptied, emptied_expected_version),
            ],
        )
    except ClientError as error:
        if error_code(error) != "TransactionCanceledException":
            raise
        if "ConditionalCheckFailed" in cancellation_codes(error):
            raise CartVersionConflict(into.cart_id) from error
        raise CartContention("the carts are busy; retry") from error
