"""Stream records the event publishers could not read, in OperationsTable (pk ``UNREADABLE_RECORD``,
sk ``<source>-<sequence number>``).

One item per stream record, holding the whole record (as JSON text: its images keep DynamoDB's
typed attribute values as they came; compressed when large, and cut to its keys when even that
would not fit one item). Setting a record aside twice (a redelivered batch) counts
an attempt on the item already there. The partition stays small by nature: a record lands here
only when a publisher's code cannot read it, and an operator fixes that code.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

from shop.config import table_settings
from shop.errors import TransientError
from shop.models.events import UnreadableRecord
from shop.repositories.dynamodb import call, call_if, every_item, listable, partition_page

PARTITION = "UNREADABLE_RECORD"
# An exception's message can quote a whole image; keep what an operator needs to read.
MAX_DETAIL_CHARS = 2000
# A MODIFY record carries two images of up to 400 KB each, and an item holds 400 KB in all: a
# record kept as text above this size is compressed, and one still above it keeps no images.
# Storing it failed before, every retry alike, and held up every record behind it in the shard.
MAX_RECORD_BYTES = 300_000
_IMAGES = ("NewImage", "OldImage")


def _stored_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The ``record`` attribute(s) of the item: the JSON text, or compressed, or without its images."""
    text = json.dumps(record, sort_keys=True)
    if len(text.encode()) <= MAX_RECORD_BYTES:
        return {"record": {"S": text}}
    packed = zlib.compress(text.encode(), 9)
    if len(packed) <= MAX_RECORD_BYTES:
        return {"record_zlib": {"B": packed}}
    dynamodb = {key: value for key, value in record.get("dynamodb", {}).items() if key not in _IMAGES}
    return {"record": {"S": json.dumps({**record, "dynamodb": dynamodb}, sort_keys=True)}, "record_cut": {"BOOL": True}}


def _record_of(item: Mapping[str, Any]) -> dict[str, Any]:
    if "record_zlib" in item:
        return dict(json.loads(zlib.decompress(item["record_zlib"]["B"])))
    return dict(json.loads(item["record"]["S"]))


def _key(record_id: str) -> dict[str, Any]:
    return {"pk": {"S": PARTITION}, "sk": {"S": record_id}}


def _to_record(item: Mapping[str, Any]) -> UnreadableRecord:
    return UnreadableRecord(
        record_id=item["sk"]["S"],
        source=item["source"]["S"],
        sequence_number=item["sequence_number"]["S"],
        keys=json.loads(item["keys"]["S"]),
        status=item["status"]["S"],
        error=item["error"]["S"],
        detail=item["detail"]["S"],
        attempts=int(item["attempts"]["N"]),
        set_aside_at=item["set_aside_at"]["S"],
        last_attempt_at=item["last_attempt_at"]["S"],
        published_at=item["published_at"]["S"] if "published_at" in item else None,
        dismissed_at=item["dismissed_at"]["S"] if "dismissed_at" in item else None,
        dismissed_by=item["dismissed_by"]["S"] if "dismissed_by" in item else None,
        dismissal_reason=item["dismissal_reason"]["S"] if "dismissal_reason" in item else None,
        record=_record_of(item),
        images_dropped=bool(item.get("record_cut", {}).get("BOOL")),
    )


def set_aside(record: UnreadableRecord) -> None:
    """Keep ``record`` (OPEN); if it is kept already, count one more failed read of it."""
    detail = record.detail[:MAX_DETAIL_CHARS]
    created = call_if(
        "put_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Item={
            **_key(record.record_id),
            "source": {"S": record.source},
            "sequence_number": {"S": record.sequence_number},
            "keys": {"S": json.dumps(record.keys, sort_keys=True)},
            "status": {"S": "OPEN"},
            "error": {"S": record.error},
            "detail": {"S": detail},
            "attempts": {"N": "1"},
            "set_aside_at": {"S": record.set_aside_at},
            "last_attempt_at": {"S": record.last_attempt_at},
            **_stored_record(record.record),
        },
        ConditionExpression="attribute_not_exists(pk)",
    )
    if created is None:
        failed_again(record.record_id, error=record.error, detail=detail, now=record.last_attempt_at)


