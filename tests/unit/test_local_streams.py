"""The local stack's stream delivery (infra/local/streams.py) against fake Streams and Lambda APIs:
batches in stream order, a partial failure retried from its first failed record, an invocation
error retried whole, the duplicated-delivery hook, a failed read resumed after the last record, and
a stream's shards followed from parent to children."""

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


def _record(n: int) -> dict[str, Any]:
    return {"eventID": str(n), "dynamodb": {"SequenceNumber": str(100 + n)}}


class FakeStreams:
    """Shards of records; iterators are positions, each usable once (as moto_dynamodb makes them).
    ``records`` is the first shard's; ``roll_over`` closes a shard and opens its children, as
    DynamoDB does (moto never does, DynamoDB Local and AWS do). DescribeStream lists one shard a
    page, newest first, so the poller must page and order them itself."""

    def __init__(self, count: int) -> None:
        self.shards: dict[str, dict[str, Any]] = {
            "shard-1": {"records": [_record(n) for n in range(count)], "parent": None, "closed": False}
        }
        self.live: dict[str, tuple[str, int]] = {}
        self.fail_next_read = False
        self.trim_next_read = False

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.shards["shard-1"]["records"]

    def roll_over(self, parent: str, children: dict[str, list[int]]) -> None:
        self.shards[parent]["closed"] = True
        for shard_id, numbers in children.items():
            self.shards[shard_id] = {"records": [_record(n) for n in numbers], "parent": parent, "closed": False}

    def _iterator(self, shard_id: str, position: int) -> str:
        name = f"it-{len(self.live)}-{shard_id}-{position}"
        self.live[name] = (shard_id, position)
        return name

    def describe_stream(self, **request: Any) -> dict[str, Any]:
        listed = list(reversed(self.shards))
        at = listed.index(request["ExclusiveStartShardId"]) + 1 if "ExclusiveStartShardId" in request else 0
        shard_id = listed[at]
        shard = self.shards[shard_id]
        first = shard["records"][0]["dynamodb"]["SequenceNumber"] if shard["records"] else "999"
        description: dict[str, Any] = {
            "Shards": [
                {"ShardId": shard_id, "SequenceNumberRange": {"StartingSequenceNumber": first}}
                | ({"ParentShardId": shard["parent"]} if shard["parent"] else {})
            ]
        }
        if at + 1 < len(listed):
            description["LastEvaluatedShardId"] = shard_id
        return {"StreamDescription": description}

    def get_shard_iterator(self, **request: Any) -> dict[str, Any]:
        shard_id = request["ShardId"]
        if request["ShardIteratorType"] == "TRIM_HORIZON":
            return {"ShardIterator": self._iterator(shard_id, 0)}
        assert request["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER"
        numbers = [record["dynamodb"]["SequenceNumber"] for record in self.shards[shard_id]["records"]]
        return {"ShardIterator": self._iterator(shard_id, numbers.index(request["SequenceNumber"]) + 1)}

    def get_records(self, **request: Any) -> dict[str, Any]:
        shard_id, position = self.live.pop(request["ShardIterator"])
        if self.fail_next_read:
            self.fail_next_read = False
            raise ConnectionError("the emulator went away")
        if self.trim_next_read:
            self.trim_next_read = False
            raise ClientError({"Error": {"Code": "TrimmedDataAccessException", "Message": "trimmed"}}, "GetRecords")
        shard = self.shards[shard_id]
        page = shard["records"][position : position + request["Limit"]]
        end = position + len(page)
        if shard["closed"] and end == len(shard["records"]):
            return {"Records": page}  # closed and read to its end: no next iterator
        return {"Records": page, "NextShardIterator": self._iterator(shard_id, end)}


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
    streams.records.extend(_record(n) for n in (4, 5))
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
    streams.records.append(_record(3))
    streams.trim_next_read = True

    with pytest.raises(ClientError):
        delivery.deliver_pending()
    assert delivery.deliver_pending() == 1
    assert functions.batches[-1] == ["3"]


def test_a_closed_shard_is_read_to_its_end_before_its_children_and_a_batch_keeps_to_one_shard() -> None:
    # DynamoDB rolls a stream's shards over (and splits them with the table's partitions): a poller
    # that read only the first shard stopped delivering at its first roll-over, for good.
    delivery, streams, functions = _delivery(3)
    streams.roll_over("shard-1", {"shard-2": [3, 4, 5], "shard-3": [6]})
    streams.roll_over("shard-2", {"shard-4": [7]})

    assert delivery.deliver_pending() == 8
    assert functions.batches == [["0", "1"], ["2"], ["3", "4"], ["5"], ["6"], ["7"]]


def test_a_shard_that_closes_after_the_last_read_is_finished_and_its_child_followed() -> None:
    delivery, streams, functions = _delivery(2)
    assert delivery.deliver_pending() == 2
    streams.records.append(_record(2))
    streams.roll_over("shard-1", {"shard-2": [3]})

    assert delivery.deliver_pending() == 2
    assert delivery.deliver_pending() == 0
    streams.shards["shard-2"]["records"].append(_record(4))
    assert delivery.deliver_pending() == 1

    assert functions.batches == [["0", "1"], ["2"], ["3"], ["4"]]
