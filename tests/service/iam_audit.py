"""Whether each function's IAM policies in infra/template.yaml allow the AWS calls its code makes.

moto does not enforce IAM, so a function whose role lacks a permission passes every test here and
fails with AccessDenied on AWS. The service tier closes that gap in three parts:

- ``Recorder`` records every botocore call made while a function runs: who (the name
  ``infra.local.lambda_runtime.current_function`` holds, set around each in-process invocation;
  the API's requests through Chalice's local gateway run as ``APIHandler``, and a test's direct
  call of the domain function one handler calls, e.g. ``reconciliation_job.run``, as that
  function: ``entry_points``) and what the call names (``accesses``): tables and indexes, every
  table of a batch or a transaction, state machines and executions, functions, event buses,
  queues, secrets and SSM parameters. Reads Powertools answers from its process-wide cache are
  recorded too: on Lambda each function has a cache of its own, filled with its own role.
- ``template_policies`` reads every function's statements from the template, in logical space:
  ``!GetAtt OrdersTable.Arn`` is ``arn:aws:dynamodb:REGION:ACCOUNT:table/OrdersTable``,
  ``!Ref CheckoutStateMachine`` is ``...:stateMachine:CheckoutStateMachine`` and ``${X.Name}`` is
  ``X`` (``LOGICAL``): a function's ``Policies`` (inline statements, SAM's policy templates, expanded by
  the SAM translator) and every ``AWS::IAM::Policy`` attached to its role (SAM names it
  ``<Function>Role``; the API's is Chalice's ``DefaultRole``, which Chalice generates with logs
  permissions only: what the API needs is in the template's policies on ``DefaultRole``).
- ``LocalNames.arn`` maps a recorded physical name back to the same logical ARN, and ``denied``
  lists each access no Allow statement of the calling function covers (``*`` wildcards in actions
  and resources, as IAM matches them; no Deny, NotAction, NotResource or Condition).
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import functools
import importlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from unittest import mock

from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider
from botocore.client import BaseClient
from chalice.local import LocalGateway
from samtranslator.policy_template_processor.processor import PolicyTemplatesProcessor

from infra.local import lambda_runtime
from infra.local.deploy import DeployedStack
from infra.local.template import (
    API_HANDLER,
    REPO_ROOT,
    Resolver,
    function_properties,
    load_template,
    resources_of_type,
)

# Stand-ins for the pseudo parameters in logical space.
LOGICAL = {"AWS::Partition": "aws", "AWS::Region": "REGION", "AWS::AccountId": "ACCOUNT", "AWS::StackName": "STACK"}
_WHERE = "REGION:ACCOUNT"
# Each type's ARN in logical space, ``{}`` its logical id; what ``Ref`` returns when it is not the id.
_ARNS = {
    "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{_WHERE}:table/{{}}",
    "AWS::Serverless::Function": f"arn:aws:lambda:{_WHERE}:function:{{}}",
    "AWS::Serverless::StateMachine": f"arn:aws:states:{_WHERE}:stateMachine:{{}}",
    "AWS::SQS::Queue": f"arn:aws:sqs:{_WHERE}:{{}}",
    "AWS::SecretsManager::Secret": f"arn:aws:secretsmanager:{_WHERE}:secret:{{}}",
    "AWS::Events::EventBus": f"arn:aws:events:{_WHERE}:event-bus/{{}}",
}
_REF_IS_ARN = {"AWS::Serverless::StateMachine", "AWS::SecretsManager::Secret"}

# SAM's own policy templates (DynamoDBCrudPolicy, LambdaInvokePolicy, ...), as the translator expands them.
_SAM_POLICY_TEMPLATES = PolicyTemplatesProcessor(PolicyTemplatesProcessor.get_default_policy_templates_json())


@dataclass(frozen=True)
class Access:
    """One IAM action on one resource a call needs. ``kind`` says what the physical ``name`` is:
    table, index (``detail`` its name), state-machine, execution, function (``detail`` the
    qualifier), event-bus, queue, secret, parameter; "" for a call whose resource is not known
    here (only ``Resource: "*"`` allows it)."""

    action: str
    kind: str
    name: str
    detail: str = ""


@dataclass(frozen=True)
class Call:
    function: str  # the function's physical name, or a logical id (APIHandler; a test's direct call)
    operation: str  # "dynamodb.TransactWriteItems", for the report
    accesses: tuple[Access, ...]

    @classmethod
    def of(cls, function: str, prefix: str, operation: str, params: Mapping[str, Any]) -> Call:
        return cls(function, f"{prefix}.{operation}", tuple(accesses(prefix, operation, params)))


_TRANSACT_ACTIONS = {
    "Get": "GetItem",
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
_ACTION_NAMES = {"lambda:Invoke": "lambda:InvokeFunction", "lambda:InvokeAsync": "lambda:InvokeFunction"}


def _table(name: str) -> str:
    return name.split(":table/", 1)[1].split("/", 1)[0] if name.startswith("arn:") else name


def accesses(prefix: str, operation: str, params: Mapping[str, Any]) -> list[Access]:
    """What IAM checks for ``operation`` of the service whose actions start ``prefix:``."""
    action = _ACTION_NAMES.get(f"{prefix}:{operation}", f"{prefix}:{operation}")
    if prefix == "dynamodb":
        if "TransactItems" in params:
            # A transaction needs each item's own action on its table (there is no Transact* action).
            return [
                Access(f"dynamodb:{_TRANSACT_ACTIONS[kind]}", "table", _table(request["TableName"]))
                for item in params["TransactItems"]
                for kind, request in item.items()
            ]
        if "RequestItems" in params:
            return [Access(action, "table", _table(name)) for name in params["RequestItems"]]
        if "TableName" in params:
            index = str(params.get("IndexName") or "")
            return [Access(action, "index" if index else "table", _table(params["TableName"]), index)]
    elif prefix == "states" and ("executionArn" in params or "stateMachineArn" in params):
        if "executionArn" in params:
            return [Access(action, "execution", params["executionArn"])]
        return [Access(action, "state-machine", params["stateMachineArn"])]
    elif prefix == "lambda" and "FunctionName" in params:
        return [Access(action, "function", params["FunctionName"], str(params.get("Qualifier") or ""))]
    elif prefix == "events" and "Entries" in params:
        return [Access(action, "event-bus", entry.get("EventBusName") or "default") for entry in params["Entries"]]
    elif prefix == "sqs" and "QueueUrl" in params:
        return [Access(action, "queue", params["QueueUrl"])]
    elif prefix == "secretsmanager" and "SecretId" in params:
        return [Access(action, "secret", params["SecretId"])]
    elif prefix == "ssm" and {"Path", "Name", "Names"} & set(params):
        names = params.get("Names") or [params.get("Path") or params["Name"]]
        return [Access(action, "parameter", name) for name in names]
    return [Access(action, "", "*")]


@dataclass
class Recorder:
    """The AWS calls made while a function (or the API) runs, as ``installed`` records them."""

    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, prefix: str, operation: str, params: Mapping[str, Any]) -> None:
        function = lambda_runtime.current_function.get()
        if function is not None:
            call = Call.of(function, prefix, operation, params)
            with self._lock:
                self.calls.append(call)

    @contextlib.contextmanager
    def installed(self, entry_points: Mapping[tuple[str, str], str] | None = None) -> Iterator[Recorder]:
        """Record while inside; every patched method is restored on the way out. ``entry_points``:
        domain functions (module, name) a test calling one directly runs as a function (logical id)."""
        make_api_call = BaseClient._make_api_call
        submit = ThreadPoolExecutor.submit
        handle_request = LocalGateway.handle_request
        ssm_get_multiple = SSMProvider.get_multiple
        secrets_get = SecretsProvider.get

        def api_call(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
            self.record(client.meta.service_model.signing_name, operation, params)
            return make_api_call(client, operation, params)

        def submit_in_context(
            pool: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
        ) -> Future[Any]:
            # Threads do not inherit context variables: a pool's task runs as the submitting function.
            return submit(pool, contextvars.copy_context().run, fn, *args, **kwargs)

        def request_as_api(gateway: LocalGateway, *args: Any, **kwargs: Any) -> Any:
            with lambda_runtime.invoking(API_HANDLER):
                return handle_request(gateway, *args, **kwargs)

        def read_path(provider: SSMProvider, path: str, *args: Any, **kwargs: Any) -> Any:
            self.record("ssm", "GetParametersByPath", {"Path": path})
            return ssm_get_multiple(provider, path, *args, **kwargs)

        def read_secret(provider: SecretsProvider, name: str, *args: Any, **kwargs: Any) -> Any:
            self.record("secretsmanager", "GetSecretValue", {"SecretId": name})
            return secrets_get(provider, name, *args, **kwargs)

        with contextlib.ExitStack() as patches:
            patches.enter_context(mock.patch.object(BaseClient, "_make_api_call", api_call))
            patches.enter_context(mock.patch.object(ThreadPoolExecutor, "submit", submit_in_context))
            patches.enter_context(mock.patch.object(LocalGateway, "handle_request", request_as_api))
            patches.enter_context(mock.patch.object(SSMProvider, "get_multiple", read_path))
            patches.enter_context(mock.patch.object(SecretsProvider, "get", read_secret))
            for (module_name, name), logical_id in (entry_points or {}).items():
                module = importlib.import_module(module_name)
                patches.enter_context(mock.patch.object(module, name, _run_as(getattr(module, name), logical_id)))
            yield self


def _run_as(entry_point: Callable[..., Any], function: str) -> Callable[..., Any]:
    """``entry_point`` run as ``function`` when called outside any invocation (by a test)."""

    @functools.wraps(entry_point)
    def run(*args: Any, **kwargs: Any) -> Any:
        if lambda_runtime.current_function.get() is not None:
            return entry_point(*args, **kwargs)
        with lambda_runtime.invoking(function):
            return entry_point(*args, **kwargs)

    return run


def entry_points(template: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """The shop's domain functions the handlers call, (module, name) -> the function's logical id,
    for those only one function's handler calls (read from each handler's source, which calls one)."""
    owners: dict[tuple[str, str], set[str]] = {}
    for logical_id in resources_of_type(template, "AWS::Serverless::Function"):
        properties = function_properties(template, logical_id)
        module_file = str(properties["Handler"]).rsplit(".", 1)[0].replace(".", "/")
        tree = ast.parse((REPO_ROOT / properties["CodeUri"] / f"{module_file}.py").read_text())
        # ``from shop.domain import inventory``: ``inventory.reserve(...)``; ``from shop.domain.payments
        # import authorize_payment``: ``authorize_payment(...)``.
        modules: dict[str, str] = {}
        functions: dict[str, tuple[str, str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shop.domain"):
                for alias in node.names:
                    if node.module == "shop.domain":
                        modules[alias.asname or alias.name] = f"shop.domain.{alias.name}"
                    else:
                        functions[alias.asname or alias.name] = (str(node.module), alias.name)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            called = node.func
            if isinstance(called, ast.Attribute) and isinstance(called.value, ast.Name) and called.value.id in modules:
                owners.setdefault((modules[called.value.id], called.attr), set()).add(logical_id)
            elif isinstance(called, ast.Name) and called.id in functions:
                owners.setdefault(functions[called.id], set()).add(logical_id)
    return {entry: min(callers) for entry, callers in owners.items() if len(callers) == 1}


def logical_resolver(template: Mapping[str, Any]) -> Resolver:
    """Intrinsic functions evaluated in logical space (``LOGICAL``, ``_ARNS``)."""
    resolver = Resolver(refs={**LOGICAL, "AWS::URLSuffix": "amazonaws.com"})
    for name, spec in template.get("Parameters", {}).items():
        resolver.refs[name] = str(spec.get("Default", name))
    for logical_id, resource in template["Resources"].items():
        kind = resource.get("Type", "")
        arn = _ARNS.get(kind, f"arn:{kind}:{{}}").format(logical_id)
        resolver.refs[logical_id] = arn if kind in _REF_IS_ARN else logical_id
        resolver.attributes.update(
            {f"{logical_id}.Arn": arn, f"{logical_id}.Name": logical_id, f"{logical_id}.QueueName": logical_id}
        )
        resolver.attributes[f"{logical_id}.StreamArn"] = f"{arn}/stream/STREAM"
    for logical_id, resource in resources_of_type(template, "AWS::SSM::Parameter").items():
        resolver.refs[logical_id] = str(resolver.resolve(resource["Properties"]["Name"]))
    return resolver


_IAM_WILDCARD = re.compile(r"\\\*|\\\?")


@cache
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    text = _IAM_WILDCARD.sub(lambda m: ".*" if m.group() == r"\*" else ".", re.escape(glob))
    return re.compile(text, re.IGNORECASE if ignore_case else 0)


@dataclass(frozen=True)
class Statement:
    """An Allow statement: its actions and resources in logical space."""

    actions: tuple[str, ...]
    resources: tuple[str, ...]

    def allows(self, action: str, resource: str) -> bool:
        return any(_pattern(a, True).fullmatch(action) for a in self.actions) and any(
            _pattern(r, False).fullmatch(resource) for r in self.resources
        )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(raw: Iterable[Mapping[str, Any]], resolver: Resolver) -> list[Statement]:
    statements = []
    for statement in raw:
        unsupported = {"NotAction", "NotResource", "Condition"} & set(statement)
        if unsupported:
            raise ValueError(f"iam_audit does not evaluate {sorted(unsupported)}: {statement}")
        if statement.get("Effect") != "Allow":
            continue
        resources = [resolver.resolve(r) for r in _as_list(statement["Resource"])]
        if not all(isinstance(r, str) for r in resources):
            raise ValueError(f"iam_audit could not resolve {statement['Resource']}")
        statements.append(Statement(tuple(_as_list(statement["Action"])), tuple(resources)))
    return statements


def _sam_policy(policy: Any, resolver: Resolver) -> list[Statement]:
    """One item of a function's ``Policies``: a policy document, a SAM policy template, or a managed
    policy's name or ARN (ignored: none grants the shop's resources; SAM's basic execution role is logs)."""
    if isinstance(policy, str):
        return []
    if "Statement" in policy:
        return _statements(_as_list(policy["Statement"]), resolver)
    ((name, arguments),) = policy.items()
    if not _SAM_POLICY_TEMPLATES.has(name):
        raise ValueError(f"iam_audit does not know the SAM policy template {name}")
    expanded = _SAM_POLICY_TEMPLATES.convert(name, arguments or {})
    return _statements(_as_list(expanded["Statement"]), resolver)


