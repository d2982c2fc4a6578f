"""Canary for the Docker-free Lambda adapter (infra/local/lambda_runtime.py).

The adapter replaces a private moto method. If a moto upgrade renames it, changes its signature
or stops routing Invoke through it, these tests fail loudly instead of the saga tests failing
obscurely.
"""

from __future__ import annotations

import inspect
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.awslambda.models import LambdaFunction

from infra.local import lambda_runtime
from tests.service.orders_helpers import eventually

HANDLER_SOURCE = """
import os

class PaymentDeclined(Exception):
    pass

deliveries = 0

def handler(event, context):
    global deliveries
    deliveries += 1
    if event.get("count"):
        return {"deliveries": deliveries}
    if event.get("fail"):
        raise PaymentDeclined("card declined")
    return {"echo": event, "function": context.function_name, "flavour": os.environ.get("FLAVOUR")}
"""


def _zip(source: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", source)
    return buffer.getvalue()


@pytest.fixture
def lambda_client() -> Iterator[Any]:
    lambda_runtime.install()
    with mock_aws():
        iam = boto3.client("iam")
        role = iam.create_role(RoleName="canary", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        client = boto3.client("lambda")
        client.create_function(
            FunctionName="canary",
            Runtime="python3.12",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": _zip(HANDLER_SOURCE)},
            Environment={"Variables": {"FLAVOUR": "vanilla"}},
        )
        yield client


def test_moto_still_has_the_private_hook_the_adapter_replaces() -> None:
    assert lambda_runtime._ORIGINAL_INVOKE.__name__ == "_invoke_lambda"
    parameters = list(inspect.signature(lambda_runtime._ORIGINAL_INVOKE).parameters)
    assert parameters == ["self", "event"], f"moto changed _invoke_lambda's signature: {parameters}"
    assert "_invoke_lambda" in inspect.getsource(LambdaFunction.invoke), "moto no longer routes Invoke through it"


def test_invoke_runs_the_handler_from_the_deployment_zip(lambda_client: Any) -> None:
    response = lambda_client.invoke(FunctionName="canary", Payload=json.dumps({"n": 1}))
    assert "FunctionError" not in response
    assert json.loads(response["Payload"].read()) == {"echo": {"n": 1}, "function": "canary", "flavour": "vanilla"}


def test_handler_errors_come_back_in_aws_shape(lambda_client: Any) -> None:
    response = lambda_client.invoke(FunctionName="canary", Payload=json.dumps({"fail": True}))
    assert response["FunctionError"] == "Handled"
    payload = json.loads(response["Payload"].read())
    assert payload["errorType"] == "PaymentDeclined"
    assert payload["errorMessage"] == "card declined"
    assert isinstance(payload["stackTrace"], list)


def test_subprocess_isolation_runs_the_same_handler(lambda_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_LAMBDA_ISOLATION", "subprocess")
    ok = lambda_client.invoke(FunctionName="canary", Payload=json.dumps({"n": 2}))
    assert json.loads(ok["Payload"].read())["echo"] == {"n": 2}
    failed = lambda_client.invoke(FunctionName="canary", Payload=json.dumps({"fail": True}))
    assert json.loads(failed["Payload"].read())["errorType"] == "PaymentDeclined"


def test_duplicate_delivery_fault_runs_the_handler_twice(lambda_client: Any) -> None:
    def deliveries() -> int:
        response = lambda_client.invoke(FunctionName="canary", Payload=json.dumps({"count": True}))
        return int(json.loads(response["Payload"].read())["deliveries"])

    before = deliveries()
    lambda_runtime.faults.duplicate_deliveries.add("canary")
    try:
        duplicated = deliveries()
    finally:
        lambda_runtime.faults.duplicate_deliveries.clear()
    assert duplicated == before + 2
    assert deliveries() == duplicated + 1


def test_moto_still_parses_and_invokes_where_the_step_functions_caches_hook_in() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.parse import asl_parser

    from infra.local import moto_stepfunctions

    assert "AmazonStateLanguageParser.parse" in inspect.getsource(
        __import__("moto.stepfunctions.parser.backend.execution_worker", fromlist=["x"])
    ), "moto no longer parses the definition through AmazonStateLanguageParser.parse"
    original_invoke = inspect.getsource(moto_stepfunctions._ORIGINAL_INVOKE_LAMBDA_FUNCTION)
    assert "boto_client_for(" in original_invoke and "lambda_client.invoke(**parameters)" in original_invoke
    assert "_invoke_lambda_function(" in inspect.getsource(lambda_eval_utils.execute_lambda_function_integration)
    assert hasattr(asl_parser, "SyntaxErrorListener") and hasattr(asl_parser, "ASLParserException")
    moto_stepfunctions.install()
    tasks_only = '{"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}'
    program, _tree = asl_parser.AmazonStateLanguageParser.parse(tasks_only)
    again, _ = asl_parser.AmazonStateLanguageParser.parse(tasks_only)
    assert program is again  # components without per-execution state are shared
    parallel = json.dumps(
        {
            "StartAt": "P",
            "States": {
                "P": {
                    "Type": "Parallel",
                    "End": True,
                    "Branches": [{"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}],
                }
            },
        }
    )
    first, _ = asl_parser.AmazonStateLanguageParser.parse(parallel)
    second, _ = asl_parser.AmazonStateLanguageParser.parse(parallel)
    assert first is not second  # Parallel and Map keep per-execution state: fresh components
    # Every component has its retry-counter key before the program is shared between threads.
    from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent

    states = program.states.states  # type: ignore[attr-defined]
    assert states and all(getattr(state, "_EvalComponent__heap_key", None) for state in states.values())
    assert isinstance(program, EvalComponent)
    with pytest.raises(asl_parser.ASLParserException):
        asl_parser.AmazonStateLanguageParser.parse('{"StartAt": ')
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    # The JSONPath caches replace the module-level names moto parses paths through.
    assert "parse(" in inspect.getsource(json_path.extract_json)
    assert "parse(" in inspect.getsource(result_path.ResultPath)
    assert json_path.parse("$.order.id") is json_path.parse("$.order.id")
    assert json_path.extract_json("$.order.id", {"order": {"id": "o-1"}}) == "o-1"


def test_moto_still_has_the_event_hooks_the_eventbridge_adapter_extends() -> None:
    from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    from infra.local import moto_events

    assert list(inspect.signature(moto_events._ORIGINAL_SEND).parameters) == [
        "self",
        "original_event",
        "transform_input",
    ]
    assert "send_to_targets(" in inspect.getsource(moto_events._ORIGINAL_PUT_EVENTS)
    assert list(inspect.signature(moto_events._ORIGINAL_PUT_EVENTS).parameters) == ["self", "events"]
    assert "_reflect_execution_status" in inspect.getsource(moto_events._ORIGINAL_TERMINATED)
    assert ".terminated()" in inspect.getsource(ExecutionWorker), "moto no longer reports an execution's end"
    assert BaseExecutionWorkerCommunication.__name__ == "BaseExecutionWorkerCommunication"


def test_moto_still_keeps_streams_as_the_stream_delivery_reads_them() -> None:
    from moto.dynamodb.models.table import StreamShard

    from infra.local import moto_dynamodb

    # infra/local/streams.py reads moto's stream through the Streams API and never lets moto invoke
    # a function itself (no moto event source mapping): moto appends, and would invoke only mappings.
    assert "lambda_event_source_mappings" in inspect.getsource(StreamShard.add)
    # moto_dynamodb forgets a used shard iterator: moto still stores each one it hands out by its arn.
    source = inspect.getsource(moto_dynamodb._ORIGINAL_SHARD_ITERATOR_GET)
    assert "streams_backend.shard_iterators[new_shard_iterator.arn]" in source
    assert list(inspect.signature(moto_dynamodb._ORIGINAL_SHARD_ITERATOR_GET).parameters) == ["self", "limit"]


def test_an_ended_execution_reaches_a_lambda_target_through_its_status_change_rule(lambda_client: Any) -> None:
    from infra.local import moto_events, moto_stepfunctions

    moto_stepfunctions.install()
    moto_events.install()
    received: list[Any] = []
    delivered = threading.Event()

    def observe(function_name: str, event: Any) -> None:
        received.append(event)
        delivered.set()

    lambda_runtime.faults.before_invoke = observe
    try:
        with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
            iam, sfn, events = boto3.client("iam"), boto3.client("stepfunctions"), boto3.client("events")
            role = iam.get_role(RoleName="canary")["Role"]["Arn"]
            definition = {"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "Boom", "Cause": "why"}}}
            machine = sfn.create_state_machine(name="m", definition=json.dumps(definition), roleArn=role)
            pattern = {
                "source": ["aws.states"],
                "detail-type": [moto_events.DETAIL_TYPE],
                "detail": {"status": ["FAILED"], "stateMachineArn": [machine["stateMachineArn"]]},
            }
            events.put_rule(Name="stopped", EventPattern=json.dumps(pattern))
            function_arn = lambda_client.get_function(FunctionName="canary")["Configuration"]["FunctionArn"]
            events.put_targets(Rule="stopped", Targets=[{"Id": "canary", "Arn": function_arn}])

            sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name="x", input='{"order_id": "o-1"}')

            assert delivered.wait(30), "the status change never reached the Lambda target"
    finally:
        lambda_runtime.faults.clear()
    [event] = received
    assert (event["source"], event["detail-type"]) == ("aws.states", moto_events.DETAIL_TYPE)
    detail = event["detail"]
    assert (detail["status"], detail["name"], detail["error"], detail["cause"]) == ("FAILED", "x", "Boom", "why")
    assert json.loads(detail["input"]) == {"order_id": "o-1"}


def test_waiting_for_deliveries_covers_an_end_whose_event_is_not_put_yet(
    lambda_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An execution's FAILED status is visible a moment before its status-change event is put. A test
    that saw the status and waited for the deliveries got none, and the event reached its consumer
    later, after the test had healed the fault it counted on (a helper's probe, a flake in waiting)."""
    from infra.local import moto_events, moto_stepfunctions

    moto_stepfunctions.install()
    moto_events.install()
    announce, go = moto_events._announce_end, threading.Event()

    def held(execution: Any) -> None:
        go.wait(30)
        announce(execution)

    monkeypatch.setattr(moto_events, "_announce_end", held)
    received: list[Any] = []
    lambda_runtime.faults.before_invoke = lambda function_name, event: received.append(event)
    try:
        with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
            iam, sfn, events = boto3.client("iam"), boto3.client("stepfunctions"), boto3.client("events")
            role = iam.get_role(RoleName="canary")["Role"]["Arn"]
            definition = {"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "Boom"}}}
            machine = sfn.create_state_machine(name="m", definition=json.dumps(definition), roleArn=role)
            pattern = {"source": ["aws.states"], "detail-type": [moto_events.DETAIL_TYPE]}
            events.put_rule(Name="ended", EventPattern=json.dumps(pattern))
            function_arn = lambda_client.get_function(FunctionName="canary")["Configuration"]["FunctionArn"]
            events.put_targets(Rule="ended", Targets=[{"Id": "canary", "Arn": function_arn}])
            execution = sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name="x")["executionArn"]
            eventually(lambda: sfn.describe_execution(executionArn=execution)["status"] == "FAILED", "FAILED")

            assert moto_events.wait_for_deliveries(timeout=1) is False  # its event is still to come
            go.set()
            assert moto_events.wait_for_deliveries(timeout=30)
            assert [event["detail"]["status"] for event in received] == ["FAILED"]
    finally:
        go.set()
        lambda_runtime.faults.clear()


def test_a_stopped_execution_ends_at_once_while_its_lambda_task_still_runs(lambda_client: Any) -> None:
    """StopExecution answers ABORTED and emits its one status change at once, as AWS does."""
    from infra.local import moto_events, moto_stepfunctions

    moto_stepfunctions.install()
    moto_events.install()
    ended: list[dict[str, Any]] = []
    reached, released = threading.Event(), threading.Event()

    def hold(function_name: str, event: Any) -> None:
        reached.set()
        released.wait(30)

    lambda_runtime.faults.before_invoke = hold
    moto_events.execution_listeners.append(ended.append)
    try:
        with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
            iam, sfn = boto3.client("iam"), boto3.client("stepfunctions")
            role = iam.get_role(RoleName="canary")["Role"]["Arn"]
            function_arn = lambda_client.get_function(FunctionName="canary")["Configuration"]["FunctionArn"]
            definition = {"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": function_arn, "End": True}}}
            machine = sfn.create_state_machine(name="m", definition=json.dumps(definition), roleArn=role)
            arn = sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name="x")["executionArn"]
            assert reached.wait(30), "the task never started"

            sfn.stop_execution(executionArn=arn)

            assert sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"
            assert [(d["status"], d["name"]) for d in ended] == [("ABORTED", "x")]
            released.set()
            for worker in [t for t in threading.enumerate() if "_execution_logic" in t.name]:
                worker.join(30)
            assert sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"
    finally:
        released.set()
        lambda_runtime.faults.clear()
        moto_events.execution_listeners.remove(ended.append)
    assert len(ended) == 1, "the task's late return announced the end a second time"


def test_an_execution_listed_before_it_started_reads_as_running() -> None:
    from types import SimpleNamespace

    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.backend.execution import Execution

    from infra.local import moto_stepfunctions

    assert "self.exec_status = None" in inspect.getsource(Execution.__init__), "moto changed how executions start"
    moto_stepfunctions.install()
    assert Execution.status.fget(SimpleNamespace(exec_status=None)) == "RUNNING"  # type: ignore[attr-defined]
    done = SimpleNamespace(exec_status=ExecutionStatus.SUCCEEDED)
    assert Execution.status.fget(done) == "SUCCEEDED"  # type: ignore[attr-defined]


def test_executions_looked_up_by_name_and_arn_answer_as_moto_does() -> None:
    from infra.local import moto_stepfunctions

    # The scans these replace: if moto indexes (or renames) them itself, this adapter must follow.
    original_check = moto_stepfunctions._ORIGINAL_NAME_IDEMPOTENCY
    assert "for execution in self.executions" in inspect.getsource(original_check)
    assert "state_machine.executions" in inspect.getsource(moto_stepfunctions._ORIGINAL_DESCRIBE_EXECUTION)
    moto_stepfunctions.install()
    waiting = {"Type": "Wait", "Seconds": 60, "End": True}
    with mock_aws():
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        machine = sfn.create_state_machine(
            name="indexed",
            definition=json.dumps({"StartAt": "Hold", "States": {"Hold": waiting}}),
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )["stateMachineArn"]
        first = sfn.start_execution(stateMachineArn=machine, name="order-1", input='{"n": 1}')["executionArn"]
        for n in range(2, 6):
            sfn.start_execution(stateMachineArn=machine, name=f"order-{n}", input=json.dumps({"n": n}))

        again = sfn.start_execution(stateMachineArn=machine, name="order-1", input='{"n": 1}')["executionArn"]
        assert again == first  # the same name and input while it runs: the same execution
        with pytest.raises(sfn.exceptions.ExecutionAlreadyExists):
            sfn.start_execution(stateMachineArn=machine, name="order-1", input='{"n": 2}')
        assert sfn.describe_execution(executionArn=first)["input"] == '{"n": 1}'
        with pytest.raises(sfn.exceptions.ExecutionDoesNotExist):
            sfn.describe_execution(executionArn=first.replace("order-1", "order-9"))
        assert len(sfn.list_executions(stateMachineArn=machine)["executions"]) == 5
        sfn.stop_execution(executionArn=first)
