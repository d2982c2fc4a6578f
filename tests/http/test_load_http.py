"""`make load`'s Locust file against the HTTP tier's stack: each mix runs clean, and the flash sale never oversells.

Locust monkey-patches the interpreter with gevent, so it never runs in this process: each test runs the
`locust` command `make load` runs (``infra.load.run.locust_command``), headless, with a short run time, and
reads Locust's statistics and the stack's own answers afterwards. No latency is asserted.

The statistics come from ``--json-file``, written once at the end from the final numbers. ``--csv`` is not
enough for exact counts: a greenlet rewrites its files once a second and is not run again at the end, so
the last second's requests were missing from it (141 POSTs in the CSV for 150 orders the stack held).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from infra.load.run import LOCUSTFILE, locust_command, mint_tokens, write_tokens
from tests import statemachine_coverage
from tests.conftest import REPO_ROOT
from tests.http.conftest import RunningStack

# The run's bound (Locust's --run-time) plus the stop timeout for orders in flight, plus startup.
LOCUST_DEADLINE_SECONDS = 180


def run_locust(
    stack: RunningStack, tmp_path: Path, *, mix: str, users: int, duration: str, **settings: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, int], dict[str, int]]:
    """Run the mix with one fresh customer per user.

    Returns Locust's result and its request counts and failure counts by "<type> <name>" (e.g.
    "POST /orders", "ORDER checkout -> COMPLETED").
    """
    customers = [f"load-{mix}-{uuid.uuid4().hex[:8]}-{index}" for index in range(users)]
    tokens = write_tokens(tmp_path / "tokens.json", mint_tokens(stack.state_dir, customers))
    environment = {key: value for key, value in os.environ.items() if not key.startswith("LOAD_")}
    environment |= {"LOAD_TOKENS": str(tokens), **{f"LOAD_{key.upper()}": value for key, value in settings.items()}}
    environment["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'layers/shared/python'}"
    report = tmp_path / mix
    command = locust_command(
        mix=mix,
        users=users,
        spawn_rate=users,
        duration=duration,
        host=stack.api_url,
        # The CSV's failures file keeps each failure's message (an order's id and status), which the JSON lacks.
        options=["--json-file", str(report), "--csv", str(report)],
    )
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=LOCUST_DEADLINE_SECONDS
    )
    if not Path(f"{report}.json").exists():
        pytest.fail(f"Locust wrote no report ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    entries = json.loads(Path(f"{report}.json").read_text())
    requests_by_name = {f"{entry['method']} {entry['name']}": int(entry["num_requests"]) for entry in entries}
    failures_by_name = {f"{entry['method']} {entry['name']}": int(entry["num_failures"]) for entry in entries}
    return result, requests_by_name, failures_by_name


def error_report(result: subprocess.CompletedProcess[str], tmp_path: Path, mix: str) -> str:
    """Each failure's message and count (Locust's failures CSV: an order's row names the order and where it
    stood), then the end of Locust's output, for an assertion's message."""
    failures = tmp_path / f"{mix}_failures.csv"
    listed = failures.read_text()[:4000] if failures.exists() else "(no failures file)\n"
    return listed + (result.stdout + result.stderr)[-2000:]


def saga_failures(stack: RunningStack, report: str) -> str:
    """The errors the sagas of the orders Locust failed met (state, error, cause), for an assertion's message:
    an outcome's row names the order and its history, the saga's history says why."""
    order_ids = set(re.findall(r"order (\S+) (?:ended|still)", report))
    if not order_ids:
        return ""
    stepfunctions = stack.aws("stepfunctions")
    lines = []
    for arn in statemachine_coverage.deployed_state_machines(stepfunctions).values():
        for page in stepfunctions.get_paginator("list_executions").paginate(stateMachineArn=arn):
            for execution in page["executions"]:
                if not any(order_id in execution["name"] for order_id in order_ids):
                    continue
                history = stepfunctions.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)
                for event in history["events"]:
                    details = next((v for k, v in event.items() if k.endswith("FailedEventDetails")), None)
                    if details is not None:
                        lines.append(f"{execution['name']}: {event['type']} {details.get('error')}: {_cause(details)}")
    return "\nsaga failures:\n" + "\n".join(lines[:40])


def _cause(details: dict[str, Any]) -> str:
    """A Lambda error's message and the innermost frame of its trace; any other cause as it is."""
    cause = str(details.get("cause") or "")
    try:
        error = json.loads(cause)
    except ValueError:
        return cause[:500]
    if not isinstance(error, dict):
        return cause[:500]
    frames = error.get("stackTrace") or [""]
    return f"{error.get('errorMessage')} at {str(frames[-1]).strip()[:300]}"


def requested(stats: dict[str, int], name: str) -> int:
    return stats.get(name, 0)


