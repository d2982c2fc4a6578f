"""`make bench`: checkouts against the local stack, and what they would cost on AWS.

Starts the stack in this process (free ports, its own state folder), creates products with
ample stock, then runs shoppers: each places an order over HTTP (POST /orders) and waits for its
saga to end before placing the next, as a customer waits for the confirmation. First one shopper
alone (the sequential baseline), then ``--concurrency`` of them at once. The harness learns that
a saga ended from the emulator's status-change event (``moto_events.execution_listeners``), not
by polling, so that it measures the shop rather than itself. It prints:

- checkout API latency (POST /orders) p50/p95/p99 under load, and the time from placing an order
  to the end of its saga;
- sagas completed per second under load and one shopper at a time;
- per completed order, counted from what actually ran: state transitions (execution history),
  Lambda invocations (the saga's steps, the event publishers and consumers, + the API call),
  DynamoDB read and write units (the units DynamoDB reports with ReturnConsumedCapacity on every
  request the API, the steps and the event functions made), the events put on EventBridge, and
  the bytes CloudWatch Logs would ingest: the state machine's log (the history events its
  `Logging` level writes, with their data: the template's ``StateMachineLogLevel``, or
  ``--state-machine-log-level``) and the functions' logs (what they write at the
  deployed level, INFO, metrics included, measured on orders placed one at a time, plus
  Lambda's own start and report lines unless the template's ``FunctionSystemLogLevel`` (or
  ``--function-system-log-level``) is WARN, which drops them);
- the AWS cost per million orders for a Standard and an Express workflow, from infra/pricing.json.

The tables' streams are delivered (DynamoDB Local serves them), so an order's events are
published and consumed as on AWS, and counted with it.

DynamoDB runs in a process of its own, as it is a service of its own on AWS: by default AWS's
DynamoDB Local (the fidelity tier's engine), whose consumed capacity the cost figures use;
`--dynamodb moto` runs moto's DynamoDB instead (``python -m infra.local.moto_dynamodb``), the
emulator `make chaos` uses.

    python -m infra.local.bench [--orders 200] [--concurrency 8] [--sequential 20]
                                [--dynamodb dynamodb-local|moto]

`--flash-sale` (`make bench FLASH_SALE=1`) runs a flash sale instead: ``--buyers`` concurrent
buyers (threads through the API, one unit each) for one SKU with ``--units`` units, once with
the SKU's stock on one counter and once on ``--shards`` (the README's recommendation). Exactly
``--units`` orders must complete and every other one end CANCELLED with OUT_OF_STOCK, no
counter may go negative, and the books must agree (the reconciliation, quiescent). The SKU has a
purchase limit (``--purchase-limit``, 2), and a hoarder fires ``--hoarder-orders`` (20) orders of its
own among the buyers: it must end with at most the limit, every other order of its refused (422
over the limit, 429 too many in progress) or cancelled. The capacity
meter counts the write units of every item key and index partition (``shop.aws.CapacityMeter``);
from the hottest one's units per buyer it projects that key's WCU/s at 5,000 reservations/s,
against DynamoDB's 1,000 WCU/s per partition.

    python -m infra.local.bench --flash-sale [--buyers 300] [--units 20] [--shards 32]
        [--purchase-limit 2] [--hoarder-orders 20]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import requests

from infra.local import capacity
from infra.local.template import REPO_ROOT, load_template

PRICING = REPO_ROOT / "infra" / "pricing.json"
BENCH_SKUS = [f"BENCH-{index:02d}" for index in range(8)]
# The README's recommendation for a hot product (section "Hot products"), and what it is held to.
RECOMMENDED_SHARDS = 32
PROJECTED_RESERVATIONS_PER_SECOND = 5_000
PARTITION_WRITE_LIMIT = 1_000  # WCU/s per partition, so per item key


def _lambda_memory_gb() -> float:
    """The memory the template gives the saga's functions (Globals), which Lambda bills GB-seconds on."""
    return float(load_template()["Globals"]["Function"]["MemorySize"]) / 1024


