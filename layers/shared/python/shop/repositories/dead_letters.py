"""Dead letters of the sagas, in OperationsTable (pk ``DEAD_LETTER``, sk ``ORDER#<order_id>``).

One record per order: a saga whose compensation still failed after its retries writes it (OPEN),
an operator's redrive moves it to REDRIVING, and the order step that finally settles the order
marks it RESOLVED. Operators list them in one partition, which stays small by nature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from shop.config import table_settings
from shop.errors import OrderContention
from shop.models.orders import DeadLetter, Failure, ResumePoint
from shop.repositories.dynamodb import (
    call,
    call_if,
    error_code,
    listable,
    marshal,
    partition_page,
    unmarshal,
)

PARTITION = "DEAD_LETTER"
# A Step Functions cause carries a stack trace; keep what an operator needs to read.
MAX_CAUSE_CHARS = 4000


def _key(order_id: str) -> dict[str, Any]:
    return {"pk": {"S": PARTITION}, "sk": {"S": f"ORDER#{order_id}"}}


def _to_dead_letter(item: Mapping[str, Any]) -> DeadLetter:
    return DeadLetter.model_validate(unmarshal(item))


def get(order_id: str) -> DeadLetter | None:
    response = call(
        "get_item",
        busy=OrderContention,
        TableName=table_settings().operations_table,
        Key=_key(order_id),
        ConsistentRead=True,
    )
    item = response.get("Item")
    return _to_dead_letter(item) if item else None


def record(
    *,
    order_id: str,
    resume: ResumePoint,
    failed_step: str,
    failure: Failure | None,
    error: str | None,
    cause: str | None,
    execution_name: str | None,
    now: str,
) -> DeadLetter:
    """Write (or reopen) the order's dead letter; the redrive count survives reopening."""
    values = {
        ":open": "OPEN",
        ":resume": resume,
        ":failed_step": failed_step,
        ":failure": failure.model_dump(mode="json") if failure else None,
        ":error": error,
        ":cause": cause[:MAX_CAUSE_CHARS] if cause else None,
        ":execution_name": execution_name,
        ":now": now,
        ":zero": 0,
    }
    response = call(
        "update_item",
        busy=OrderContention,
        TableName=table_settings().operations_table,
        Key=_key(order_id),
        UpdateExpression=(
            "SET #status = :open, order_id = :order_id, resume = :resume, failed_step = :failed_step, "
            "failure = :failure, #error = :error, cause = :cause, execution_name = :execution_name, "
            "updated_at = :now, created_at = if_not_exists(created_at, :now), "
            "redrive_count = if_not_exists(redrive_count, :zero)"
        ),
        ExpressionAttributeNames={"#status": "status", "#error": "error"},
        # None is stored as NULL so a reopened record does not keep a stale failure or error.
        ExpressionAttributeValues={
            **{
                name: ({"NULL": True} if value is None else marshal({"v": value})["v"])
                for name, value in values.items()
            },
            ":order_id": {"S": order_id},
        },
        ReturnValues="ALL_NEW",
    )
    return _to_dead_letter(response["Attributes"])


def _update_if(order_id: str, **request: Any) -> dict[str, Any] | None:
    """One conditional UpdateItem of the order's dead letter; None when its condition does not hold."""
    response: dict[str, Any] | None = call_if(
        "update_item", busy=OrderContention, TableName=table_settings().operations_table, Key=_key(order_id), **request
    )
    return response


def start_redrive(
    order_id: str, *, expected_count: int, execution_name: str, epoch: int, now: str
) -> DeadLetter | None:
    """OPEN -> REDRIVING as redrive number ``expected_count + 1`` at claim ``epoch``; None if someone
    else moved it first."""
    response = _update_if(
        order_id,
        UpdateExpression=(
            "SET #status = :redriving, redrive_count = :next, redrive_execution = :execution, "
            "redrive_epoch = :epoch, redrive_started_at = :now, updated_at = :now"
        ),
        ConditionExpression="#status = :open AND redrive_count = :expected",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={
            ":redriving": {"S": "REDRIVING"},
            ":open": {"S": "OPEN"},
            ":next": {"N": str(expected_count + 1)},
            ":expected": {"N": str(expected_count)},
            ":execution": {"S": execution_name},
            ":epoch": {"N": str(epoch)},
            ":now": {"S": now},
        },
        ReturnValues="ALL_NEW",
    )
    return _to_dead_letter(response["Attributes"]) if response is not None else None


def reopen_redrive(order_id: str, *, execution_name: str, error: str | None, cause: str | None, now: str) -> bool:
    """REDRIVING -> OPEN when ``execution_name`` is the redrive that stopped without settling the
    order (aborted, timed out, failed before its own flag step); False if the letter moved on."""
    response = _update_if(
        order_id,
        UpdateExpression="SET #status = :open, #error = :error, cause = :cause, updated_at = :now",
        ConditionExpression="#status = :redriving AND redrive_execution = :execution",
        ExpressionAttributeNames={"#status": "status", "#error": "error"},
        ExpressionAttributeValues={
            ":open": {"S": "OPEN"},
            ":redriving": {"S": "REDRIVING"},
            ":execution": {"S": execution_name},
            ":error": {"S": error} if error else {"NULL": True},
            ":cause": {"S": cause[:MAX_CAUSE_CHARS]} if cause else {"NULL": True},
            ":now": {"S": now},
        },
    )
    return response is not None


def resolve(order_id: str, *, now: str) -> None:
    """Mark the order's dead letter RESOLVED; a no-op when there is none or it is resolved."""
    _update_if(
        order_id,
        UpdateExpression="SET #status = :resolved, updated_at = :now",
        ConditionExpression="attribute_exists(pk) AND #status <> :resolved",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":resolved": {"S": "RESOLVED"}, ":now": {"S": now}},
    )


def resolve_as_read(letter: DeadLetter, *, order_unchanged: Mapping[str, Any], now: str) -> bool:
    """Mark an OPEN letter RESOLVED only if it and its order are still as they were read; False if not.

    For a decision made from an earlier read (the books check's): the letter written again since (a
    refund that failed, flagged anew) or the order moved on (``order_unchanged``, a transaction's
    condition on it) leaves the letter as it stands, for the next run to judge. So does a write racing
    this one.
    """
    try:
        call(
            "transact_write_items",
            busy=OrderContention,
            TransactItems=[
                {
                    "Update": {
                        "TableName": table_settings().operations_table,
                        "Key": _key(letter.order_id),
                        "UpdateExpression": "SET #status = :resolved, updated_at = :now",
                        "ConditionExpression": "#status = :open AND updated_at = :seen",
                        "ExpressionAttributeNames": {"#status": "status"},
                        "ExpressionAttributeValues": {
                            ":resolved": {"S": "RESOLVED"},
                            ":open": {"S": "OPEN"},
                            ":seen": {"S": letter.updated_at},
                            ":now": {"S": now},
                        },
                    }
                },
                dict(order_unchanged),
            ],
        )
    except ClientError as error:
        # A failed condition, or a write racing this one (TransactionConflict): the next run decides.
        if error_code(error) == "TransactionCanceledException":
            return False
        raise
    return True


def list_page(*, limit: int, start_key: Mapping[str, Any] | None) -> tuple[list[DeadLetter], dict[str, Any] | None]:
    """One page of dead letters (by order id) and DynamoDB's key to continue from (low-level shape)."""
    items, last_key = partition_page(
        table_settings().operations_table, PARTITION, limit=limit, start_key=start_key, busy=OrderContention
    )
    return listable(items, _to_dead_letter, key="sk"), last_key
