"""Make moto's DynamoDB handle one request at a time, as DynamoDB itself appears to.

moto's DynamoDB is not thread-safe: concurrent TransactWriteItems fail with "dictionary changed
size during iteration", and a cancelled transaction restores a deep copy of the whole table,
erasing writes other threads made meanwhile (tests/fidelity/README.md). Concurrent saga
executions and API requests are normal for this project, so every place that runs moto (the
in-process test fixture, the `make run` server) serializes its DynamoDB requests. DynamoDB Local
and AWS need nothing of the kind.

moto makes a TransactWriteItems all-or-nothing by deep-copying every table it touches before it
starts, so each transaction costs time in proportion to the whole table: the chaos run's
simulator ledger made that a quarter of the emulator's CPU and slowed every order as the tables
grew. Here a transaction snapshots only the items it names and puts them back if it is cancelled,
which is the same all-or-nothing outcome (requests are serialized, so nobody sees the middle).

moto also turns every answer into JSON by walking botocore's service model member by member, a
fifth of the emulator's CPU under `make bench`. The answers of the item operations are already
DynamoDB's wire shape (attribute-value maps, counts, keys), so they are written with
``json.dumps``; anything else, or anything ``json`` cannot write, goes through moto's serializer
(tests/service/test_moto_dynamodb_adapter.py compares the two).

It is also where the chaos run's DynamoDB faults enter (``fault_hook``, set by
``infra/local/faults.py``): a request can be refused before it is applied, or applied with its
answer lost, exactly as a throttled or timed-out request on AWS.
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import moto.dynamodb.models as dynamodb_models
from moto.core.responses import ActionResult
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler, DynamoResult

_ORIGINAL_CALL_ACTION = DynamoHandler.call_action
_ORIGINAL_TRANSACT_WRITE_ITEMS = DynamoDBBackend.transact_write_items
_ORIGINAL_SERIALIZED = DynamoHandler.serialized
# Operations whose answers are plain wire-shaped JSON (no timestamps or model objects).
ITEM_OPERATIONS = frozenset(
    {
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactGetItems",
        "TransactWriteItems",
    }
)
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


def _serialized(self: DynamoHandler, action_result: ActionResult) -> Any:
    result = action_result.result
    if isinstance(action_result, DynamoResult) and isinstance(result, dict) and self._get_action() in ITEM_OPERATIONS:
        try:
            body = json.dumps(result)
        except (TypeError, ValueError):
            pass
        else:
            return 200, {"Content-Type": "application/x-amz-json-1.0", **self.response_headers}, body
    return _ORIGINAL_SERIALIZED(self, action_result)


def _copy_all_but_tables(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """``copy.deepcopy`` for moto's backend module, except that a Table is not copied: the
    transaction wrapper below keeps the items it needs instead."""
    return value if isinstance(value, Table) else copy.deepcopy(value, memo)


@dataclass
class _ItemSnapshot:
    table: Table
    hash_key: DynamoType
    range_key: DynamoType | None
    item: Any  # a deep copy of moto's Item, or None when there was none
    stream_length: int | None


def _snapshot(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[_ItemSnapshot]:
    snapshots = []
    for entry in transact_items:
        for op_type, op in entry.items():
            table = backend.tables.get(op.get("TableName", ""))
            if table is None:
                continue
            attributes = op["Item"] if op_type == "Put" else op.get("Key", {})
            if table.hash_key_attr not in attributes:
                continue  # moto refuses it before writing anything
            hash_key = DynamoType(attributes[table.hash_key_attr])
            range_key = None
            if table.range_key_attr is not None:
                if table.range_key_attr not in attributes:
                    continue
                range_key = DynamoType(attributes[table.range_key_attr])
            stream = table.stream_shard
            snapshots.append(
                _ItemSnapshot(
                    table=table,
                    hash_key=hash_key,
                    range_key=range_key,
                    item=copy.deepcopy(table.get_item(hash_key, range_key)),
                    stream_length=len(stream.items) if stream is not None else None,
                )
            )
    return snapshots


def _restore(snapshots: list[_ItemSnapshot]) -> None:
    for snapshot in reversed(snapshots):
        items = snapshot.table.items
        if snapshot.range_key is not None:
            if snapshot.item is None:
                items[snapshot.hash_key].pop(snapshot.range_key, None)
            else:
                items[snapshot.hash_key][snapshot.range_key] = snapshot.item
        elif snapshot.item is None:
            items.pop(snapshot.hash_key, None)
        else:
            items[snapshot.hash_key] = snapshot.item
        stream = snapshot.table.stream_shard
        if stream is not None and snapshot.stream_length is not None:
            del stream.items[snapshot.stream_length :]


def _transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    snapshots = _snapshot(self, transact_items)
    try:
        _ORIGINAL_TRANSACT_WRITE_ITEMS(self, transact_items)
    except BaseException:
        _restore(snapshots)
        raise


def install() -> None:
    """Serialize moto's DynamoDB requests; transactions snapshot items, not tables (idempotent)."""
    DynamoHandler.call_action = _serialized_call_action  # type: ignore[method-assign]
    DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]
    DynamoHandler.serialized = _serialized  # type: ignore[method-assign]
    dynamodb_models.copy = types.SimpleNamespace(deepcopy=_copy_all_but_tables, copy=copy.copy)  # type: ignore[assignment]