# What Lambda itself writes to a function's log for every invocation in the JSON log format the
# template sets (LoggingConfig; the Telemetry API's records), all at INFO: kept when the template's
# FunctionSystemLogLevel is INFO or DEBUG, dropped at WARN. And what CloudWatch Logs counts per log
# event on top of its text.
_REQUEST_ID = str(uuid.UUID(int=0))
_AT = "2026-11-30T12:00:00.000Z"
_TRACE_HEADER = f"Root=1-{'0' * 8}-{'0' * 24};Parent={'0' * 16};Sampled=1"
LAMBDA_PLATFORM_LINES = (
    json.dumps(
        {"time": _AT, "type": "platform.start", "record": {"requestId": _REQUEST_ID, "version": "$LATEST"}},
        separators=(",", ":"),
    ),
    json.dumps(
        {
            "time": _AT,
            "type": "platform.report",
            "record": {
                "requestId": _REQUEST_ID,
                "metrics": {"durationMs": 12.345, "billedDurationMs": 13, "memorySizeMB": 256, "maxMemoryUsedMB": 96},
                "tracing": {"spanId": "0" * 16, "type": "X-Amzn-Trace-Id", "value": _TRACE_HEADER},
                "status": "success",
            },
        },
        separators=(",", ":"),
    ),
)
SYSTEM_LOG_LEVELS = ("DEBUG", "INFO", "WARN")
LOG_EVENT_OVERHEAD_BYTES = 26


class _LogSink(io.TextIOBase):
    """Counts what is written to it (bytes and lines) and keeps none of it."""

    def __init__(self) -> None:
        self.bytes = 0
        self.lines = 0
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self.bytes += len(text.encode())
            self.lines += text.count("\n")
        return len(text)


@contextmanager
def _function_logs_counted(sink: _LogSink) -> Iterator[None]:
    """The functions log at the deployed level (INFO) and flush their metrics (EMF lines, which
    CloudWatch takes from the log too), into ``sink`` instead of the console."""
    from shop.observability import logger

    log = logger()
    handler = cast(Any, log.registered_handler)
    level = log.log_level
    metrics_disabled = os.environ.get("POWERTOOLS_METRICS_DISABLED")
    stdout = sys.stdout
    stream = handler.setStream(sink)
    log.setLevel("INFO")
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "false"
    sys.stdout = sink  # Powertools prints its metric lines
    try:
        yield
    finally:
        sys.stdout = stdout
        handler.setStream(stream)
        log.setLevel(level)
        if metrics_disabled is None:
            os.environ.pop("POWERTOOLS_METRICS_DISABLED", None)
        else:
            os.environ["POWERTOOLS_METRICS_DISABLED"] = metrics_disabled


def _drain_events(stack: Any) -> None:
    """Until nothing is left: every stream record delivered, every event's consumers run."""
    from infra.local import moto_events
    from infra.local.streams import deliver_all

    while True:
        moto_events.wait_for_deliveries(timeout=60)
        delivered = deliver_all(stack.stream_deliveries)
        moto_events.wait_for_deliveries(timeout=60)
        if delivered == 0:
            return


def _log_event_bytes(event: dict[str, Any], execution_arn: str) -> int:
    """What `Logging: ALL` with execution data writes for one history event: its details (inputs
    and outputs included) under ``details``, as Step Functions logs them."""
    details: dict[str, Any] = next((value for key, value in event.items() if key.endswith("EventDetails")), {})
    record = {
        "id": str(event["id"]),
        "type": event["type"],
        "details": details,
        "previous_event_id": str(event.get("previousEventId", 0)),
        "event_timestamp": str(int(event["timestamp"].timestamp() * 1000)),
        "execution_arn": execution_arn,
    }
    return len(json.dumps(record, default=str).encode()) + LOG_EVENT_OVERHEAD_BYTES


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


@dataclass
class Run:
    latencies: list[float]
    outcomes: list[float]  # from placing the order to the end of its saga
    executions: list[dict[str, Any]]
    started: float
    finished: float

    @property
    def sagas_per_second(self) -> float:
        return len(self.executions) / (self.finished - self.started)


