from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base of every inbound model: unknown fields and type coercion are errors, not guesses."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Record(BaseModel):
    """Base of outbound and stored models: tolerant of fields added by later versions."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_now() -> str:
    """UTC timestamp, ISO 8601 with milliseconds and a Z: sorts lexicographically."""
    return utc_now().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
