"""`make bench`: checkouts against the local stack, and what they would cost on AWS.

Starts the stack in this process (free ports, its own state folder), creates products with
ample stock, then places orders over HTTP from concurrent clients and waits for every saga to
end. It prints:

- checkout API latency (POST /orders) p50/p95/p99 and sagas completed per second;
- per completed order, counted from what actually ran: state transitions (execution history),
  Lambda invocations (history + the API call), DynamoDB read and write units (the units
  DynamoDB reports with ReturnConsumedCapacity on every request the API and the steps made);
- the AWS cost per million orders for a Standard and an Express workflow, from infra/pricing.json.

By default DynamoDB is AWS's DynamoDB Local (the fidelity tier's engine), because moto does not
compute consumed capacity; `--dynamodb moto` keeps everything in moto.

    python -m infra.local.bench [--orders 200] [--concurrency 8] [--dynamodb dynamodb-local|moto]
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from infra.local.template import REPO_ROOT, load_template

PRICING = REPO_ROOT / "infra" / "pricing.json"
TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}
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
    order_ids: list[str]
    started: float
    finished: float


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


def _place_orders(api: str, customers: list[dict[str, str]], count: int, concurrency: int) -> Run:
    latencies: list[float] = []
    order_ids: list[str] = []
    lock = threading.Lock()
    local = threading.local()

    def place(index: int) -> None:
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
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        with lock:
            latencies.append(elapsed)
            order_ids.append(response.json()["order_id"])

    started = time.time()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(place, range(count)))
    return Run(latencies=latencies, order_ids=order_ids, started=started, finished=time.time())


def _wait_for_sagas(stepfunctions: Any, machine_arn: str, order_ids: list[str], deadline_seconds: float) -> list[dict]:
    execution_prefix = machine_arn.replace(":stateMachine:", ":execution:")
    pending = {f"{execution_prefix}:{order_id}" for order_id in order_ids}
    finished: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + deadline_seconds
    while pending:
        for arn in list(pending):
            description = stepfunctions.describe_execution(executionArn=arn)
            if description["status"] in TERMINAL:
                finished[arn] = description
                pending.discard(arn)
        if pending and time.monotonic() > deadline:
            raise SystemExit(f"{len(pending)} sagas still running after {deadline_seconds:.0f}s")
        if pending:
            time.sleep(0.25)  # polling interval of the loop above
    return list(finished.values())


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


def _seconds(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--dynamodb", choices=["dynamodb-local", "moto"], default="dynamodb-local")
    args = parser.parse_args(argv)

    from shop import aws

    aws.capacity_meter.enabled = True
    from infra.local import lambda_runtime
    from infra.local.stack import start_stack

    dynamodb_local = None
    dynamodb_endpoint = None
    if args.dynamodb == "dynamodb-local":
        from infra.local.dynamodb_local import DynamoDBLocal

        dynamodb_local = DynamoDBLocal.start()
        dynamodb_endpoint = dynamodb_local.endpoint

    state_dir = Path(tempfile.mkdtemp(prefix="shop-bench-"))
    stack = start_stack(
        api_port=_free_port(),
        aws_port=_free_port(),
        state_dir=state_dir,
        seed=False,
        dynamodb_endpoint=dynamodb_endpoint,
    )
    try:
        tokens = json.loads(stack.tokens_path.read_text())
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        customers = [{"Authorization": f"Bearer {token}"} for token in tokens["customers"].values()]
        stepfunctions = stack.client("stepfunctions")
        machine = stack.deployed.state_machine_arns["CheckoutStateMachine"]
        _create_products(stack.api_url, admin)

        # Warm-up one order at a time: it also measures how long a step's handler runs when it
        # has a core to itself, the figure Lambda's GB-seconds are billed on.
        lambda_runtime.stats.reset()
        warm_sagas: list[float] = []
        for _ in range(args.warmup):
            warmup = _place_orders(stack.api_url, customers, 1, 1)
            for execution in _wait_for_sagas(stepfunctions, machine, warmup.order_ids, 300):
                warm_sagas.append(_seconds(execution["stopDate"]) - _seconds(execution["startDate"]))
        warm_saga_seconds = statistics.median(warm_sagas)
        step_seconds = [s for values in lambda_runtime.stats.seconds.values() for s in values]
        aws.capacity_meter.reset()

        run = _place_orders(stack.api_url, customers, args.orders, args.concurrency)
        executions = _wait_for_sagas(stepfunctions, machine, run.order_ids, 600)
        read_units, write_units = aws.capacity_meter.read_units, aws.capacity_meter.write_units
        requests_by_operation = dict(aws.capacity_meter.requests)

        completed = [e for e in executions if e["status"] == "SUCCEEDED"]
        if not completed:
            raise SystemExit("no saga completed")
        last_stop = max(_seconds(e["stopDate"]) for e in executions)
        sagas_per_second = len(completed) / (last_stop - run.started)
        transitions = invocations = 0
        for execution in completed:
            t, i = _history_counts(stepfunctions, execution["executionArn"])
            transitions += t
            invocations += i
        per_order_transitions = transitions / len(completed)
        per_order_invocations = invocations / len(completed) + 1  # + the API's own invocation
        per_order_rru = read_units / len(run.order_ids)
        per_order_wru = write_units / len(run.order_ids)
        saga_seconds = statistics.median(_seconds(e["stopDate"]) - _seconds(e["startDate"]) for e in completed)
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

        print(
            f"\nmake bench: {args.orders} checkouts, {args.concurrency} concurrent clients, DynamoDB: {args.dynamodb}"
        )
        print(f"  completed sagas:        {len(completed)} of {len(executions)}")
        print(
            "  checkout API latency:   "
            f"p50 {_percentile(run.latencies, 0.50) * 1000:.0f} ms, "
            f"p95 {_percentile(run.latencies, 0.95) * 1000:.0f} ms, "
            f"p99 {_percentile(run.latencies, 0.99) * 1000:.0f} ms"
        )
        print(
            f"  sagas completed/s:      {sagas_per_second:.1f}  (median saga {saga_seconds * 1000:.0f} ms under load)"
        )
        print(f"  saga duration alone:    {warm_saga_seconds * 1000:.0f} ms median (one order at a time)")
        print("  per completed order:")
        print(f"    state transitions:    {per_order_transitions:.1f}")
        print(f"    Lambda invocations:   {per_order_invocations:.1f}  (saga steps + API)")
        print(f"    Lambda step duration: {step_seconds_mean * 1000:.0f} ms mean (warm, measured one order at a time)")
        print(f"    DynamoDB read units:  {per_order_rru:.1f}")
        print(f"    DynamoDB write units: {per_order_wru:.1f}")
        per_order_requests = sum(requests_by_operation.values()) / len(run.order_ids)
        print(f"    DynamoDB requests:    {per_order_requests:.1f}  {requests_by_operation}")
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
        if dynamodb_local is not None:
            dynamodb_local.stop()


if __name__ == "__main__":
    raise SystemExit(main())
