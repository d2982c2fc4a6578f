"""Make moto's DynamoDB handle one request at a time, as DynamoDB itself appears to.

moto's DynamoDB is not thread-safe: concurrent TransactWriteItems fail with "dictionary changed
size during iteration", and a cancelled transaction restores a deep copy of the whole table,
erasing writes other threads made meanwhile (tests/fidelity/README.md). Concurrent saga
executions and API requests are normal for this project, so every place that runs moto (the
in-process test fixture, the `make run` server) serializes its DynamoDB requests. DynamoDB Local
and AWS need nothing of the kind.

It is also where the chaos run's DynamoDB faults enter (``fault_hook``, set by
``infra/local/faults.py``): a request can be refused before it is applied, or applied with its
answer lost, exactly as a throttled or timed-out request on AWS.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, Literal

from moto.dynamodb.responses import DynamoHandler

_ORIGINAL_CALL_ACTION = DynamoHandler.call_action
_lock = threading.RLock()

Moment = Literal["before", "after"]
# A fault hook: (moment, operation such as "UpdateItem", request body) -> an error code to answer
# instead (before: the request is not applied; after: it was applied and its answer is lost), or None.
FaultHook = Callable[[Moment, str, dict[str, Any]], str | None]
fault_hook: FaultHook | None = None

# DynamoDB answers these with HTTP 500; everything else it refuses is a 400.
_SERVER_ERRORS = frozenset({"InternalServerError", "ServiceUnavailable"})


def error_response(code: str) -> tuple[int, dict[str, str], str]:
    """The answer DynamoDB gives for ``code`` (JSON 1.0 protocol), as moto's handlers return it."""
    body = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": f"injected {code}"}
    status = 500 if code in _SERVER_ERRORS else 400
    return status, {"Content-Type": "application/x-amz-json-1.0", "status": str(status)}, json.dumps(body)


def _fault(moment: Moment, handler: DynamoHandler) -> str | None:
    hook = fault_hook
    if hook is None:
        return None
    operation = str(handler.headers.get("X-Amz-Target", "")).rsplit(".", 1)[-1]
    body = handler.body
    if isinstance(body, dict):  # moto has already parsed it
        request = body
    else:
        try:
            request = json.loads(body or "{}")
        except (TypeError, ValueError):
            request = {}
    return hook(moment, operation, request)


def _serialized_call_action(self: DynamoHandler) -> Any:
    before = _fault("before", self)
    if before is not None:
        return error_response(before)
    with _lock:
        response = _ORIGINAL_CALL_ACTION(self)
    after = _fault("after", self)
    return error_response(after) if after is not None else response


def install() -> None:
    """Serialize moto's DynamoDB requests (idempotent)."""
    DynamoHandler.call_action = _serialized_call_action  # type: ignore[method-assign]
