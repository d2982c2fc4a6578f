"""Keep moto's Step Functions interpreter from spending its time on setup instead of executing
(and let the chaos run throttle its API: ``fault_hook``).

Measured with py-spy under `make bench`: moto parses the whole ASL definition with ANTLR at the
start of every execution (about 0.1-0.3 s of CPU for the checkout machine, 38% of the stack's
CPU), and builds a new boto3 client for every Lambda task (another 10%). Both results depend only
on their inputs, so they are cached here:

- the ANTLR syntax tree per definition text, and the evaluation components moto's preprocessor
  builds from it (another 12%): the components of Task, Choice, Pass, Wait, Succeed and Fail
  states keep everything an execution changes in the execution's own environment (retry
  counters are keyed by each component's ``heap_key``, assigned here before the program is
  shared). Parallel and Map states keep per-execution state in their components, so a
  definition that has one gets fresh components every time;
- the boto3 client per (region, service, interception mode, port); clients are thread-safe;
- the parsed JSONPath of each path expression (InputPath, ResultPath, Parameters' `.$` values):
  jsonpath_ng builds a new yacc parser for every parse, 6% of the emulator's CPU, and a parsed
  path is only read when it is applied.

And a Lambda task's Invoke goes straight to moto's Lambda backend: through the SDK it was
serialized, signed, matched against every moto URL pattern, rebuilt as a werkzeug request,
dispatched and parsed back, about a quarter of the stack's CPU under `make bench` for an answer
that is the same dict (status 200, ``FunctionError`` when the handler failed, ``LogResult``, the
payload). The function, its faults and its duplicates run exactly as before.

One race is fixed: an execution is listed before it is started, with no status yet, and a concurrent
StartExecution of the same state machine read that missing status while checking name idempotency
(``AttributeError``, seen once in a 10,000-order chaos run). Such an execution reads as RUNNING, which it is
about to be.

moto keeps a state machine's executions in a list and scans it on every StartExecution (the
name-idempotency check) and DescribeExecution: the cost of a start grew with every order of a
chaos run. The list also indexes its executions by name and by ARN, and those two look up instead.

EXPRESS state machines start as AWS starts them: names are not unique and not deduplicated, every
execution has its own ARN (``arn:...:express:<machine>:<name>:<id>``), and a start is at-least-once:
``express_copies`` (a test's or the chaos run's hook) makes one StartExecution start the same input
several times, concurrently, as a duplicate delivery would.

The behaviour of the interpreter is otherwise unchanged; the canary tests in
tests/service/test_lambda_runtime_canary.py fail if a moto upgrade moves these functions.
"""

from __future__ import annotations

import copy
import datetime
import io
import json
import time
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import jsonpath_ng
import jsonpath_ng.ext
from antlr4 import CommonTokenStream, InputStream
from moto.awslambda.models import lambda_backends
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.models import botocore_stubber
from moto.settings import moto_server_port
from moto.stepfunctions.exceptions import ExecutionAlreadyExists, ExecutionDoesNotExist
from moto.stepfunctions.models import StateMachine, StateMachineInstance, StepFunctionBackend
from moto.stepfunctions.parser.api import StateMachineType
from moto.stepfunctions.parser.asl.antlr.runtime.ASLLexer import ASLLexer
from moto.stepfunctions.parser.asl.antlr.runtime.ASLParser import ASLParser
from moto.stepfunctions.parser.asl.component.common.path import result_path
from moto.stepfunctions.parser.asl.component.component import Component
from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from moto.stepfunctions.parser.asl.parse import asl_parser
from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor
from moto.stepfunctions.parser.asl.utils import boto_client, json_path
from moto.stepfunctions.parser.backend.execution import Execution
from moto.stepfunctions.parser.models import StepFunctionsParserBackend
from moto.stepfunctions.responses import StepFunctionResponse

