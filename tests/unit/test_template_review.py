"""What an operations review asks of the deployable stack, on the packaged template (`make package`)
and on what the SAM transform makes of it (``infra.check_template``, offline).

The packaged template is build/sam/template.yaml: `make test` builds it in `make validate`, before
the tests run, and these tests reuse it. Only when it is missing or older than what generates it
(a test run without `make validate`) is it rebuilt here, once, under a lock shared by the workers.
"""

from __future__ import annotations

import fcntl
import re
import zipfile
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest

from infra import package
from infra.check_template import PACKAGED, transform_template
from infra.local.template import API_HANDLER, REPO_ROOT, load_template

RUNTIME = "python3.12"
# The tables holding the books (see the comment above ProductsTable in infra/template.yaml).
MONEY_TABLES = ("ProductsTable", "StockTable", "StockLedgerTable", "OrdersTable", "PaymentsTable")
# What generates the packaged template's text (the layer's files only change the artifacts).
_TEMPLATE_INPUTS = ("app.py", "chalicelib", ".chalice/config.json", "infra/template.yaml", "infra/package.py")
# Where code scans: the reconciliation's audit (shop.repositories.audit) reads whole tables, the
# operators' console lists orders and stock without a key (shop.repositories.orders, .catalog); the
# orphan sweeper scans the sparse OrdersInProgress index, which holds only the open orders.
AUDITED = (
    "ProductsTable",
    "StockTable",
    "StockLedgerTable",
    "ReservationsTable",
    "OrdersTable",
    "PaymentsTable",
    "PurchaseCountsTable",
)
SCANNING = {("ReconcileBooksFunctionRole", table) for table in AUDITED} | {
    ("APIHandlerDataAccess", "OrdersTable"),
    ("APIHandlerDataAccess", "ProductsTable"),
    ("APIHandlerDataAccess", "StockTable"),
    ("APIHandlerDataAccess", "SearchIndexTable"),  # POST /admin/search/reindex
    ("ResumeOrphanedOrdersFunctionRole", "OrdersTable"),
}
# SAM gives a function with a DynamoDB stream event AWS's policy for reading streams (DescribeStream,
# GetRecords, GetShardIterator, ListStreams and its logs): the event publishers, and only them.
STREAM_READERS = {"PublishOrderEventsFunctionRole", "PublishStockEventsFunctionRole"}
# Powertools' idempotency store deletes its record when the handler fails, so it can be retried.
# Resharding a SKU down deletes its shards above the new count (their stock moved to the others).
# Renaming or deactivating a product deletes its search index items for the terms it no longer has.
DELETING = {
    ("APIHandlerDataAccess", "IdempotencyTable"),
    ("APIHandlerDataAccess", "StockTable"),
    ("APIHandlerDataAccess", "SearchIndexTable"),
    # DELETE /cart, and a merge deletes the anonymous cart.
    ("APIHandlerDataAccess", "CartsTable"),
}


def _newest_input() -> float:
    paths = [REPO_ROOT / name for name in _TEMPLATE_INPUTS]
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*.py"))]
    return max(f.stat().st_mtime for f in files)


def test_make_deploy_repackages_when_any_input_of_the_packaged_template_changed() -> None:
    """`make deploy` runs the file target build/sam/template.yaml: an input missing from its prerequisites
    (.chalice/config.json and infra/package.py were) let a deploy ship the previous build."""
    lines = (REPO_ROOT / "Makefile").read_text().splitlines()
    rule = next(line for line in lines if line.startswith("build/sam/template.yaml:"))
    prerequisites = rule.split(":", 1)[1]
    files = set(prerequisites.split())
    found = re.search(r"\$\(shell find ([^-]+) -type f", prerequisites)
    directories = set(found.group(1).split()) if found else set()
    assert [name for name in _TEMPLATE_INPUTS if name not in files | directories] == []


