"""``repositories.dynamodb.call``: which failures a repository's caller sees as worth retrying."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from shop import aws
from shop.errors import InventoryContention
from shop.repositories import dynamodb


class _FailingClient:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def put_item(self, **request: Any) -> Any:
        raise self.error


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "PutItem")


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:4566"),
        ConnectionClosedError(endpoint_url="http://127.0.0.1:4566"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:4566"),
        _client_error("ThrottlingException"),
        _client_error("InternalServerError"),
    ],
    ids=lambda error: type(error).__name__ if not isinstance(error, ClientError) else error.response["Error"]["Code"],
)
def test_a_request_without_an_answer_or_refused_as_busy_raises_the_callers_transient_error(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    # Lost answers used to escape as botocore's own exceptions, which no step's Retry names: the
    # saga caught them as a failed step (a reservation then ended OUT_OF_STOCK) instead of retrying.
    monkeypatch.setattr(aws, "dynamodb", lambda: _FailingClient(error))

    with pytest.raises(InventoryContention) as raised:
        dynamodb.call("put_item", busy=InventoryContention, TableName="t", Item={})
    assert raised.value.__cause__ is error


def test_a_refused_condition_is_the_client_error_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = _client_error("ConditionalCheckFailedException")
    monkeypatch.setattr(aws, "dynamodb", lambda: _FailingClient(refused))

    with pytest.raises(ClientError) as raised:
        dynamodb.call("put_item", busy=InventoryContention, TableName="t", Item={})
    assert raised.value is refused
    assert dynamodb.call_if("put_item", busy=InventoryContention, TableName="t", Item={}) is None


class _ThrottledBatchReads:
    """A BatchGetItem that answers ``answered`` keys of each request and hands the rest back unprocessed,
    as DynamoDB does under throttling; ``answered=0`` is a table that never reads anything."""

    def __init__(self, answered: int) -> None:
        self.answered = answered
        self.requests: list[list[Any]] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> Any:  # noqa: N803 (boto3's argument name)
        (table, request), *_ = RequestItems.items()
        keys = request["Keys"]
        self.requests.append(keys)
        read, left = keys[: self.answered], keys[self.answered :]
        answer: dict[str, Any] = {"Responses": {table: [dict(key) for key in read]}}
        if left:
            answer["UnprocessedKeys"] = {table: {**request, "Keys": left}}
        return answer


def _keys(count: int) -> list[dict[str, Any]]:
    return [{"id": {"S": f"k{n:03}"}} for n in range(count)]


def test_a_batch_read_asks_again_for_the_keys_left_unprocessed_in_requests_of_at_most_100(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = _ThrottledBatchReads(answered=60)
    monkeypatch.setattr(aws, "dynamodb", lambda: client)
    monkeypatch.setattr(dynamodb.time, "sleep", lambda seconds: None)

    read = list(dynamodb.batch_get("t", _keys(150), busy=InventoryContention))

    assert sorted(item["id"]["S"] for item in read) == [key["id"]["S"] for key in _keys(150)]
    assert [len(keys) for keys in client.requests] == [100, 40, 50]


def test_a_batch_read_a_throttled_table_never_answers_backs_off_then_gives_up_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The orders' reader asked again at once and without end: a throttled table was hammered in a tight
    # loop and the listing never answered. Every batch reader now backs off and gives up after 5 tries.
    client = _ThrottledBatchReads(answered=0)
    pauses: list[float] = []
    monkeypatch.setattr(aws, "dynamodb", lambda: client)
    monkeypatch.setattr(dynamodb.time, "sleep", pauses.append)

    with pytest.raises(InventoryContention):
        list(dynamodb.batch_get("t", _keys(3), busy=InventoryContention))

    assert len(client.requests) == 5
    assert len(pauses) == 4 and all(0 <= pause <= 0.05 * 2**attempt for attempt, pause in enumerate(pauses))
