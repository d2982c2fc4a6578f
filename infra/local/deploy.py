"""Deploy infra/template.yaml to the embedded AWS emulator (moto) or any AWS-compatible endpoint.

This is what `make run` and every test fixture use, so the local stack is built from the
same declarations as the real one: tables (keys, GSIs, TTL), the shared layer, every function
(its zip from CodeUri, its environment from Globals plus its own) and the state machines with
their DefinitionSubstitutions resolved to the local ARNs.

Resources that only exist on AWS (API Gateway, IAM, Cognito, schedules) are resolved to local
stand-ins: the API runs under `chalice local`, the identity provider is the dev one in
`infra/local/identity.py`, and schedules are returned so the caller can fire them. EventBridge
rules are created in the emulator's EventBridge (on their bus: the default one, or an event bus of
the template), which `infra/local/moto_events.py` makes deliver to Lambda targets and feed with
Step Functions' execution status changes, as on AWS. Tables keep their streams, and each
``Type: DynamoDB`` event of a function is returned as a ``StreamMapping`` that
`infra/local/streams.py` delivers as Lambda's event source mapping would. SSM
parameters (the runtime configuration) are created in the emulator's SSM with the template's values.
Secrets Manager secrets are created in the emulator's Secrets Manager, generated as CloudFormation would.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.local.streams import StreamMapping
from infra.local.template import (
    API_HANDLER,
    REPO_ROOT,
    Resolver,
    fill_substitutions,
    function_properties,
    load_template,
    parameter_defaults,
    resources_of_type,
)

LOCAL_ACCOUNT = "123456789012"
LOCAL_ROLE_NAME = "shop-local-execution"
LOCAL_RUNTIME = "python3.12"

TABLE = "AWS::DynamoDB::Table"
FUNCTION = "AWS::Serverless::Function"
LAYER = "AWS::Serverless::LayerVersion"
STATE_MACHINE = "AWS::Serverless::StateMachine"
USER_POOL = "AWS::Cognito::UserPool"
USER_POOL_CLIENT = "AWS::Cognito::UserPoolClient"
SSM_PARAMETER = "AWS::SSM::Parameter"
SECRET = "AWS::SecretsManager::Secret"
EVENT_BUS = "AWS::Events::EventBus"
QUEUE = "AWS::SQS::Queue"
# GenerateSecretString's options are GetRandomPassword's parameters (the JSON template ones aside).
_RANDOM_PASSWORD_OPTIONS = {
    "ExcludeCharacters",
    "ExcludeLowercase",
    "ExcludeNumbers",
    "ExcludePunctuation",
    "ExcludeUppercase",
    "IncludeSpace",
    "PasswordLength",
    "RequireEachIncludedType",
}


@dataclass(frozen=True)
class Schedule:
    function_name: str
    expression: str

    @property
    def every_seconds(self) -> float:
        """Seconds between runs of a ``rate(N unit)`` expression."""
        amount, unit = self.expression.removeprefix("rate(").removesuffix(")").split()
        per_unit = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}
        return float(amount) * per_unit[unit]


@dataclass
class DeployedStack:
    """What the local stack resolved: physical names and the environment of each function."""

    prefix: str
    region: str
    table_names: dict[str, str] = field(default_factory=dict)
    function_names: dict[str, str] = field(default_factory=dict)
    state_machine_arns: dict[str, str] = field(default_factory=dict)
    function_environments: dict[str, dict[str, str]] = field(default_factory=dict)
    schedules: list[Schedule] = field(default_factory=list)
    event_rules: list[str] = field(default_factory=list)
    # SSM parameter name by logical id (the runtime configuration, seeded with the template's values).
    parameter_names: dict[str, str] = field(default_factory=dict)
    secret_arns: dict[str, str] = field(default_factory=dict)
    event_bus_names: dict[str, str] = field(default_factory=dict)
    queue_urls: dict[str, str] = field(default_factory=dict)
    # The functions' ``Type: DynamoDB`` events: what infra.local.streams delivers.
    stream_mappings: list[StreamMapping] = field(default_factory=list)

    @property
    def api_environment(self) -> dict[str, str]:
        """The environment the template gives the API function (Chalice's APIHandler)."""
        return self.function_environments[API_HANDLER]


def zip_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()


def _table_request(name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    request = {
        key: properties[key]
        for key in (
            "AttributeDefinitions",
            "KeySchema",
            "GlobalSecondaryIndexes",
            "LocalSecondaryIndexes",
            "BillingMode",
        )
        if key in properties
    }
    stream = properties.get("StreamSpecification")
    if stream:
        # CloudFormation's StreamSpecification names the view only; the API also wants it enabled.
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    request["TableName"] = name
    return request


def _secret_value(secretsmanager: Any, properties: Mapping[str, Any]) -> str:
    """The secret's value: its SecretString, or one generated as CloudFormation would."""
    if "SecretString" in properties:
        return str(properties["SecretString"])
    options = properties["GenerateSecretString"]
    unsupported = set(options) - _RANDOM_PASSWORD_OPTIONS
    if unsupported:
        raise ValueError(f"the local stack does not generate secrets with {sorted(unsupported)}")
    return str(secretsmanager.get_random_password(**options)["RandomPassword"])


def _ensure_execution_role(iam: Any) -> str:
    """The emulator checks that a role exists; the template's least-privilege policies are AWS-only."""
    try:
        return str(iam.get_role(RoleName=LOCAL_ROLE_NAME)["Role"]["Arn"])
    except iam.exceptions.NoSuchEntityException:
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        created = iam.create_role(RoleName=LOCAL_ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))
        return str(created["Role"]["Arn"])


def create_tables(dynamodb: Any, prefix: str, template: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Create every table of the template (keys, GSIs, TTL) as ``{prefix}-{logical id}``.

    Used by ``deploy`` and on its own by tiers that only need the tables, e.g. the fidelity tests
    against DynamoDB Local. Returns the physical name of each table by logical id.
    """
    template = template or load_template()
    names: dict[str, str] = {}
    for logical_id, resource in resources_of_type(template, TABLE).items():
        name = f"{prefix}-{logical_id}"
        properties = resource["Properties"]
        dynamodb.create_table(**_table_request(name, properties))
        ttl = properties.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
        names[logical_id] = name
    return names


def deploy(
    *,
    dynamodb: Any,
    lambda_client: Any,
    iam: Any,
    stepfunctions: Any,
    events: Any,
    ssm: Any,
    secretsmanager: Any,
    sqs: Any,
    prefix: str,
    region: str,
    identity_issuer: str,
    identity_audience: str,
    parameters: Mapping[str, str] | None = None,
    template: Mapping[str, Any] | None = None,
    repo_root: Path = REPO_ROOT,
) -> DeployedStack:
    """Create every resource of the template that the local stack runs, in dependency order."""
    template = template or load_template()
    resolver = Resolver()
    resolver.refs.update(parameter_defaults(template))
    resolver.refs.update(parameters or {})
    resolver.refs.update({"AWS::Region": region, "AWS::AccountId": LOCAL_ACCOUNT, "AWS::StackName": prefix})
    stack = DeployedStack(prefix=prefix, region=region)
    role_arn = _ensure_execution_role(iam)

    for logical_id in resources_of_type(template, USER_POOL):
        resolver.refs[logical_id] = "local-dev-pool"
        resolver.attributes[f"{logical_id}.ProviderURL"] = identity_issuer
        resolver.attributes[f"{logical_id}.Arn"] = f"arn:aws:cognito-idp:{region}:{LOCAL_ACCOUNT}:userpool/local"
    for logical_id in resources_of_type(template, USER_POOL_CLIENT):
        resolver.refs[logical_id] = identity_audience

    for logical_id, name in create_tables(dynamodb, prefix, template).items():
        resolver.refs[logical_id] = name
        resolver.attributes[f"{logical_id}.Arn"] = f"arn:aws:dynamodb:{region}:{LOCAL_ACCOUNT}:table/{name}"
        stack.table_names[logical_id] = name
        stream_arn = dynamodb.describe_table(TableName=name)["Table"].get("LatestStreamArn")
        if stream_arn:
            resolver.attributes[f"{logical_id}.StreamArn"] = stream_arn

    for logical_id, resource in resources_of_type(template, EVENT_BUS).items():
        bus_name = str(resolver.resolve(resource["Properties"]["Name"]))
        created = events.create_event_bus(Name=bus_name)
        resolver.refs[logical_id] = bus_name
        resolver.attributes[f"{logical_id}.Name"] = bus_name
        resolver.attributes[f"{logical_id}.Arn"] = created["EventBusArn"]
        stack.event_bus_names[logical_id] = bus_name

    for logical_id, resource in resources_of_type(template, QUEUE).items():
        # The template's retention and visibility timeout, as CloudFormation would set them.
        settings = resolver.resolve(resource.get("Properties", {}))
        attributes = {
            name: str(settings[name]) for name in ("MessageRetentionPeriod", "VisibilityTimeout") if name in settings
        }
        url = sqs.create_queue(QueueName=f"{prefix}-{logical_id}", Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        resolver.refs[logical_id] = url
        resolver.attributes[f"{logical_id}.Arn"] = arn
        resolver.attributes[f"{logical_id}.QueueName"] = f"{prefix}-{logical_id}"
        stack.queue_urls[logical_id] = url

    for logical_id, resource in resources_of_type(template, SSM_PARAMETER).items():
        # Created with the template's values, as CloudFormation would: the same parameters, no second list.
        properties = resolver.resolve(resource["Properties"])
        ssm.put_parameter(
            Name=properties["Name"],
            Value=str(properties["Value"]),
            Type=properties.get("Type", "String"),
            Description=properties.get("Description", ""),
            Overwrite=True,
        )
        stack.parameter_names[logical_id] = properties["Name"]

    for logical_id, resource in resources_of_type(template, SECRET).items():
        created = secretsmanager.create_secret(
            Name=f"{prefix}-{logical_id}", SecretString=_secret_value(secretsmanager, resource["Properties"])
        )
        resolver.refs[logical_id] = created["ARN"]
        stack.secret_arns[logical_id] = created["ARN"]

    for logical_id, resource in resources_of_type(template, LAYER).items():
        content = repo_root / resource["Properties"]["ContentUri"]
        published = lambda_client.publish_layer_version(
            LayerName=f"{prefix}-{logical_id}",
            Content={"ZipFile": zip_directory(content)},
            CompatibleRuntimes=[LOCAL_RUNTIME],
        )
        resolver.refs[logical_id] = published["LayerVersionArn"]

    functions = resources_of_type(template, FUNCTION)
    rules: list[tuple[str, Any, str, Any]] = []
    for logical_id in functions:
        # Names and ARNs first: state machines and environments may refer to any function.
        name = f"{prefix}-{logical_id}"
        resolver.refs[logical_id] = name
        resolver.attributes[f"{logical_id}.Arn"] = f"arn:aws:lambda:{region}:{LOCAL_ACCOUNT}:function:{name}"
        stack.function_names[logical_id] = name

    for logical_id in resources_of_type(template, STATE_MACHINE):
        # The ARN is known before creation, so functions and the API may refer to it.
        name = f"{prefix}-{logical_id}"
        arn = f"arn:aws:states:{region}:{LOCAL_ACCOUNT}:stateMachine:{name}"
        resolver.refs[logical_id] = arn
        resolver.attributes[f"{logical_id}.Arn"] = arn
        resolver.attributes[f"{logical_id}.Name"] = name
        stack.state_machine_arns[logical_id] = arn

    for logical_id in functions:
        properties = function_properties(template, logical_id)
        environment = {
            key: str(value)
            for key, value in resolver.resolve(properties.get("Environment", {}).get("Variables", {})).items()
        }
        stack.function_environments[logical_id] = environment
        lambda_client.create_function(
            FunctionName=stack.function_names[logical_id],
            Runtime=LOCAL_RUNTIME,
            Role=role_arn,
            Handler=properties["Handler"],
            Code={"ZipFile": zip_directory(repo_root / properties["CodeUri"])},
            Timeout=int(properties.get("Timeout", 15)),
            MemorySize=int(properties.get("MemorySize", 256)),
            Environment={"Variables": environment},
            Layers=[str(layer) for layer in resolver.resolve(properties.get("Layers", []))],
        )
        invoke_config = resolver.resolve(properties.get("EventInvokeConfig"))
        if invoke_config:
            # What Lambda does with an asynchronous invocation that failed (infra.local.moto_events honours it).
            on_failure = invoke_config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
            lambda_client.put_function_event_invoke_config(
                FunctionName=stack.function_names[logical_id],
                MaximumRetryAttempts=int(invoke_config.get("MaximumRetryAttempts", 2)),
                **({"DestinationConfig": {"OnFailure": {"Destination": str(on_failure)}}} if on_failure else {}),
            )
        for event_name, event in properties.get("Events", {}).items():
            if event.get("Type") == "Schedule":
                stack.schedules.append(Schedule(stack.function_names[logical_id], event["Properties"]["Schedule"]))
            elif event.get("Type") == "EventBridgeRule":
                rule_properties = event["Properties"]
                rules.append(
                    (
                        f"{prefix}-{logical_id}-{event_name}",
                        rule_properties["Pattern"],
                        logical_id,
                        rule_properties.get("EventBusName", "default"),
                    )
                )
            elif event.get("Type") == "DynamoDB":
                source = resolver.resolve(event["Properties"])
                stream_arn = str(source["Stream"])
                stack.stream_mappings.append(
                    StreamMapping(
                        function_name=stack.function_names[logical_id],
                        function_arn=resolver.attributes[f"{logical_id}.Arn"],
                        table_name=stream_arn.split(":table/", 1)[1].split("/stream/", 1)[0],
                        stream_arn=stream_arn,
                        batch_size=int(source.get("BatchSize", 100)),
                        report_batch_item_failures="ReportBatchItemFailures" in source.get("FunctionResponseTypes", []),
                    )
                )

    api = function_properties(template, API_HANDLER)
    stack.function_environments[API_HANDLER] = {
        key: str(value) for key, value in resolver.resolve(api.get("Environment", {}).get("Variables", {})).items()
    }

    for logical_id, resource in resources_of_type(template, STATE_MACHINE).items():
        properties = resource["Properties"]
        definition = fill_substitutions(
            (repo_root / properties["DefinitionUri"]).read_text(),
            resolver.resolve(properties.get("DefinitionSubstitutions", {})),
        )
        stepfunctions.create_state_machine(
            name=resolver.attributes[f"{logical_id}.Name"],
            definition=definition,
            roleArn=role_arn,
            type=str(resolver.resolve(properties.get("Type", "STANDARD"))),
        )

    # EventBridge rules last: their patterns may name the state machines (on the default bus,
    # where AWS services put their events).
    for rule_name, pattern, logical_id, bus in rules:
        bus_name = str(resolver.resolve(bus))
        events.put_rule(
            Name=rule_name, EventBusName=bus_name, EventPattern=json.dumps(resolver.resolve(pattern)), State="ENABLED"
        )
        events.put_targets(
            Rule=rule_name,
            EventBusName=bus_name,
            Targets=[{"Id": logical_id, "Arn": resolver.attributes[f"{logical_id}.Arn"]}],
        )
        stack.event_rules.append(rule_name)

    return stack
