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
  Lambda invocations (history + the API call), DynamoDB read and write units (the units
  DynamoDB reports with ReturnConsumedCapacity on every request the API and the steps made);
- the AWS cost per million orders for a Standard and an Express workflow, from infra/pricing.json.

DynamoDB runs in a process of its own, as it is a service of its own on AWS: by default AWS's
DynamoDB Local (the fidelity tier's engine), whose consumed capacity the cost figures use;
`--dynamodb moto` runs moto's DynamoDB instead (``python -m infra.local.moto_dynamodb``), the
emulator `make chaos` uses.

    python -m infra.local.bench [--orders 200] [--concurrency 8] [--sequential 20]
                                [--dynamodb dynamodb-local|moto]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from infra.local.template import REPO_ROOT, load_template

PRICING = REPO_ROOT / "infra" / "pricing.json"
BENCH_SKUS = [f"BENCH-{index:02d}" for index in range(8)]


def _lambda_memory_gb() -> float:
    """The memory the template gives the saga's functions (Globals), which Lambda bills GB-seconds on."""
    return float(load_template()["Globals"]["Function"]["MemorySize"]) / 1024


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


def _history_counts(stepfunctions: Any, execution_arn: str) -> tuple[int, int]:
    transitions = invocations = 0
    for page in stepfunctions.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
        for event in page["events"]:
            kind = event["type"]
            if kind.endswith("StateEntered"):
                transitions += 1
            elif kind == "LambdaFunctionScheduled" or (
                kind == "TaskScheduled" and event["taskScheduledEventDetails"]["resourceType"] == "lambda"
            ):
                invocations += 1
    return transitions, invocations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=20, help="orders placed by one shopper first")
    parser.add_argument("--dynamodb", choices=["dynamodb-local", "moto"], default="dynamodb-local")
    args = parser.parse_args(argv)
    # One metric line per order on the console would cost more than the order (CloudWatch takes
    # them from the log stream on AWS, off the function's clock).
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")

    from shop import aws

    aws.capacity_meter.enabled = True
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
        access_log=False,
    )
    try:
        tokens = json.loads(stack.tokens_path.read_text())
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        customers = [{"Authorization": f"Bearer {token}"} for token in tokens["customers"].values()]
        stepfunctions = stack.client("stepfunctions")
        _create_products(stack.api_url, admin)

        watcher = SagaWatcher()
        moto_events.execution_listeners.append(watcher)
        _shop(stack.api_url, customers, 3, 1, watcher)  # warm: modules imported, clients built

        # One shopper alone: the baseline, and how long a step's handler runs when it has a core
        # to itself, the figure Lambda's GB-seconds are billed on.
        lambda_runtime.stats.reset()
        sequential = _shop(stack.api_url, customers, args.sequential, 1, watcher)
        warm_saga_seconds = statistics.median(_saga_seconds(e) for e in sequential.executions)
        step_seconds = [s for values in lambda_runtime.stats.seconds.values() for s in values]
        aws.capacity_meter.reset()

        run = _shop(stack.api_url, customers, args.orders, args.concurrency, watcher)
        read_units, write_units = aws.capacity_meter.read_units, aws.capacity_meter.write_units
        requests_by_operation = dict(aws.capacity_meter.requests)
        requests_by_table = dict(aws.capacity_meter.requests_by_table)
        units_by_table = dict(aws.capacity_meter.units_by_table)
        units_by_target = {key: dict(targets) for key, targets in aws.capacity_meter.units_by_target.items()}

        completed = [e for e in run.executions if e["status"] == "SUCCEEDED"]
        if not completed:
            raise SystemExit("no saga completed")
        transitions = invocations = 0
        for execution in completed:
            t, i = _history_counts(stepfunctions, execution["executionArn"])
            transitions += t
            invocations += i
        per_order_transitions = transitions / len(completed)
        per_order_invocations = invocations / len(completed) + 1  # + the API's own invocation
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
        shared = lambda_cost + dynamodb_cost + api_cost
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
        print(f"    Lambda invocations:   {per_order_invocations:.1f}  (saga steps + API)")
        print(f"    Lambda step duration: {step_seconds_mean * 1000:.0f} ms mean (warm, measured one order at a time)")
        print(f"    DynamoDB read units:  {per_order_rru:.1f}")
        print(f"    DynamoDB write units: {per_order_wru:.1f}")
        per_order_requests = sum(requests_by_operation.values()) / len(run.executions)
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
            f"API Gateway ${api_cost * million:,.2f}"
        )
        return 0
    finally:
        stack.stop()
        dynamodb.stop()


if __name__ == "__main__":
    raise SystemExit(main())
