"""Fixtures shared by every tier.

The environment is made safe before anything imports boto3 or Powertools: fake credentials, a
fixed region, X-Ray off, Powertools logs at WARNING. The stack under test is always deployed
from infra/template.yaml (``infra.local.deploy``), never from a second list of resources.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_SAFE_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "POWERTOOLS_METRICS_NAMESPACE": "ShopTests",
    "POWERTOOLS_SERVICE_NAME": "tests",
    "AWS_XRAY_SDK_ENABLED": "false",
}
os.environ.update(_SAFE_ENVIRONMENT)
# mock_aws does not intercept calls when an endpoint is configured.
for _variable in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
    os.environ.pop(_variable, None)

from infra.local import lambda_runtime, moto_dynamodb, moto_events, moto_stepfunctions, streams  # noqa: E402
from infra.local.deploy import DeployedStack, deploy  # noqa: E402
from infra.local.identity import DevIdentityProvider  # noqa: E402
from shop.config import event_settings  # noqa: E402
from shop.errors import TransientError  # noqa: E402
from shop.models.events import EmailNotification  # noqa: E402
from shop.observability import logger  # noqa: E402
from shop.repositories import dynamodb  # noqa: E402
from tests import statemachine_coverage  # noqa: E402

# Local retry waits are shortened through the template's parameters, never by editing ASL.
TEST_PARAMETERS = {
    "RetryIntervalSeconds": "1",
    "RetryMaxDelaySeconds": "1",
}


def _parse_botocore_data_once() -> None:
    """One botocore data loader for every session of this process, so each service model and the
    endpoint rules are parsed from JSON once, not once per test: moto gives every ``mock_aws`` a new
    default session, and ``shop.aws`` builds each client from a new session. The files never change
    while the tests run. (About a quarter of a second per service test.)"""
    import functools

    import botocore.loaders
    import botocore.session

    botocore.session.create_loader = functools.cache(botocore.loaders.create_loader)


_parse_botocore_data_once()


def pytest_configure(config: pytest.Config) -> None:
    # Which states and Retry/Catch edges of the sagas the run took; `make test` fails below 100%.
    config.pluginmanager.register(statemachine_coverage.StateMachineCoverage(config), "statemachine-coverage")


@pytest.fixture(scope="session")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevIdentityProvider]:
    """The dev identity provider, serving its JWKS over HTTP on 127.0.0.1 for the whole session."""
    provider = DevIdentityProvider.create(tmp_path_factory.mktemp("dev-idp"))
    provider.serve()
    yield provider
    provider.close()


@dataclass
class LocalAws:
    """The deployed stack plus clients bound to the in-process emulator."""

    stack: DeployedStack
    identity: DevIdentityProvider
    # One poller per stream mapping, made on first use: each keeps its place in its stream.
    _stream_deliveries: list[streams.StreamDelivery] = field(default_factory=list)

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=self.stack.region)

    def table(self, logical_id: str) -> str:
        return self.stack.table_names[logical_id]

    def function(self, logical_id: str) -> str:
        return self.stack.function_names[logical_id]

    def state_machine(self, logical_id: str) -> str:
        return self.stack.state_machine_arns[logical_id]

    def deliver_events(self, timeout: float = 30.0) -> int:
        """What Lambda's event source mappings and EventBridge would have done by now: every stream
        record written so far delivered to its publisher, then every event those put on a bus
        delivered to its rules' targets. Returns how many stream records were delivered."""
        if not self._stream_deliveries:
            import boto3
            from botocore.config import Config

            # botocore names an account-specific endpoint for DynamoDB Streams, which moto does not route.
            streams_client = boto3.client(
                "dynamodbstreams", region_name=self.stack.region, config=Config(account_id_endpoint_mode="disabled")
            )
            self._stream_deliveries = streams.deliveries(
                self.stack.stream_mappings, streams_client, self.client("lambda")
            )
        delivered = streams.deliver_all(self._stream_deliveries)
        assert moto_events.wait_for_deliveries(timeout), "EventBridge deliveries still running"
        return delivered

    def set_runtime_parameter(self, name: str, value: str) -> None:
        """An operator's change of a runtime parameter (shop.config.RUNTIME_PARAMETERS), in force at once:
        the cached read is dropped instead of waiting out the cache interval."""
        from shop.repositories import runtime_parameters as parameters

        path = self.stack.api_environment["RUNTIME_CONFIG_PATH"]
        self.client("ssm").put_parameter(Name=f"{path}/{name}", Value=value, Type="String", Overwrite=True)
        parameters.clear_cache()


def _reset_process_caches() -> None:
    from shop import aws, config

    config.reset_settings_cache()
    aws.reset_clients()


# Both saga workflow types the template supports (parameter WorkflowType).
WORKFLOW_TYPES = ("STANDARD", "EXPRESS")

# What EventBridge's scheduler hands a scheduled function (its rules in infra/template.yaml).
SCHEDULED_EVENT = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2024-01-01T00:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/schedule"],
    "detail": {},
}