@pytest.fixture(scope="module")
def packaged() -> Iterator[dict[str, Any]]:
    lock_path = REPO_ROOT / "build" / ".package.lock"
    lock_path.parent.mkdir(exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not PACKAGED.exists() or PACKAGED.stat().st_mtime < _newest_input():
            package.build()
        # Read under the lock: a concurrent build removes the file before writing it again.
        template = load_template.__wrapped__(PACKAGED)
    yield template


@pytest.fixture(scope="module")
def transformed(packaged: dict[str, Any]) -> dict[str, Any]:
    return transform_template(packaged)


def _of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == resource_type}


@cache
def _sub_target(text: str) -> str | None:
    match = re.fullmatch(r"/aws/lambda/\$\{(\w+)\}", text)
    return match.group(1) if match else None


def _statements(transformed: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM statement of the transformed template, with the role or policy that holds it."""
    for name, role in _of_type(transformed, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                yield name, statement
    for name, policy in _of_type(transformed, "AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            yield name, statement


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _table_of(resource: Any) -> str | None:
    """The table a DynamoDB statement's resource names (GetAtt Table.Arn or a Sub on it)."""
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        return str(resource["Fn::GetAtt"][0])
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        match = re.match(r"\$\{(\w+)\.Arn\}", resource["Fn::Sub"])
        return match.group(1) if match else None
    return None


def test_every_function_runs_one_runtime(transformed: dict[str, Any]) -> None:
    functions = _of_type(transformed, "AWS::Lambda::Function")
    assert API_HANDLER in functions
    assert {name: f["Properties"]["Runtime"] for name, f in functions.items()} == dict.fromkeys(functions, RUNTIME)
    assert {f["Properties"]["TracingConfig"]["Mode"] for f in functions.values()} == {"Active"}
    (layer,) = _of_type(transformed, "AWS::Lambda::LayerVersion").values()
    assert layer["Properties"]["CompatibleRuntimes"] == [RUNTIME]
    assert f"python{package.LAMBDA_PYTHON}" == RUNTIME


def test_the_api_zip_holds_its_own_code_and_its_dependencies_come_from_the_layer(
    packaged: dict[str, Any], transformed: dict[str, Any]
) -> None:
    (layer_id,) = _of_type(transformed, "AWS::Lambda::LayerVersion")
    functions = _of_type(transformed, "AWS::Lambda::Function")
    layers = {name: f["Properties"]["Layers"] for name, f in functions.items()}
    assert layers == {name: [{"Ref": layer_id}] for name in functions}
    with zipfile.ZipFile(PACKAGED.parent / packaged["Resources"][API_HANDLER]["Properties"]["CodeUri"]) as api_zip:
        top_level = {name.split("/")[0] for name in api_zip.namelist()}
    assert top_level == {"app.py", "chalicelib", "chalice"}  # chalice: the runtime part Chalice always adds
    layer_python = PACKAGED.parent / "layers" / "shared" / "python"
    assert {"shop", "pydantic", "pydantic_core", "aws_lambda_powertools", "jwt"} <= {
        p.name for p in layer_python.iterdir()
    }
    assert list(layer_python.glob("pydantic_core/_pydantic_core.cpython-312-x86_64-linux-gnu.so"))


def test_no_function_has_a_managed_crud_policy(packaged: dict[str, Any], transformed: dict[str, Any]) -> None:
    for name, function in _of_type(packaged, "AWS::Serverless::Function").items():
        for policy in function["Properties"].get("Policies", []):
            # Inline statements only: no SAM policy template (DynamoDBCrudPolicy, ...) or managed policy.
            assert isinstance(policy, dict) and set(policy) == {"Statement"}, (name, policy)
    for name, role in _of_type(transformed, "AWS::IAM::Role").items():
        managed = {arn.rsplit("/", 1)[-1] for arn in role["Properties"].get("ManagedPolicyArns", [])}
        allowed = {"AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess"}
        if name in STREAM_READERS:
            allowed.add("AWSLambdaDynamoDBExecutionRole")
        assert managed <= allowed, name


def test_dynamodb_access_is_per_action_on_named_tables(transformed: dict[str, Any]) -> None:
    checked = 0
    for holder, statement in _statements(transformed):
        actions = _listed(statement["Action"])
        dynamodb = [a for a in actions if a.startswith("dynamodb:")]
        if not dynamodb:
            continue
        checked += 1
        assert not any("*" in a for a in dynamodb), (holder, dynamodb)
        assert "dynamodb:BatchWriteItem" not in dynamodb, holder
        tables = {_table_of(r) for r in _listed(statement["Resource"])}
        assert None not in tables, (holder, statement["Resource"])
        if "dynamodb:Scan" in dynamodb:
            assert {(holder, t) for t in tables} <= SCANNING, holder
        if "dynamodb:DeleteItem" in dynamodb:
            assert {(holder, t) for t in tables} <= DELETING, holder
        for resource in _listed(statement["Resource"]):
            assert "index/*" not in str(resource), holder
    assert checked >= 20


def test_the_books_are_retained_and_recoverable(packaged: dict[str, Any]) -> None:
    for name in MONEY_TABLES:
        table = packaged["Resources"][name]
        assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain", name
        assert table["Properties"]["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_every_function_logs_to_a_group_with_retention(transformed: dict[str, Any]) -> None:
    groups = {}
    for group in _of_type(transformed, "AWS::Logs::LogGroup").values():
        name = group["Properties"]["LogGroupName"]
        target = _sub_target(name["Fn::Sub"]) if isinstance(name, dict) and "Fn::Sub" in name else None
        if target:
            groups[target] = group["Properties"]
    functions = set(_of_type(transformed, "AWS::Lambda::Function"))
    assert set(groups) == functions
    assert all(g["RetentionInDays"] == {"Ref": "LogRetentionInDays"} for g in groups.values())
    assert transformed["Parameters"]["LogRetentionInDays"]["Default"] == 30


def test_every_function_filters_lambdas_own_lines_but_keeps_its_metrics(transformed: dict[str, Any]) -> None:
    # Lambda's START/END/REPORT lines are INFO: WARN drops them by default (half the log bytes).
    assert transformed["Parameters"]["FunctionSystemLogLevel"]["Default"] == "WARN"
    functions = _of_type(transformed, "AWS::Lambda::Function")
    assert len(functions) >= 20
    for name, function in functions.items():
        properties = function["Properties"]
        logging = properties["LoggingConfig"]
        # Level filtering needs JSON; an EMF metric line has no level and counts as INFO, so the
        # application level must stay INFO or every metric is dropped with the info lines.
        assert logging == {
            "LogFormat": "JSON",
            "ApplicationLogLevel": "INFO",
            "SystemLogLevel": {"Ref": "FunctionSystemLogLevel"},
        }, name
        # Powertools warns when its level is below Lambda's: the two agree.
        assert properties["Environment"]["Variables"]["POWERTOOLS_LOG_LEVEL"] == logging["ApplicationLogLevel"], name


def test_both_state_machines_log_their_executions(transformed: dict[str, Any]) -> None:
    # The failures by default (every step of every order is ALL's cost, about $18 a million orders).
    assert transformed["Parameters"]["StateMachineLogLevel"]["Default"] == "ERROR"
    machines = _of_type(transformed, "AWS::StepFunctions::StateMachine")
    assert set(machines) == {"CheckoutStateMachine", "RefundStateMachine"}
    for name, machine in machines.items():
        logging = machine["Properties"]["LoggingConfiguration"]
        assert logging["Level"] == {"Ref": "StateMachineLogLevel"} and logging["IncludeExecutionData"] is True
        (destination,) = logging["Destinations"]
        group = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
        assert "RetentionInDays" in transformed["Resources"][group]["Properties"]
        role = machine["Properties"]["RoleArn"]["Fn::GetAtt"][0]
        granted = {a for holder, s in _statements(transformed) if holder == role for a in _listed(s["Action"])}
        assert {"logs:CreateLogDelivery", "logs:PutResourcePolicy", "logs:DescribeLogGroups"} <= granted, name


def test_users_can_get_a_token_with_the_cli_and_the_outputs_say_where(transformed: dict[str, Any]) -> None:
    (client,) = _of_type(transformed, "AWS::Cognito::UserPoolClient").values()
    assert "ALLOW_USER_PASSWORD_AUTH" in client["Properties"]["ExplicitAuthFlows"]
    # LEGACY (CloudFormation's default) answers UserNotFoundException for an unknown e-mail: anyone could
    # tell which addresses are customers.
    assert client["Properties"]["PreventUserExistenceErrors"] == "ENABLED"
    outputs = transformed["Outputs"]
    assert outputs["UserPoolId"]["Value"] == {"Ref": "UserPool"}
    assert outputs["UserPoolClientId"]["Value"] == {"Ref": "UserPoolClient"}
    assert outputs["ApiUrl"]["Value"]["Fn::Sub"].endswith("/api/")
    assert outputs["ApiUrl"]["Value"] == outputs["EndpointURL"]["Value"]
    assert outputs["CheckoutStateMachineArn"]["Value"] == {"Ref": "CheckoutStateMachine"}
    assert outputs["RefundStateMachineArn"]["Value"] == {"Ref": "RefundStateMachine"}


def test_gateway_responses_are_part_of_the_api_body(transformed: dict[str, Any]) -> None:
    assert not _of_type(transformed, "AWS::ApiGateway::GatewayResponse")
    (api,) = _of_type(transformed, "AWS::ApiGateway::RestApi").values()
    responses = api["Properties"]["Body"]["x-amazon-apigateway-gateway-responses"]
    assert len(responses) == 8
    for kind, response in responses.items():
        headers = {
            "gatewayresponse.header.Content-Type": "'application/problem+json'",
            # a 404 or 429 stored by a cache under the URL would outlive its cause
            "gatewayresponse.header.Cache-Control": "'no-store'",
        }
        if kind == "THROTTLED":  # the OpenAPI document promises Retry-After with every 429
            headers["gatewayresponse.header.Retry-After"] = "'1'"
        assert response["responseParameters"] == headers


def test_the_pagination_key_is_a_generated_secret_only_the_api_reads(transformed: dict[str, Any]) -> None:
    secret = transformed["Resources"]["PaginationSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret" and "GenerateSecretString" in secret["Properties"]
    assert "PaginationSecret" not in transformed.get("Parameters", {})
    variables = transformed["Resources"][API_HANDLER]["Properties"]["Environment"]["Variables"]
    assert variables["PAGINATION_SECRET_ARN"] == {"Ref": "PaginationSecret"}
    assert "PAGINATION_SECRET" not in variables
    readers = {
        holder
        for holder, s in _statements(transformed)
        if "secretsmanager:GetSecretValue" in _listed(s["Action"])
        and _listed(s["Resource"]) == [{"Ref": "PaginationSecret"}]
    }
    assert readers == {"APIHandlerDataAccess"}


def test_only_the_redriver_takes_messages_from_the_consumer_failures_queue(transformed: dict[str, Any]) -> None:
    queue = {"Fn::GetAtt": ["ConsumerFailuresQueue", "Arn"]}
    actions: dict[str, set[str]] = {}
    for holder, statement in _statements(transformed):
        if queue in _listed(statement["Resource"]) and statement["Effect"] == "Allow":
            actions.setdefault(holder, set()).update(_listed(statement["Action"]))
    # The operators' count (GET /admin/consumer-failures) reads the queue's attributes, never a message.
    assert actions.pop("APIHandlerDataAccess") == {"sqs:GetQueueAttributes"}
    assert actions.pop("RedriveConsumerFailuresFunctionRole") == {"sqs:ReceiveMessage", "sqs:DeleteMessage"}
    assert all(granted == {"sqs:SendMessage"} for granted in actions.values()), actions


def test_the_redriver_may_invoke_the_consumers_as_their_failure_records_name_them(transformed: dict[str, Any]) -> None:
    """A Lambda failure record names the function qualified (its ``functionArn`` ends in ":$LATEST",
    which ``shop.domain.consumer_failures`` invokes); an unqualified ARN in a policy does not cover it,
    and AWS would refuse every redrive (moto checks no IAM)."""
    resources = [
        resource
        for holder, statement in _statements(transformed)
        if holder == "RedriveConsumerFailuresFunctionRole" and "lambda:InvokeFunction" in _listed(statement["Action"])
        for resource in _listed(statement["Resource"])
    ]
    for consumer in ("SettleStoppedExecutionFunction", "NotifyCustomerFunction", "RecordLowStockFunction"):
        assert {"Fn::Sub": f"${{{consumer}.Arn}}:*"} in resources, consumer


def test_every_function_that_judges_stock_reads_the_operators_threshold(transformed: dict[str, Any]) -> None:
    """Both judge a SKU against the runtime low-stock threshold (``shop.domain.events.judge_stock``);
    without the grant, the republisher logged AccessDenied and judged by the default instead."""
    roles = {role["Ref"] for role in transformed["Resources"]["RuntimeConfigReadPolicy"]["Properties"]["Roles"]}
    assert {"PublishStockEventsFunctionRole", "RepublishUnreadableRecordsFunctionRole"} <= roles


def test_the_api_stage_throttles_every_method_with_the_template_parameters(transformed: dict[str, Any]) -> None:
    (stage,) = _of_type(transformed, "AWS::ApiGateway::Stage").values()
    assert stage["Properties"]["MethodSettings"] == [
        {
            "ResourcePath": "/*",
            "HttpMethod": "*",
            "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
            "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
        }
    ]
    parameters = transformed["Parameters"]
    rate, burst = parameters["ApiThrottlingRateLimit"], parameters["ApiThrottlingBurstLimit"]
    assert rate["Type"] == burst["Type"] == "Number"
    assert rate["MinValue"] == burst["MinValue"] == 1
    # The bucket holds at least one second of the steady rate, and stays under the account's
    # default regional limit (10,000 requests per second, burst 5,000) so one stage cannot take it all.
    assert rate["Default"] <= burst["Default"] <= 5000 and rate["Default"] < 10000


def test_no_event_a_consumer_fails_on_is_dropped(transformed: dict[str, Any]) -> None:
    # EventBridge invokes Lambda asynchronously: after Lambda's two retries a failed event is gone
    # unless the function has an on-failure destination; one EventBridge cannot deliver needs the
    # rule target's dead-letter queue. Both are the queue the redriver reads.
    queue = {"Fn::GetAtt": ["ConsumerFailuresQueue", "Arn"]}
    targeted = set()
    for name, rule in _of_type(transformed, "AWS::Events::Rule").items():
        if "EventPattern" not in rule["Properties"]:
            continue  # a schedule: a failed tick is the next tick's work, no event is lost
        for target in rule["Properties"].get("Targets", []):
            arn = target["Arn"]
            if isinstance(arn, dict) and "Fn::GetAtt" in arn and arn["Fn::GetAtt"][0].endswith("Function"):
                targeted.add(arn["Fn::GetAtt"][0])
                assert target["DeadLetterConfig"] == {"Arn": queue}, name
    assert {"NotifyCustomerFunction", "RecordLowStockFunction", "SettleStoppedExecutionFunction"} <= targeted
    configs = {
        config["Properties"]["FunctionName"]["Ref"]: config["Properties"]
        for config in _of_type(transformed, "AWS::Lambda::EventInvokeConfig").values()
    }
    for function in targeted:
        assert configs[function]["DestinationConfig"] == {"OnFailure": {"Destination": queue}}, function
        assert configs[function]["MaximumRetryAttempts"] == 2, function
    # The redriver may hand events back to exactly those functions, and the queue is alarmed.
    role = transformed["Resources"]["RedriveConsumerFailuresFunctionRole"]
    invokable = [
        resource
        for policy in role["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        if "lambda:InvokeFunction" in statement["Action"]
        for resource in statement["Resource"]
    ]
    # Each unqualified, and qualified (":*", the form a failure record names it in).
    named = [r["Fn::GetAtt"][0] if "Fn::GetAtt" in r else r["Fn::Sub"].split(".Arn}")[0][2:] for r in invokable]
    assert sorted(named) == sorted([*targeted, *targeted])
    alarmed = [
        alarm
        for alarm in _of_type(transformed, "AWS::CloudWatch::Alarm").values()
        if alarm["Properties"].get("Namespace") == "AWS/SQS"
    ]
    assert [a["Properties"]["Dimensions"][0]["Value"] for a in alarmed] == [
        {"Fn::GetAtt": ["ConsumerFailuresQueue", "QueueName"]}
    ]
