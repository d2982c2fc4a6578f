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
import functools
import inspect
import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import moto.dynamodb.models as dynamodb_models
import moto.dynamodb.responses as dynamodb_responses
from moto.core.responses import ActionResult
from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler, DynamoResult
from moto.dynamodbstreams.models import ShardIterator
from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

from infra.local.signals import StopRequests

_ORIGINAL_CALL_ACTION = DynamoHandler.call_action
_ORIGINAL_STREAMS_CALL_ACTION = DynamoDBStreamsHandler.call_action
_ORIGINAL_SHARD_ITERATOR_GET = ShardIterator.get
_ORIGINAL_TRANSACT_WRITE_ITEMS = DynamoDBBackend.transact_write_items
_ORIGINAL_UPDATE_ITEM = DynamoDBBackend.update_item
_ORIGINAL_ALL_ITEMS = Table.all_items
_ORIGINAL_TABLE_QUERY = Table.query
_QUERY_SIGNATURE = inspect.signature(Table.query)
_ORIGINAL_UPDATE_EXPRESSION_PARSER = dynamodb_models.UpdateExpressionParser
_ORIGINAL_LEX_CONDITION = ConditionExpressionParser._lex_condition_expression
# False only while an update of a table without a stream runs (``_update_item``).
_item_copy_needed = True
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


def _serialized_streams_call_action(self: DynamoDBStreamsHandler) -> Any:
    # A stream read between a transaction's writes and its cancellation (which takes its records
    # back) would see records that never happened: reads of a stream wait for writes as well.
    with _lock:
        return _ORIGINAL_STREAMS_CALL_ACTION(self)


def _shard_iterator_get_once(self: ShardIterator, limit: int = 1000) -> dict[str, Any]:
    """moto keeps every shard iterator it ever handed out; the local stream poller (infra/local/streams.py)
    reads a stream four times a second, each time with the iterator the last read returned, so a
    used one is forgotten (a reader that reuses one gets ExpiredIteratorException, as after 15 min on AWS)."""
    page = _ORIGINAL_SHARD_ITERATOR_GET(self, limit)
    self.streams_backend.shard_iterators.pop(self.arn, None)
    return page


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
    """``copy.deepcopy`` for moto's backend module, except that a Table is not copied (the
    transaction wrapper below keeps the items it needs instead), nor an item about to be updated
    in a table without a stream (``_update_item``)."""
    if isinstance(value, Table) or (isinstance(value, Item) and not _item_copy_needed):
        return value
    return copy.deepcopy(value, memo)


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


# --------------------------------------------------------------------------- parsing once
# moto parses every update and condition expression anew, though a shop sends the same few
# expressions with new values; with its validation that was the largest part of its DynamoDB CPU.
# The update expression's syntax tree is cached by its text (moto's validator deep-copies the tree
# before it binds names and values, and the request checks only read it, so the cached tree is never
# changed), and so are the tokens of a condition expression (the parser builds new nodes from them;
# each call gets fresh ones).


class _CachedUpdateExpressionParser:
    make = staticmethod(functools.lru_cache(maxsize=512)(_ORIGINAL_UPDATE_EXPRESSION_PARSER.make))


@functools.lru_cache(maxsize=512)
def _condition_tokens(expression: str) -> tuple[Any, ...]:
    lexer = ConditionExpressionParser.__new__(ConditionExpressionParser)
    lexer.condition_expression = expression
    return tuple(_ORIGINAL_LEX_CONDITION(lexer))


def _lex_condition_expression(self: ConditionExpressionParser) -> deque[Any]:
    tokens = _condition_tokens(self.condition_expression)
    return deque(token._replace(children=[]) for token in tokens)


def _update_item(self: DynamoDBBackend, table_name: str, *args: Any, **kwargs: Any) -> Any:
    """moto deep-copies the item before every update only to give its stream the old image: skip
    that copy for a table without a stream (requests are serialized, so a flag is enough)."""
    global _item_copy_needed
    table = self.tables.get(table_name)
    _item_copy_needed = table is None or table.stream_shard is not None
    try:
        return _ORIGINAL_UPDATE_ITEM(self, table_name, *args, **kwargs)
    finally:
        _item_copy_needed = True


# --------------------------------------------------------------------------- queries
# moto answers every Query from ``Table.all_items()``: every item of the table, sorted, then the
# partition picked out and sorted again. A reconciliation reads thousands of small partitions (the
# provider's ledger, one per authorization) in a table of tens of thousands of items, so the final
# check of a 10,000-order chaos run was still at it, one core busy, 7 minutes after the orders.
# While a Query runs, a table's query reads only the named partition, and an index query the items
# unsorted (moto sorts what it keeps by the index's keys anyway). Scans keep the sorted listing
# their pagination relies on.

