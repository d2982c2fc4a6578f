"""DynamoDB Streams to Lambda, as an event source mapping does on AWS.

moto keeps a table's stream (StreamSpecification) but its own event source mappings invoke the
function inside the write itself, before a transaction has finished, and then empty the stream.
Lambda's poller does neither: it reads the stream after the fact, hands the function batches in
stream order, and with ``ReportBatchItemFailures`` retries from the first record the function
reported as failed (an invocation error retries the whole batch). This module is that poller,
over the DynamoDB Streams API, for each ``Type: DynamoDB`` event of the template
(``infra.local.deploy`` lists them):

- ``StreamDelivery.deliver_pending()`` delivers every record written so far, batch by batch, and
  returns; a batch that fails stays pending for the next call (the service tier calls it, then
  checks the consumers);
- ``StreamPoller`` calls it for every mapping a few times a second (`make run`, the HTTP tier), as
  Lambda polls a shard four times a second.

Duplicated delivery (Lambda's delivery is at least once) is a test hook any client can set: a
function tagged ``DUPLICATE_DELIVERY_TAG = "true"`` gets every batch twice.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

DUPLICATE_DELIVERY_TAG = "shop:local:duplicate-stream-delivery"
# How often the poller reads each stream (Lambda: four times a second per shard).
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class StreamMapping:
    """One ``Type: DynamoDB`` event of the template, resolved."""

    function_name: str
    function_arn: str
    table_name: str
    stream_arn: str
    batch_size: int
    report_batch_item_failures: bool


def _attribute(value: Any) -> Any:
    """An attribute value as AWS writes it in a stream record: DynamoDB Local writes an empty map
    as ``{}`` where AWS writes ``{"M": {}}`` (found by `make bench`, which reads its streams)."""
    if value == {}:
        return {"M": {}}
    if isinstance(value, dict) and isinstance(value.get("M"), dict):
        return {"M": {name: _attribute(item) for name, item in value["M"].items()}}
    if isinstance(value, dict) and isinstance(value.get("L"), list):
        return {"L": [_attribute(item) for item in value["L"]]}
    return value


def _images_as_aws_writes_them(record: dict[str, Any]) -> dict[str, Any]:
    change = dict(record.get("dynamodb", {}))
    for image in ("Keys", "NewImage", "OldImage"):
        if image in change:
            change[image] = {name: _attribute(value) for name, value in change[image].items()}
    return {**record, "dynamodb": change}


def _error_code(error: Exception) -> str | None:
    response = getattr(error, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def _wire(value: Any) -> Any:
    """A record as Lambda passes it: JSON, with DynamoDB's epoch seconds for the creation time."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {key: _wire(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_wire(item) for item in value]
    return value


def _next_batch(pending: list[tuple[str, dict[str, Any]]], size: int) -> list[dict[str, Any]]:
    """The first ``size`` pending records, as far as they are of the first one's shard (as Lambda's,
    a batch holds the records of one shard)."""
    shard = pending[0][0]
    return [record for _, record in itertools.islice(itertools.takewhile(lambda read: read[0] == shard, pending), size)]


def _starting_sequence(shard: dict[str, Any]) -> int:
    return int(shard.get("SequenceNumberRange", {}).get("StartingSequenceNumber", "0") or 0)


