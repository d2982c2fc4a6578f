"""The saga definitions' retry and catch policy, read from the ASL files as deployed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest

from infra.local.template import Resolver, fill_substitutions, load_template
from shop.models.orders import CheckoutInput, ResumeCheckout

REPO = Path(__file__).resolve().parents[2]
BUSINESS_ERRORS = {
    "OutOfStock",
    "PaymentDeclined",
    "CheckoutCancelled",
    "CheckoutCancelledAfterPayment",
    "ReservationExpired",
}
LAMBDA_TRANSIENT = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}
MACHINES = {"CheckoutStateMachine": "checkout.asl.json", "RefundStateMachine": "refund.asl.json"}


def _definition(logical_id: str) -> dict[str, Any]:
    template = load_template()
    properties = template["Resources"][logical_id]["Properties"]
    resolver = Resolver(refs={"RetryIntervalSeconds": "1", "RetryMaxDelaySeconds": "7"})
    for name in template["Resources"]:
        resolver.attributes[f"{name}.Arn"] = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
    substitutions = resolver.resolve(properties["DefinitionSubstitutions"])
    return json.loads(fill_substitutions((REPO / properties["DefinitionUri"]).read_text(), substitutions))


def _tasks(logical_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in _definition(logical_id)["States"].items():
        if state["Type"] == "Task":
            yield name, state


@pytest.mark.parametrize("logical_id", MACHINES)
def test_template_wires_the_definition_and_tracing(logical_id: str) -> None:
    properties = load_template()["Resources"][logical_id]["Properties"]
    assert properties["DefinitionUri"] == f"statemachines/{MACHINES[logical_id]}"
    assert properties["Tracing"] == {"Enabled": True}
    # One parameter chooses both machines' workflow type; the ASL is the same for both.
    assert properties["Type"] == {"Ref": "WorkflowType"}
    assert load_template()["Parameters"]["WorkflowType"]["AllowedValues"] == ["STANDARD", "EXPRESS"]
    # Logged whatever the type (an Express workflow has no execution history otherwise), at the
    # level the stack chooses: its failures by default, every step with ALL.
    assert properties["Logging"]["Level"] == {"Ref": "StateMachineLogLevel"}
    assert properties["Logging"]["IncludeExecutionData"] is True
    # The other statements are the log delivery the state machine's logging needs (not Lambda).
    invoked = {
        policy["LambdaInvokePolicy"]["FunctionName"]["Ref"]
        for policy in properties["Policies"]
        if "LambdaInvokePolicy" in policy
    }
    assert not any("lambda:" in str(policy) for policy in properties["Policies"] if "LambdaInvokePolicy" not in policy)
    arns = {value["Fn::GetAtt"][0] for value in properties["DefinitionSubstitutions"].values() if "Fn::GetAtt" in value}
    assert invoked == arns  # least privilege: exactly the functions the definition calls


@pytest.mark.parametrize("logical_id", MACHINES)
def test_every_task_retries_with_capped_full_jitter_backoff(logical_id: str) -> None:
    for name, state in _tasks(logical_id):
        assert state["Retry"], name
        for retrier in state["Retry"]:
            assert retrier["JitterStrategy"] == "FULL", name
            assert retrier["IntervalSeconds"] == 1 and retrier["MaxDelaySeconds"] == 7, name
            assert retrier["BackoffRate"] > 1, name
            assert not BUSINESS_ERRORS & set(retrier["ErrorEquals"]), f"{name} retries a business error"


@pytest.mark.parametrize("logical_id", MACHINES)
def test_every_task_passes_correlation_ids(logical_id: str) -> None:
    for name, state in _tasks(logical_id):
        payload = state["Parameters"]["Payload"]
        assert payload["order_id.$"] == "$.order_id", name
        assert payload["execution_name.$"] == "$$.Execution.Name", name


def test_forward_steps_retry_lambda_service_errors_and_their_transient_error() -> None:
    # The payment steps write our ledger too, whose busy table is not the provider's failure.
    payments = {"PaymentProviderError", "PaymentRecordsContention"}
    expected = {
        "ReserveStock": {"InventoryContention"},
        "AuthorizePayment": payments,
        "CommitReservation": {"InventoryContention"},
        "CapturePayment": payments,
        "RecordStockReserved": {"OrderContention"},
        "CompleteOrder": {"OrderContention"},
    }
    tasks = dict(_tasks("CheckoutStateMachine"))
    for name, transient in expected.items():
        retried = set(tasks[name]["Retry"][0]["ErrorEquals"])
        assert {*transient, *LAMBDA_TRANSIENT} <= retried, name
        assert all("States.ALL" not in retrier["ErrorEquals"] for retrier in tasks[name]["Retry"]), name


def test_business_errors_lead_into_the_compensation() -> None:
    states = _definition("CheckoutStateMachine")["States"]
    catches = {name: {c["ErrorEquals"][0]: c["Next"] for c in s.get("Catch", [])} for name, s in states.items()}
    assert catches["AuthorizePayment"]["PaymentDeclined"] == "PaymentDeclined"
    assert states["PaymentDeclined"]["Result"]["reason"] == "PAYMENT_DECLINED"
    assert states["PaymentUnavailable"]["Result"]["reason"] == "PAYMENT_UNAVAILABLE"
    assert catches["ReserveStock"]["OutOfStock"] == "ReservationFailed"
    assert states["ReservationFailed"]["Result"]["reason"] == "OUT_OF_STOCK"
    # Only a refusal for want of units says so; a reservation that never happened is not "out of stock".
    assert catches["ReserveStock"]["States.ALL"] == "InventoryUnavailable"
    assert states["InventoryUnavailable"]["Result"]["reason"] == "INVENTORY_UNAVAILABLE"
    # Units held but not recorded, or given back before the commit: the shop failed, the stock was there.
    assert catches["RecordStockReserved"]["States.ALL"] == "ReservationNotRecorded"
    assert catches["CommitReservation"]["States.ALL"] == "ReservationLost"
    says_out_of_stock = [
        name
        for name, state in states.items()
        if isinstance(result := state.get("Result"), dict) and result.get("reason") == "OUT_OF_STOCK"
    ]
    assert says_out_of_stock == ["ReservationFailed"]
    assert catches["RecordPaymentAuthorized"]["CheckoutCancelled"] == "CancelledAfterAuthorization"
    # The checkpoint before the payment, passed again by a run after a stopped one (an Express
    # continuation) with the payment begun: its cancel voids or refunds too, never only releases.
    assert catches["RecordStockReserved"]["CheckoutCancelled"] == "CancelledBeforePayment"
    assert catches["RecordStockReserved"]["CheckoutCancelledAfterPayment"] == "CancelledAfterAuthorization"
    assert list(catches["RecordStockReserved"]).index("CheckoutCancelledAfterPayment") < list(
        catches["RecordStockReserved"]
    ).index("CheckoutCancelled")
    # A retried capture that finds the customer's cancel voids (the first catch, before States.ALL's
    # reconciliation); it knows its attempt from the context object.
    assert catches["CapturePayment"]["CheckoutCancelled"] == "CancelledDuringCapture"
    assert list(catches["CapturePayment"]) == ["CheckoutCancelled", "States.ALL"]
    assert states["CancelledDuringCapture"]["Next"] == "VoidPayment"
    assert states["CancelledDuringCapture"]["Result"]["reason"] == "CANCELLED_BY_CUSTOMER"
    assert states["CapturePayment"]["Parameters"]["Payload"]["attempt.$"] == "$$.State.RetryCount"
    # Compensation runs in reverse order and every compensation failure ends at a dead letter.
    assert states["VoidPayment"]["Next"] == "ReleaseStock"
    assert states["ReleaseStock"]["Next"] == "CancelOrder"
    for compensation in ("VoidPayment", "ReleaseStock", "CancelOrder"):
        target = catches[compensation]["States.ALL"]
        assert states[target]["Next"] == "FlagCompensation"
    assert states["FlagCompensation"]["Next"] == "CompensationNeedsAttention"


TIMEOUT_ERRORS = {"States.Timeout", "Sandbox.Timedout", "Lambda.Unknown"}
# A task waits this much longer than its function may run, for the invoke's own round trip.
INVOKE_MARGIN_SECONDS = 5


@pytest.mark.parametrize("logical_id", MACHINES)
def test_every_task_times_out_just_after_its_function_and_retries_timeouts(logical_id: str) -> None:
    template = load_template()
    default_timeout = template["Globals"]["Function"]["Timeout"]
    for name, state in _tasks(logical_id):
        function = state["Parameters"]["FunctionName"].rsplit(":", 1)[-1]
        timeout = template["Resources"][function]["Properties"].get("Timeout", default_timeout)
        assert state["TimeoutSeconds"] == timeout + INVOKE_MARGIN_SECONDS, name
        first = set(state["Retry"][0]["ErrorEquals"])
        assert first >= TIMEOUT_ERRORS or "States.ALL" in first, f"{name} does not retry a Lambda timeout"


def test_payment_obligations_wait_out_an_open_breaker_and_new_authorizations_fail_fast() -> None:
    tasks = {**dict(_tasks("CheckoutStateMachine")), **dict(_tasks("RefundStateMachine"))}
    for name in ("CapturePayment", "VoidPayment", "RefundPayment"):
        [waits] = [r for r in tasks[name]["Retry"] if r["ErrorEquals"] == ["CircuitOpen"]]
        assert waits["MaxAttempts"] >= 50, name
    assert all("CircuitOpen" not in r["ErrorEquals"] for r in tasks["AuthorizePayment"]["Retry"])


def test_an_uncertain_capture_asks_the_provider_before_compensating() -> None:
    states = _definition("CheckoutStateMachine")["States"]
    # Every failure but the customer's cancel (which voids: nothing was captured, the retry read the ledger).
    assert {c["Next"] for c in states["CapturePayment"]["Catch"] if c["ErrorEquals"] != ["CheckoutCancelled"]} == {
        "ReconcileCapture"
    }
    assert states["ReconcileCapture"]["Next"] == "CaptureOutcome"
    assert states["CaptureOutcome"]["Choices"][0]["Next"] == "CompleteOrder"
    assert states["CaptureOutcome"]["Default"] == "CaptureFailed"
    # A captured payment is never voided: the void step's refusal leads to the refund saga.
    catches = {c["ErrorEquals"][0]: c["Next"] for c in states["VoidPayment"]["Catch"]}
    assert catches["PaymentAlreadyCaptured"] == "RefundCapturedOrder"
    # Every redrive starts from the provider's truth.
    assert {choice["Next"] for choice in states["Route"]["Choices"]} == {"ReconcilePayment"}


def test_the_route_sends_every_redrive_mode_to_the_payment_check_and_a_new_order_to_the_reservation() -> None:
    """CheckoutRedriveInput's modes are the Choice's; anything else (mode "checkout") reserves first."""
    route = _definition("CheckoutStateMachine")["States"]["Route"]
    routed = {choice["StringEquals"]: choice["Next"] for choice in route["Choices"] if choice["Variable"] == "$.mode"}
    assert routed == dict.fromkeys(get_args(ResumeCheckout), "ReconcilePayment")
    assert route["Default"] == "ReserveStock"
    assert set(get_args(CheckoutInput.model_fields["mode"].annotation)).isdisjoint(routed)
