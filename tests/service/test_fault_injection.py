"""The chaos run's faults enter at the emulator's seams and behave as AWS's do.

A DynamoDB request refused *before* is not applied; one failed *after* is applied and only its
answer is lost; a throttled StartExecution starts nothing; a refused PutEvents puts nothing; a
profile and a seed decide the same faults every time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.local import lambda_runtime, moto_dynamodb, moto_events, moto_stepfunctions
from infra.local.faults import COVERAGE_FLOOR, FIRST_INJECTION_BY_CHANCE, PROFILES, FaultInjector, FaultProfile
from shop.domain import payments as payment_domain
from shop.errors import PaymentProviderError
from shop.models.money import Money
from tests.conftest import LocalAws

NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})


@pytest.fixture
def hooks_cleared(local_aws: LocalAws) -> Iterator[LocalAws]:
    yield local_aws
    moto_dynamodb.fault_hook = None
    moto_stepfunctions.fault_hook = None
    moto_events.fault_hook = None


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

    assert _put_fails_and_was_applied(client, table, {"order_id": {"S": "o-1"}}) is applied


def _put_fails_and_was_applied(client: Any, table: str, key: dict[str, Any]) -> bool:
    """Put ``key`` while the fault hook fails it; whether the item was stored all the same."""
    with pytest.raises(ClientError) as raised:
        client.put_item(TableName=table, Item=key)
    assert raised.value.response["Error"]["Code"] == "InternalServerError"
    return "Item" in client.get_item(TableName=table, Key=key, ConsistentRead=True)


def test_a_throttled_start_execution_starts_nothing(hooks_cleared: LocalAws) -> None:
    sfn = boto3.client("stepfunctions", config=NO_RETRIES)
    machine = hooks_cleared.state_machine("RefundStateMachine")
    moto_stepfunctions.fault_hook = lambda operation: "ThrottlingException" if operation == "StartExecution" else None

    with pytest.raises(ClientError) as raised:
        sfn.start_execution(stateMachineArn=machine, name="x", input=json.dumps({"order_id": "o-1"}))

    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    moto_stepfunctions.fault_hook = None
    assert sfn.list_executions(stateMachineArn=machine)["executions"] == []


def test_a_refused_put_events_puts_nothing_and_the_publisher_sees_it_fail(hooks_cleared: LocalAws) -> None:
    from shop.errors import EventPublishFailed
    from shop.models.events import OrderCompleted, OutgoingEvent
    from shop.repositories import event_bus

    event = OutgoingEvent(
        source="shop.orders",
        detail_type="OrderCompleted",
        detail=OrderCompleted(
            version=1,
            event_id="o-1:COMPLETED:3",
            occurred_at="2026-12-01T00:00:00Z",
            order_id="o-1",
            customer_id="alice",
            status="COMPLETED",
            total=Money(amount=100),
        ),
    )
    published = moto_events.published["OrderCompleted"]
    moto_events.fault_hook = lambda: "ThrottlingException"

    with pytest.raises(EventPublishFailed, match="ThrottlingException"):
        event_bus.put(event)
    assert moto_events.published["OrderCompleted"] == published
    # AWS's own service events are not the shop's to lose: they still go through.
    answer = boto3.client("events").put_events(
        Entries=[{"Source": "aws.states", "DetailType": "Step Functions Execution Status Change", "Detail": "{}"}]
    )
    assert answer["FailedEntryCount"] == 0

    moto_events.fault_hook = None
    event_bus.put(event)
    assert moto_events.published["OrderCompleted"] == published + 1


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


@pytest.mark.parametrize(
    ("probability", "floor"),
    [
        (0.1, round(COVERAGE_FLOOR / 0.1)),  # three times the expected wait comes first
        (0.001, FIRST_INJECTION_BY_CHANCE),  # a seam with few calls must not wait 3,000 of them
    ],
)
def test_a_kind_that_chance_keeps_missing_is_injected_at_the_coverage_floor(
    hooks_cleared: LocalAws, probability: float, floor: int
) -> None:
    rare = FaultProfile("rare", lambda_duplicate=probability)
    for seed in range(20):
        injector = FaultInjector(rare, seed=seed)
        assert injector.never_injected() == ["lambda_duplicate"]
        injector.start()
        try:
            hits = [n for n in range(1, floor + 1) if injector._duplicate("f", {})]
        finally:
            injector.stop()
        assert hits, f"seed {seed}: no duplicate in {floor} chances"
        assert hits[0] <= floor  # by chance earlier, or forced at the floor, never later
        assert injector.injected["lambda_duplicate"] == len(hits)
        assert injector.never_injected() == []


@pytest.fixture(scope="module")
def dynamodb_process() -> Iterator[str]:
    """moto's DynamoDB in its own process, as `make chaos` and `make bench DYNAMODB=moto` run it."""
    from infra.local.moto_dynamodb import MotoDynamoDBProcess

    running = MotoDynamoDBProcess.start()
    moto_dynamodb.install_client_transport(running)
    yield running.endpoint
    moto_dynamodb.remove_client_transport()
    running.stop()