@dataclass
class StreamDelivery:
    """The poller of one mapping: a cursor on each shard of the stream, and the records read but not
    yet delivered.

    A stream's shards form a lineage: a shard closes (DynamoDB rolls them over, and splits them with
    the table's partitions) and its children take over. Like Lambda, the poller reads a child only
    once its parent is read to its end, so a key's records arrive in the order they were written,
    and a batch never mixes shards."""

    mapping: StreamMapping
    streams: Any  # a dynamodbstreams client
    lambda_client: Any
    _shards: list[dict[str, Any]] | None = None  # as DescribeStream listed them, oldest first
    _finished: set[str] = field(default_factory=set)  # closed shards read to their end
    _last_read: dict[str, str] = field(default_factory=dict)  # per shard: the last sequence number read
    _iterators: dict[str, str] = field(default_factory=dict)  # per shard: the next read (each used once)
    _pending: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (shard, record), in order
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _describe(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        request: dict[str, Any] = {"StreamArn": self.mapping.stream_arn}
        while True:
            description = self.streams.describe_stream(**request)["StreamDescription"]
            shards += description.get("Shards", [])
            if not description.get("LastEvaluatedShardId"):
                return sorted(shards, key=_starting_sequence)
            request["ExclusiveStartShardId"] = description["LastEvaluatedShardId"]

    def _readable(self) -> list[str]:
        """The shards to read now, oldest first: not finished, and whose parent is finished (or
        trimmed from the stream already)."""
        if self._shards is None:
            self._shards = self._describe()
        listed = {shard["ShardId"] for shard in self._shards}
        return [
            shard["ShardId"]
            for shard in self._shards
            if shard["ShardId"] not in self._finished
            and (shard.get("ParentShardId") not in listed or shard.get("ParentShardId") in self._finished)
        ]

    def _iterator(self, shard_id: str) -> str:
        if shard_id not in self._iterators:
            last = self._last_read.get(shard_id)
            position: dict[str, Any] = (
                {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": last}
                if last is not None
                else {"ShardIteratorType": "TRIM_HORIZON"}
            )
            self._iterators[shard_id] = self.streams.get_shard_iterator(
                StreamArn=self.mapping.stream_arn, ShardId=shard_id, **position
            )["ShardIterator"]
        return self._iterators[shard_id]

    def _read_shard(self, shard_id: str, limit: int, *, again: bool = False) -> list[dict[str, Any]]:
        try:
            page = self.streams.get_records(ShardIterator=self._iterator(shard_id), Limit=limit)
        except Exception as error:
            self._iterators.pop(shard_id, None)  # the next read starts after the last record read
            if shard_id not in self._last_read and not again and _error_code(error) == "TrimmedDataAccessException":
                # DynamoDB Local refuses the first iterator it handed out once its stream has records;
                # nothing was read yet, so starting at the trim horizon again skips nothing.
                return self._read_shard(shard_id, limit, again=True)
            raise
        records = [
            {**_wire(_images_as_aws_writes_them(record)), "eventSourceARN": self.mapping.stream_arn}
            for record in page.get("Records", [])
        ]
        if records:
            self._last_read[shard_id] = str(records[-1]["dynamodb"]["SequenceNumber"])
        if page.get("NextShardIterator"):
            self._iterators[shard_id] = page["NextShardIterator"]
        else:
            # Closed and read to its end: its children (listed by the next DescribeStream) come next.
            self._iterators.pop(shard_id, None)
            self._finished.add(shard_id)
            self._shards = None
        return records

    def _read(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``limit`` records of the oldest readable shard that has any, each with its shard."""
        while True:
            finished = len(self._finished)
            for shard_id in self._readable():
                records = self._read_shard(shard_id, limit)
                if records:
                    return [(shard_id, record) for record in records]
            if len(self._finished) == finished:  # no shard closed: nothing more to read now
                return []

    def _duplicated(self) -> bool:
        tags = self.lambda_client.list_tags(Resource=self.mapping.function_arn).get("Tags", {})
        return str(tags.get(DUPLICATE_DELIVERY_TAG, "")).lower() == "true"

    def _invoke(self, batch: list[dict[str, Any]]) -> int:
        """Deliver ``batch``; how many of its records are done (the rest are retried)."""
        response = self.lambda_client.invoke(
            FunctionName=self.mapping.function_name, Payload=json.dumps({"Records": batch}).encode()
        )
        payload = response["Payload"].read()
        if response.get("FunctionError"):
            return 0
        if not self.mapping.report_batch_item_failures:
            return len(batch)
        answer = json.loads(payload or b"null") or {}
        failed = {str(item.get("itemIdentifier")) for item in answer.get("batchItemFailures", [])}
        if not failed:
            return len(batch)
        # Lambda resumes at the lowest sequence number reported: everything before it is done.
        for position, record in enumerate(batch):
            if str(record["dynamodb"]["SequenceNumber"]) in failed:
                return position
        return 0  # identifiers that name no record of the batch: Lambda retries it all

    def deliver_pending(self) -> int:
        """Deliver every record written so far; returns how many were delivered. Stops at a batch
        that failed, which the next call delivers again from its first failed record."""
        delivered = 0
        with self._lock:
            while True:
                wanted = self.mapping.batch_size - len(self._pending)
                if wanted > 0:
                    self._pending += self._read(wanted)
                if not self._pending:
                    return delivered
                batch = _next_batch(self._pending, self.mapping.batch_size)
                done = self._invoke(batch)
                if done == len(batch) and self._duplicated():
                    self._invoke(batch)
                del self._pending[:done]
                delivered += done
                if done < len(batch):
                    return delivered


def deliveries(mappings: list[StreamMapping], streams: Any, lambda_client: Any) -> list[StreamDelivery]:
    return [StreamDelivery(mapping, streams, lambda_client) for mapping in mappings]


def deliver_all(pollers: list[StreamDelivery]) -> int:
    """Every stream's records so far, to their functions; how many were delivered."""
    return sum(poller.deliver_pending() for poller in pollers)


class StreamPoller:
    """A thread that keeps every mapping delivered until ``stop()``."""

    def __init__(self, pollers: list[StreamDelivery], on_error: Callable[[StreamMapping, Exception], None]) -> None:
        self._pollers = pollers
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dynamodb-streams->lambda", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            for poller in self._pollers:
                try:
                    poller.deliver_pending()
                except Exception as error:  # noqa: BLE001 - the emulator stopping, a read that failed: next tick
                    self._on_error(poller.mapping, error)