# Set while a Query runs (requests are serialized): (its partition, or None for an index query).
_query_scope: tuple[DynamoType | None] | None = None


def _all_items(self: Table) -> list[Item]:
    scope = _query_scope
    if scope is None:
        return _ORIGINAL_ALL_ITEMS(self)
    (partition,) = scope
    if partition is not None:
        found = self.items.get(partition)
        if found is None:
            return []
        return list(found.values()) if self.range_key_attr else [found]  # type: ignore[list-item]
    items: list[Item] = []
    for hash_set in self.items.values():
        if self.range_key_attr:
            items.extend(hash_set.values())
        else:
            items.append(hash_set)  # type: ignore[arg-type]
    return items


def _table_query(self: Table, hash_key: DynamoType | None, *args: Any, **kwargs: Any) -> Any:
    global _query_scope
    # Bound by name: moto's backend passes index_name positionally.
    index_name = _QUERY_SIGNATURE.bind(self, hash_key, *args, **kwargs).arguments.get("index_name")
    _query_scope = (hash_key if index_name is None else None,)
    try:
        return _ORIGINAL_TABLE_QUERY(self, hash_key, *args, **kwargs)
    finally:
        _query_scope = None


def install() -> None:
    """Serialize moto's DynamoDB requests; transactions snapshot items, not tables; expressions
    parsed once; queries read their partition (idempotent)."""
    Table.all_items = _all_items  # type: ignore[method-assign]
    Table.query = _table_query  # type: ignore[method-assign]
    DynamoHandler.call_action = _serialized_call_action  # type: ignore[method-assign]
    DynamoDBStreamsHandler.call_action = _serialized_streams_call_action  # type: ignore[method-assign,assignment]
    ShardIterator.get = _shard_iterator_get_once  # type: ignore[method-assign]
    DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]
    DynamoDBBackend.update_item = _update_item  # type: ignore[method-assign]
    DynamoHandler.serialized = _serialized  # type: ignore[method-assign,assignment]
    dynamodb_models.copy = types.SimpleNamespace(deepcopy=_copy_all_but_tables, copy=copy.copy)  # type: ignore[assignment]
    dynamodb_models.UpdateExpressionParser = _CachedUpdateExpressionParser
    dynamodb_responses.UpdateExpressionParser = _CachedUpdateExpressionParser
    ConditionExpressionParser._lex_condition_expression = _lex_condition_expression  # type: ignore[method-assign]


# --------------------------------------------------------------------------- its own process
# Under load the whole stack in one Python process is bound by one core (the GIL). moto's
# DynamoDB is the largest self-contained part of it, and DynamoDB is a separate service on AWS
# too, so `make bench DYNAMODB=moto` and `make chaos` run it in a process of its own
# (`python -m infra.local.moto_dynamodb`). It answers HTTP like DynamoDB Local, for any client;
# the stack's own clients reach it through ``install_client_transport``: a botocore
# ``before-send`` handler that hands the request to the process over a
# ``multiprocessing.connection`` (no HTTP stack, no header parsing, no signature, which the
# emulator never checks: measured with py-spy, HTTP and signing were a third of the stack's CPU).
# The chaos run's DynamoDB faults enter there too, through the same ``fault_hook``: refused
# before the request is sent, or sent, applied and its answer lost.

# The DynamoDB process this process's clients are handed to (``install_client_transport``).
remote_endpoint: str | None = None
_remote_address: tuple[str, int] | None = None
_remote_key: bytes = b""
# Idle connections, each with the address it is connected to: one made for an earlier process
# is closed, never used for the current one.
_idle_connections: queue.SimpleQueue[tuple[tuple[str, int], Any]] = queue.SimpleQueue()
# How long a new connection may wait for the process's greeting. Without a bound, a connection
# to a port that another server took over after the process stopped (tests bind free ports)
# waits forever for a greeting that server never sends.
HANDSHAKE_SECONDS = 30
# Connections the kernel queues for the accepting thread: a chaos run's burst of saga threads
# each opens one at once.
CONNECTION_BACKLOG = 512

# The environment variable carrying the connection's authentication key to the child.
CONNECTION_KEY_VARIABLE = "SHOP_DYNAMODB_CONNECTION_KEY"


def _aws_response(request: Any, status: int, headers: dict[str, str], body: bytes) -> Any:
    from botocore.awsrequest import AWSResponse

    class _Raw:
        def stream(self, **_: Any) -> Any:
            yield body

    return AWSResponse(request.url, status, headers, _Raw())


