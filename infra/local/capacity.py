"""The bench's DynamoDB capacity meter (`make bench`): requests and the units DynamoDB reports,
per table, index and item key. Attached to the shop's DynamoDB client through
``shop.aws.client_built_hooks`` before the first client is built; it never ships in the layer.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shop import aws

_READS = {"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"}
_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}


@dataclass(frozen=True)
class KeySchema:
    """What the meter needs to name the items a write touches: the table's key attributes, and the
    partition key attribute of each global secondary index."""

    keys: tuple[str, ...]
    indexes: Mapping[str, str] = field(default_factory=dict)


@dataclass
class CapacityMeter:
    """Counts DynamoDB requests and the capacity units DynamoDB reports for them (`make bench`).

    Off unless enabled before the first client is built. When on, every data-plane request asks
    for ``ReturnConsumedCapacity=INDEXES`` and the reported units are summed per direction, per
    request kind, and per table or index written (an index's copy of an item costs units too).

    With ``schemas`` (table name -> KeySchema) it also counts write units per written item key and
    per index partition, attempts that failed a condition included (DynamoDB charges them too):
    a key's partition takes at most 1,000 WCU/s, which is what limits a hot product. DynamoDB
    reports units per table and index, not per item, so each item is counted as DynamoDB charges
    an item of up to 1 KB: 1 unit for a plain write, 2 inside a transaction (a ConditionCheck
    too); an index entry written, moved or removed, 1 unit on its partition.
    """

    enabled: bool = False
    read_units: float = 0.0
    write_units: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    # "Operation table[+table...]" -> requests: which requests an order costs, table by table.
    requests_by_table: Counter[str] = field(default_factory=Counter)
    # The same keys -> the capacity units DynamoDB reported for those requests.
    units_by_table: Counter[str] = field(default_factory=Counter)
    # The same keys -> {"table" or "table/index": units}: where in DynamoDB the units went.
    units_by_target: dict[str, Counter[str]] = field(default_factory=dict)
    schemas: dict[str, KeySchema] = field(default_factory=dict)
    # "table key=value ..." or "table/index value" -> write units, in all and per epoch second.
    units_by_key: Counter[str] = field(default_factory=Counter)
    units_by_key_second: Counter[tuple[str, int]] = field(default_factory=Counter)
    # The index partition each item was last written to, so its removal is counted there.
    _index_values: dict[tuple[str, str], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, dynamodb_client: Any) -> None:
        events = dynamodb_client.meta.events
        for operation in _READS | _WRITES:
            events.register(f"provide-client-params.dynamodb.{operation}", self._ask_for_capacity)
            events.register(f"after-call.dynamodb.{operation}", self._record)

    def _ask_for_capacity(self, params: dict[str, Any], context: dict[str, Any], model: Any = None, **_: Any) -> None:
        params.setdefault("ReturnConsumedCapacity", "INDEXES")
        tables = {params["TableName"]} if "TableName" in params else set(params.get("RequestItems", {}))
        for item in params.get("TransactItems", []):
            tables.update(operation["TableName"] for operation in item.values())
        context["metered_tables"] = "+".join(sorted(tables))
        if "TransactItems" in params:
            context["transaction_items"] = Counter(
                operation["TableName"] for item in params["TransactItems"] for operation in item.values()
            )
        if self.schemas and model is not None and model.name in _WRITES:
            context["metered_writes"] = _written_items(params)

    def _count_item_writes(self, writes: list[tuple[str, str, dict[str, Any], int]]) -> None:
        """Units per item key and per index partition (under the lock)."""
        second = int(time.time())
        for kind, table, attributes, units in writes:
            schema = self.schemas.get(table)
            if schema is None or not all(name in attributes for name in schema.keys):
                continue
            key = f"{table} " + " ".join(f"{name}={_scalar(attributes[name])}" for name in schema.keys)
            self._add(key, units, second)
            for index, attribute in schema.indexes.items():
                remembered = self._index_values.get((index, key))
                # A Put's item, or an UpdateItem's ``SET attribute = :value``, names the new entry.
                if attribute in attributes:
                    value = _scalar(attributes[attribute])
                    if remembered is not None and remembered != value:
                        self._add(f"{table}/{index} {remembered}", 1, second)
                    self._index_values[(index, key)] = value
                    self._add(f"{table}/{index} {value}", 1, second)
                elif remembered is not None and (kind == "Delete" or attribute in attributes.get("$updated", ())):
                    # The item leaves (or moves within) the index: its old entry is written.
                    del self._index_values[(index, key)]
                    self._add(f"{table}/{index} {remembered}", 1, second)

    def _add(self, key: str, units: int, second: int) -> None:
        self.units_by_key[key] += units
        self.units_by_key_second[(key, second)] += units

    def _record(self, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        consumed = parsed.get("ConsumedCapacity") or []
        entries = consumed if isinstance(consumed, list) else [consumed]
        units = sum(entry.get("CapacityUnits", 0.0) for entry in entries)
        targets: Counter[str] = Counter()
        transaction_items: Counter[str] = context.get("transaction_items", Counter())
        for entry in entries:
            table = entry.get("TableName", "?")
            if "Table" in entry:
                reported = entry["Table"].get("CapacityUnits", 0.0)
                # AWS bills a transaction 2 units per item (per KB of it); DynamoDB Local reports 2
                # per table however many of its items the transaction wrote.
                billed = max(reported, 2.0 * transaction_items[table])
                targets[table] += billed
                units += billed - reported
            for index, capacity in (entry.get("GlobalSecondaryIndexes") or {}).items():
                targets[f"{table}/{index}"] += capacity.get("CapacityUnits", 0.0)
        with self._lock:
            self.requests[model.name] += 1
            key = f"{model.name} {context.get('metered_tables', '?')}"
            self.requests_by_table[key] += 1
            self.units_by_table[key] += units
            self.units_by_target.setdefault(key, Counter()).update(targets)
            if model.name in _READS:
                self.read_units += units
            else:
                self.write_units += units
            if "metered_writes" in context:
                self._count_item_writes(context["metered_writes"])

    def reset(self) -> None:
        with self._lock:
            self.read_units = self.write_units = 0.0
            self.requests.clear()
            self.requests_by_table.clear()
            self.units_by_table.clear()
            self.units_by_target.clear()
            self.units_by_key.clear()
            self.units_by_key_second.clear()


def _scalar(value: Mapping[str, Any]) -> str:
    """A key attribute's value in DynamoDB's typed form (S, N or B), as text."""
    return str(next(iter(value.values())))


_ATTRIBUTE_NAME = re.compile(r"#?[A-Za-z_][A-Za-z0-9_]*")


def _updated_attributes(operation: Mapping[str, Any]) -> set[str]:
    """The attributes an UpdateExpression names (aliases resolved): which index entries it may move."""
    aliases = operation.get("ExpressionAttributeNames", {})
    names = _ATTRIBUTE_NAME.findall(operation.get("UpdateExpression", ""))
    return {aliases.get(name, name) for name in names}


# ``name = :value`` in an UpdateExpression's SET clause (not ``name = name + :value`` or a function).
_ASSIGNMENT = re.compile(r"(#?[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(:[A-Za-z0-9_]+)\s*(?=,|$|\b(?:REMOVE|ADD|DELETE|SET)\b)")


def _assigned_values(operation: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes an UpdateExpression sets to a plain value (aliases resolved), with the value:
    an update that puts an item into an index (a sparse index's key set on a status change) writes
    the entry under that value."""
    aliases = operation.get("ExpressionAttributeNames", {})
    values = operation.get("ExpressionAttributeValues", {})
    return {
        aliases.get(name, name): values[placeholder]
        for name, placeholder in _ASSIGNMENT.findall(operation.get("UpdateExpression", ""))
        if placeholder in values
    }


def _written_items(params: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any], int]]:
    """(kind, table, key or item attributes, units) of every item a write request writes."""
    found: list[tuple[str, str, dict[str, Any], int]] = []

    def add(kind: str, operation: Mapping[str, Any], table: str, units: int) -> None:
        attributes = dict(operation.get("Item") or operation.get("Key") or {})
        if kind == "Update":
            attributes = {**_assigned_values(operation), **attributes}
            attributes["$updated"] = _updated_attributes(operation)
        found.append((kind, table, attributes, units))

    if "TransactItems" in params:
        for entry in params["TransactItems"]:
            for kind, operation in entry.items():
                add(kind, operation, operation["TableName"], 2)
    elif "RequestItems" in params:
        for table, requests in params["RequestItems"].items():
            if isinstance(requests, list):  # BatchWriteItem (BatchGetItem's value is a mapping)
                for request in requests:
                    for kind, operation in request.items():
                        add(kind.removesuffix("Request"), operation, table, 1)
    elif "TableName" in params and ("Item" in params or "UpdateExpression" in params or "Key" in params):
        kind = "Put" if "Item" in params else "Update" if "UpdateExpression" in params else "Delete"
        add(kind, params, params["TableName"], 1)
    return found


meter = CapacityMeter()


def install() -> None:
    """Meter every DynamoDB client the shop builds from now on."""
    meter.enabled = True
    if _attach not in aws.client_built_hooks:
        aws.client_built_hooks.append(_attach)


def _attach(service: str, client: Any) -> None:
    if service == "dynamodb" and meter.enabled:
        meter.attach(client)
