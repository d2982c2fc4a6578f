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