def _error_for(request: Any, code: str) -> Any:
    status, headers, body = error_response(code)
    return _aws_response(request, status, headers, body.encode())


def _connect(address: tuple[str, int], key: bytes) -> Any:
    """``multiprocessing.connection.Client(address, authkey=key)`` with a bounded handshake."""
    from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

    with socket.create_connection(address, timeout=HANDSHAKE_SECONDS) as sock:
        sock.settimeout(None)  # blocking, as Connection reads the descriptor itself ...
        bounded = struct.pack("ll", HANDSHAKE_SECONDS, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bounded)  # ... but not forever
        connection = Connection(os.dup(sock.fileno()))
        try:
            answer_challenge(connection, key)
            deliver_challenge(connection, key)
        except BaseException:
            connection.close()
            raise
        # Greeted: a request may take long under load, and a dead process resets the socket.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0))
    return connection


def _exchange(headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    # A pool, not one connection per thread: moto runs every Step Functions task in a new thread.
    address = _remote_address
    if address is None:
        raise ConnectionRefusedError("the DynamoDB process has stopped")
    connection = None
    while connection is None:
        try:
            connected_to, idle = _idle_connections.get_nowait()
        except queue.Empty:
            connection = _connect(address, _remote_key)
        else:
            if connected_to == address:
                connection = idle
            else:
                idle.close()
    try:
        connection.send((headers, body))
        status, response_headers, response_body = connection.recv()
    except BaseException:
        connection.close()
        raise
    _idle_connections.put((address, connection))
    return status, response_headers, response_body


def _close_idle_connections() -> None:
    while True:
        try:
            _, idle = _idle_connections.get_nowait()
        except queue.Empty:
            return
        idle.close()


def _send_to_process(request: Any, **_: Any) -> Any:
    """botocore ``before-send``: the request answered by the DynamoDB process, faults applied."""
    if remote_endpoint is None or not str(request.url).startswith(remote_endpoint):
        return None
    headers = {name: _text(value) for name, value in request.headers.items()}
    raw_body = request.body
    body = raw_body.encode() if isinstance(raw_body, str) else bytes(raw_body or b"")
    hook = fault_hook
    operation = headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
    parsed: dict[str, Any] = {}
    if hook is not None:
        try:
            parsed = json.loads(body or b"{}")
        except ValueError:
            parsed = {}
        before = hook("before", operation, parsed)
        if before is not None:
            return _error_for(request, before)
    status, response_headers, response_body = _exchange(headers, body)
    if hook is not None:
        after = hook("after", operation, parsed)
        if after is not None:
            return _error_for(request, after)  # applied; the answer is what gets lost
    return _aws_response(request, status, response_headers, response_body)


def _unsigned(**_: Any) -> Any:
    """botocore ``choose-signer``: no SigV4 for the emulator's DynamoDB, which never checks it."""
    from botocore import UNSIGNED

    return UNSIGNED if remote_endpoint is not None else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def install_client_transport(process: MotoDynamoDBProcess) -> None:
    """Hand this process's DynamoDB requests for ``process`` to it directly. Applies to every
    botocore session created after this call (boto3's default session, if already made, keeps
    the handlers it was made with)."""
    from botocore.handlers import BUILTIN_HANDLERS

    global remote_endpoint, _remote_address, _remote_key
    _close_idle_connections()
    remote_endpoint, _remote_address, _remote_key = process.endpoint, process.connection_address, process.key
    for handler in (("before-send.dynamodb", _send_to_process), ("choose-signer.dynamodb", _unsigned)):
        if handler not in BUILTIN_HANDLERS:
            BUILTIN_HANDLERS.append(handler)


def remove_client_transport() -> None:
    global remote_endpoint, _remote_address
    remote_endpoint = _remote_address = None
    _close_idle_connections()


@dataclass
class MotoDynamoDBProcess:
    """``python -m infra.local.moto_dynamodb`` started as a child process; ``stop()`` ends it."""

    endpoint: str
    connection_address: tuple[str, int]
    key: bytes
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, host: str = "127.0.0.1", startup_seconds: float = 60.0) -> MotoDynamoDBProcess:
        import secrets

        ports = []
        for _ in range(2):
            with socket.socket() as probe:
                probe.bind((host, 0))
                ports.append(int(probe.getsockname()[1]))
        port, connection_port = ports
        key = secrets.token_bytes(16)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infra.local.moto_dynamodb",
                "--host",
                host,
                "--port",
                str(port),
                "--connection-port",
                str(connection_port),
                "--exit-with-parent",
            ],
            # The child reads its stdin until end of file: when this process dies, however it dies,
            # the pipe closes and the child exits instead of lingering on its ports.
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env={**os.environ, CONNECTION_KEY_VARIABLE: key.hex()},
        )
        running = cls(f"http://{host}:{port}", (host, connection_port), key, process)
        deadline = time.monotonic() + startup_seconds
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto's DynamoDB process exited with {process.returncode}")
            try:
                for listening in (port, connection_port):
                    socket.create_connection((host, listening), timeout=1).close()
                return running
            except OSError:
                if time.monotonic() > deadline:
                    running.stop()
                    raise RuntimeError(f"moto's DynamoDB process did not listen on {port} in time") from None
            time.sleep(0.1)  # polling interval while the child imports moto

    def stop(self) -> None:
        from infra.local.dynamodb_local import stop_child_process

        # First no request is handed to it any more: a thread still running (a scheduled function
        # at shutdown) then fails to connect instead of connecting to a port nobody serves, where
        # a connection that waits for the server's greeting can wait forever.
        if _remote_address == self.connection_address:
            remove_client_transport()
        stop_child_process(self.process)


