"""Lazily built, cached boto3 clients: no AWS call and no environment read at import time.

Repositories are the only callers. Clients are thread-safe and reused across invocations of a
warm Lambda; resources are not thread-safe, so none are used.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

# Standard retry mode handles throttling inside one call; the saga's Retry policies handle what
# is still failing after that.
_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 4})
# Parameter Store is read for configuration on a request's path: a slow or unreachable store must
# cost a request seconds, not botocore's 60 s connect timeout per attempt (the defaults then apply).
_SERVICE_CONFIGS = {
    "ssm": Config(connect_timeout=2, read_timeout=3, retries={"mode": "standard", "max_attempts": 2}),
}

_READS = {"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"}
_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}


@dataclass
class CapacityMeter:
    """Counts DynamoDB requests and the capacity units DynamoDB reports for them (`make bench`).

    Off unless enabled before the first client is built. When on, every data-plane request asks
    for ``ReturnConsumedCapacity=INDEXES`` and the reported units are summed per direction, per
    request kind, and per table or index written (an index's copy of an item costs units too).
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
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, dynamodb_client: Any) -> None:
        events = dynamodb_client.meta.events
        for operation in _READS | _WRITES:
            events.register(f"provide-client-params.dynamodb.{operation}", self._ask_for_capacity)
            events.register(f"after-call.dynamodb.{operation}", self._record)

    @staticmethod
    def _ask_for_capacity(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        params.setdefault("ReturnConsumedCapacity", "INDEXES")
        tables = {params["TableName"]} if "TableName" in params else set(params.get("RequestItems", {}))
        for item in params.get("TransactItems", []):
            tables.update(operation["TableName"] for operation in item.values())
        context["metered_tables"] = "+".join(sorted(tables))

    def _record(self, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        consumed = parsed.get("ConsumedCapacity") or []
        entries = consumed if isinstance(consumed, list) else [consumed]
        units = sum(entry.get("CapacityUnits", 0.0) for entry in entries)
        targets: Counter[str] = Counter()
        for entry in entries:
            table = entry.get("TableName", "?")
            if "Table" in entry:
                targets[table] += entry["Table"].get("CapacityUnits", 0.0)
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

    def reset(self) -> None:
        with self._lock:
            self.read_units = self.write_units = 0.0
            self.requests.clear()
            self.requests_by_table.clear()
            self.units_by_table.clear()
            self.units_by_target.clear()


capacity_meter = CapacityMeter()


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def client(service: str) -> Any:
    # Built once per process under a lock: concurrent first calls would each load the service
    # model (seconds under contention) and race on the cache.
    built = _clients.get(service)
    if built is None:
        with _clients_lock:
            built = _clients.get(service)
            if built is None:
                built = boto3.session.Session().client(  # type: ignore[call-overload]
                    service, config=_SERVICE_CONFIGS.get(service, _CLIENT_CONFIG)
                )
                if service == "dynamodb" and capacity_meter.enabled:
                    capacity_meter.attach(built)
                _clients[service] = built
    return built


def dynamodb() -> Any:
    return client("dynamodb")


def stepfunctions() -> Any:
    return client("stepfunctions")


def reset_clients() -> None:
    """Drop cached clients (tests swap the emulator between sessions)."""
    with _clients_lock:
        _clients.clear()
