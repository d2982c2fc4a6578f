"""The IAM check of the service tier (tests/service/iam_audit.py) refuses what a policy does not allow.

Every service test ends with the check (tests/service/conftest.py); these tests prove that it can
fail: on a small template of its own, and on the real stack with one function's policy taken away.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from infra.local import lambda_runtime
from infra.local.deploy import DeployedStack
from infra.local.template import API_HANDLER, load_template
from shop.domain import reconciliation_job
from tests.conftest import LocalAws
from tests.service import iam_audit
from tests.service.iam_audit import Access, Call, LocalNames
from tests.service.orders_helpers import Shop, open_shop, seed_product

SAGA_EXECUTIONS = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:${Saga.Name}:*"
FAKE_TEMPLATE: dict[str, Any] = {
    "Resources": {
        "Orders": {"Type": "AWS::DynamoDB::Table", "Properties": {}},
        "Stock": {"Type": "AWS::DynamoDB::Table", "Properties": {}},
        "Saga": {"Type": "AWS::Serverless::StateMachine", "Properties": {}},
        "Worker": {"Type": "AWS::Serverless::Function", "Properties": {}},
        "Step": {
            "Type": "AWS::Serverless::Function",
            "Properties": {
                "Policies": [
                    {
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Action": ["dynamodb:GetItem", "dynamodb:Put*"],
                                "Resource": {"Fn::GetAtt": ["Orders", "Arn"]},
                            },
                            {
                                "Effect": "Allow",
                                "Action": "dynamodb:Query",
                                "Resource": {"Fn::Sub": "${Orders.Arn}/index/ByCustomer"},
                            },
                            {"Effect": "Deny", "Action": "dynamodb:*", "Resource": "*"},
                            {
                                "Effect": "Allow",
                                "Action": ["states:DescribeExecution"],
                                "Resource": {"Fn::Sub": SAGA_EXECUTIONS},
                            },
                        ]
                    },
                    {"LambdaInvokePolicy": {"FunctionName": {"Ref": "Worker"}}},
                    "AWSLambdaBasicExecutionRole",
                ]
            },
        },
        "StockAccess": {
            "Type": "AWS::IAM::Policy",
            "Properties": {
                "Roles": [{"Ref": "StepRole"}, {"Ref": "DefaultRole"}],
                "PolicyDocument": {
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": ["dynamodb:UpdateItem"],
                            "Resource": {"Fn::GetAtt": ["Stock", "Arn"]},
                        }
                    ]
                },
            },
        },
    }
}
NAMES = LocalNames(
    prefix="t",
    logical={
        "t-Orders": "Orders",
        "t-Stock": "Stock",
        "t-Step": "Step",
        "t-Worker": "Worker",
        "t-Saga": "Saga",
        "arn:aws:states:us-east-1:1:stateMachine:t-Saga": "Saga",
    },
)


def _refused(function: str, prefix: str, operation: str, **params: Any) -> list[str]:
    call = Call.of(function, prefix, operation, params)
    return [str(denial) for denial in iam_audit.denied([call], iam_audit.template_policies(FAKE_TEMPLATE), NAMES)]


def test_an_allowed_call_passes() -> None:
    assert _refused("t-Step", "dynamodb", "GetItem", TableName="t-Orders") == []
    assert _refused("t-Step", "dynamodb", "PutItem", TableName="t-Orders") == []  # "dynamodb:Put*"
    assert _refused("t-Step", "dynamodb", "Query", TableName="t-Orders", IndexName="ByCustomer") == []
    assert _refused("t-Step", "dynamodb", "UpdateItem", TableName="t-Stock") == []  # a policy on its role
    assert _refused("t-Step", "lambda", "Invoke", FunctionName="t-Worker", Qualifier="$LATEST") == []
    execution = "arn:aws:states:us-east-1:1:execution:t-Saga:order-1"
    assert _refused("t-Step", "states", "DescribeExecution", executionArn=execution) == []
    assert _refused(API_HANDLER, "dynamodb", "UpdateItem", TableName="t-Stock") == []  # DefaultRole


def test_a_call_the_policy_does_not_allow_is_refused() -> None:
    where = "arn:aws:dynamodb:REGION:ACCOUNT:table"
    assert _refused("t-Step", "dynamodb", "Scan", TableName="t-Orders") == [
        f"Step: dynamodb:Scan on {where}/Orders (by dynamodb.Scan)"
    ]
    assert _refused("t-Step", "dynamodb", "Query", TableName="t-Orders", IndexName="Other") == [
        f"Step: dynamodb:Query on {where}/Orders/index/Other (by dynamodb.Query)"
    ]
    assert _refused("t-Step", "dynamodb", "Query", TableName="t-Orders") == [
        f"Step: dynamodb:Query on {where}/Orders (by dynamodb.Query)"
    ]
    # A transaction needs each item's own action on its table.
    transaction = [{"Put": {"TableName": "t-Orders"}}, {"Delete": {"TableName": "t-Orders"}}]
    assert _refused("t-Step", "dynamodb", "TransactWriteItems", TransactItems=transaction) == [
        f"Step: dynamodb:DeleteItem on {where}/Orders (by dynamodb.TransactWriteItems)"
    ]
    assert _refused("t-Step", "dynamodb", "BatchGetItem", RequestItems={"t-Orders": {}, "t-Stock": {}}) == [
        f"Step: dynamodb:BatchGetItem on {where}/Orders (by dynamodb.BatchGetItem)",
        f"Step: dynamodb:BatchGetItem on {where}/Stock (by dynamodb.BatchGetItem)",
    ]
    assert _refused("t-Worker", "dynamodb", "GetItem", TableName="t-Orders") == [
        f"Worker: dynamodb:GetItem on {where}/Orders (by dynamodb.GetItem)"
    ]
    assert _refused(
        "t-Step", "states", "StartExecution", stateMachineArn="arn:aws:states:us-east-1:1:stateMachine:t-Saga"
    ) == ["Step: states:StartExecution on arn:aws:states:REGION:ACCOUNT:stateMachine:Saga (by states.StartExecution)"]
    assert _refused(API_HANDLER, "dynamodb", "GetItem", TableName="t-Orders") != []
    # A resource the check cannot name is allowed only by Resource "*".
    assert _refused("t-Step", "cloudwatch", "PutMetricData", Namespace="x") == [
        "Step: cloudwatch:PutMetricData on * (by cloudwatch.PutMetricData)"
    ]


def test_the_project_template_names_a_policy_for_every_function() -> None:
    policies = iam_audit.project_policies()
    assert API_HANDLER in policies and all(policies.values())
    orders = "arn:aws:dynamodb:REGION:ACCOUNT:table/OrdersTable"
    assert any(s.allows("dynamodb:Scan", orders) for s in policies["ReconcileBooksFunction"])
    assert not any(s.allows("dynamodb:DeleteItem", orders) for s in policies["ReconcileBooksFunction"])


def test_an_invocation_names_its_function_and_a_nested_one_restores_it() -> None:
    assert lambda_runtime.current_function.get() is None
    with lambda_runtime.invoking("outer"):
        with lambda_runtime.invoking("inner"):
            assert lambda_runtime.current_function.get() == "inner"
        assert lambda_runtime.current_function.get() == "outer"
    assert lambda_runtime.current_function.get() is None


def test_a_domain_function_one_handler_calls_runs_as_that_function_when_a_test_calls_it() -> None:
    entry_points = iam_audit.project_entry_points()
    assert entry_points[("shop.domain.reconciliation_job", "run")] == "ReconcileBooksFunction"
    assert entry_points[("shop.domain.payments", "capture_payment")] == "CapturePaymentFunction"
    run_as = iam_audit._run_as(lambda: lambda_runtime.current_function.get(), "ReconcileBooksFunction")
    assert run_as() == "ReconcileBooksFunction"
    with lambda_runtime.invoking(API_HANDLER):
        assert run_as() == API_HANDLER  # inside an invocation, the caller's role


def test_calls_are_recorded_in_an_invocation_and_its_pool_threads_only() -> None:
    recorder = iam_audit.Recorder()
    with recorder.installed():
        recorder.record("dynamodb", "GetItem", {"TableName": "outside"})
        with lambda_runtime.invoking("t-Step"), ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda table: recorder.record("dynamodb", "Scan", {"TableName": table}), ["a", "b"]))
    assert sorted((call.function, call.accesses[0].name) for call in recorder.calls) == [
        ("t-Step", "a"),
        ("t-Step", "b"),
    ]


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    with open_shop(local_aws) as opened:
        yield opened


def test_a_checkout_is_recorded_by_function_and_a_policy_taken_away_is_reported(
    local_aws: LocalAws, shop: Shop
) -> None:
    seed_product("MUG-1", price=1250, stock=10)
    recorder = iam_audit.Recorder()
    with recorder.installed(iam_audit.project_entry_points()):
        placed = shop.place_ok([("MUG-1", 2)])
        assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
        reconciliation_job.run()  # called by the test, checked as ReconcileBooksFunction's
    names = LocalNames.of(local_aws.stack)
    seen = {(names.logical_id(call.function), access) for call in recorder.calls for access in call.accesses}
    stock = local_aws.table("StockTable")
    assert ("ReserveStockFunction", Access("dynamodb:UpdateItem", "table", stock)) in seen
    assert (
        API_HANDLER,
        Access("states:StartExecution", "state-machine", local_aws.state_machine("CheckoutStateMachine")),
    ) in seen
    orders = local_aws.table("OrdersTable")
    assert ("ReconcileBooksFunction", Access("dynamodb:Scan", "table", orders)) in seen
    assert iam_audit.denied(recorder.calls, iam_audit.project_policies(), names) == []

    template = copy.deepcopy(load_template())
    template["Resources"]["ReserveStockFunction"]["Properties"]["Policies"] = []
    refused = iam_audit.denied(recorder.calls, iam_audit.template_policies(template), names)
    assert {denial.function for denial in refused} == {"ReserveStockFunction"}
    assert "arn:aws:dynamodb:REGION:ACCOUNT:table/StockTable" in {denial.resource for denial in refused}


def test_physical_names_map_back_to_logical_arns(local_aws: LocalAws) -> None:
    stack: DeployedStack = local_aws.stack
    names = LocalNames.of(stack)
    execution = stack.state_machine_arns["RefundStateMachine"].replace(":stateMachine:", ":execution:") + ":o-1"
    bus = boto3.client("events").describe_event_bus(Name=stack.event_bus_names["ShopEventBus"])["Arn"]
    parameter = next(iter(stack.parameter_names.values()))
    assert [
        names.arn(Access("states:DescribeExecution", "execution", execution)),
        names.arn(Access("events:PutEvents", "event-bus", bus)),
        names.arn(Access("sqs:ReceiveMessage", "queue", stack.queue_urls["ConsumerFailuresQueue"])),
        names.arn(Access("secretsmanager:GetSecretValue", "secret", stack.secret_arns["PaginationSecret"])),
        names.arn(
            Access("lambda:InvokeFunction", "function", stack.function_names["NotifyCustomerFunction"] + ":$LATEST")
        ),
        names.arn(Access("ssm:GetParameter", "parameter", parameter)),
    ] == [
        "arn:aws:states:REGION:ACCOUNT:execution:RefundStateMachine:o-1",
        "arn:aws:events:REGION:ACCOUNT:event-bus/ShopEventBus",
        "arn:aws:sqs:REGION:ACCOUNT:ConsumerFailuresQueue",
        "arn:aws:secretsmanager:REGION:ACCOUNT:secret:PaginationSecret",
        "arn:aws:lambda:REGION:ACCOUNT:function:NotifyCustomerFunction:$LATEST",
        f"arn:aws:ssm:REGION:ACCOUNT:parameter/STACK/{parameter.split('/', 2)[2]}",
    ]
