"""Every function runs with only the environment infra/template.yaml gives it.

The other tiers run each invocation in one shared process, where every function's variables end up
in one ``os.environ``: a function whose template entry lacks a variable its code reads (a state
machine's ARN, a setting) still passes there, and fails on AWS. Here the local stack runs each
invocation in a fresh interpreter with exactly that function's variables
(``SHOP_LAMBDA_ISOLATION=subprocess``), and the order paths and every scheduled function run once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from infra.local.template import load_template, resources_of_type
from tests.conftest import SCHEDULED_EVENT
from tests.http.conftest import RunningStack, launch_stack
from tests.http.test_checkout_http import available, create_product, place_order, wait_for_terminal

# Every invocation here starts a Python process of its own (imports included): a saga's dozen steps on a
# busy 2-core machine took more than the other tiers' 120 s (a fresh clone's make test beside other work).
ISOLATED_SAGA_DEADLINE_SECONDS = 360


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHOP_LAMBDA_ISOLATION", "subprocess")
        running = launch_stack(tmp_path_factory.mktemp("isolated-stack"), "--retry-interval-seconds", "1")
    try:
        yield running
    finally:
        running.process.terminate()
        running.process.wait(timeout=30)


def scheduled_functions() -> list[str]:
    """The logical ids of the functions the template runs on a schedule."""
    functions = resources_of_type(load_template(), "AWS::Serverless::Function")
    return sorted(
        logical_id
        for logical_id, resource in functions.items()
        if any(event.get("Type") == "Schedule" for event in resource.get("Properties", {}).get("Events", {}).values())
    )


def test_the_order_paths_run_with_each_function_s_own_environment(isolated: RunningStack) -> None:
    sku = create_product(isolated, stock=5)
    paid = place_order(isolated, "alice", sku, "tok_visa")
    declined = place_order(isolated, "bob", sku, "tok_chargeDeclined")
    assert paid.status_code == declined.status_code == 202, (paid.text, declined.text)

    completed = wait_for_terminal(isolated, "alice", paid.json()["order_id"], ISOLATED_SAGA_DEADLINE_SECONDS)
    cancelled = wait_for_terminal(isolated, "bob", declined.json()["order_id"], ISOLATED_SAGA_DEADLINE_SECONDS)
    assert completed["status"] == "COMPLETED", completed
    assert (cancelled["status"], cancelled["failure_reason"]) == ("CANCELLED", "PAYMENT_DECLINED")

    # The refund saga: the cancel hands the completed order over, its steps return the money and the stock.
    refund = requests.post(
        isolated.url(f"/orders/{completed['order_id']}/cancel"), headers=isolated.auth("alice"), timeout=30
    )
    assert refund.status_code == 202, refund.text
    refunded = wait_for_terminal(isolated, "alice", completed["order_id"], ISOLATED_SAGA_DEADLINE_SECONDS)
    assert refunded["status"] == "REFUNDED", refunded
    assert available(isolated, sku) == 5


@pytest.mark.parametrize("logical_id", scheduled_functions())
def test_each_scheduled_function_runs_with_its_own_environment(isolated: RunningStack, logical_id: str) -> None:
    lambda_client = isolated.aws("lambda")
    names = [
        f["FunctionName"]
        for page in lambda_client.get_paginator("list_functions").paginate()
        for f in page["Functions"]
    ]
    (name,) = [candidate for candidate in names if candidate.endswith(f"-{logical_id}")]
    response = lambda_client.invoke(FunctionName=name, Payload=json.dumps(SCHEDULED_EVENT))
    payload: Any = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, payload


def test_the_scheduled_functions_are_read_from_the_template() -> None:
    """The parametrization above is not empty: the sweepers and the books check are among them."""
    expected = {"ResumeOrphanedOrdersFunction", "ReleaseExpiredReservationsFunction", "ReconcileBooksFunction"}
    assert expected <= set(scheduled_functions())
