"""Lazily built, cached boto3 clients: no AWS call and no environment read at import time.

Repositories are the only callers. Clients are thread-safe and reused across invocations of a
warm Lambda; resources are not thread-safe, so none are used.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

# Standard retry mode with adaptive backoff handles throttling inside one call; the saga's
# Retry policies handle what is still failing after that.
_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 4})


@lru_cache(maxsize=None)
def client(service: str) -> Any:
    return boto3.session.Session().client(service, config=_CLIENT_CONFIG)  # type: ignore[call-overload]


def dynamodb() -> Any:
    return client("dynamodb")


def stepfunctions() -> Any:
    return client("stepfunctions")


def reset_clients() -> None:
    """Drop cached clients (tests swap the emulator between sessions)."""
    client.cache_clear()