_ORIGINAL_CALL_ACTION = StepFunctionResponse.call_action
_ORIGINAL_STATE_MACHINE_INIT = StateMachineInstance.__init__
_ORIGINAL_NAME_IDEMPOTENCY = StateMachine._handle_name_input_idempotency
_ORIGINAL_DESCRIBE_EXECUTION = StepFunctionBackend.describe_execution
_ORIGINAL_INVOKE_LAMBDA_FUNCTION = lambda_eval_utils._invoke_lambda_function
_ORIGINAL_START_EXECUTION = StepFunctionsParserBackend.start_execution
_ORIGINAL_VALIDATE_EXECUTION_ARN = StepFunctionBackend._validate_execution_arn
# How many executions one StartExecution of an EXPRESS machine starts: (machine name, execution
# name) -> copies, at least 1. None: one, as usual (AWS's at-least-once start, on demand).
express_copies: Callable[[str, str], int] | None = None
# The chaos run's Step Functions faults (infra/local/faults.py): (operation, e.g. "StartExecution")
# -> an error code to answer instead, before anything is started; None to go on.
fault_hook: Callable[[str], str | None] | None = None


def _call_action(self: StepFunctionResponse) -> Any:
    hook = fault_hook
    if hook is not None:
        code = hook(str(self.headers.get("X-Amz-Target", "")).rsplit(".", 1)[-1])
        if code is not None:
            body = json.dumps({"__type": code, "message": f"injected {code}"})
            return 400, {"Content-Type": "application/x-amz-json-1.0", "status": "400"}, body
    return _ORIGINAL_CALL_ACTION(self)


@lru_cache(maxsize=64)
def _syntax_tree(definition: str) -> Any:
    """moto's parsing steps, with its error reporting; failures are raised, never cached."""
    listener = asl_parser.SyntaxErrorListener()
    parser = ASLParser(CommonTokenStream(ASLLexer(InputStream(definition))))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    tree = parser.state_machine()
    if listener.errors:
        raise asl_parser.ASLParserException(errors=listener.errors)
    return tree


# State types whose evaluation components hold per-execution state (worker threads, results).
_STATEFUL_STATE_TYPES = frozenset({"Parallel", "Map"})


@lru_cache(maxsize=64)
def _has_stateful_states(definition: str) -> bool:
    """Whether the definition has a Parallel or Map state (nested ones can only be inside those).
    Cached: every execution and every redrive asks, and each definition is a few kilobytes of JSON."""
    try:
        states = json.loads(definition).get("States", {})
        return any(state.get("Type") in _STATEFUL_STATE_TYPES for state in states.values())
    except (ValueError, AttributeError):
        return True


def _assign_heap_keys(component: Any) -> None:
    """Give every evaluation component its ``heap_key`` now: it is assigned lazily, and two
    executions racing to assign it on a shared component would lose a retry counter."""
    pending, seen = [component], set()
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, Component):
            if isinstance(value, EvalComponent):
                _ = value.heap_key
            pending.extend(vars(value).values())
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            pending.extend(value)


@lru_cache(maxsize=64)
def _shared_program(definition: str) -> tuple[Any, Any]:
    tree = _syntax_tree(definition)
    program = Preprocessor().visit(tree)
    _assign_heap_keys(program)
    return program, tree


def _parse(definition: str) -> tuple[Any, Any]:
    if not _has_stateful_states(definition):
        return _shared_program(definition)
    tree = _syntax_tree(definition)
    return Preprocessor().visit(tree), tree


@lru_cache(maxsize=32)
def _client(region: str, service: str, intercepted: bool, port: str) -> Any:
    return boto_client.boto_client_for(region=region, service=service)


def _client_for(region: str, service: str, state_credentials: Any = None) -> Any:
    return _client(region, service, botocore_stubber.enabled, moto_server_port())


def _execution_status(execution: Any) -> str:
    """moto's ``Execution.status``, RUNNING for an execution listed but not started yet."""
    return "RUNNING" if execution.exec_status is None else str(execution.exec_status.value)