@pytest.mark.parametrize(("moment", "applied"), [("before", False), ("after", True)])
def test_a_fault_on_the_connection_to_a_dynamodb_process_behaves_the_same(
    dynamodb_process: str, monkeypatch: pytest.MonkeyPatch, moment: str, applied: bool
) -> None:
    # A new session: the process-wide default one may predate install_client_transport().
    client = boto3.session.Session().client(
        "dynamodb", endpoint_url=dynamodb_process, region_name="us-east-1", config=NO_RETRIES
    )
    table = f"faults-{moment}"
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    monkeypatch.setattr(moto_dynamodb, "fault_hook", _once("InternalServerError", moment, "PutItem"))

    assert _put_fails_and_was_applied(client, table, {"id": {"S": "o-1"}}) is applied


PROVIDER_ONLY_BEFORE = FaultProfile("provider-before", provider_transient_error=1.0)
PROVIDER_ONLY_AFTER = FaultProfile("provider-after", provider_answer_lost=1.0)
PROVIDER_OUTAGE = FaultProfile("provider-outage", provider_outage=1.0)


@pytest.mark.parametrize(
    ("profile", "message", "applied"),
    [(PROVIDER_ONLY_BEFORE, "before the call", False), (PROVIDER_ONLY_AFTER, "answer lost", True)],
)
def test_a_provider_fault_fails_before_the_effect_or_loses_the_answer_after_it(
    hooks_cleared: LocalAws, profile: FaultProfile, message: str, applied: bool
) -> None:
    provider = payment_domain.provider()
    key = f"fault-{profile.name}"
    injector = FaultInjector(profile, seed=3)
    injector.start()
    try:
        with pytest.raises(PaymentProviderError, match=message):
            provider.authorize(Money(amount=500), "tok_visa", key)
    finally:
        injector.stop()

    found = provider.lookup(key)
    assert (found is not None) is applied  # before: nothing happened at the provider
    if found is not None:  # after: the authorization exists, and the retry gets it back
        assert found.approved
        assert provider.authorize(Money(amount=500), "tok_visa", key).reference == found.reference


def test_a_provider_outage_fails_every_call_until_the_window_closes(hooks_cleared: LocalAws) -> None:
    provider = payment_domain.provider()
    injector = FaultInjector(PROVIDER_OUTAGE, seed=1)
    injector.start()
    try:
        for attempt in range(5):
            with pytest.raises(PaymentProviderError, match="outage"):
                provider.authorize(Money(amount=500), "tok_visa", f"outage-{attempt}")
        assert injector.injected["provider_outage"] == 1  # one window, every call inside it refused
        injector._provider_down_until = 0.0  # the window closes
        injector.profile = PROFILES["none"]
        assert provider.authorize(Money(amount=500), "tok_visa", "outage-after").reference
    finally:
        injector.stop()
