"""What every repository needs from DynamoDB's low-level client: item (un)marshalling and error codes."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

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

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def serialize(value: Any) -> dict[str, Any]:
    """One value in DynamoDB's typed form; floats become exact decimals (TypeSerializer refuses them)."""
    return _serializer.serialize(Decimal(repr(value)) if isinstance(value, float) else value)  # type: ignore[no-any-return]


def marshal(item: Mapping[str, Any]) -> dict[str, Any]:
    """A plain item in DynamoDB's typed form; ``None`` means absent."""
    return {key: serialize(value) for key, value in item.items() if value is not None}


def unmarshal(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deserializer.deserialize(value) for key, value in item.items()}


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