def orders_of(stack: RunningStack, token: str) -> list[dict[str, Any]]:
    """Every order of the token's customer (all pages)."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = requests.get(
            stack.url("/orders"), params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).json()
        found += page["items"]
        if not page["next_token"]:
            return found
        params["next_token"] = page["next_token"]


def test_locustfile_is_what_make_load_runs() -> None:
    assert LOCUSTFILE == REPO_ROOT / "infra/load/locustfile.py"
    assert LOCUSTFILE.is_file()


def test_shopper_mix_reaches_every_route_it_exercises_without_a_failure(stack: RunningStack, tmp_path: Path) -> None:
    # One tour per shopper (LOAD_TOURS): every route and every choice, whatever the dice say and however
    # slow the machine; the run ends when the last shopper is through, --run-time is only the bound.
    result, stats, failures = run_locust(
        stack,
        tmp_path,
        mix="shopper",
        users=8,
        duration="120s",
        tours="1",
        think_min_seconds="0",
        think_max_seconds="0",
    )

    report = error_report(result, tmp_path, "shopper")
    assert {name: count for name, count in failures.items() if count} == {}, report + saga_failures(stack, report)
    assert result.returncode == 0, result.stderr[-4000:]
    routes = [
        "GET /products",
        "GET /products?next_token",
        "GET /products?category",
        "GET /products?q",
        "GET /products/{sku}",
        "POST /orders",
        "POST /orders (Prefer: wait=5)",
        "GET /orders/{order_id}",
        "POST /orders/{order_id}/cancel",
        "GET /orders",
        "PUT /cart/items/{sku}",
        "POST /cart/merge",
    ]
    outcomes = [
        "ORDER checkout -> COMPLETED",
        "ORDER declined card -> CANCELLED PAYMENT_DECLINED",
        "ORDER refund -> REFUNDED",
        "ORDER cart checkout -> COMPLETED",
    ]
    assert [name for name in routes + outcomes if requested(stats, name) == 0] == []
    # A cancel right after the POST finds the order pending, or already completed and refunds it.
    cancelled = ["ORDER cancel -> CANCELLED CANCELLED_BY_CUSTOMER", "ORDER cancel -> REFUNDED"]
    assert sum(requested(stats, name) for name in cancelled) > 0
    # An order from the cart, with or without the wait.
    cart_orders = ["POST /orders (cart)", "POST /orders (cart) (Prefer: wait=5)"]
    assert sum(requested(stats, name) for name in cart_orders) > 0
    # What a shopper has seen it revalidates (a product a checkout changed answers 200, the rest 304).
    assert sum(requested(stats, name) for name in stats if name.endswith("(If-None-Match)")) > 0
    # The rows are the routes, the revalidations and the outcomes: no stray name (e.g. an order id).
    known = {*routes, *outcomes, *cancelled, *cart_orders}
    assert {name for name in stats if not name.endswith("(If-None-Match)")} <= known


def test_flash_sale_sells_exactly_the_stock_and_the_rest_sell_out(stack: RunningStack, tmp_path: Path) -> None:
    sku = f"FLASH-TEST-{uuid.uuid4().hex[:8]}"
    stock = 5
    users = 10
    result, stats, failures = run_locust(
        stack, tmp_path, mix="flash", users=users, duration="100s", tours="1", flash_sku=sku, flash_stock=str(stock)
    )

    report = error_report(result, tmp_path, "flash")
    assert {name: count for name, count in failures.items() if count} == {}, report + saga_failures(stack, report)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"flash sale {sku}: {stock} of {stock} units sold" in result.stdout
    assert requested(stats, "ORDER flash sale -> COMPLETED") == stock
    # One tour each: every user bought one unit, at once.
    assert requested(stats, "ORDER flash sale -> CANCELLED OUT_OF_STOCK") == users - stock
    # The stack's own books: every flash order settled, units sold = stock - available, never more than stock.
    product = requests.get(stack.url(f"/products/{sku}"), timeout=10).json()
    customer_tokens = json.loads((tmp_path / "tokens.json").read_text())["customers"]
    flash_orders = [
        order
        for token in customer_tokens.values()
        for order in orders_of(stack, token)
        if any(line["sku"] == sku for line in order["items"])
    ]
    assert {order["status"] for order in flash_orders} <= {"COMPLETED", "CANCELLED"}
    sold = sum(line["quantity"] for order in flash_orders if order["status"] == "COMPLETED" for line in order["items"])
    assert (sold, product["available"]) == (stock, 0)
    assert {order["failure_reason"] for order in flash_orders if order["status"] == "CANCELLED"} == {"OUT_OF_STOCK"}
    assert len(flash_orders) == requested(stats, "POST /orders (Prefer: wait=5)")