class SagaWatcher:
    """The end of every saga, as the emulator announces it (a status-change event's detail).

    One event per awaited name, so an ending saga wakes only the client waiting for it (a shared
    condition would wake every waiting client on every end, dozens at a time in `make chaos`)."""

    def __init__(self) -> None:
        self._ended: dict[str, dict[str, Any]] = {}
        self._waiting: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __call__(self, detail: dict[str, Any]) -> None:
        with self._lock:
            self._ended[detail["name"]] = detail
            waiting = self._waiting.get(detail["name"])
        if waiting is not None:
            waiting.set()

    def ended(self, execution_name: str, timeout: float) -> dict[str, Any] | None:
        """The execution's end, waiting up to ``timeout`` seconds for it; None if it has not ended."""
        with self._lock:
            if execution_name in self._ended:
                return self._ended[execution_name]
            event = self._waiting.setdefault(execution_name, threading.Event())
        event.wait(timeout)
        with self._lock:
            if self._waiting.get(execution_name) is event:
                del self._waiting[execution_name]
            return self._ended.get(execution_name)

    def wait(self, execution_name: str, timeout: float) -> dict[str, Any]:
        ended = self.ended(execution_name, timeout)
        if ended is None:
            raise SystemExit(f"saga {execution_name} still running after {timeout:.0f} s")
        return ended


def _create_products(api: str, admin: dict[str, str]) -> None:
    for sku in BENCH_SKUS:
        response = requests.post(
            f"{api}/products",
            headers=admin,
            json={
                "sku": sku,
                "name": f"Bench product {sku}",
                "description": "created by make bench",
                "category": "bench",
                "price": {"amount": 1999, "currency": "USD"},
                "stock": 1_000_000,
            },
            timeout=30,
        )
        response.raise_for_status()


def _shop(api: str, customers: list[dict[str, str]], count: int, concurrency: int, watcher: SagaWatcher) -> Run:
    """``concurrency`` shoppers place ``count`` orders, each waiting for its saga before the next."""
    latencies: list[float] = []
    outcomes: list[float] = []
    executions: list[dict[str, Any]] = []
    lock = threading.Lock()
    local = threading.local()

    def shop(index: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        lines = [{"sku": BENCH_SKUS[(index + offset) % len(BENCH_SKUS)], "quantity": 1 + offset} for offset in range(2)]
        started = time.perf_counter()
        response = session.post(
            f"{api}/orders",
            headers={**customers[index % len(customers)], "Idempotency-Key": str(uuid.uuid4())},
            json={"items": lines, "payment": {"token": "tok_visa"}},
            timeout=60,
        )
        placed = time.perf_counter()
        response.raise_for_status()
        execution = watcher.wait(response.json()["order_id"], 300)
        ended = time.perf_counter()
        with lock:
            latencies.append(placed - started)
            outcomes.append(ended - started)
            executions.append(execution)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(shop, range(count)))
    return Run(latencies, outcomes, executions, started, time.perf_counter())


def _saga_seconds(execution: dict[str, Any]) -> float:
    return (execution["stopDate"] - execution["startDate"]) / 1000  # epoch milliseconds


# The history events each `Logging` level writes (Step Functions: ERROR adds the error events to
# FATAL's failed, timed-out and aborted executions; ALL writes every event).
LOG_LEVELS = ("ALL", "ERROR", "FATAL", "OFF")
_FATAL_EVENTS = frozenset({"ExecutionFailed", "ExecutionTimedOut", "ExecutionAborted"})


def _logged_at(level: str, event_type: str) -> bool:
    if level == "ALL":
        return True
    if level == "ERROR":
        return event_type.endswith(("Failed", "TimedOut", "Aborted"))
    return level == "FATAL" and event_type in _FATAL_EVENTS


def _history_counts(stepfunctions: Any, execution_arn: str) -> tuple[int, int, Counter[str]]:
    """State transitions, Lambda invocations and the bytes of the state machine's log at each
    level, of one execution."""
    transitions = invocations = 0
    log_bytes: Counter[str] = Counter()
    for page in stepfunctions.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
        for event in page["events"]:
            kind = event["type"]
            if kind.endswith("StateEntered"):
                transitions += 1
            elif kind == "LambdaFunctionScheduled" or (
                kind == "TaskScheduled" and event["taskScheduledEventDetails"]["resourceType"] == "lambda"
            ):
                invocations += 1
            size = _log_event_bytes(event, execution_arn)
            log_bytes.update({level: size for level in LOG_LEVELS if _logged_at(level, kind)})
    return transitions, invocations, log_bytes


@dataclass
class FlashSale:
    shards: int
    outcomes: dict[str, int]
    counters: dict[int, int]
    seconds: float
    hottest: HotKey  # of the inventory's keys: stock counters and HeldByExpiry partitions
    hottest_elsewhere: HotKey  # of every other key the sale wrote
    buyers: int
    # The hoarder's orders by how they ended: an order status, or the HTTP status that refused it.
    hoarder: dict[str, int]