def template_policies(template: Mapping[str, Any]) -> dict[str, list[Statement]]:
    """Every function's Allow statements by logical id, the API's (``APIHandler``) included."""
    resolver = logical_resolver(template)
    functions = resources_of_type(template, "AWS::Serverless::Function")
    policies: dict[str, list[Statement]] = {API_HANDLER: [], **{logical_id: [] for logical_id in functions}}
    for logical_id in functions:
        properties = function_properties(template, logical_id)
        if "Role" in properties:
            raise ValueError(f"iam_audit does not follow {logical_id}'s own Role")
        for policy in properties.get("Policies", []):
            policies[logical_id].extend(_sam_policy(policy, resolver))
    # SAM names a function's generated role <Function>Role; Chalice names the API's DefaultRole.
    roles = {"DefaultRole": API_HANDLER, **{f"{logical_id}Role": logical_id for logical_id in functions}}
    for resource in resources_of_type(template, "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy").values():
        properties = resource["Properties"]
        for role in properties.get("Roles", []):
            owner = roles.get(role.get("Ref", "") if isinstance(role, dict) else "")
            if owner is not None:
                policies[owner].extend(_statements(_as_list(properties["PolicyDocument"]["Statement"]), resolver))
    return policies


@cache
def project_policies() -> dict[str, list[Statement]]:
    """``template_policies`` of infra/template.yaml (read once per process)."""
    return template_policies(load_template())


