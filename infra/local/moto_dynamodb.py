"""Make moto's DynamoDB handle one request at a time, as DynamoDB itself appears to.

moto's DynamoDB is not thread-safe: concurrent TransactWriteItems fail with "dictionary changed
size during iteration", and a cancelled transaction restores a deep copy of the whole table,
erasing writes other threads made meanwhile (tests/fidelity/README.md). Concurrent saga
executions and API requests are normal for this project, so every place that runs moto (the
in-process test fixture, the `make run` server) serializes its DynamoDB requests. DynamoDB Local
and AWS need nothing of the kind.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.dynamodb.responses import DynamoHandler

_ORIGINAL_CALL_ACTION = DynamoHandler.call_action
_lock = threading.RLock()


def _serialized_call_action(self: DynamoHandler) -> Any:
    with _lock:
        return _ORIGINAL_CALL_ACTION(self)


def install() -> None:
    """Serialize moto's DynamoDB requests (idempotent)."""
    DynamoHandler.call_action = _serialized_call_action  # type: ignore[method-assign]
