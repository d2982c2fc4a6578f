"""The moto DynamoDB adapter's shortcuts change nothing a client can see.

infra/local/moto_dynamodb.py snapshots only the items a transaction names (a cancelled transaction
must leave nothing it wrote and touch nothing else, as on DynamoDB), and writes item answers with
``json.dumps`` instead of moto's model-driven serializer (the two must agree), and parses each
expression text once (each request's values must still be the ones applied), and answers a Query
from its partition (the same items, order and pages).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.dynamodb.responses import DynamoHandler

from infra.local import moto_dynamodb

TABLE = "adapter-test"


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    moto_dynamodb.install()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        yield client


def _key(pk: str, sk: str = "A") -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _count(client: Any, pk: str) -> int | None:
    item = client.get_item(TableName=TABLE, Key=_key(pk)).get("Item")
    return int(item["count"]["N"]) if item else None


def _stream_records(client: Any) -> int:
    """Change records the table's stream holds (moto does not serve DescribeStream; read its backend)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    shard = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].tables[TABLE].stream_shard
    assert shard is not None
    return len(shard.items)


def test_a_cancelled_transaction_undoes_the_writes_it_applied_before_failing(dynamodb: Any) -> None:
    dynamodb.put_item(TableName=TABLE, Item={**_key("stock"), "count": {"N": "5"}})
    dynamodb.put_item(TableName=TABLE, Item={**_key("guard"), "count": {"N": "0"}})
    records_before = _stream_records(dynamodb)

    with pytest.raises(dynamodb.exceptions.TransactionCanceledException):
        dynamodb.transact_write_items(
            TransactItems=[
                # moto applies these in order: the first two are written before the third fails.
                {
                    "Update": {
                        "TableName": TABLE,
                        "Key": _key("stock"),
                        "UpdateExpression": "SET #c = #c - :one",
                        "ExpressionAttributeNames": {"#c": "count"},
                        "ExpressionAttributeValues": {":one": {"N": "1"}},
                    }
                },
                {"Put": {"TableName": TABLE, "Item": {**_key("new"), "count": {"N": "1"}}}},
                {
                    "ConditionCheck": {
                        "TableName": TABLE,
                        "Key": _key("guard"),
                        "ConditionExpression": "#c > :zero",
                        "ExpressionAttributeNames": {"#c": "count"},
                        "ExpressionAttributeValues": {":zero": {"N": "0"}},
                    }
                },
            ]
        )

    assert _count(dynamodb, "stock") == 5
    assert _count(dynamodb, "new") is None
    assert _stream_records(dynamodb) == records_before  # no change event for a write that never happened


def test_a_cancelled_transaction_leaves_other_items_of_its_tables_alone(dynamodb: Any) -> None:
    dynamodb.put_item(TableName=TABLE, Item={**_key("other"), "count": {"N": "7"}})

    with pytest.raises(dynamodb.exceptions.TransactionCanceledException):
        dynamodb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": TABLE, "Item": {**_key("a"), "count": {"N": "1"}}}},
                {
                    "Put": {
                        "TableName": TABLE,
                        "Item": {**_key("b"), "count": {"N": "1"}},
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                },
            ]
        )
    dynamodb.update_item(
        TableName=TABLE,
        Key=_key("other"),
        UpdateExpression="SET #c = :eight",
        ExpressionAttributeNames={"#c": "count"},
        ExpressionAttributeValues={":eight": {"N": "8"}},
    )

    assert _count(dynamodb, "other") == 8
    assert (_count(dynamodb, "a"), _count(dynamodb, "b")) == (None, None)


def test_a_committed_transaction_writes_every_item(dynamodb: Any) -> None:
    dynamodb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": TABLE, "Item": {**_key("x"), "count": {"N": "1"}}}},
            {"Put": {"TableName": TABLE, "Item": {**_key("y"), "count": {"N": "2"}}}},
        ]
    )

    assert (_count(dynamodb, "x"), _count(dynamodb, "y")) == (1, 2)


