"""The chaos run's faults enter at the emulator's seams and behave as AWS's do.

A DynamoDB request refused *before* is not applied; one failed *after* is applied and only its
answer is lost; a throttled StartExecution starts nothing; a profile and a seed decide the same
faults every time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.local import lambda_runtime, moto_dynamodb, moto_stepfunctions
from infra.local.faults import PROFILES, FaultInjector
from tests.conftest import LocalAws

NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})


@pytest.fixture
def hooks_cleared(local_aws: LocalAws) -> Iterator[LocalAws]:
    yield local_aws
    moto_dynamodb.fault_hook = None
    moto_stepfunctions.fault_hook = None


def _once(code: str, moment: str, operation: str) -> Any:
    fired: list[str] = []

    def hook(at: str, op: str, request: dict[str, Any]) -> str | None:
        if at == moment and op == operation and not fired:
            fired.append(op)
            return code
        return None

    return hook


@pytest.mark.parametrize(("moment", "applied"), [("before", False), ("after", True)])
def test_a_dynamodb_fault_before_is_not_applied_and_after_is_applied_with_its_answer_lost(
    hooks_cleared: LocalAws, moment: str, applied: bool
) -> None:
    client = boto3.client("dynamodb", config=NO_RETRIES)
    table = hooks_cleared.table("OrdersTable")
    moto_dynamodb.fault_hook = _once("InternalServerError", moment, "PutItem")

    with pytest.raises(ClientError) as raised:
        client.put_item(TableName=table, Item={"order_id": {"S": "o-1"}})

    assert raised.value.response["Error"]["Code"] == "InternalServerError"
    stored = client.get_item(TableName=table, Key={"order_id": {"S": "o-1"}}, ConsistentRead=True)
    assert ("Item" in stored) is applied


def test_a_throttled_start_execution_starts_nothing(hooks_cleared: LocalAws) -> None:
    sfn = boto3.client("stepfunctions", config=NO_RETRIES)
    machine = hooks_cleared.state_machine("RefundStateMachine")
    moto_stepfunctions.fault_hook = lambda operation: "ThrottlingException" if operation == "StartExecution" else None

    with pytest.raises(ClientError) as raised:
        sfn.start_execution(stateMachineArn=machine, name="x", input=json.dumps({"order_id": "o-1"}))

    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    moto_stepfunctions.fault_hook = None
    assert sfn.list_executions(stateMachineArn=machine)["executions"] == []


def test_a_profile_and_a_seed_decide_the_same_faults(hooks_cleared: LocalAws) -> None:
    def decisions() -> list[str | None]:
        injector = FaultInjector(PROFILES["hostile"], seed=7)
        injector.start()
        try:
            return [injector._dynamodb("before", "UpdateItem", {}) for _ in range(500)]
        finally:
            injector.stop()

    first, second = decisions(), decisions()
    assert first == second
    assert {"ThrottlingException", "ProvisionedThroughputExceededException", "InternalServerError"} <= set(first)
    assert lambda_runtime.faults.before_invoke is None and moto_dynamodb.fault_hook is None  # stop() heals


def test_the_none_profile_injects_nothing(hooks_cleared: LocalAws) -> None:
    injector = FaultInjector(PROFILES["none"], seed=1)
    injector.start()
    try:
        assert all(injector._dynamodb("before", "PutItem", {}) is None for _ in range(200))
        assert not any(injector._duplicate("f", {}) for _ in range(200))
    finally:
        injector.stop()
    assert sum(injector.injected.values()) == 0
