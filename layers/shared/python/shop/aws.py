"""Lazily built, cached boto3 clients: no AWS call and no environment read at import time.

Repositories are the only callers. Clients are thread-safe and reused across invocations of a
warm Lambda; resources are not thread-safe, so none are used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

# Standard retry mode handles throttling inside one call; the saga's Retry policies handle what
# is still failing after that.
_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 4})
# EventBridge calls: timeouts and attempts (the first included) that bound how long one can take.
EVENTS_CONNECT_SECONDS, EVENTS_READ_SECONDS, EVENTS_ATTEMPTS = 1, 2, 3
# Parameter Store is read for configuration on a request's path: a slow or unreachable store must
# cost a request seconds, not botocore's 60 s connect timeout per attempt (the defaults then apply).
_SERVICE_CONFIGS = {
    "ssm": Config(connect_timeout=2, read_timeout=3, retries={"mode": "standard", "max_attempts": 2}),
    # The stream publishers begin a record only with the longest PutEvents can take left in the
    # invocation (shop.domain.events): that is bounded only if the call's timeouts and retries are.
    "events": Config(
        connect_timeout=EVENTS_CONNECT_SECONDS,
        read_timeout=EVENTS_READ_SECONDS,
        retries={"mode": "standard", "total_max_attempts": EVENTS_ATTEMPTS},
    ),
}

# Called with (service, client) as each client is built: `make bench` meters DynamoDB through it
# (infra.local.capacity); nothing is registered on Lambda.
client_built_hooks: list[Callable[[str, Any], None]] = []


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def client(service: str) -> Any:
    # Built once per process under a lock: concurrent first calls would each load the service
    # model (seconds under contention) and race on the cache.
    built = _clients.get(service)
    if built is None:
        with _clients_lock:
            built = _clients.get(service)
            if built is None:
                built = boto3.session.Session().client(service, config=_SERVICE_CONFIGS.get(service, _CLIENT_CONFIG))
                for hook_ in client_built_hooks:
                    hook_(service, built)
                _clients[service] = built
    return built


def dynamodb() -> Any:
    return client("dynamodb")


def stepfunctions() -> Any:
    return client("stepfunctions")


def reset_clients() -> None:
    """Drop cached clients (tests swap the emulator between sessions)."""
    with _clients_lock:
        _clients.clear()