def _dispatch(headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request through moto's DynamoDB handler, or its DynamoDB Streams handler (the tables'
    streams live with the tables), as moto's in-process interception does it."""
    from moto.core.request import Request

    streams = any(
        name.lower() == "x-amz-target" and str(value).startswith("DynamoDBStreams_") for name, value in headers.items()
    )
    # moto finds the region in the URL, as AWS's endpoint would carry it.
    url = f"https://{'streams.dynamodb' if streams else 'dynamodb'}.us-east-1.amazonaws.com/"
    request = Request.from_primitives("POST", url, headers, body)
    handler = DynamoDBStreamsHandler if streams else DynamoHandler
    status, response_headers, response_body = handler.dispatch(request, url, request.headers)
    payload = response_body.encode() if isinstance(response_body, str) else response_body or b""
    kept = {k: str(v) for k, v in response_headers.items() if k.lower() not in {"content-length", "status"}}
    return int(status), kept, payload


def _serve(host: str, port: int) -> Any:
    """A keep-alive HTTP server over ``_dispatch``, for clients other than the stack's (moto's
    own server adds Flask routing and a connection per request, slower than in-process moto)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body leave as two writes: no 40 ms delayed-ACK stall

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers, payload = _dispatch(dict(self.headers.items()), body)
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() != "connection":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: thousands of requests a second

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def _serve_connections(host: str, port: int, key: bytes) -> None:
    """``_dispatch`` for the stack's clients (``install_client_transport``), one thread each.

    Not ``multiprocessing.connection.Listener``: its backlog of one drops the connections of a
    burst (each then waits for a SYN retransmission, seconds), and its ``accept`` greets each
    client before accepting the next, so one slow client (a busy stack process) holds up all.
    Here the kernel queues a burst and each connection is greeted in its own thread.
    """
    from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

    def serve(sock: socket.socket) -> None:
        with Connection(sock.detach()) as connection:
            try:
                deliver_challenge(connection, key)  # the order Listener.accept greets in
                answer_challenge(connection, key)
            except Exception:  # noqa: BLE001 - a client that failed the handshake, or left
                return
            while True:
                try:
                    headers, body = connection.recv()
                except (EOFError, OSError):
                    return
                connection.send(_dispatch(headers, body))

    with socket.create_server((host, port), backlog=CONNECTION_BACKLOG) as listener:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(sock,), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="moto's DynamoDB in a process of its own")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connection-port", type=int, required=True)
    parser.add_argument("--exit-with-parent", action="store_true", help="exit at end of file on stdin (a pipe)")
    args = parser.parse_args(argv)
    install()
    key = bytes.fromhex(os.environ.pop(CONNECTION_KEY_VARIABLE))
    threading.Thread(target=_serve_connections, args=(args.host, args.connection_port, key), daemon=True).start()
    server = _serve(args.host, args.port)
    stops = StopRequests().install(signal.SIGTERM, signal.SIGINT)
    if args.exit_with_parent:
        threading.Thread(target=_exit_with_parent, args=(server,), daemon=True).start()
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    stops.wait(0.5, until=lambda: not serving.is_alive())
    server.shutdown()  # returns at once if the parent's end of file shut it down already
    return 0


def _exit_with_parent(server: Any) -> None:
    """Block on stdin, a pipe from the parent (``MotoDynamoDBProcess.start``): its end of file means
    the parent is gone."""
    # The raw descriptor, not sys.stdin: a daemon thread blocked inside the buffered reader makes the
    # interpreter abort at shutdown ("could not acquire lock for <stdin>").
    while os.read(0, 4096):
        pass
    server.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