def _invoke_lambda_function(parameters: dict[str, Any], region: str, state_credentials: Any) -> dict[str, Any]:
    """What ``lambda_client.invoke(**parameters)`` answers, from moto's Lambda backend directly."""
    name = str(parameters["FunctionName"])
    # arn:aws:lambda:<region>:<account>:function:<name>[:<qualifier>]
    account = name.split(":")[4] if name.startswith("arn:") else DEFAULT_ACCOUNT_ID
    request_headers = {"x-amz-invocation-type": parameters.get("InvocationType", "RequestResponse")}
    response_headers: dict[str, str] = {}
    body = lambda_backends[account][region].invoke(
        name, parameters.get("Qualifier"), parameters.get("Payload"), request_headers, response_headers
    )
    raw = body.encode("utf-8") if isinstance(body, str) else body or b""
    response: dict[str, Any] = {"StatusCode": 200, "Payload": lambda_eval_utils._from_payload(io.BytesIO(raw))}
    if "x-amz-function-error" in response_headers:
        response["FunctionError"] = response_headers["x-amz-function-error"]
    if "x-amz-log-result" in response_headers:
        response["LogResult"] = response_headers["x-amz-log-result"]
    return response


_parse_json_path = lru_cache(maxsize=1024)(jsonpath_ng.parse)
_parse_extended_json_path = lru_cache(maxsize=1024)(jsonpath_ng.ext.parse)


class IndexedExecutions(list[Any]):
    """A state machine's executions, in order, also by name (the first with it) and by ARN."""

    def __init__(self) -> None:
        super().__init__()
        self.by_name: dict[str, Any] = {}
        self.by_arn: dict[str, Any] = {}

    def append(self, execution: Any) -> None:
        super().append(execution)
        self.by_name.setdefault(execution.name, execution)
        self.by_arn.setdefault(execution.execution_arn, execution)


def _state_machine_init(self: StateMachineInstance, *args: Any, **kwargs: Any) -> None:
    _ORIGINAL_STATE_MACHINE_INIT(self, *args, **kwargs)
    self.executions = IndexedExecutions()


def _handle_name_input_idempotency(self: StateMachine, name: str, execution_input: str) -> Any:
    """moto's check, over the one execution with the name instead of every execution."""
    executions = self.executions
    if not isinstance(executions, IndexedExecutions):
        return _ORIGINAL_NAME_IDEMPOTENCY(self, name, execution_input)
    execution = executions.by_name.get(name)
    if execution is None:
        return None
    # The same name and input while it runs is the same start; anything else is a conflict.
    if execution_input == execution.execution_input and execution.status == "RUNNING":
        return execution
    raise ExecutionAlreadyExists("Execution Already Exists: '" + execution.execution_arn + "'")


def _describe_execution(self: StepFunctionBackend, execution_arn: str) -> Any:
    self._validate_execution_arn(execution_arn)
    executions = self._get_state_machine_for_execution(execution_arn).executions
    if not isinstance(executions, IndexedExecutions):
        return _ORIGINAL_DESCRIBE_EXECUTION(self, execution_arn)
    execution = executions.by_arn.get(execution_arn)
    if execution is None:
        raise ExecutionDoesNotExist("Execution Does Not Exist: '" + execution_arn + "'")
    return execution


def _start_execution(
    self: StepFunctionsParserBackend,
    state_machine_arn: str,
    name: Any = None,
    execution_input: Any = None,
    trace_header: Any = None,
) -> Any:
    machine = self.describe_state_machine(state_machine_arn)
    if machine.type != "EXPRESS":  # moto's ``sm_type`` is always STANDARD; ``type`` is what was asked
        return _ORIGINAL_START_EXECUTION(self, state_machine_arn, name, execution_input, trace_header)
    execution_name = name or str(uuid.uuid4())
    input_data = "{}" if execution_input is None else execution_input
    json.loads(input_data)  # moto's check: invalid JSON is refused before anything starts
    hook = express_copies
    copies = max(1, hook(machine.name, execution_name)) if hook is not None else 1
    started = [_start_express(self, machine, execution_name, input_data, trace_header) for _ in range(copies)]
    return started[0]


