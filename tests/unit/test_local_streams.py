"""The local stack's stream delivery (infra/local/streams.py) against fake Streams and Lambda APIs:
batches in stream order, a partial failure retried from its first failed record, an invocation
error retried whole, the duplicated-delivery hook, and a failed read resumed after the last record."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from infra.local.streams import DUPLICATE_DELIVERY_TAG, StreamDelivery, StreamMapping

MAPPING = StreamMapping(
    function_name="publisher",
    function_arn="arn:aws:lambda:us-east-1:123456789012:function:publisher",
    table_name="orders",
    stream_arn="arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/1",
    batch_size=2,
    report_batch_item_failures=True,
)


class FakeStreams:
    """One shard; iterators are positions, each usable once (as moto_dynamodb makes them)."""

    def __init__(self, count: int) -> None:
        self.records: list[dict[str, Any]] = [
            {"eventID": str(n), "dynamodb": {"SequenceNumber": str(100 + n)}} for n in range(count)
        ]
        self.live: dict[str, int] = {}
        self.fail_next_read = False
        self.trim_next_read = False

    def _iterator(self, position: int) -> str:
        name = f"it-{len(self.live)}-{position}"
        self.live[name] = position
        return name

    def describe_stream(self, **request: Any) -> dict[str, Any]:
        return {"StreamDescription": {"Shards": [{"ShardId": "shard-1"}]}}

    def get_shard_iterator(self, **request: Any) -> dict[str, Any]:
        if request["ShardIteratorType"] == "TRIM_HORIZON":
            return {"ShardIterator": self._iterator(0)}
        assert request["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER"
        return {"ShardIterator": self._iterator(int(request["SequenceNumber"]) - 100 + 1)}

    def get_records(self, **request: Any) -> dict[str, Any]:
        position = self.live.pop(request["ShardIterator"])
        if self.fail_next_read:
            self.fail_next_read = False
            raise ConnectionError("the emulator went away")
        if self.trim_next_read:
            self.trim_next_read = False
            raise ClientError({"Error": {"Code": "TrimmedDataAccessException", "Message": "trimmed"}}, "GetRecords")
        page = self.records[position : position + request["Limit"]]
        return {"Records": page, "NextShardIterator": self._iterator(position + len(page))}


class FakeLambda:
    """Answers each invocation with what ``answers`` says (default: every record done)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.answers: list[dict[str, Any] | None] = []  # None: the function errored
        self.tags: dict[str, str] = {}

    def invoke(self, **request: Any) -> dict[str, Any]:
        batch = json.loads(request["Payload"])["Records"]
        assert all(record["eventSourceARN"] == MAPPING.stream_arn for record in batch)
        self.batches.append([record["eventID"] for record in batch])
        answer = self.answers.pop(0) if self.answers else {"batchItemFailures": []}
        if answer is None:
            return {"FunctionError": "Unhandled", "Payload": io.BytesIO(b'{"errorType": "RuntimeError"}')}
        return {"Payload": io.BytesIO(json.dumps(answer).encode())}

    def list_tags(self, **request: Any) -> dict[str, Any]:
        return {"Tags": self.tags}


def _delivery(count: int) -> tuple[StreamDelivery, FakeStreams, FakeLambda]:
    streams, functions = FakeStreams(count), FakeLambda()
    return StreamDelivery(MAPPING, streams, functions), streams, functions


def test_every_record_is_delivered_once_in_order_in_batches() -> None:
    delivery, _, functions = _delivery(5)
    assert delivery.deliver_pending() == 5
    assert functions.batches == [["0", "1"], ["2", "3"], ["4"]]
    assert delivery.deliver_pending() == 0
    assert len(functions.batches) == 3


def test_a_partial_failure_is_retried_from_its_first_failed_record() -> None:
    delivery, _, functions = _delivery(4)
    functions.answers = [{"batchItemFailures": [{"itemIdentifier": "101"}]}]

    assert delivery.deliver_pending() == 1  # record 0 done; 1 failed: this call stops there
    assert delivery.deliver_pending() == 3

    assert functions.batches == [["0", "1"], ["1", "2"], ["3"]]


def test_an_invocation_error_retries_the_whole_batch() -> None:
    delivery, _, functions = _delivery(2)
    functions.answers = [None]

    assert delivery.deliver_pending() == 0
    assert delivery.deliver_pending() == 2

    assert functions.batches == [["0", "1"], ["0", "1"]]


def test_a_tagged_function_gets_every_batch_twice() -> None:
    delivery, _, functions = _delivery(3)
    functions.tags = {DUPLICATE_DELIVERY_TAG: "true"}

    assert delivery.deliver_pending() == 3

    assert functions.batches == [["0", "1"], ["0", "1"], ["2"], ["2"]]


def test_a_failed_read_resumes_after_the_last_record_read() -> None:
    delivery, streams, functions = _delivery(4)
    assert delivery.deliver_pending() == 4
    streams.records += [{"eventID": str(n), "dynamodb": {"SequenceNumber": str(100 + n)}} for n in (4, 5)]
    streams.fail_next_read = True

    with pytest.raises(ConnectionError):
        delivery.deliver_pending()
    assert delivery.deliver_pending() == 2

    assert functions.batches[-1] == ["4", "5"]


def test_an_empty_map_reaches_the_function_as_aws_writes_it() -> None:
    # DynamoDB Local's stream writes {"M": {}} as {}, which no deserializer accepts: the order
    # publisher failed every record in `make bench` until the poller wrote it as AWS does.
    delivery, streams, functions = _delivery(1)
    streams.records[0]["dynamodb"] |= {
        "Keys": {"order_id": {"S": "o-1"}},
        "NewImage": {
            "order_id": {"S": "o-1"},
            "stock_shards": {},
            "lines": {"L": [{"M": {"sku": {"S": "A"}, "limits": {}}}]},
            "nested": {"M": {"inner": {}}},
        },
    }
    delivered: list[dict[str, Any]] = []
    original = functions.invoke

    def invoke(**request: Any) -> dict[str, Any]:
        delivered.extend(json.loads(request["Payload"])["Records"])
        return original(**request)

    functions.invoke = invoke  # type: ignore[method-assign]
    delivery.deliver_pending()

    image = delivered[0]["dynamodb"]["NewImage"]
    assert image["stock_shards"] == {"M": {}}
    assert image["lines"] == {"L": [{"M": {"sku": {"S": "A"}, "limits": {"M": {}}}}]}
    assert image["nested"] == {"M": {"inner": {"M": {}}}}
    assert image["order_id"] == {"S": "o-1"}


def test_a_first_iterator_refused_as_trimmed_starts_again_at_the_trim_horizon() -> None:
    # DynamoDB Local refuses the first iterator once its stream has records (`make bench` printed it
    # for every stream); nothing was read, so a fresh TRIM_HORIZON iterator skips nothing.
    delivery, streams, functions = _delivery(3)
    streams.trim_next_read = True

    assert delivery.deliver_pending() == 3
    assert functions.batches == [["0", "1"], ["2"]]


def test_a_later_trimmed_read_is_an_error_for_the_poller_to_report() -> None:
    delivery, streams, functions = _delivery(3)
    assert delivery.deliver_pending() == 3
    streams.records.append({"eventID": "3", "dynamodb": {"SequenceNumber": "103"}})
    streams.trim_next_read = True

    with pytest.raises(ClientError):
        delivery.deliver_pending()
    assert delivery.deliver_pending() == 1
    assert functions.batches[-1] == ["3"]