def test_item_answers_written_directly_equal_what_motos_serializer_writes(
    dynamodb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[str] = []

    def both(handler: Any, action_result: Any) -> Any:
        fast = moto_dynamodb._serialized(handler, action_result)
        reference = moto_dynamodb._ORIGINAL_SERIALIZED(handler, action_result)
        assert fast[0] == reference[0]
        assert fast[1]["Content-Type"] == reference[1]["Content-Type"]
        assert json.loads(fast[2] or "{}") == json.loads(reference[2] or "{}")
        compared.append(handler._get_action())
        return fast

    monkeypatch.setattr(DynamoHandler, "serialized", both)
    item = {**_key("p", "1"), "count": {"N": "1"}, "tags": {"SS": ["a", "b"]}, "blob": {"B": b"\x00\x01"}}
    dynamodb.put_item(TableName=TABLE, Item=item)
    dynamodb.put_item(TableName=TABLE, Item={**item, **_key("p", "2")}, ReturnValues="ALL_OLD")
    dynamodb.get_item(TableName=TABLE, Key=_key("p", "1"), ReturnConsumedCapacity="TOTAL")
    dynamodb.update_item(
        TableName=TABLE,
        Key=_key("p", "1"),
        UpdateExpression="ADD #c :one SET nested = :nested",
        ExpressionAttributeNames={"#c": "count"},
        ExpressionAttributeValues={
            ":one": {"N": "1"},
            ":nested": {"M": {"l": {"L": [{"BOOL": True}, {"NULL": True}]}}},
        },
        ReturnValues="ALL_NEW",
    )
    dynamodb.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "p"}},
        Limit=1,
        ReturnConsumedCapacity="INDEXES",
    )
    dynamodb.scan(TableName=TABLE, Select="COUNT")
    dynamodb.batch_get_item(RequestItems={TABLE: {"Keys": [_key("p", "1"), _key("p", "missing")]}})
    dynamodb.transact_get_items(TransactItems=[{"Get": {"TableName": TABLE, "Key": _key("p", "2")}}])
    dynamodb.transact_write_items(
        TransactItems=[{"Put": {"TableName": TABLE, "Item": {**_key("p", "3"), "count": {"N": "0"}}}}]
    )
    dynamodb.batch_write_item(RequestItems={TABLE: [{"DeleteRequest": {"Key": _key("p", "3")}}]})
    dynamodb.delete_item(TableName=TABLE, Key=_key("p", "2"), ReturnValues="ALL_OLD")

    assert set(compared) >= moto_dynamodb.ITEM_OPERATIONS


def _add(client: Any, pk: str, amount: int, *, expected: int | None = None, table: str = TABLE) -> None:
    """The same expressions every time, with new values: what the expression cache sees."""
    values: dict[str, Any] = {":n": {"N": str(amount)}, ":zero": {"N": "0"}}
    condition = "attribute_not_exists(pk) OR #c >= :zero"
    if expected is not None:
        values[":expected"] = {"N": str(expected)}
        condition = "attribute_not_exists(pk) OR #c = :expected"
    client.update_item(
        TableName=table,
        Key=_key(pk),
        UpdateExpression="SET #c = if_not_exists(#c, :zero) + :n",
        ConditionExpression=condition,
        ExpressionAttributeNames={"#c": "count"},
        ExpressionAttributeValues=values,
    )


def test_expressions_parsed_once_still_bind_each_requests_values(dynamodb: Any) -> None:
    _add(dynamodb, "a", 1)
    _add(dynamodb, "a", 5)
    _add(dynamodb, "b", 2)
    _add(dynamodb, "a", 10, expected=6)
    with pytest.raises(dynamodb.exceptions.ConditionalCheckFailedException):
        _add(dynamodb, "a", 100, expected=6)  # the same condition text, a value that no longer holds

    assert (_count(dynamodb, "a"), _count(dynamodb, "b")) == (16, 2)


def test_an_update_still_gives_the_stream_its_old_image_and_other_tables_their_new_item(dynamodb: Any) -> None:
    dynamodb.create_table(
        TableName="no-stream",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    _add(dynamodb, "s", 3)
    _add(dynamodb, "s", 4)
    _add(dynamodb, "n", 3, table="no-stream")
    _add(dynamodb, "n", 4, table="no-stream")

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    shard = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].tables[TABLE].stream_shard
    assert shard is not None
    last = shard.items[-1].to_json()["dynamodb"]
    assert (last["OldImage"]["count"], last["NewImage"]["count"]) == ({"N": "3"}, {"N": "7"})
    item = dynamodb.get_item(TableName="no-stream", Key=_key("n"))["Item"]
    assert item["count"] == {"N": "7"}


