"""Opaque, signed pagination tokens (the query-string types every listing shares are pure models:
``shop.models.common.PageLimit`` and ``NextToken``).

A ``next_token`` carries DynamoDB's ``LastEvaluatedKey`` for one listing and the query it was
issued for, signed with the key in Secrets Manager (``PAGINATION_SECRET_ARN``; ``shop.signing``, one
salt per listing). A token that was altered, forged, issued by another listing or for other query
parameters is a 400, so a client can never steer a Query to a key it did not get from us.

Usage (a repository's Query page)::

    start = decode_token("orders", query.next_token, {"customer": principal.subject})
    ...Query(..., ExclusiveStartKey=start) if start else Query(...)
    next_token = encode_token("orders", response.get("LastEvaluatedKey"), {"customer": principal.subject})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError

from shop import signing
from shop.errors import FieldError

TOKEN_FIELD = "next_token"

QueryBinding = Mapping[str, str | int | None]

# A LastEvaluatedKey in the low-level client's shape: {"sku": {"S": "..."}, ...}.
_StartKey: TypeAdapter[dict[str, dict[Literal["S", "N"], str]]] = TypeAdapter(dict[str, dict[Literal["S", "N"], str]])


def _purpose(listing: str) -> str:
    return f"pagination.{listing}"


def _invalid(message: str) -> FieldError:
    return FieldError("the pagination token is not valid", [{"field": TOKEN_FIELD, "message": message}])


def encode_token(listing: str, last_key: Mapping[str, Any] | None, bound_to: QueryBinding) -> str | None:
    """The ``next_token`` for a page, or None when DynamoDB reported no further key."""
    if not last_key:
        return None
    return signing.serializer(_purpose(listing)).dumps({"k": dict(last_key), "q": dict(bound_to)})


def _bound_payload(listing: str, token: str, bound_to: QueryBinding) -> Any:
    """What a token carries, once its signature and its query are checked; FieldError (400) if either fails."""
    payload = signing.load(_purpose(listing), token, _invalid("was altered or was not issued by this listing"))
    if not isinstance(payload, dict) or payload.get("q") != dict(bound_to):
        raise _invalid("belongs to a different query; repeat the query parameters of the first page")
    return payload.get("k")


def decode_token(listing: str, token: str | None, bound_to: QueryBinding) -> dict[str, Any] | None:
    """The ``ExclusiveStartKey`` a token stands for (None without a token); FieldError (400) if invalid."""
    if token is None:
        return None
    try:
        key = _StartKey.validate_python(_bound_payload(listing, token, bound_to))
    except ValidationError:
        raise _invalid("is malformed") from None
    if not key:
        raise _invalid("is malformed")
    return dict(key)


def encode_position(listing: str, position: BaseModel | None, bound_to: QueryBinding) -> str | None:
    """The ``next_token`` of a listing whose place is not a DynamoDB key (one computed in memory, e.g. a
    search's last result), or None on the last page."""
    if position is None:
        return None
    return encode_token(listing, position.model_dump(mode="json"), bound_to)


def decode_position[Position: BaseModel](
    listing: str, token: str | None, bound_to: QueryBinding, model: type[Position]
) -> Position | None:
    """The place ``encode_position`` signed (None without a token); FieldError (400) if invalid."""
    if token is None:
        return None
    try:
        return model.model_validate(_bound_payload(listing, token, bound_to))
    except ValidationError:
        raise _invalid("is malformed") from None