def _start_express(
    self: StepFunctionsParserBackend, machine: Any, name: str, input_data: str, trace_header: Any
) -> Any:
    """moto's start, without the name check and with an Express execution's own ARN."""
    snapshot = copy.deepcopy(machine, {id(machine.executions): [], id(machine.backend): machine.backend})
    where = f"arn:{self.partition}:states:{self.region_name}:{self.account_id}"
    arn = f"{where}:express:{machine.name}:{name}:{uuid.uuid4()}"
    execution = Execution(
        name=name,
        sm_type=StateMachineType.EXPRESS,
        role_arn=snapshot.roleArn,
        exec_arn=arn,
        account_id=self.account_id,
        region_name=self.region_name,
        state_machine=snapshot,
        start_date=datetime.datetime.now(tz=datetime.UTC),
        cloud_watch_logging_session=None,
        input_data=input_data,
        trace_header=trace_header,
        activity_store={},
    )
    machine.executions.append(execution)
    execution.start()
    return execution


def _validate_execution_arn(self: StepFunctionBackend, execution_arn: str) -> None:
    """moto's check, which knows only Standard ARNs. An Express execution's (":express:") is
    accepted too: AWS answers DescribeExecution of Express executions only through CloudWatch
    Logs, but the emulator keeps answering, so that tests and harnesses can read an execution's
    history and stop one (the shop's own code never asks)."""
    if ":express:" not in execution_arn:
        _ORIGINAL_VALIDATE_EXECUTION_ARN(self, execution_arn)


def stop_running(name: str | None, *, error: str, cause: str) -> int:
    """Stop every running execution of that name (None: of any name), in every state machine of this
    process's emulator, as its time limit or an operator would (the chaos run's ``saga_run_stopped``);
    how many stopped."""
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    stopped = 0
    for regions in list(stepfunctions_parser_backends.values()):
        for backend in list(regions.values()):
            for machine in list(backend.state_machines):
                # Every one of the name: an Express name is not unique (a duplicated start).
                for execution in [run for run in list(machine.executions) if name is None or run.name == name]:
                    if _execution_status(execution) == "RUNNING":
                        execution.stop(datetime.datetime.now(tz=datetime.UTC), error, cause)
                        stopped += 1
    return stopped


def stop_every_execution(*, timeout: float) -> int:
    """Stop every execution still running and wait, ``timeout`` seconds at most in all, for the
    threads that run executions to end; how many still ran then.

    A test's emulator ends with its test; a saga left running (a retry's backoff, a step a test held
    and let go) would go on into the next test's emulator and fail or count there. A stopped
    execution ends at its next state; a step already running finishes first, and may start another
    execution (a hand-over), hence the loop.
    """
    from moto.stepfunctions.parser.utils import TMP_THREADS  # moto's list of the threads it starts

    deadline = time.monotonic() + timeout
    while True:
        stop_running(None, error="EmulatorClosed", cause="the test that started it ended")
        alive = [thread for thread in list(TMP_THREADS) if thread.is_alive()]
        if not alive or time.monotonic() >= deadline:
            TMP_THREADS[:] = [thread for thread in list(TMP_THREADS) if thread.is_alive()]
            return len(alive)
        for thread in alive:
            thread.join(max(deadline - time.monotonic(), 0))


def install() -> None:
    """Cache syntax trees, parsed JSONPaths and Lambda clients; invoke Lambda tasks directly; index
    executions (idempotent; state machines created before it keep moto's list)."""
    json_path.parse = _parse_extended_json_path
    result_path.parse = _parse_json_path
    asl_parser.AmazonStateLanguageParser.parse = staticmethod(_parse)  # type: ignore[method-assign]
    lambda_eval_utils.boto_client_for = _client_for
    lambda_eval_utils._invoke_lambda_function = _invoke_lambda_function
    Execution.status = property(_execution_status)  # type: ignore[method-assign,assignment]
    StateMachineInstance.__init__ = _state_machine_init  # type: ignore[method-assign]
    StateMachine._handle_name_input_idempotency = _handle_name_input_idempotency  # type: ignore[method-assign]
    StepFunctionBackend.describe_execution = _describe_execution  # type: ignore[method-assign]
    StepFunctionResponse.call_action = _call_action  # type: ignore[method-assign,assignment]
    StepFunctionsParserBackend.start_execution = _start_execution  # type: ignore[method-assign]
    StepFunctionBackend._validate_execution_arn = _validate_execution_arn  # type: ignore[method-assign]