def test_a_query_reads_its_partition_in_order_and_pages_as_before(dynamodb: Any) -> None:
    dynamodb.update_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "kind", "AttributeType": "S"}],
        GlobalSecondaryIndexUpdates=[
            {
                "Create": {
                    "IndexName": "ByKind",
                    "KeySchema": [
                        {"AttributeName": "kind", "KeyType": "HASH"},
                        {"AttributeName": "sk", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            }
        ],
    )
    for pk in ("ledger#2", "ledger#1", "ledger#3"):
        for sk in ("capture#2", "authorization", "capture#1", "void#1"):
            kind = {"S": "capture"} if sk.startswith("capture") else {"S": "other"}
            dynamodb.put_item(TableName=TABLE, Item={**_key(pk, sk), "kind": kind})

    def query(**request: Any) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        while True:
            page = dynamodb.query(TableName=TABLE, Limit=2, **request)
            found += [(item["pk"]["S"], item["sk"]["S"]) for item in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return found
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    partition = {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "ledger#1"}}}
    assert query(**partition) == [("ledger#1", sk) for sk in ("authorization", "capture#1", "capture#2", "void#1")]
    assert query(**partition, ScanIndexForward=False)[0] == ("ledger#1", "void#1")
    prefix = {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :capture)",
        "ExpressionAttributeValues": {":pk": {"S": "ledger#3"}, ":capture": {"S": "capture#"}},
    }
    assert query(**prefix) == [("ledger#3", "capture#1"), ("ledger#3", "capture#2")]
    missing = {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "ledger#9"}}}
    assert query(**missing) == []
    by_kind = {
        "IndexName": "ByKind",
        "KeyConditionExpression": "kind = :kind",
        "ExpressionAttributeValues": {":kind": {"S": "capture"}},
    }
    assert sorted(query(**by_kind)) == [
        (pk, sk) for pk in ("ledger#1", "ledger#2", "ledger#3") for sk in ("capture#1", "capture#2")
    ]
    scanned = dynamodb.scan(TableName=TABLE)["Items"]
    assert [(i["pk"]["S"], i["sk"]["S"]) for i in scanned][:2] == [
        ("ledger#1", "authorization"),
        ("ledger#1", "capture#1"),
    ]


def test_the_dynamodb_process_exits_when_the_process_that_started_it_dies() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    starter = (
        "from infra.local.moto_dynamodb import MotoDynamoDBProcess\n"
        "running = MotoDynamoDBProcess.start()\n"
        "print(running.process.pid, flush=True)\n"
        "input()\n"  # until killed
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starter],
        cwd=root,
        env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'layers/shared/python'}"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)  # no cleanup code runs
    parent.wait(timeout=30)

    def running() -> bool:
        # An exited process nobody reaped yet is a zombie ("Z"): it no longer holds its ports.
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    deadline = time.monotonic() + 30
    while running():
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            pytest.fail(f"moto's DynamoDB process {child} outlived its parent")
        time.sleep(0.05)  # polling the condition, bounded by the deadline


def test_the_dynamodb_process_stops_cleanly() -> None:
    running = moto_dynamodb.MotoDynamoDBProcess.start()
    running.stop()
    assert running.process.returncode == 0  # no abort at shutdown from the thread that watches its parent


def test_a_request_after_the_process_stopped_fails_at_once_instead_of_waiting_on_its_port() -> None:
    from botocore.config import Config
    from botocore.exceptions import EndpointConnectionError

    running = moto_dynamodb.MotoDynamoDBProcess.start()
    moto_dynamodb.install_client_transport(running)
    try:
        client = boto3.client(
            "dynamodb",
            endpoint_url=running.endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=5),
        )
        assert client.list_tables()["TableNames"] == []  # handed to the process
    finally:
        running.stop()
    # Stopping hands nothing more to the process: the request goes to its (closed) HTTP port.
    assert moto_dynamodb.remote_endpoint is None
    with pytest.raises(EndpointConnectionError):
        client.list_tables()


def test_a_port_that_never_greets_fails_the_connection_instead_of_hanging_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port that accepts and stays silent (another server took the stopped process's port)."""
    monkeypatch.setattr(moto_dynamodb, "HANDSHAKE_SECONDS", 1)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the connection; nobody ever speaks on it
        with pytest.raises(OSError):
            moto_dynamodb._connect(silent.getsockname(), b"key")


def test_connections_pooled_for_a_stopped_process_never_serve_the_next_one() -> None:
    first = moto_dynamodb.MotoDynamoDBProcess.start()
    moto_dynamodb.install_client_transport(first)
    try:
        client = _client(first.endpoint)
        client.create_table(
            TableName="only-in-the-first",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        second = moto_dynamodb.MotoDynamoDBProcess.start()
        try:
            moto_dynamodb.install_client_transport(second)  # the first one still runs
            client = _client(second.endpoint)
            assert client.list_tables()["TableNames"] == []
        finally:
            second.stop()
    finally:
        first.stop()


def _client(endpoint: str) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