@dataclass
class HotKey:
    key: str
    units: float
    peak_per_second: float
    buyers: int

    @property
    def projected_wcu(self) -> float:
        """The key's write units per second if buyers came at 5,000 reservations/s."""
        return self.units / self.buyers * PROJECTED_RESERVATIONS_PER_SECOND


def _inventory_key(key: str) -> bool:
    return key.split(" ", 1)[0].endswith(("StockTable", "/HeldByExpiry"))


def _hottest(buyers: int, inventory: bool) -> HotKey:
    meter = capacity.meter
    key, units = max(
        ((key, units) for key, units in meter.units_by_key.items() if _inventory_key(key) == inventory),
        key=lambda entry: entry[1],
        default=("(none)", 0),
    )
    peak = max((units for (k, _), units in meter.units_by_key_second.items() if k == key), default=0)
    return HotKey(key=key, units=units, peak_per_second=peak, buyers=buyers)


def _meter_schemas(dynamodb: Any) -> None:
    """Tell the capacity meter each table's keys and index partition keys, to count writes per item."""
    for table in dynamodb.list_tables()["TableNames"]:
        description = dynamodb.describe_table(TableName=table)["Table"]
        indexes = {
            index["IndexName"]: next(k["AttributeName"] for k in index["KeySchema"] if k["KeyType"] == "HASH")
            for index in description.get("GlobalSecondaryIndexes", [])
        }
        capacity.meter.schemas[table] = capacity.KeySchema(
            keys=tuple(key["AttributeName"] for key in description["KeySchema"]), indexes=indexes
        )


def _flash_sale(
    api: str,
    admin: dict[str, str],
    customers: list[dict[str, str]],
    watcher: SagaWatcher,
    dynamodb: Any,
    stock_table: str,
    *,
    shards: int,
    buyers: int,
    units: int,
    concurrency: int,
    purchase_limit: int,
    hoarder: dict[str, str],
    hoarder_orders: int,
) -> FlashSale:
    """``buyers`` buyers at once for one SKU of ``units`` units spread over ``shards`` counters, at most
    ``purchase_limit`` per customer, and among them a hoarder (a bot) firing ``hoarder_orders`` orders."""

    sku = f"FLASH-{shards:02d}-{uuid.uuid4().hex[:6]}"
    created = requests.post(
        f"{api}/products",
        headers=admin,
        json={
            "sku": sku,
            "name": f"Flash sale, {shards} shards",
            "category": "flash",
            "price": {"amount": 999},
            "stock": units,
        },
        timeout=30,
    )
    created.raise_for_status()
    requests.patch(
        f"{api}/products/{sku}",
        headers=admin,
        json={"stock_shards": shards, "purchase_limit": purchase_limit},
        timeout=30,
    ).raise_for_status()
    capacity.meter.reset()
    outcomes: Counter[str] = Counter()
    hoarded: Counter[str] = Counter()
    lock = threading.Lock()

    def buy(index: int) -> None:
        hoarding = index >= buyers
        customer = hoarder if hoarding else customers[index % len(customers)]
        placed = requests.post(
            f"{api}/orders",
            headers={**customer, "Idempotency-Key": str(uuid.uuid4())},
            json={"items": [{"sku": sku, "quantity": 1}], "payment": {"token": "tok_visa"}},
            timeout=120,
        )
        if hoarding and placed.status_code in (422, 429):  # over its limit, or too many in progress
            with lock:
                hoarded[str(placed.status_code)] += 1
            return
        placed.raise_for_status()
        order_id = placed.json()["order_id"]
        watcher.wait(order_id, 600)
        order = requests.get(f"{api}/orders/{order_id}", headers=customer, timeout=60).json()
        with lock:
            (hoarded if hoarding else outcomes)[f"{order['status']} {order.get('failure_reason') or ''}".strip()] += 1

    # The hoarder's orders are spread through the buyers', all in flight together.
    order_of_arrival = list(range(buyers + hoarder_orders))
    random.Random(shards).shuffle(order_of_arrival)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(buy, order_of_arrival))
    seconds = time.perf_counter() - started
    items = dynamodb.query(
        TableName=stock_table,
        KeyConditionExpression="sku = :sku",
        ExpressionAttributeValues={":sku": {"S": sku}},
        ConsistentRead=True,
    )["Items"]
    counters = {int(item["shard"]["N"]): int(item["available"]["N"]) for item in items}
    return FlashSale(
        shards=shards,
        outcomes=dict(outcomes),
        counters=counters,
        seconds=seconds,
        hottest=_hottest(buyers, inventory=True),
        hottest_elsewhere=_hottest(buyers, inventory=False),
        buyers=buyers,
        hoarder=dict(hoarded),
    )


