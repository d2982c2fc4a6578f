from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, ValidationError

from shop.errors import FieldError


class StrictModel(BaseModel):
    """Base of every inbound model: unknown fields and type coercion are errors, not guesses."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Record(BaseModel):
    """Base of outbound and stored models: tolerant of fields added by later versions.

    Serialized, every field is present (a defaulted one too, null where it may be null), and the
    OpenAPI document's response schemas say so.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, json_schema_serialization_defaults_required=True)


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_now() -> str:
    """UTC timestamp, ISO 8601 with milliseconds and a Z: sorts lexicographically."""
    return utc_now().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def zoned_instant(stamp: str) -> datetime | None:
    """``stamp`` as an aware datetime; None for anything that is not an ISO 8601 time with its zone."""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def field_errors(error: ValidationError, root: str) -> list[dict[str, str]]:
    """pydantic's findings as ``{"field": "items.0.quantity", "message": ...}`` entries."""
    return [
        {"field": ".".join(str(part) for part in issue["loc"]) or root, "message": issue["msg"]}
        for issue in error.errors(include_url=False)
    ]


def parse_event[EventModel: BaseModel](model: type[EventModel], event: object) -> EventModel:
    """Validate a Lambda event; bad input is a FieldError (400) that names each field."""
    try:
        return model.model_validate(event)
    except ValidationError as error:
        raise FieldError(f"invalid {model.__name__} event", field_errors(error, "event")) from None


def require_distinct_skus(skus: list[str]) -> None:
    """One transaction may touch an item only once, and an order names each SKU once."""
    if len(set(skus)) != len(skus):
        raise ValueError("each SKU may appear only once")