@cache
def project_entry_points() -> dict[tuple[str, str], str]:
    """``entry_points`` of infra/template.yaml's functions (read once per process)."""
    return entry_points(load_template())


@dataclass(frozen=True)
class LocalNames:
    """The local stack's physical names and ARNs, back to their logical ids."""

    prefix: str
    logical: Mapping[str, str]

    @classmethod
    def of(cls, stack: DeployedStack) -> LocalNames:
        logical: dict[str, str] = {}
        for names in (
            stack.table_names,
            stack.function_names,
            stack.event_bus_names,
            stack.queue_urls,
            stack.secret_arns,
            stack.state_machine_arns,
        ):
            logical.update({physical: logical_id for logical_id, physical in names.items()})
        for logical_id, arn in stack.state_machine_arns.items():
            logical[arn.rsplit(":", 1)[1]] = logical_id  # executions name their machine
        for logical_id, arn in stack.secret_arns.items():
            logical[arn.split(":secret:", 1)[1].rsplit("-", 1)[0]] = logical_id  # by name too
        return cls(prefix=stack.prefix, logical=logical)

    def logical_id(self, physical: str) -> str:
        """The logical id of a physical name, ARN or URL of the stack (itself if none: a logical id)."""
        return self.logical.get(physical, physical)

    def arn(self, access: Access) -> str:
        """The access's resource in logical space ("*" when unknown)."""
        kind, name, detail = access.kind, access.name, access.detail
        if kind in ("table", "index"):
            suffix = f"/index/{detail}" if kind == "index" else ""
            return f"arn:aws:dynamodb:{_WHERE}:table/{self.logical_id(name)}{suffix}"
        if kind == "state-machine":
            return f"arn:aws:states:{_WHERE}:stateMachine:{self.logical_id(name)}"
        if kind == "execution":
            # arn:aws:states:<region>:<account>:execution|express:<machine name>:<name>[:<id>]
            parts = name.split(":")
            return ":".join(["arn:aws:states:REGION:ACCOUNT", parts[5], self.logical_id(parts[6]), *parts[7:]])
        if kind == "function":
            function = name.split(":function:", 1)[1] if ":function:" in name else name
            function, _, qualifier = function.partition(":")
            qualifier = detail or qualifier
            return f"arn:aws:lambda:{_WHERE}:function:{self.logical_id(function)}" + (
                f":{qualifier}" if qualifier else ""
            )
        if kind == "event-bus":
            bus = name.split(":event-bus/", 1)[1] if name.startswith("arn:") else name
            return f"arn:aws:events:{_WHERE}:event-bus/{self.logical_id(bus)}"
        if kind == "queue":
            return f"arn:aws:sqs:{_WHERE}:{self.logical_id(name)}"
        if kind == "secret":
            return f"arn:aws:secretsmanager:{_WHERE}:secret:{self.logical_id(name)}"
        if kind == "parameter":
            path = name.strip("/")
            stack = f"{self.prefix}/"
            path = "STACK/" + path.removeprefix(stack) if path.startswith(stack) else path
            return f"arn:aws:ssm:{_WHERE}:parameter/{path}"
        return "*"


@dataclass(frozen=True, order=True)
class Denied:
    function: str  # logical id
    action: str
    resource: str  # in logical space
    operation: str  # the call that needed it

    def __str__(self) -> str:
        return f"{self.function}: {self.action} on {self.resource} (by {self.operation})"


def denied(calls: Iterable[Call], policies: Mapping[str, list[Statement]], names: LocalNames) -> list[Denied]:
    """Each distinct access of a call that no Allow statement of the calling function covers."""
    found: set[Denied] = set()
    for call in calls:
        function = names.logical_id(call.function)
        statements = policies.get(function, [])
        for access in call.accesses:
            resource = names.arn(access)
            if not any(statement.allows(access.action, resource) for statement in statements):
                found.add(Denied(function, access.action, resource, call.operation))
    return sorted(found)