@pytest.fixture
def workflow_type(request: pytest.FixtureRequest) -> str:
    """The sagas' workflow type for ``local_aws``: STANDARD unless a test asks for others with
    ``pytest.mark.parametrize("workflow_type", WORKFLOW_TYPES, indirect=True)`` (``BOTH_WORKFLOW_TYPES``)."""
    return str(getattr(request, "param", "STANDARD"))


# A module whose every saga path runs in both workflow types: ``pytestmark = BOTH_WORKFLOW_TYPES``.
BOTH_WORKFLOW_TYPES = pytest.mark.parametrize("workflow_type", WORKFLOW_TYPES, indirect=True)


@pytest.fixture
def stack_parameters() -> dict[str, str]:
    """Template parameters a test deploys with beyond ``TEST_PARAMETERS`` (override it with
    ``@pytest.mark.parametrize("stack_parameters", [{...}])``)."""
    return {}


@pytest.fixture
def local_aws(
    identity: DevIdentityProvider, monkeypatch: pytest.MonkeyPatch, workflow_type: str, stack_parameters: dict[str, str]
) -> Iterator[LocalAws]:
    """A fresh in-process emulator (moto) with the whole template deployed.

    Step Functions executions run for real (moto's ASL interpreter) and Lambda invocations run
    the project's handlers in-process (``infra.local.lambda_runtime``). The API's environment
    from the template is exported, so domain code and ``app.py`` see the deployed tables.
    """
    import boto3
    from moto import mock_aws

    lambda_runtime.install()
    moto_dynamodb.install()
    moto_stepfunctions.install()
    moto_events.install()
    lambda_runtime.faults.clear()
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        stack = deploy(
            dynamodb=boto3.client("dynamodb"),
            lambda_client=boto3.client("lambda"),
            iam=boto3.client("iam"),
            stepfunctions=boto3.client("stepfunctions"),
            events=boto3.client("events"),
            ssm=boto3.client("ssm"),
            secretsmanager=boto3.client("secretsmanager"),
            sqs=boto3.client("sqs"),
            prefix="test",
            region=os.environ["AWS_DEFAULT_REGION"],
            identity_issuer=identity.issuer,
            identity_audience=identity.audience,
            parameters={**TEST_PARAMETERS, **stack_parameters, "WorkflowType": workflow_type},
        )
        for key, value in stack.api_environment.items():
            # The host's observability settings win, as for every function (logs at WARNING in tests).
            if not (key in lambda_runtime.HOST_OWNED and key in os.environ):
                monkeypatch.setenv(key, value)
        _reset_process_caches()
        yield LocalAws(stack=stack, identity=identity)
        lambda_runtime.faults.clear()
        # A saga still running, or an asynchronous delivery (a consumer's retries, the event of a
        # stopped execution), writes into this test's emulator: end them before the emulator goes,
        # or they fail, or count, in a later test's.
        still_running = moto_stepfunctions.stop_every_execution(timeout=30)
        moto_events.wait_for_deliveries(timeout=30)
        if still_running:
            warnings.warn(f"{still_running} saga thread(s) still ran 30 s after the test", stacklevel=1)
        moto_stepfunctions.express_copies = None
        statemachine_coverage.record_executions(boto3.client("stepfunctions"), stack.state_machine_arns)
    _reset_process_caches()


def seed_product(sku: str, *, stock: int, price: int = 1000, name: str | None = None) -> None:
    """An active product with ``stock`` available, created the way the API creates one."""
    from shop.domain import catalog
    from shop.models.catalog import CreateProductRequest
    from shop.models.money import Money

    catalog.create_product(
        CreateProductRequest(
            sku=sku, name=name or f"Product {sku}", category="test", price=Money(amount=price), stock=stock
        )
    )


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the shop's Powertools logger writes (every function and the API share it), in its JSON format."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger().registered_formatter)
    # The Python logger behind Powertools' (which has no removeHandler of its own).
    python_logger = logging.getLogger(logger().name)
    level = python_logger.level
    # Whatever level an earlier test's environment left the cached logger at, the lines get through.
    python_logger.setLevel(logging.INFO)
    python_logger.addHandler(handler)
    try:
        yield stream
    finally:
        python_logger.removeHandler(handler)
        python_logger.setLevel(level)


class FakeClock:
    """A clock the tests move (epoch seconds): time passes without sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def random_suffix() -> str:
    return secrets.token_hex(4)


REPO_ROOT = Path(__file__).resolve().parents[1]


def forge_signature(token: str) -> str:
    """The token with its signature's first character changed.

    The first character, because every one of its bits counts: the last character of a base64
    signature carries padding bits, so changing it can decode to the very same signature.
    """
    payload, signature = token.rsplit(".", 1)
    return f"{payload}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"


def notifications_for(order_id: str) -> list[EmailNotification]:
    """The queued e-mails of one order (a Scan: the shop itself never reads them back)."""
    request: dict[str, Any] = {
        "TableName": event_settings().notifications_table,
        "FilterExpression": "order_id = :order",
        "ExpressionAttributeValues": {":order": {"S": order_id}},
    }
    items = dynamodb.every_item("scan", busy=TransientError, **request)
    return [EmailNotification.model_validate(dynamodb.unmarshal_plain(item)) for item in items]