# --------------------------------------------------------------------------- its own process
# Under load the whole stack in one Python process is bound by one core (the GIL). moto's
# DynamoDB is the largest self-contained part of it, and DynamoDB is a separate service on AWS
# too, so `make bench` and `make chaos` run it in a process of its own (`python -m
# infra.local.moto_dynamodb --port N`), reached over HTTP like DynamoDB Local. Its faults then
# enter at the SDK's side of that connection (``sdk_fault_handler``), through the same
# ``fault_hook``: refused before the request is sent, or sent, applied and its answer lost.

# The endpoint of a DynamoDB in another process whose requests ``sdk_fault_handler`` may fail.
remote_endpoint: str | None = None


def _sdk_error_response(request: Any, code: str) -> Any:
    from botocore.awsrequest import AWSResponse

    status, headers, body = error_response(code)

    class _Raw:
        def stream(self, **_: Any) -> Any:
            yield body.encode()

    return AWSResponse(request.url, status, headers, _Raw())


def sdk_fault_handler(request: Any, **_: Any) -> Any:
    """botocore ``before-send`` handler: ``fault_hook`` applied to requests for ``remote_endpoint``."""
    hook = fault_hook
    if hook is None or remote_endpoint is None or not str(request.url).startswith(remote_endpoint):
        return None
    operation = _text(request.headers.get("X-Amz-Target", "")).rsplit(".", 1)[-1]
    try:
        parsed = json.loads(_text(request.body) or "{}")
    except (TypeError, ValueError):
        parsed = {}
    before = hook("before", operation, parsed)
    if before is not None:
        return _sdk_error_response(request, before)
    after = hook("after", operation, parsed)
    if after is None:
        return None  # botocore sends it as usual
    _http_session().send(request)  # applied; the answer is what gets lost
    return _sdk_error_response(request, after)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


@lru_cache(maxsize=1)
def _http_session() -> Any:
    from botocore.httpsession import URLLib3Session

    return URLLib3Session()


def install_sdk_faults() -> None:
    """Every botocore session created after this call gives its clients ``sdk_fault_handler`` (a
    session made earlier, such as boto3's default one, keeps the handlers it was made with)."""
    from botocore.handlers import BUILTIN_HANDLERS

    if ("before-send.dynamodb", sdk_fault_handler) not in BUILTIN_HANDLERS:
        BUILTIN_HANDLERS.append(("before-send.dynamodb", sdk_fault_handler))


@dataclass
class MotoDynamoDBProcess:
    """``python -m infra.local.moto_dynamodb`` started as a child process; ``stop()`` ends it."""

    endpoint: str
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, host: str = "127.0.0.1", startup_seconds: float = 60.0) -> MotoDynamoDBProcess:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        process = subprocess.Popen(
            [sys.executable, "-m", "infra.local.moto_dynamodb", "--host", host, "--port", str(port)],
            stdout=subprocess.DEVNULL,
        )
        running = cls(endpoint=f"http://{host}:{port}", process=process)
        deadline = time.monotonic() + startup_seconds
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto's DynamoDB process exited with {process.returncode}")
            try:
                socket.create_connection((host, port), timeout=1).close()
                return running
            except OSError:
                if time.monotonic() > deadline:
                    running.stop()
                    raise RuntimeError(f"moto's DynamoDB process did not listen on {port} in time") from None
            time.sleep(0.1)  # polling interval while the child imports moto

    def stop(self) -> None:
        from infra.local.dynamodb_local import stop_child_process

        stop_child_process(self.process)


def _serve(host: str, port: int) -> Any:
    """A keep-alive HTTP server that hands each request to moto's DynamoDB handler, as moto's
    in-process interception does (moto's own server adds Flask routing and a connection per
    request, which made it slower than running in-process)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from moto.core.request import Request

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body leave as two writes: no 40 ms delayed-ACK stall

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = dict(self.headers.items())
            # moto finds the region in the URL, as AWS's endpoint would carry it.
            url = "https://dynamodb.us-east-1.amazonaws.com/"
            request = Request.from_primitives("POST", url, headers, body)
            status, response_headers, response_body = DynamoHandler.dispatch(request, url, request.headers)
            payload = response_body.encode() if isinstance(response_body, str) else response_body or b""
            self.send_response(int(status))
            for name, value in response_headers.items():
                if name.lower() not in {"content-length", "status", "connection"}:
                    self.send_header(name, str(value))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: thousands of requests a second

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="moto's DynamoDB in a process of its own")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    install()
    server = _serve(args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    signal.signal(signal.SIGINT, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
