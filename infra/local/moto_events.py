"""EventBridge as the stack needs it: Lambda targets, and Step Functions' status-change events.

moto's EventBridge matches rules against events (its own pattern matcher, so the template's
patterns are honoured) but delivers only to logs, SQS, archives and other buses; and moto's Step
Functions emits no events. On AWS, every execution that changes status emits a "Step Functions
Execution Status Change" event to the default bus, and a rule with a Lambda target invokes the
function asynchronously (retried twice on error). This adapter adds exactly that:

- ``Rule.send_to_targets`` also delivers to ``lambda`` targets, asynchronously, with Lambda's
  retries of an asynchronous invocation that failed (two, or the function's EventInvokeConfig
  ``MaximumRetryAttempts``) and, when they are spent, the invocation record sent to the function's
  ``OnFailure`` destination if that is an SQS queue (what Lambda's destinations write);
- every execution that ends (SUCCEEDED, FAILED, TIMED_OUT, ABORTED) puts its status-change
  event, with AWS's ``detail`` fields, on the default bus of its account and region;
- StopExecution ends the execution at once, as on AWS: moto leaves it RUNNING (and emits
  nothing) until the state it was in returns, which for a Lambda task still running can be
  minutes. The state's own work still finishes, as a Lambda invoked before the stop does on AWS.

``wait_for_deliveries`` waits until every Lambda delivery started so far has ended, and those of
every execution whose end is already visible (the service tier: an event's consumers have run,
retries included). ``published`` counts the custom events
put on any bus, by detail-type (`make bench`: EventBridge bills each one; events from AWS
services, ``aws.*`` sources, are free).

``published_listeners`` see every custom event put (`make chaos` audits the bus with it).

In-process observers (``execution_listeners``: `make bench` and `make chaos` waiting for sagas to
end) get the same ``detail`` when an execution ends, instead of polling the Step Functions API.

It patches two private moto functions; tests/service/test_lambda_runtime_canary.py fails if a
moto upgrade moves them.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from moto.awslambda.models import lambda_backends
from moto.events.models import EventsBackend, Rule, events_backends
from moto.sqs.models import sqs_backends
from moto.stepfunctions.parser.api import ExecutionStatus
from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication, Execution
from moto.utilities.arns import parse_arn

DETAIL_TYPE = "Step Functions Execution Status Change"
# What Lambda does with an asynchronous invocation whose handler fails.
ASYNC_ATTEMPTS = 3

_ORIGINAL_SEND = Rule.send_to_targets
_ORIGINAL_TERMINATED = BaseExecutionWorkerCommunication.terminated
_ORIGINAL_STOP = Execution.stop
_ORIGINAL_PUT_EVENTS = EventsBackend.put_events
# An execution ends once: by StopExecution or by its worker, whichever comes first.
_ENDED_ATTRIBUTE = "_shop_status_change_sent"
_ending = threading.Lock()
# Called with the status-change ``detail`` of every execution that ends, in the executing thread.
execution_listeners: list[Callable[[dict[str, Any]], None]] = []
# Custom events put so far, by detail-type (what EventBridge bills).
published: Counter[str] = Counter()
# The chaos run's EventBridge faults (infra/local/faults.py): an error code for every entry of a
# PutEvents (a refused put, as EventBridge answers when throttled or failing), or None to go on.
fault_hook: Callable[[], str | None] | None = None
# Called with every custom event put (a PutEvents entry: Source, DetailType, Detail, EventBusName), in
# the putting thread: `make chaos` audits what reached the bus.
published_listeners: list[Callable[[dict[str, Any]], None]] = []
_published_lock = threading.Lock()
# The asynchronous Lambda deliveries still running (``wait_for_deliveries``).
_deliveries: set[threading.Thread] = set()
_deliveries_lock = threading.Lock()
# Executions whose end is being made visible and whose status-change event is not put yet: between
# the two, a waiter could see the status and no delivery of its event (``wait_for_deliveries``).
_announcing = 0
_announced = threading.Condition(_deliveries_lock)


def _invoke_async(account: str, region: str, function_name: str, event: dict[str, Any]) -> None:
    try:
        function = lambda_backends[account][region].get_function(function_name)
        config = function.event_invoke_config[0].config if function.event_invoke_config else {}
        attempts = int(config.get("MaximumRetryAttempts", ASYNC_ATTEMPTS - 1)) + 1
        for _ in range(attempts):
            result, errored, _ = function._invoke_lambda(event=event)  # type: ignore[arg-type]
            if not errored:
                return
        destination = (config.get("DestinationConfig") or {}).get("OnFailure", {}).get("Destination")
        if destination and parse_arn(destination).service == "sqs":
            _send_failure_record(destination, function.function_arn, event, result, attempts)
    finally:
        with _deliveries_lock:
            _deliveries.discard(threading.current_thread())


def _send_failure_record(queue_arn: str, function_arn: str, event: Any, response: Any, attempts: int) -> None:
    """What Lambda writes to an SQS on-failure destination once an asynchronous invocation's retries are spent."""
    try:
        payload = json.loads(response) if isinstance(response, str | bytes) and response else response
    except ValueError:
        payload = str(response)
    record = {
        "version": "1.0",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": f"{function_arn}:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": attempts,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": payload,
    }
    queue = parse_arn(queue_arn)
    sqs_backends[queue.account][queue.region].send_message(queue.resource_id, json.dumps(record, default=str))