def _run_flash_sales(stack: Any, args: argparse.Namespace, watcher: SagaWatcher) -> int:
    """Both flash sales, their checks and the projection; non-zero if a check or the projection fails."""
    from infra.load.run import mint_tokens
    from shop import aws
    from shop.domain import reconciliation_job

    # One customer per buyer, as in a real sale: a customer holds at most MaxOrdersInProgress open
    # orders (POST /orders answers 429 past it), and the sale's buyers are all in flight at once.
    tokens = mint_tokens(
        stack.tokens_path.parent, ["flash-hoarder", *(f"flash-buyer-{index}" for index in range(args.buyers))]
    )
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    by_name = cast(dict[str, str], tokens["customers"])
    hoarder = {"Authorization": f"Bearer {by_name.pop('flash-hoarder')}"}
    customers = [{"Authorization": f"Bearer {token}"} for token in by_name.values()]
    dynamodb = aws.dynamodb()  # where the stack's tables are (DynamoDB Local or moto's process)
    _meter_schemas(dynamodb)
    stock_table = next(name for name in capacity.meter.schemas if name.endswith("StockTable"))
    failures: list[str] = []
    print(
        f"\nmake bench FLASH_SALE=1: {args.buyers} buyers at once ({args.flash_concurrency} threads), "
        f"{args.units} units, at most {args.purchase_limit} per customer; a hoarder fires {args.hoarder_orders} orders"
    )
    for shards in dict.fromkeys((1, args.shards)):
        sale = _flash_sale(
            stack.api_url,
            admin,
            customers,
            watcher,
            dynamodb,
            stock_table,
            shards=shards,
            buyers=args.buyers,
            units=args.units,
            concurrency=args.flash_concurrency,
            purchase_limit=args.purchase_limit,
            hoarder=hoarder,
            hoarder_orders=args.hoarder_orders,
        )
        hoarded = sale.hoarder.get("COMPLETED", 0)
        sold = sale.outcomes.get("COMPLETED", 0) + hoarded
        print(f"  {shards} shard(s): {sale.seconds:.1f} s")
        print(f"    orders:               {json.dumps(dict(sorted(sale.outcomes.items())))}")
        print(f"    counters after:       {json.dumps(sale.counters)}")
        print(f"    the hoarder's orders: {json.dumps(dict(sorted(sale.hoarder.items())))}")
        for label, hot in (("hottest stock key:", sale.hottest), ("hottest other key:", sale.hottest_elsewhere)):
            verdict = "under" if hot.projected_wcu < PARTITION_WRITE_LIMIT else "OVER"
            print(f"    {label:<22}{hot.key}: {hot.units:.0f} write units, {hot.units / sale.buyers:.2f} per buyer")
            print(
                f"    {'':<22}projected {hot.projected_wcu:,.0f} WCU/s at {PROJECTED_RESERVATIONS_PER_SECOND:,} "
                f"reservations/s ({verdict} {PARTITION_WRITE_LIMIT:,} per partition; "
                f"peak here {hot.peak_per_second:.0f} in one second)"
            )
        if sold != args.units or sale.outcomes.get("CANCELLED OUT_OF_STOCK", 0) != args.buyers - (sold - hoarded):
            failures.append(f"{shards} shard(s): {json.dumps(sale.outcomes)}, expected {args.units} COMPLETED")
        if hoarded > args.purchase_limit or sum(sale.hoarder.values()) != args.hoarder_orders:
            failures.append(f"{shards} shard(s): the hoarder got {hoarded} units, {json.dumps(sale.hoarder)}")
        if any(units < 0 for units in sale.counters.values()) or sum(sale.counters.values()) != 0:
            failures.append(f"{shards} shard(s): counters {json.dumps(sale.counters)} after selling out")
        if shards == args.shards and sale.hottest.projected_wcu >= PARTITION_WRITE_LIMIT:
            failures.append(f"{shards} shards: {sale.hottest.key} would take {sale.hottest.projected_wcu:,.0f} WCU/s")
    report = reconciliation_job.run(quiescent=True)
    print(f"  books:                  {len(report.discrepancies)} discrepancies ({report.checked.model_dump_json()})")
    failures += [f"{d.kind} {d.sku or d.order_id}: {d.detail}" for d in report.discrepancies]
    for failure in failures:
        print(f"  FAILED: {failure}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=20, help="orders placed by one shopper first")
    parser.add_argument(
        "--state-machine-log-level",
        choices=LOG_LEVELS,
        default=load_template()["Parameters"]["StateMachineLogLevel"]["Default"],
        help="the sagas' Logging level to price (default: the template's)",
    )
    parser.add_argument(
        "--function-system-log-level",
        choices=SYSTEM_LOG_LEVELS,
        default=load_template()["Parameters"]["FunctionSystemLogLevel"]["Default"],
        help="the level of Lambda's own log lines to price (default: the template's)",
    )
    parser.add_argument(
        "--log-sample", type=int, default=10, help="orders placed one at a time with the functions logging at INFO"
    )
    parser.add_argument("--dynamodb", choices=["dynamodb-local", "moto"], default="dynamodb-local")
    parser.add_argument("--flash-sale", action="store_true", help="run the flash sale instead of the checkout bench")
    parser.add_argument("--buyers", type=int, default=300, help="flash sale: buyers, one unit each")
    parser.add_argument("--units", type=int, default=20, help="flash sale: units on sale")
    parser.add_argument("--shards", type=int, default=RECOMMENDED_SHARDS, help="flash sale: the sharded run's count")
    parser.add_argument("--flash-concurrency", type=int, default=150, help="flash sale: buyers in flight at once")
    parser.add_argument("--purchase-limit", type=int, default=2, help="flash sale: units per customer")
    parser.add_argument("--hoarder-orders", type=int, default=20, help="flash sale: the hoarder's orders, all at once")
    args = parser.parse_args(argv)
    # One metric line per order on the console would cost more than the order (CloudWatch takes
    # them from the log stream on AWS, off the function's clock).
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")

    capacity.install()
    from infra.local import lambda_runtime, moto_events
    from infra.local.stack import start_stack

    dynamodb: Any
    if args.dynamodb == "dynamodb-local":
        from infra.local.dynamodb_local import DynamoDBLocal

        dynamodb = DynamoDBLocal.start()
    else:
        from infra.local import moto_dynamodb

        dynamodb = moto_dynamodb.MotoDynamoDBProcess.start()
        moto_dynamodb.install_client_transport(dynamodb)  # before the stack builds its clients

    state_dir = Path(tempfile.mkdtemp(prefix="shop-bench-"))
    stack = start_stack(
        api_port=_free_port(),
        aws_port=_free_port(),
        state_dir=state_dir,
        seed=False,
        dynamodb_endpoint=dynamodb.endpoint,
        # DynamoDB Local serves the tables' streams too: the events are published and consumed.
        streams_endpoint=dynamodb.endpoint if args.dynamodb == "dynamodb-local" else None,
        access_log=False,
    )
    try:
        tokens = json.loads(stack.tokens_path.read_text())
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        customers = [{"Authorization": f"Bearer {token}"} for token in tokens["customers"].values()]
        stepfunctions = stack.client("stepfunctions")
        watcher = SagaWatcher()
        moto_events.execution_listeners.append(watcher)
        if args.flash_sale:
            return _run_flash_sales(stack, args, watcher)
        _create_products(stack.api_url, admin)
        _shop(stack.api_url, customers, 3, 1, watcher)  # warm: modules imported, clients built
        _drain_events(stack)

        # One shopper alone: the baseline, and how long a step's handler runs when it has a core
        # to itself, the figure Lambda's GB-seconds are billed on.
        lambda_runtime.stats.reset()
        sequential = _shop(stack.api_url, customers, args.sequential, 1, watcher)
        warm_saga_seconds = statistics.median(_saga_seconds(e) for e in sequential.executions)
        step_seconds = [s for values in lambda_runtime.stats.seconds.values() for s in values]
        _drain_events(stack)

        # The functions' logs as deployed, on orders placed one at a time (the console stays quiet).
        sink = _LogSink()
        lambda_runtime.stats.reset()
        with _function_logs_counted(sink):
            logged = _shop(stack.api_url, customers, args.log_sample, 1, watcher)
            _drain_events(stack)
        logged_invocations = sum(len(v) for v in lambda_runtime.stats.seconds.values()) + len(logged.executions)
        platform_bytes = sum(len(line.encode()) + 1 + LOG_EVENT_OVERHEAD_BYTES for line in LAMBDA_PLATFORM_LINES)
        platform_log_bytes = logged_invocations * platform_bytes / len(logged.executions)
        application_log_bytes = (sink.bytes + sink.lines * LOG_EVENT_OVERHEAD_BYTES) / len(logged.executions)
        kept_platform_log_bytes = platform_log_bytes if args.function_system_log_level != "WARN" else 0.0
        function_log_bytes = application_log_bytes + kept_platform_log_bytes

        capacity.meter.reset()
        lambda_runtime.stats.reset()
        moto_events.published.clear()
        run = _shop(stack.api_url, customers, args.orders, args.concurrency, watcher)
        _drain_events(stack)  # the order's events are part of its cost
        read_units, write_units = capacity.meter.read_units, capacity.meter.write_units
        all_invocations = sum(len(v) for v in lambda_runtime.stats.seconds.values())
        events_published = sum(moto_events.published.values())
        requests_by_operation = dict(capacity.meter.requests)
        requests_by_table = dict(capacity.meter.requests_by_table)
        units_by_table = dict(capacity.meter.units_by_table)
        units_by_target = {key: dict(targets) for key, targets in capacity.meter.units_by_target.items()}

        completed = [e for e in run.executions if e["status"] == "SUCCEEDED"]
        if not completed:
            raise SystemExit("no saga completed")
        transitions = invocations = 0
        log_bytes_by_level: Counter[str] = Counter()
        for execution in completed:
            t, i, b = _history_counts(stepfunctions, execution["executionArn"])
            transitions += t
            invocations += i
            log_bytes_by_level.update(b)
        state_machine_log_bytes = log_bytes_by_level[args.state_machine_log_level]
        per_order_transitions = transitions / len(completed)
        per_order_saga_invocations = invocations / len(completed)
        # The rest of what ran: the event publishers and consumers (and a sweeper's tick or two).
        per_order_event_invocations = max(all_invocations / len(run.executions) - per_order_saga_invocations, 0.0)
        per_order_invocations = per_order_saga_invocations + per_order_event_invocations + 1  # + the API's own
        per_order_events = events_published / len(run.executions)
        per_order_log_bytes = state_machine_log_bytes / len(completed) + function_log_bytes
        per_order_rru = read_units / len(run.executions)
        per_order_wru = write_units / len(run.executions)
        saga_seconds = statistics.median(_saga_seconds(e) for e in completed)
        step_seconds_mean = statistics.fmean(step_seconds) if step_seconds else 0.0

        prices = json.loads(PRICING.read_text())
        lambda_cost = per_order_invocations * (
            prices["lambda_per_request"]
            + max(step_seconds_mean, 0.001) * _lambda_memory_gb() * prices["lambda_per_gb_second"]
        )
        dynamodb_cost = (
            per_order_rru * prices["dynamodb_per_read_request_unit"]
            + per_order_wru * prices["dynamodb_per_write_request_unit"]
        )
        api_cost = prices["api_gateway_rest_per_request"]
        events_cost = per_order_events * prices["eventbridge_per_custom_event"]
        logs_cost = per_order_log_bytes / 1e9 * prices["cloudwatch_logs_per_gb_ingested"]
        standard = per_order_transitions * prices["step_functions_standard_per_state_transition"]
        # Express bills the execution's duration: taken from sagas run one at a time, since under load
        # the emulator's own queueing (not the saga) dominates the wall time.
        billed_seconds = math.ceil(warm_saga_seconds * 1000 / prices["step_functions_express_duration_rounding_ms"]) * (
            prices["step_functions_express_duration_rounding_ms"] / 1000
        )
        express = (
            prices["step_functions_express_per_request"]
            + billed_seconds
            * (prices["step_functions_express_memory_chunk_mb"] / 1024)
            * prices["step_functions_express_per_gb_second"]
        )
        shared = lambda_cost + dynamodb_cost + api_cost + events_cost + logs_cost
        million = 1_000_000

        print(f"\nmake bench: {args.orders} checkouts, {args.concurrency} shoppers, DynamoDB: {args.dynamodb}")
        print(f"  completed sagas:        {len(completed)} of {len(run.executions)}")
        print(
            "  checkout API latency:   "
            f"p50 {_percentile(run.latencies, 0.50) * 1000:.0f} ms, "
            f"p95 {_percentile(run.latencies, 0.95) * 1000:.0f} ms, "
            f"p99 {_percentile(run.latencies, 0.99) * 1000:.0f} ms  (POST /orders)"
        )
        print(
            "  order to outcome:       "
            f"p50 {_percentile(run.outcomes, 0.50) * 1000:.0f} ms, "
            f"p95 {_percentile(run.outcomes, 0.95) * 1000:.0f} ms  (POST until the saga ended)"
        )
        print(
            f"  sagas completed/s:      {run.sagas_per_second:.1f} with {args.concurrency} shoppers, "
            f"{sequential.sagas_per_second:.1f} with one"
        )
        print(
            f"  saga duration:          {saga_seconds * 1000:.0f} ms median under load, "
            f"{warm_saga_seconds * 1000:.0f} ms alone"
        )
        print("  per completed order:")
        print(f"    state transitions:    {per_order_transitions:.1f}")
        print(
            f"    Lambda invocations:   {per_order_invocations:.1f}  (saga steps {per_order_saga_invocations:.1f}, "
            f"events {per_order_event_invocations:.1f}, API 1)"
        )
        print(f"    Lambda step duration: {step_seconds_mean * 1000:.0f} ms mean (warm, measured one order at a time)")
        print(f"    DynamoDB read units:  {per_order_rru:.1f}")
        print(f"    DynamoDB write units: {per_order_wru:.1f}")
        per_order_requests = sum(requests_by_operation.values()) / len(run.executions)
        print(f"    EventBridge events:   {per_order_events:.1f}  ({', '.join(sorted(moto_events.published))})")
        print(
            f"    CloudWatch Logs:      {per_order_log_bytes / 1000:.1f} KB  (state machine at "
            f"{args.state_machine_log_level} {state_machine_log_bytes / len(completed) / 1000:.1f} KB, functions "
            f"{application_log_bytes / 1000:.1f} KB measured on {len(logged.executions)} orders + Lambda's lines at "
            f"{args.function_system_log_level} {kept_platform_log_bytes / 1000:.1f} KB; the state machine at ALL "
            f"{log_bytes_by_level['ALL'] / len(completed) / 1000:.1f} KB, Lambda's lines at INFO "
            f"{platform_log_bytes / 1000:.1f} KB)"
        )
        print(f"    DynamoDB requests:    {per_order_requests:.1f}")
        print("      requests  units  (per order: request, table)")
        for request, count in sorted(requests_by_table.items(), key=lambda entry: (-entry[1], entry[0])):
            units = units_by_table.get(request, 0.0) / len(run.executions)
            print(f"      {count / len(run.executions):8.1f}  {units:5.1f}  {request}")
            targets = units_by_target.get(request, {})
            if len(targets) > 1:  # where the units went: the table and each index written
                where = ", ".join(
                    f"{target.split('-', 1)[-1]} {value / len(run.executions):.1f}"
                    for target, value in sorted(targets.items())
                )
                print(f"      {'':8}  {'':5}    = {where}")
        print(f"  AWS cost per million orders ({prices['region']}, prices of {prices['as_of']}, infra/pricing.json):")
        for label, workflow in (("Standard", standard), ("Express", express)):
            total = (workflow + shared) * million
            print(f"    {label + ' workflow:':22}${total:,.2f}  (Step Functions ${workflow * million:,.2f})")
        print(
            f"    of which Lambda ${lambda_cost * million:,.2f}, DynamoDB ${dynamodb_cost * million:,.2f}, "
            f"API Gateway ${api_cost * million:,.2f}, EventBridge ${events_cost * million:,.2f}, "
            f"CloudWatch Logs ${logs_cost * million:,.2f}"
        )
        return 0
    finally:
        stack.stop()
        dynamodb.stop()


if __name__ == "__main__":
    raise SystemExit(main())
