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


@dataclass
class StreamDelivery:
    """The poller of one mapping: a cursor on the stream and the records read but not yet delivered."""

    mapping: StreamMapping
    streams: Any  # a dynamodbstreams client
    lambda_client: Any
    _iterator: str | None = None
    _last_read: str | None = None
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _read(self, limit: int, *, again: bool = False) -> list[dict[str, Any]]:
        if self._iterator is None:
            shards = self.streams.describe_stream(StreamArn=self.mapping.stream_arn)["StreamDescription"]["Shards"]
            if not shards:
                return []
            position: dict[str, Any] = (
                {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": self._last_read}
                if self._last_read is not None
                else {"ShardIteratorType": "TRIM_HORIZON"}
            )
            self._iterator = self.streams.get_shard_iterator(
                StreamArn=self.mapping.stream_arn, ShardId=shards[0]["ShardId"], **position
            )["ShardIterator"]
        try:
            page = self.streams.get_records(ShardIterator=self._iterator, Limit=limit)
        except Exception as error:
            self._iterator = None  # an iterator is used once: the next read starts after the last record read
            if self._last_read is None and not again and _error_code(error) == "TrimmedDataAccessException":
                # DynamoDB Local refuses the first iterator it handed out once its stream has records;
                # nothing was read yet, so starting at the trim horizon again skips nothing.
                return self._read(limit, again=True)
            raise
        self._iterator = page.get("NextShardIterator")
        records = [
            {**_wire(_images_as_aws_writes_them(record)), "eventSourceARN": self.mapping.stream_arn}
            for record in page.get("Records", [])
        ]
        if records:
            self._last_read = str(records[-1]["dynamodb"]["SequenceNumber"])
        return records

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
                batch = self._pending[: self.mapping.batch_size]
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