def wait_for_deliveries(timeout: float) -> bool:
    """Wait until the Lambda deliveries started so far have ended, those of an execution whose end
    was already visible included; False if some still run at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with _deliveries_lock:
            _announced.wait_for(lambda: _announcing == 0, max(deadline - time.monotonic(), 0))
            running = list(_deliveries)
            if not running and _announcing == 0:
                return True
        for thread in running:
            thread.join(max(deadline - time.monotonic(), 0))
        if time.monotonic() >= deadline:
            with _deliveries_lock:
                return not _deliveries and _announcing == 0


def _is_lambda(target: dict[str, Any]) -> bool:
    return bool(parse_arn(target["Arn"]).service == "lambda")


def _send_to_targets(self: Rule, original_event: dict[str, Any], transform_input: bool = True) -> None:
    others = [target for target in self.targets if not _is_lambda(target)]
    if others:
        # moto refuses the whole rule on a target type it does not know: hand it the rest only.
        rest = copy.copy(self)
        rest.targets = others
        _ORIGINAL_SEND(rest, original_event, transform_input)  # type: ignore[arg-type]
    if not self.event_pattern.matches_event(original_event):  # type: ignore[arg-type]
        return
    for target in filter(_is_lambda, self.targets):
        arn = parse_arn(target["Arn"])
        function_name = arn.resource_id.split(":")[0]
        delivery = threading.Thread(
            target=_invoke_async,
            args=(arn.account, arn.region, function_name, json.loads(json.dumps(original_event, default=str))),
            name=f"eventbridge->{function_name}",
            daemon=True,
        )
        with _deliveries_lock:
            _deliveries.add(delivery)
        delivery.start()


def _epoch_millis(moment: Any) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


def status_change_detail(execution: Any) -> dict[str, Any]:
    """The ``detail`` AWS puts in a status-change event (the fields it always carries)."""
    status = str(getattr(execution.exec_status, "value", execution.exec_status))  # moto's enum
    return {
        "executionArn": execution.exec_arn,
        "stateMachineArn": execution.state_machine.arn,
        "name": execution.name,
        "status": status,
        "startDate": _epoch_millis(execution.start_date),
        "stopDate": _epoch_millis(execution.stop_date),
        "input": json.dumps(execution.input_data),
        "inputDetails": {"included": True},
        "output": json.dumps(execution.output) if status == "SUCCEEDED" else None,
        "outputDetails": {"included": True} if status == "SUCCEEDED" else None,
        "error": execution.error,
        "cause": execution.cause,
    }


def _claim_the_end(execution: Execution) -> bool:
    with _ending:
        if getattr(execution, _ENDED_ATTRIBUTE, False):
            return False
        setattr(execution, _ENDED_ATTRIBUTE, True)
        return True


def _announce_end(execution: Execution) -> None:
    detail = status_change_detail(execution)
    # As on AWS, only STANDARD workflows send status changes to EventBridge; the in-process
    # listeners (the harnesses waiting for sagas) hear about every execution.
    if getattr(execution, "sm_type", "STANDARD") != "EXPRESS":
        events_backends[execution.account_id][execution.region_name].put_events(
            [
                {
                    "Source": "aws.states",
                    "DetailType": DETAIL_TYPE,
                    "Detail": json.dumps(detail),
                    "Resources": [execution.exec_arn],
                }
            ]
        )
    for listener in list(execution_listeners):
        listener(detail)


@contextmanager
def _announcing_an_end() -> Iterator[None]:
    """Count an execution whose end becomes visible inside, until its event is put (and its Lambda
    deliveries registered): a test that saw the status then waits for the deliveries does not miss
    them (a helper's probe: one reached its consumer after the test had healed the fault)."""
    global _announcing
    with _deliveries_lock:
        _announcing += 1
    try:
        yield
    finally:
        with _deliveries_lock:
            _announcing -= 1
            _announced.notify_all()


def _terminated(self: BaseExecutionWorkerCommunication) -> None:
    if not _claim_the_end(self.execution):
        return  # stopped earlier: the status and its event are already out
    with _announcing_an_end():
        _ORIGINAL_TERMINATED(self)
        _announce_end(self.execution)


def _stop(self: Execution, stop_date: Any, error: str | None, cause: str | None) -> None:
    _ORIGINAL_STOP(self, stop_date=stop_date, error=error, cause=cause)
    if self.exec_status != ExecutionStatus.RUNNING or not _claim_the_end(self):
        return
    with _announcing_an_end():
        self.exec_status = ExecutionStatus.ABORTED
        self.stop_date = stop_date
        self.error = error
        self.cause = cause
        _announce_end(self)


def _put_events(self: EventsBackend, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    custom = [event for event in events if not str(event.get("Source", "")).startswith("aws.")]
    hook = fault_hook
    # Only the shop's own puts fail: AWS's service events (an execution's status change) are not ours to lose.
    code = hook() if hook is not None and events and len(custom) == len(events) else None
    if code is not None:
        # EventBridge refuses entries one by one (the call itself succeeds): nothing is put.
        return [{"ErrorCode": code, "ErrorMessage": f"injected {code}"} for _ in events]
    with _published_lock:
        published.update(str(event.get("DetailType")) for event in custom)
    for listener in list(published_listeners):
        for event in custom:
            listener(event)
    return _ORIGINAL_PUT_EVENTS(self, events)


def install() -> None:
    """Deliver to Lambda targets, emit execution status changes, count custom events (idempotent)."""
    EventsBackend.put_events = _put_events  # type: ignore[method-assign]
    Rule.send_to_targets = _send_to_targets  # type: ignore[method-assign,assignment]
    BaseExecutionWorkerCommunication.terminated = _terminated  # type: ignore[method-assign]
    Execution.stop = _stop  # type: ignore[method-assign]
