"""What every repository needs from DynamoDB's low-level client: one call helper, item (un)marshalling
and the error codes.

``call`` is the only place a repository talks to the client: the transient error it raises for
a busy table is an argument (the one its callers' retry policies name), so which error a
repository raises is visible at each call, and a new throttling code is one edit here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as TransportConnectionError

from shop import aws
from shop.errors import TransientError
from shop.observability import logger

# Codes that mean "DynamoDB is busy, try the whole call again later"; each repository turns them
# into its transient error (the one its callers' retry policies name).
BUSY_ERROR_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
        "TransactionConflictException",
        "InternalServerError",
        "ServiceUnavailable",
    }
)

# What a caller is told of a busy table (a 503's detail): which service refused, and how, is the operators'.
_BUSY_DETAIL = "the shop's records are busy; retry"

_serializer = TypeSerializer()


class _NumbersAsAnswered(TypeDeserializer):
    """Numbers read exactly as DynamoDB answers them. DynamoDB stores up to 38 significant digits but
    answers them in plain digits: ``1E+40``, one digit stored, comes back with 41, which boto3's reader
    refuses (``decimal.Rounded``: its context holds 38 digits; boto/boto3#2500). That error is none of
    the unreadable-item errors, so one such item stopped a catalog listing, the books check and a
    stream publisher, and made a cart unclearable (a helper's fidelity probe: DynamoDB Local answers as
    AWS does, moto does not)."""

    def _deserialize_n(self, value: str) -> Decimal:
        return Decimal(value)


_deserializer = _NumbersAsAnswered()


def serialize(value: Any) -> dict[str, Any]:
    """One value in DynamoDB's typed form; floats become exact decimals (TypeSerializer refuses them)."""
    return _serializer.serialize(Decimal(repr(value)) if isinstance(value, float) else value)


def marshal(item: Mapping[str, Any]) -> dict[str, Any]:
    """A plain item in DynamoDB's typed form; ``None`` means absent."""
    return {key: serialize(value) for key, value in item.items() if value is not None}


def unmarshal(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deserializer.deserialize(value) for key, value in item.items()}


def plain(value: Any) -> Any:
    """An unmarshalled value with DynamoDB's Decimals as ints (floats where fractional): the models
    are strict (Money, quantities) and want ints."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def unmarshal_plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """``unmarshal`` with ``plain`` numbers."""
    return {key: plain(value) for key, value in unmarshal(item).items()}


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def call(operation: str, *, busy: type[TransientError], **request: Any) -> Any:
    """Run ``operation`` (e.g. ``"update_item"``) on the shared client; a busy table raises ``busy``.

    So does a request that never got an answer (the connection failed, reset or timed out after
    the client's own retries): a saga step's retry policy then tries again, as for throttling (the
    steps are idempotent, so repeating a write that was applied changes nothing), and an HTTP
    client gets a 503 instead of a 500.
    Every other failure, a failed condition included, is the ClientError itself.
    """
    try:
        return getattr(aws.dynamodb(), operation)(**request)
    except ClientError as error:
        code = error_code(error)
        if code in BUSY_ERROR_CODES:
            raise busy(_BUSY_DETAIL, internal=f"DynamoDB is busy ({code}); retry") from error
        raise
    except (TransportConnectionError, HTTPClientError) as error:
        raise busy(_BUSY_DETAIL, internal=f"DynamoDB did not answer ({type(error).__name__}); retry") from error


def call_if(operation: str, *, busy: type[TransientError], **request: Any) -> Any | None:
    """``call`` for a conditional write: None when its ConditionExpression does not hold."""
    try:
        return call(operation, busy=busy, **request)
    except ClientError as error:
        if is_condition_failure(error):
            return None
        raise


def every_item(operation: str, *, busy: type[TransientError], **request: Any) -> Iterator[dict[str, Any]]:
    """Every item a Query or a Scan (``operation``) answers, page after page."""
    while True:
        page = call(operation, busy=busy, **request)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


BATCH_GET_LIMIT = 100  # keys in one BatchGetItem request
_BATCH_ATTEMPTS = 5


def batch_get(
    table: str,
    keys: Iterable[Mapping[str, Any]],
    *,
    busy: type[TransientError],
    consistent: bool = True,
    **read: Any,
) -> Iterator[Mapping[str, Any]]:
    """The items of ``table`` at ``keys`` (distinct keys; absent ones are left out), in any order, read in
    BatchGetItem requests of up to 100 keys; ``read`` adds e.g. a ProjectionExpression to each.

    DynamoDB hands back the keys it did not read (throttled, or the 16 MB answer limit) as
    UnprocessedKeys: they are asked again after a full-jitter backoff, at most 5 times, and then ``busy``
    is raised, so a throttled table slows a reader down instead of being hammered in a tight loop.
    """
    listed = list(keys)
    for start in range(0, len(listed), BATCH_GET_LIMIT):
        pending: dict[str, Any] = {
            table: {"Keys": listed[start : start + BATCH_GET_LIMIT], "ConsistentRead": consistent, **read}
        }
        for attempt in range(_BATCH_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, 0.05 * 2 ** (attempt - 1)))
            response = call("batch_get_item", busy=busy, RequestItems=pending)
            yield from response.get("Responses", {}).get(table, [])
            pending = response.get("UnprocessedKeys") or {}
            if not pending:
                break
        if pending:
            # The table's name is for the operator's log: an error's detail is shown to the caller.
            logger().warning("a batch read left keys unread", extra={"table": table, "attempts": _BATCH_ATTEMPTS})
            raise busy(_BUSY_DETAIL, internal=f"DynamoDB left keys unread {_BATCH_ATTEMPTS} times; retry")


def partition_page(
    table: str,
    partition: str,
    *,
    limit: int,
    start_key: Mapping[str, Any] | None,
    busy: type[TransientError],
    consistent: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One page of the items whose ``pk`` is ``partition``, in key order, and DynamoDB's key to
    continue from (the low-level shape the pagination tokens carry)."""
    request: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": partition}},
        "ConsistentRead": consistent,
        "Limit": limit,
    }
    if start_key:
        request["ExclusiveStartKey"] = dict(start_key)
    response = call("query", busy=busy, **request)
    return response.get("Items", []), response.get("LastEvaluatedKey")


# What reading an item that is not a record of its table raises: its model refuses it (pydantic's
# ValidationError is a ValueError), or an attribute the reader needs is missing or of another type.
UNREADABLE_ITEM_ERRORS = (KeyError, TypeError, ValueError)


def read_each[T](
    items: Iterable[Mapping[str, Any]], read: Callable[[Mapping[str, Any]], T]
) -> tuple[list[T], list[tuple[Mapping[str, Any], Exception]]]:
    """Each item as ``read`` makes it, and the items it could not read with why. An item written behind
    the shop's back, or by a version this one cannot read, must never stop a listing or the books check."""
    records: list[T] = []
    refused: list[tuple[Mapping[str, Any], Exception]] = []
    for item in items:
        try:
            records.append(read(item))
        except UNREADABLE_ITEM_ERRORS as error:
            refused.append((item, error))
    return records, refused


def key_text(item: Mapping[str, Any], key: str) -> str:
    """The item's ``key`` attribute as text ("" if it has none)."""
    value = item.get(key)
    return str(next(iter(value.values()), "")) if isinstance(value, dict) and value else ""


def listable[T](items: Iterable[Mapping[str, Any]], read: Callable[[Mapping[str, Any]], T], *, key: str) -> list[T]:
    """For a listing: the items ``read`` accepts. Each one it refuses is left out and logged; the
    reconciliation reports it (and a stream publisher set it aside), each with an alarm."""
    records, refused = read_each(items, read)
    for item, error in refused:
        logger().error(
            "an item is not a record of its table; left out of the listing",
            extra={key: key_text(item, key), "error": type(error).__name__},
        )
    return records


def is_condition_failure(error: ClientError) -> bool:
    """The item did not satisfy the request's ConditionExpression."""
    return error_code(error) == "ConditionalCheckFailedException"


def cancellation_codes(error: ClientError) -> list[str]:
    """The per-item reasons of a TransactionCanceledException, in request order ("None" where none)."""
    return [str(reason.get("Code", "None")) for reason in error.response.get("CancellationReasons", [])]