def failed_again(record_id: str, *, error: str, detail: str, now: str) -> None:
    """Count one more failed read of an OPEN record (a PUBLISHED one stays as it is)."""
    call_if(
        "update_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=_key(record_id),
        UpdateExpression="SET #error = :error, detail = :detail, last_attempt_at = :now ADD attempts :one",
        ConditionExpression="#status = :open",
        ExpressionAttributeNames={"#status": "status", "#error": "error"},
        ExpressionAttributeValues={
            ":error": {"S": error},
            ":detail": {"S": detail[:MAX_DETAIL_CHARS]},
            ":now": {"S": now},
            ":one": {"N": "1"},
            ":open": {"S": "OPEN"},
        },
    )


def mark_published(record_id: str, *, now: str) -> None:
    call_if(
        "update_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=_key(record_id),
        UpdateExpression="SET #status = :published, published_at = :now",
        ConditionExpression="#status = :open",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":published": {"S": "PUBLISHED"}, ":open": {"S": "OPEN"}, ":now": {"S": now}},
    )


def dismiss(record_id: str, *, reason: str, actor: str, now: str) -> UnreadableRecord | None:
    """OPEN -> DISMISSED (the republisher reads it no more); the record as it now stands, None when
    there is none. One that is not OPEN is returned as it is."""
    changed = call_if(
        "update_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=_key(record_id),
        UpdateExpression=(
            "SET #status = :dismissed, dismissed_at = :now, dismissed_by = :actor, dismissal_reason = :reason"
        ),
        ConditionExpression="#status = :open",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={
            ":dismissed": {"S": "DISMISSED"},
            ":open": {"S": "OPEN"},
            ":now": {"S": now},
            ":actor": {"S": actor},
            ":reason": {"S": reason},
        },
        ReturnValues="ALL_NEW",
    )
    return _to_record(changed["Attributes"]) if changed is not None else get(record_id)


def open_records() -> list[UnreadableRecord]:
    """Every OPEN record, oldest first within each source (sequence numbers grow)."""
    request: dict[str, Any] = {
        "TableName": table_settings().operations_table,
        "KeyConditionExpression": "pk = :pk",
        "FilterExpression": "#status = :open",
        "ExpressionAttributeNames": {"#status": "status"},
        "ExpressionAttributeValues": {":pk": {"S": PARTITION}, ":open": {"S": "OPEN"}},
        "ConsistentRead": True,
    }
    found = listable(every_item("query", busy=TransientError, **request), _to_record, key="sk")
    return sorted(found, key=lambda record: (record.source, len(record.sequence_number), record.sequence_number))


def get(record_id: str) -> UnreadableRecord | None:
    item = call(
        "get_item",
        busy=TransientError,
        TableName=table_settings().operations_table,
        Key=_key(record_id),
        ConsistentRead=True,
    ).get("Item")
    return _to_record(item) if item else None


def list_page(
    *, limit: int, start_key: Mapping[str, Any] | None, max_bytes: int
) -> tuple[list[UnreadableRecord], dict[str, Any] | None]:
    """One page of the records (by id) and DynamoDB's key to continue from (low-level shape).

    The page ends early, before the record that would take its JSON past ``max_bytes`` (one record at least):
    a record kept compressed can be a thousand times its stored size, so DynamoDB's 1 MB a query does
    not bound what the page answers, and Lambda refuses a response over 6 MB.
    """
    items, last_key = partition_page(
        table_settings().operations_table, PARTITION, limit=limit, start_key=start_key, busy=TransientError
    )
    page: list[UnreadableRecord] = []
    size = 0
    for record in listable(items, _to_record, key="sk"):
        # Measured as the response writes it: json.dumps escapes every non-ASCII character (an "é" is
        # six bytes there), where the model's own JSON keeps it as one character.
        size += len(json.dumps(record.model_dump(mode="json")))
        if page and size > max_bytes:
            return page, _key(page[-1].record_id)
        page.append(record)
    return page, last_key
